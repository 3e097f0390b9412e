"""What the evaluate / predict CLIs evaluate: (config, method, params) from a run or a config.

* `--workdir RUN`: the run's saved config and its best (or latest) checkpoint (`load_run`).
* `--config FILE[:variant] --checkpoint RUN`: the trained parameters of RUN, evaluated under the
  given config (e.g. other eval settings); the method must be the same.
* `--config FILE` alone: the method's freshly initialized parameters (frozen backbones loaded,
  trainable part untrained), with a warning.
"""

from __future__ import annotations

import logging
import pathlib

import jax

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIRS = {"best": "best", "checkpoints": "latest"}
MODEL_FLAGS = ("config", "workdir", "which", "checkpoint")
_CONFIG_FLAG = None


def define_model_flags() -> None:
    """--config, --workdir, --which, --checkpoint: the flags of the CLIs that load a model."""
    global _CONFIG_FLAG
    from absl import flags
    from ml_collections import config_flags

    _CONFIG_FLAG = config_flags.DEFINE_config_file(
        "config", None, "Config file FILE[:variant] (e.g. sgnet.py:demo; bare names are looked "
        "up in configs/), with --config.key=value overrides. Alternative to --workdir.",
        lock_config=True)
    flags.DEFINE_string("workdir", None, "Training run directory (its config.json + "
                        "checkpoints).")
    flags.DEFINE_enum("which", "best", ["best", "latest"],
                      "Checkpoint of the run: 'best' (by config.train.best_metric; the latest if "
                      "no evaluation ran) or 'latest'.")
    flags.DEFINE_string("checkpoint", None, "With --config: the run directory (or its best/ or "
                        "checkpoints/ folder) whose trained parameters are used. Without it, "
                        "--config uses untrained parameters.")


def config_flag_value():
    """The config given by --config (None if absent)."""
    return _CONFIG_FLAG.value


def model_from_flags():
    """`load_model` with the values of the flags `define_model_flags` defined."""
    from absl import flags

    f = flags.FLAGS
    return load_model(f.workdir, _CONFIG_FLAG.value, f.checkpoint, f.which)


def run_dir_of(path: str | pathlib.Path) -> tuple[pathlib.Path, str | None]:
    """A run directory, or its best/ or checkpoints/ folder -> (run directory, which or None)."""
    from zsad_jax.training.checkpoint import CONFIG_FILE

    path = pathlib.Path(path).expanduser()
    if (path / CONFIG_FILE).is_file():
        return path, None
    if path.name in CHECKPOINT_SUBDIRS and (path.parent / CONFIG_FILE).is_file():
        return path.parent, CHECKPOINT_SUBDIRS[path.name]
    raise FileNotFoundError(
        f"{path} is not a training run: expected {path / CONFIG_FILE} (a directory written by "
        "`python -m zsad_jax.train --workdir DIR`), or its best/ or checkpoints/ folder")


def load_model(workdir: str | None, config=None, checkpoint: str | None = None,
               which: str = "best"):
    """(config, method, params, run_dir or None); see the module docstring for the three cases."""
    from zsad_jax import methods
    from zsad_jax.training.checkpoint import load_run

    if workdir and config is not None:
        raise ValueError("give either --workdir RUN or --config FILE [--checkpoint RUN], not both")
    if workdir:
        run_dir, which_from_path = run_dir_of(workdir)
        config, method, params = load_run(run_dir, which=which_from_path or which)
        return config, method, params, run_dir
    if config is None:
        raise ValueError("nothing to evaluate: give --workdir RUN, or --config FILE[:variant] "
                         "(with --checkpoint RUN for trained parameters)")
    method = methods.build(config)
    if checkpoint:
        run_dir, which_from_path = run_dir_of(checkpoint)
        run_config, _, params = load_run(run_dir, which=which_from_path or which)
        if run_config.method != config.method:
            raise ValueError(f"--checkpoint {checkpoint} holds a {run_config.method!r} model but "
                             f"--config is for {config.method!r}")
        return config, method, params, run_dir
    log.warning("no --checkpoint: evaluating the untrained parameters of %s (method.init)",
                config.method)
    return config, method, method.init(jax.random.PRNGKey(config.seed)), None
