r"""Evaluate a trained run (or a config) on one or all of its evaluation datasets.

    python -m zsad_jax.evaluate --workdir runs/demo
    python -m zsad_jax.evaluate --workdir runs/sgnet --dataset visa --data_dir /data
    python -m zsad_jax.evaluate --config sgnet.py --checkpoint runs/sgnet --dataset mvtec \
        --data_dir /data --resolution native

Writes into RUN/eval/<dataset>/ (or --out): metrics.json (per class + mean; resolution and
smoothing stated), metrics.csv, table.md (paper-style, %) and heatmaps/<class>/*.png.
"""

from __future__ import annotations

import logging
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

from zsad_jax import config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file FILE[:variant] (e.g. sgnet.py:demo; bare names are looked up in "
    "configs/), with --config.key=value overrides. Alternative to --workdir.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Training run directory (its config.json + checkpoints).")
flags.DEFINE_enum("which", "best", ["best", "latest"],
                  "Checkpoint of the run: 'best' (by config.train.best_metric; falls back to the "
                  "latest if no evaluation ran) or 'latest'.")
flags.DEFINE_string("checkpoint", None, "With --config: the run directory (or its best/ or "
                    "checkpoints/ folder) whose trained parameters are evaluated. Without it, "
                    "--config evaluates the untrained parameters.")
flags.DEFINE_string("dataset", None, "Dataset name (see zsad_jax.data.DATASETS). Default: every "
                    "evaluation dataset of the config's protocol (config.data.protocol).")
flags.DEFINE_string("data_dir", None, "With --dataset: the folder holding <dataset>/, or the "
                    "dataset's root itself. Default: config.data.roots.<dataset> or "
                    "config.data.data_dir/<dataset>.")
flags.DEFINE_list("classes", None, "With --dataset: only these classes (comma-separated).")
flags.DEFINE_string("out", None, "Output folder. Default: RUN/eval/<dataset> (with --config and "
                    "no run: ./eval/<dataset>). With several datasets: <out>/<dataset>.")
flags.DEFINE_float("smoothing_sigma", None, "Override config.eval.smoothing_sigma (Gaussian "
                   "smoothing of the maps in input pixels; 0 = off; default 4).")
flags.DEFINE_enum("resolution", None, ["input", "native"], "Override config.eval.resolution: "
                  "'input' (maps and masks at the method's map size) or 'native' (maps resized to "
                  "each image's original size, masks as stored).")
flags.DEFINE_integer("num_heatmaps", None, "Override config.eval.num_heatmaps (PNGs per class).")
flags.DEFINE_integer("max_images", None, "Override config.eval.max_images (> 0: at most that many "
                     "images per class, evenly spaced).")
flags.DEFINE_integer("batch_size", None, "Override config.data.eval_batch_size (global; rounded "
                     "up to a multiple of the device count).")
flags.DEFINE_bool("skip_unreadable", False, "Skip unreadable dataset images (with a warning and "
                  "a count) instead of stopping.")

FLAGS = flags.FLAGS


def apply_overrides(config) -> None:
    """The --smoothing_sigma/--resolution/... flags into config.eval / config.data."""
    for key in ("smoothing_sigma", "resolution", "num_heatmaps", "max_images"):
        if FLAGS[key].value is not None:
            config.eval[key] = FLAGS[key].value
    if FLAGS.batch_size is not None:
        config.data.eval_batch_size = FLAGS.batch_size


def dataset_records(config, name: str, data_dir: str | None, classes, workdir, skip_unreadable):
    """Records of the test split of dataset `name` (see --data_dir for where it is looked up)."""
    from zsad_jax import data

    if data_dir:
        root = pathlib.Path(data_dir).expanduser()
        if (root / name).is_dir():
            root = root / name
    else:
        root = data.dataset_root(config, name, workdir or ".")
    return data.load_index(name, root, split="test", classes=classes,
                           skip_unreadable=skip_unreadable or config.data.skip_unreadable)


def main(argv) -> None:
    del argv
    from zsad_jax import data, evaluation
    from zsad_jax.evaluation.loading import load_model

    logging.getLogger().setLevel(logging.INFO)
    config, method, params, run_dir = load_model(FLAGS.workdir, _CONFIG.value,
                                                 FLAGS.checkpoint, FLAGS.which)
    apply_overrides(config)
    workdir = run_dir or pathlib.Path(FLAGS.out or ".")
    if FLAGS.dataset:
        eval_sets = {FLAGS.dataset: dataset_records(config, FLAGS.dataset, FLAGS.data_dir,
                                                    FLAGS.classes, workdir,
                                                    FLAGS.skip_unreadable)}
    else:
        if FLAGS.data_dir or FLAGS.classes:
            raise SystemExit("error: --data_dir and --classes need --dataset")
        _, eval_sets = data.resolve_protocol(config, workdir)
    if FLAGS.out:
        out = pathlib.Path(FLAGS.out)
        out_dirs = ({n: out for n in eval_sets} if FLAGS.dataset
                    else {n: out / n for n in eval_sets})
    else:
        base = (run_dir or pathlib.Path(".")) / "eval"
        out_dirs = {n: base / n for n in eval_sets}
    for name, records in eval_sets.items():
        result = evaluation.evaluate_records(method, params, records, config, out_dirs[name], name)
        sys.stdout.write("\n" + evaluation.markdown_table(result) +
                         f"\nwritten to {out_dirs[name]}\n")


def run() -> None:
    """Console entry point (`zsad-evaluate`)."""
    config_lib.main_with_config(main)


if __name__ == "__main__":
    run()
