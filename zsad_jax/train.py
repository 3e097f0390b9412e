"""Train a method: `python -m zsad_jax.train --config sgnet.py[:variant] [--config.k=v ...]
[--workdir DIR]`.

An existing `--workdir` resumes from its latest checkpoint (refused if the config differs, unless
`--config.train.allow_config_change=True`). Multi-host: started automatically on TPU pods / SLURM;
elsewhere pass --coordinator_address, --num_processes and --process_id to every process.
Exit codes: 0 done, 1 non-finite loss (message names step and term), 2 bad config / missing inputs
/ a run directory held by another training.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from zsad_jax import cli_logging, config_lib, devices
from zsad_jax.backbones.io import CorruptWeightsError
from zsad_jax.evaluation import Evaluator, ResultsExistError, markdown_table, results_folder
from zsad_jax.training import checkpoint, loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", None,
    "Config file and variant, e.g. sgnet.py:demo (bare names are looked up in configs/). "
    "Override any key with --config.section.key=value, e.g. --config.optim.lr=1e-4.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", "", "Run directory: checkpoints, metrics.jsonl, tb/, eval/ and config.json go here. "
    "An existing run directory is resumed. Default: runs/<config name>[_<variant>].")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "jax.distributed coordinator host:port (multi-process runs; same "
    "value on every process). Not needed on TPU pods / SLURM (auto-detected).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", 0, "Number of processes of a multi-process run (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", -1, "This process's index in [0, num_processes) (with --coordinator_address).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with auto-detection even when no "
    "pod/SLURM/MPI variable is seen (e.g. a TPU VM pod whose workers lack TPU_WORKER_HOSTNAMES).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show the progress bar (loss, images/s, ETA).")

flags.mark_flag_as_required("config")


def _default_workdir(argv_config: str) -> str:
    import pathlib

    path, arg = config_lib.split_spec(argv_config)
    name = pathlib.Path(path).stem + (f"_{arg}" if arg else "")
    return str(pathlib.Path("runs") / name)


def run_training(config, workdir, *, progress: bool = True, stop_at_step: int | None = None):
    """Trains `config` in `workdir` with the evaluation of its protocol's targets injected
    (`zsad_jax.evaluation.Evaluator`); the train CLI without the command line."""
    return loop.train(config, workdir, evaluator=Evaluator(config, progress=progress),
                      progress=progress, stop_at_step=stop_at_step)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli_logging.plain_logs()
    devices.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                   force=_DISTRIBUTED.value)
    config = _CONFIG.value
    workdir = _WORKDIR.value or _default_workdir(flags.FLAGS["config"].config_filename)
    try:
        result = run_training(config, workdir, progress=_PROGRESS.value)
    except (loop.MissingInputsError, checkpoint.ConfigMismatchError, checkpoint.RunLockedError,
            config_lib.ConfigError, ResultsExistError, CorruptWeightsError) as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2) from None
    except loop.NonFiniteError as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(1) from None
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.final_metrics.items())
    print(f"done: {result.step}/{result.total_steps} steps in {result.workdir} ({summary})")
    folder = results_folder(result.workdir / checkpoint.EVAL_DIR, loop.Checkpoint(
        str(result.workdir), "checkpoints", result.step))
    for dataset, metrics in result.eval_metrics.items():
        print("\n" + markdown_table(metrics) + f"written to {folder / dataset} (table.md, "
              f"report.html)")


def run() -> None:
    """Console-script entry point (`zsad-train`)."""
    config_lib.main_with_config(main)


if __name__ == "__main__":
    run()
