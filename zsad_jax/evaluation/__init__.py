"""Evaluation runs: streamed, jitted + sharded inference, per-class metrics, tables, heatmaps.

    from zsad_jax import evaluation
    result = evaluation.evaluate_records(method, params, records, config, out_dir, dataset_name)

`result` is the metrics.json content: {"dataset", "resolution", "map_size", "smoothing_sigma",
"num_images", "classes": {class: {metric: value | None}}, "mean": {metric: value | None}, ...}.
"""

from zsad_jax.evaluation.runner import RESOLUTIONS, evaluate_records, group_by_class
from zsad_jax.evaluation.tables import markdown_table, write_results

__all__ = ["RESOLUTIONS", "evaluate_records", "group_by_class", "markdown_table", "write_results"]
