"""Trained runs, for evaluation and prediction: which checkpoint, its parameters, its provenance.

    run = runs.load_run("runs/sgnet")                 # the last checkpoint (default)
    run.config, run.method, run.params, run.checkpoint.step

`load_model` is what the evaluate / predict CLIs load, from their flags:

* `--workdir RUN`: the run's saved config and its last checkpoint (`--which best`: the checkpoint
  `train.best_metric` selected on `train.best_on`, never on an evaluation target);
* `--config FILE[:variant] --checkpoint RUN`: the trained parameters of RUN, evaluated under the
  given config (e.g. other eval settings); the method must be the same;
* `--config FILE` alone: the method's freshly initialized parameters (frozen backbones loaded,
  trainable part untrained), with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp

from zsad_jax import methods
from zsad_jax.evaluation import results_folder
from zsad_jax.training import checkpoint as checkpoint_lib
from zsad_jax.training import optimizer as optimizer_lib
from zsad_jax.training import state as state_lib

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIRS = {"best": "best", "checkpoints": "latest"}
MODEL_FLAGS = ("config", "workdir", "which", "checkpoint")
WHICH = ("latest", "best")


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """Which parameters these are: the run directory, the checkpoint folder kind and its step
    (None: untrained parameters, `method.init`)."""

    run_dir: str | None
    kind: str                      # "checkpoints" (the latest N) | "best" | "init"
    step: int | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class LoadedRun(NamedTuple):
    config: ml_collections.ConfigDict
    method: Any
    params: Any                    # the method's full pytree (frozen weights rebuilt and checked)
    checkpoint: CheckpointInfo


def _find_step(workdir: pathlib.Path, which: str) -> tuple[str, int]:
    if which not in WHICH:
        raise ValueError(f"which={which!r}: use one of {', '.join(WHICH)}")
    if which == "best":
        folder = workdir / "best"
        step = None
        if folder.is_dir():
            manager = checkpoint_lib.manager(folder)
            step = manager.latest_step()
            manager.close()
        if step is None:
            raise FileNotFoundError(f"{workdir} has no best checkpoint (it needs "
                                    f"config.train.best_metric and best_on); use --which latest")
        log.warning("using the 'best' checkpoint (step %d) of %s: selected by config.train."
                    "best_metric on config.train.best_on, not on an evaluation target", step, workdir)
        return "best", step
    manager = checkpoint_lib.manager(workdir / "checkpoints")
    step = manager.latest_step()
    manager.close()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}: the run saved none yet")
    return "checkpoints", step


def load_run(workdir: str | pathlib.Path, which: str = "latest") -> LoadedRun:
    """The config, method, parameters and checkpoint of a trained run (see the module docstring).

    Params are the method's full pytree: the frozen weights are rebuilt by `method.init` and
    checked against the fingerprint saved with the checkpoint.
    """
    workdir = pathlib.Path(workdir)
    if not (workdir / checkpoint_lib.CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{workdir} is not a training run: no {checkpoint_lib.CONFIG_FILE} "
                                f"(a directory written by `python -m zsad_jax.train --workdir DIR`)")
    kind, step = _find_step(workdir, which)
    config = checkpoint_lib.load_config(workdir)
    method = methods.build(config)
    params = method.init(jax.random.PRNGKey(config.seed))
    trainable, frozen, layout = state_lib.split_params(params, method.trainable_mask(params))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    manager = checkpoint_lib.manager(workdir / kind)
    if kind == "best":
        abstract = {p: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device)
                    for p, v in trainable.items()}
        restored = manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        trainable = restored.params
    else:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        tx, _ = optimizer_lib.make_optimizer(config.optim, layout.trainable_paths, 1)
        target = jax.eval_shape(lambda t: state_lib.init_state(
            t, tx, jax.random.PRNGKey(0), tuple(meta["loss_terms"])), trainable)
        target = jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), target)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        trainable = restored.state["params"]
    meta = restored.meta
    manager.close()
    expected = meta.get("frozen_fingerprint")
    if expected and expected != state_lib.fingerprint(frozen):
        raise ValueError(
            f"the frozen weights rebuilt for {workdir} differ from those the run trained with "
            f"(fingerprint mismatch): check config.backbones.*.weights "
            f"({', '.join(bb.weights or '<random init>' for bb in config.backbones.values())})")
    log.info("loaded %s step %d of %s", kind, step, workdir)
    return LoadedRun(config, method, state_lib.merge_params(trainable, frozen, layout),
                     CheckpointInfo(str(workdir), kind, int(step)))


def run_dir_of(path: str | pathlib.Path) -> tuple[pathlib.Path, str | None]:
    """A run directory, or its best/ or checkpoints/ folder -> (run directory, which or None)."""
    path = pathlib.Path(path).expanduser()
    if (path / checkpoint_lib.CONFIG_FILE).is_file():
        return path, None
    if path.name in CHECKPOINT_SUBDIRS and (path.parent / checkpoint_lib.CONFIG_FILE).is_file():
        return path.parent, CHECKPOINT_SUBDIRS[path.name]
    raise FileNotFoundError(
        f"{path} is not a training run: expected {path / checkpoint_lib.CONFIG_FILE} (a directory "
        "written by `python -m zsad_jax.train --workdir DIR`), or its best/ or checkpoints/ folder")


def load_model(workdir: str | None, config=None, checkpoint: str | None = None,
               which: str = "latest") -> LoadedRun:
    """The model an evaluate / predict command asked for (see the module docstring)."""
    if workdir and config is not None:
        raise ValueError("give either --workdir RUN or --config FILE [--checkpoint RUN], not both")
    if workdir:
        run_dir, which_from_path = run_dir_of(workdir)
        return load_run(run_dir, which=which_from_path or which)
    if config is None:
        raise ValueError("nothing to evaluate: give --workdir RUN, or --config FILE[:variant] "
                         "(with --checkpoint RUN for trained parameters)")
    method = methods.build(config)
    if checkpoint:
        run_dir, which_from_path = run_dir_of(checkpoint)
        run = load_run(run_dir, which=which_from_path or which)
        if run.config.method != config.method:
            raise ValueError(f"--checkpoint {checkpoint} holds a {run.config.method!r} model but "
                             f"--config is for {config.method!r}")
        return LoadedRun(config, method, run.params, run.checkpoint)
    log.warning("no --checkpoint: evaluating the untrained parameters of %s (method.init)",
                config.method)
    return LoadedRun(config, method, method.init(jax.random.PRNGKey(config.seed)),
                     CheckpointInfo(None, "init", None))


# ---- the flags of the commands that load a model ----------------------------------------------
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
    flags.DEFINE_enum("which", "latest", list(WHICH),
                      "Checkpoint of the run: 'latest' (the last one saved; the zero-shot "
                      "protocol's) or 'best' (selected by config.train.best_metric on "
                      "config.train.best_on, never on a target).")
    flags.DEFINE_string("checkpoint", None, "With --config: the run directory (or its best/ or "
                        "checkpoints/ folder) whose trained parameters are used. Without it, "
                        "--config uses untrained parameters.")


def config_flag_value():
    """The config given by --config (None if absent)."""
    return _CONFIG_FLAG.value


def model_from_flags() -> LoadedRun:
    """`load_model` with the values of the flags `define_model_flags` defined."""
    from absl import flags

    f = flags.FLAGS
    return load_model(f.workdir, _CONFIG_FLAG.value, f.checkpoint, f.which)


def final_results(run_dir: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """{dataset: metrics.json} of the last checkpoint of a finished training ({} if unfinished):
    the training's own final evaluation, and any dataset evaluated later for that checkpoint."""
    step = checkpoint_lib.final_step(run_dir)
    if step is None:
        return {}
    folder = results_folder(pathlib.Path(run_dir) / checkpoint_lib.EVAL_DIR,
                            CheckpointInfo(str(run_dir), "checkpoints", step))
    return {p.parent.name: p for p in sorted(folder.glob("*/metrics.json"))}
