r"""Evaluate a trained run (or a config) on one or all of its evaluation datasets.

    python -m zsad_jax.evaluate --workdir runs/demo
    python -m zsad_jax.evaluate --workdir runs/sgnet --dataset visa --data_dir /data
    python -m zsad_jax.evaluate --config sgnet.py --checkpoint runs/sgnet --dataset mvtec \
        --data_dir /data --resolution native --out results/sgnet_native

Writes, per dataset, into RUN/eval/step_<N>/<dataset>/ (N: the evaluated checkpoint's step; with
eval settings other than the run's, RUN/eval/step_<N>_<config sha256[:8]>/; or <out>/<dataset>):
metrics.json (per class + mean; the checkpoint, the config's sha256, the resolution and smoothing
recorded), metrics.csv, table.md (paper-style, %), report.html and heatmaps/<class>/*.png.
Results of another checkpoint or another config are never replaced (`--overwrite` to replace
them). Bad flags exit 2 with one line, before any model is loaded.
Python: `evaluate_run(workdir=..., dataset=..., ...)` does the same and returns the results.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Mapping, Sequence

from zsad_jax import cli_logging, config_lib, data, runs
from zsad_jax.backbones.io import CorruptWeightsError
from zsad_jax.evaluation import Evaluator, ResultsExistError, markdown_table, results_folder

EVAL_OVERRIDES = ("smoothing_sigma", "resolution", "num_heatmaps", "max_images")


class UsageError(ValueError):
    """A flag value that cannot be used; exit code 2."""


def define_flags() -> None:
    """Defines the CLI flags (at run time, so importing this module defines no absl flags)."""
    from absl import flags

    if "dataset" in flags.FLAGS:
        return
    runs.define_model_flags()
    for name in runs.MODEL_FLAGS:       # listed by --help with this module's own flags
        flags.declare_key_flag(name)
    flags.DEFINE_string("dataset", None, "Dataset name (one of zsad_jax.data.DATASETS). Default: "
                        "every evaluation dataset of the config's protocol (data.protocol).")
    flags.DEFINE_string("data_dir", None, "With --dataset: the folder holding <dataset>/, or the "
                        "dataset's root itself. Default: config.data.roots.<dataset>, else "
                        "config.data.data_dir/<dataset>.")
    flags.DEFINE_list("classes", None, "With --dataset: only these classes (comma-separated).")
    flags.DEFINE_string("out", None, "Output folder; each dataset goes to <out>/<dataset>. "
                        "Default: <workdir>/eval/step_<N>/<dataset> (with --config and no run: "
                        "./eval/init/<dataset>).")
    flags.DEFINE_bool("overwrite", False, "Replace results of another checkpoint or config in the "
                      "output folder.")
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


def check_flags(workdir, config, dataset, data_dir, classes, out, eval_overrides, batch_size,
                which) -> None:
    """Every flag value checked before anything is loaded (UsageError naming the flag)."""
    if dataset is not None and dataset not in data.DATASETS:
        import difflib

        close = difflib.get_close_matches(dataset, list(data.DATASETS), n=3)
        raise UsageError(f"--dataset {dataset!r} is not a dataset"
                         + (f" (did you mean {', '.join(close)}?)" if close else "")
                         + f"; known: {', '.join(data.DATASETS)}")
    if (data_dir or classes) and not dataset:
        raise UsageError("--data_dir and --classes need --dataset")
    if data_dir and not pathlib.Path(data_dir).expanduser().is_dir():
        raise UsageError(f"--data_dir {data_dir}: no such folder")
    if out and pathlib.Path(out).exists() and not pathlib.Path(out).is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    if batch_size is not None and batch_size <= 0:
        raise UsageError(f"--batch_size {batch_size}: expected a positive integer")
    for key in ("smoothing_sigma", "num_heatmaps", "max_images"):
        value = (eval_overrides or {}).get(key)
        if value is not None and value < 0:
            raise UsageError(f"--{key} {value}: expected >= 0")
    if workdir:
        run_dir, which_from_path = runs.run_dir_of(workdir)
        kind = {"best": "best", "latest": "checkpoints"}[which_from_path or which]
        if not any(p.name.isdigit() for p in (run_dir / kind).glob("*")):
            raise UsageError(f"{run_dir} has no {'best ' if kind == 'best' else ''}checkpoint yet: "
                             f"nothing to evaluate")
    elif config is None:
        raise UsageError("nothing to evaluate: give --workdir RUN, or --config FILE[:variant] "
                         "(with --checkpoint RUN for trained parameters)")


def evaluate_run(workdir: str | None = None, config=None, checkpoint: str | None = None,
                 which: str = "latest", dataset: str | None = None, data_dir: str | None = None,
                 classes: Sequence[str] | None = None, out: str | None = None,
                 eval_overrides: Mapping | None = None, batch_size: int | None = None,
                 skip_unreadable: bool = False, progress: bool = True,
                 overwrite: bool = False) -> dict[str, dict]:
    """The CLI as a function: {dataset: metrics.json content}; writes the result folders."""
    check_flags(workdir, config, dataset, data_dir, classes, out, eval_overrides, batch_size, which)
    run = runs.load_model(workdir, config, checkpoint, which)
    own = config_lib.config_sha256(run.config)
    config = run.config.copy_and_resolve_references()
    for key, value in (eval_overrides or {}).items():
        if key not in EVAL_OVERRIDES:
            raise UsageError(f"eval override {key!r} is not one of {EVAL_OVERRIDES}")
        if value is not None:
            config.eval[key] = value
    if batch_size is not None:
        config.data.eval_batch_size = batch_size
    if skip_unreadable:
        config.data.skip_unreadable = True
    home = pathlib.Path(run.checkpoint.run_dir or out or ".")
    if dataset:
        root = None
        if data_dir:
            root = pathlib.Path(data_dir).expanduser()
            root = root / dataset if (root / dataset).is_dir() else root
        record_sets = {dataset: data.load_dataset(config, dataset, home, classes=classes,
                                                  root=root)}
    else:
        _, record_sets = data.resolve_protocol(config, home)
    # Settings other than the run's own get their own folder (the run's results stay).
    sha = config_lib.config_sha256(config)
    tag = "" if sha == own or run.checkpoint.run_dir is None else sha[:8]
    evaluator = Evaluator(config, progress=progress, overwrite=overwrite, tag=tag)
    out_root = pathlib.Path(out) if out else home / "eval"
    results = evaluator(run.method, run.params, record_sets, out_root, run.checkpoint,
                        flat=bool(out))
    folder = out_root if out else results_folder(out_root, run.checkpoint, tag)
    for name in results:
        sys.stdout.write("\n" + markdown_table(results[name]) +
                         f"written to {folder / name} (table.md, report.html)\n")
    return results


def main(argv) -> None:
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]} (see --help)")
    cli_logging.plain_logs()
    f = flags.FLAGS
    try:
        evaluate_run(workdir=f.workdir, config=runs.config_flag_value(), checkpoint=f.checkpoint,
                     which=f.which, dataset=f.dataset, data_dir=f.data_dir, classes=f.classes,
                     out=f.out, eval_overrides={k: f[k].value for k in EVAL_OVERRIDES},
                     batch_size=f.batch_size, skip_unreadable=f.skip_unreadable,
                     progress=f.progress, overwrite=f.overwrite)
    except (UsageError, FileNotFoundError, data.DatasetError, config_lib.ConfigError,
            ResultsExistError, CorruptWeightsError) as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2) from None


def run() -> None:
    """Console entry point (`zsad-evaluate`)."""
    define_flags()
    config_lib.main_with_config(main)


if __name__ == "__main__":
    run()
