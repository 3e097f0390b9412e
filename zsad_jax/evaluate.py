r"""Evaluate a trained run (or a config) on one or all of its evaluation datasets.

    python -m zsad_jax.evaluate --workdir runs/demo
    python -m zsad_jax.evaluate --workdir runs/sgnet --dataset visa --data_dir /data
    python -m zsad_jax.evaluate --config sgnet.py --checkpoint runs/sgnet --dataset mvtec \
        --data_dir /data --resolution native

Writes into RUN/eval/<dataset>/ (or --out): metrics.json (per class + mean; resolution and
smoothing stated), metrics.csv, table.md (paper-style, %) and heatmaps/<class>/*.png.
Python: `evaluate_run(workdir=..., dataset=..., ...)` does the same and returns the results.
"""

from __future__ import annotations

import logging
import pathlib
import sys
from collections.abc import Mapping, Sequence

from zsad_jax import config_lib

EVAL_OVERRIDES = ("smoothing_sigma", "resolution", "num_heatmaps", "max_images")


def define_flags() -> None:
    """Defines the CLI flags (at run time, so importing this module defines no absl flags)."""
    from absl import flags

    from zsad_jax.evaluation import loading

    if "dataset" in flags.FLAGS:
        return
    loading.define_model_flags()
    for name in loading.MODEL_FLAGS:       # listed by --help with this module's own flags
        flags.declare_key_flag(name)
    flags.DEFINE_string("dataset", None, "Dataset name (one of zsad_jax.data.DATASETS). Default: "
                        "every evaluation dataset of the config's protocol (data.protocol).")
    flags.DEFINE_string("data_dir", None, "With --dataset: the folder holding <dataset>/, or the "
                        "dataset's root itself. Default: config.data.roots.<dataset>, else "
                        "config.data.data_dir/<dataset>.")
    flags.DEFINE_list("classes", None, "With --dataset: only these classes (comma-separated).")
    flags.DEFINE_string("out", None, "Output folder. Default: <workdir>/eval/<dataset> (with "
                        "--config and no run: ./eval/<dataset>). Several datasets: "
                        "<out>/<dataset>.")
    flags.DEFINE_float("smoothing_sigma", None, "Override config.eval.smoothing_sigma: Gaussian "
                       "smoothing of the maps, in input pixels (0 = off; default 4).")
    flags.DEFINE_enum("resolution", None, ["input", "native"], "Override config.eval.resolution:"
                      " 'input' (maps and masks at the method's map size) or 'native' (maps "
                      "resized to each image's original size, masks as stored).")
    flags.DEFINE_integer("num_heatmaps", None, "Override config.eval.num_heatmaps (heatmap PNGs "
                         "per class).")
    flags.DEFINE_integer("max_images", None, "Override config.eval.max_images (> 0: at most that "
                         "many images per class, evenly spaced; 0 = all).")
    flags.DEFINE_integer("batch_size", None, "Override config.data.eval_batch_size (global; "
                         "rounded up to a multiple of the device count).")
    flags.DEFINE_bool("skip_unreadable", False, "Skip unreadable dataset images (warning + "
                      "count) instead of stopping.")
    flags.DEFINE_bool("progress", True, "Show the progress bar (images/s, ETA).")


def dataset_records(config, name: str, data_dir: str | None, classes, workdir,
                    skip_unreadable: bool = False) -> list:
    """Records of the test split of dataset `name` (see --data_dir for where it is looked up)."""
    from zsad_jax import data

    if data_dir:
        root = pathlib.Path(data_dir).expanduser()
        if (root / name).is_dir():
            root = root / name
    else:
        root = data.dataset_root(config, name, workdir or ".")
    return data.load_index(name, root, split="test", classes=classes,
                           skip_unreadable=skip_unreadable or config.data.skip_unreadable,
                           layout=config.data.layouts.get(name, "auto"))


def evaluate_run(workdir: str | None = None, config=None, checkpoint: str | None = None,
                 which: str = "best", dataset: str | None = None, data_dir: str | None = None,
                 classes: Sequence[str] | None = None, out: str | None = None,
                 eval_overrides: Mapping | None = None, batch_size: int | None = None,
                 skip_unreadable: bool = False, progress: bool = True) -> dict[str, dict]:
    """The CLI as a function: {dataset: metrics.json content}; writes the result folders."""
    from zsad_jax import data, evaluation
    from zsad_jax.evaluation.loading import load_model

    config, method, params, run_dir = load_model(workdir, config, checkpoint, which)
    for key, value in (eval_overrides or {}).items():
        if key not in EVAL_OVERRIDES:
            raise ValueError(f"eval override {key!r} is not one of {EVAL_OVERRIDES}")
        if value is not None:
            config.eval[key] = value
    if batch_size is not None:
        config.data.eval_batch_size = batch_size
    if dataset:
        home = run_dir or pathlib.Path(out or ".")
        eval_sets = {dataset: dataset_records(config, dataset, data_dir, classes, home,
                                              skip_unreadable)}
    else:
        if data_dir or classes:
            raise ValueError("--data_dir and --classes need --dataset")
        _, eval_sets = data.resolve_protocol(config, run_dir or pathlib.Path(out or "."))
    if out:
        out_dirs = {n: pathlib.Path(out) if dataset else pathlib.Path(out) / n for n in eval_sets}
    else:
        out_dirs = {n: (run_dir or pathlib.Path(".")) / "eval" / n for n in eval_sets}
    results = {}
    for name, records in eval_sets.items():
        results[name] = evaluation.evaluate_records(method, params, records, config,
                                                    out_dirs[name], name, progress=progress)
        if progress:
            sys.stdout.write("\n" + evaluation.markdown_table(results[name]) +
                             f"\nwritten to {out_dirs[name]}\n")
    return results


def main(argv) -> None:
    from absl import flags

    from zsad_jax.evaluation import loading

    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]} (see --help)")
    logging.getLogger().setLevel(logging.INFO)
    f = flags.FLAGS
    evaluate_run(workdir=f.workdir, config=loading.config_flag_value(), checkpoint=f.checkpoint,
                 which=f.which, dataset=f.dataset, data_dir=f.data_dir, classes=f.classes, out=f.out,
                 eval_overrides={k: f[k].value for k in EVAL_OVERRIDES},
                 batch_size=f.batch_size, skip_unreadable=f.skip_unreadable, progress=f.progress)


def run() -> None:
    """Console entry point (`zsad-evaluate`)."""
    define_flags()
    config_lib.main_with_config(main)


if __name__ == "__main__":
    run()
