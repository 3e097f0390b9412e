"""Evaluation: streamed, jitted + sharded inference, per-class metrics, tables, reports, heatmaps.

    from zsad_jax import evaluation
    evaluator = evaluation.Evaluator(config)                     # injected into the train loop
    results = evaluator(method, params, {"mvtec": records}, out_root, checkpoint)
    result = evaluation.evaluate_records(method, params, records, config, out_dir, dataset_name)

`result` is the metrics.json content: {"dataset", "checkpoint", "config_sha256", "resolution",
"map_size", "smoothing_sigma", "num_images", "classes": {class: {metric: value | None}},
"mean": {metric: value | None}, ...}. This package never imports `zsad_jax.training`.
"""

from zsad_jax.evaluation.evaluator import Evaluator, ResultsExistError, results_folder
from zsad_jax.evaluation.runner import RESOLUTIONS, evaluate_records, group_by_class
from zsad_jax.evaluation.tables import markdown_table, write_results

__all__ = ["RESOLUTIONS", "Evaluator", "ResultsExistError", "evaluate_records", "group_by_class",
           "markdown_table", "results_folder", "write_results"]
