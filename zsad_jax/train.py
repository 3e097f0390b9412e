"""Train a method: `python -m zsad_jax.train --config sgnet.py[:variant] [--config.k=v ...]
[--workdir DIR]`.

An existing `--workdir` resumes from its latest checkpoint (refused if the config differs, unless
`--config.train.allow_config_change=True`). Multi-host: started automatically on TPU pods / SLURM;
elsewhere pass --coordinator_address, --num_processes and --process_id to every process.
Exit codes: 0 done, 1 non-finite loss (message names step and term), 2 bad config / missing inputs.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from zsad_jax import config_lib

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


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.getLogger().setLevel(logging.INFO)
    for noisy in ("absl", "jax._src.xla_bridge"):   # Orbax's per-save INFO lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from zsad_jax.training import sharding

    sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                    force=_DISTRIBUTED.value)
    from zsad_jax.training import checkpoint, loop

    config = _CONFIG.value
    workdir = _WORKDIR.value or _default_workdir(flags.FLAGS["config"].config_filename)
    try:
        result = loop.train(config, workdir, progress=_PROGRESS.value)
    except (loop.MissingInputsError, checkpoint.ConfigMismatchError, config_lib.ConfigError) as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2) from None
    except loop.NonFiniteError as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(1) from None
    summary = ", ".join(f"{k}={v:.4f}" for k, v in result.final_metrics.items())
    print(f"done: {result.step}/{result.total_steps} steps in {result.workdir} ({summary})")
    for dataset, metrics in result.eval_metrics.items():
        mean = metrics.get("mean", {})
        print(f"  {dataset}: " + ", ".join(f"{k}={'n/a' if v is None else f'{v:.4f}'}"
                                           for k, v in mean.items()))


def run() -> None:
    """Console-script entry point (`zsad-train`)."""
    config_lib.main_with_config(main)


if __name__ == "__main__":
    run()
