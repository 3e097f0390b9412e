"""Checkpoints of a run directory, and `load_run` for evaluation / prediction.

Layout of a run directory (`--workdir`):

    config.json          the resolved config of the run (written once; resume compares with it)
    checkpoints/<step>/  latest `config.train.keep` train states: trainable params, optimizer
                         state, step, rng (Orbax, atomic: written to a temporary dir, then renamed),
                         the data iterator state and metadata (JSON)
    best/<step>/         the trainable params with the best `config.train.best_metric` so far

Frozen parameters are not saved: they come back from `method.init(PRNGKey(config.seed))` and the
converted weights files, and their sha256 fingerprint, recorded in every checkpoint, is checked on
load (a changed weights file is an error, not a silent mismatch).
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from zsad_jax.training import state as state_lib

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
# Keys whose change never blocks a resume.
RESUME_NEUTRAL_KEYS = ("train.allow_config_change",)


class ConfigMismatchError(RuntimeError):
    """Resuming a run with a config that differs from the saved one."""


# ---- config <-> JSON ------------------------------------------------------------------------
def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON types (tuples -> lists)."""
    return json.loads(json.dumps(config.to_dict(), default=_json_default))


def _json_default(value):
    if isinstance(value, (tuple, set)):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _lists_to_tuples(value):
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


def config_from_dict(data: dict) -> ml_collections.ConfigDict:
    """Inverse of `config_to_dict` (sequences come back as tuples, like in the config files)."""
    return ml_collections.ConfigDict(_lists_to_tuples(data))


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """'key: saved -> current' lines for every differing key (resume-neutral keys ignored)."""
    a, b = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key in RESUME_NEUTRAL_KEYS:
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            lines.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return lines


def write_or_check_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> bool:
    """Writes `config.json` for a new run; for an existing one, refuses a changed config unless
    `config.train.allow_config_change`. Returns True if the run directory already had a config."""
    path = workdir / CONFIG_FILE
    current = config_to_dict(config)
    if path.exists():
        saved = json.loads(path.read_text())
        diff = config_differences(saved, current)
        if diff and not config.train.allow_config_change:
            raise ConfigMismatchError(
                f"{path} holds a run with a different config; resuming would mix two "
                f"experiments. Differences (saved -> now):\n  " + "\n  ".join(diff) +
                "\nUse another --workdir, or pass --config.train.allow_config_change=True to "
                "resume anyway.")
        if diff:
            log.warning("Resuming %s with a changed config:\n  %s", workdir, "\n  ".join(diff))
            if jax.process_index() == 0:
                (workdir / "config.changed.json").write_text(json.dumps(current, indent=2))
        return True
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(current, indent=2))
        tmp.replace(path)
    return False


# ---- managers -------------------------------------------------------------------------------
def _manager(directory: pathlib.Path, options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(directory.absolute(), options=options)


class RunCheckpoints:
    """The latest-N and best checkpoints of one run directory."""

    def __init__(self, workdir: str | pathlib.Path, keep: int = 3, best_metric: str = ""):
        workdir = pathlib.Path(workdir)
        self.best_metric = best_metric
        self.latest = _manager(workdir / "checkpoints", ocp.CheckpointManagerOptions(
            max_to_keep=max(int(keep), 1), enable_async_checkpointing=False, create=True))
        self.best = None
        if best_metric:
            self.best = _manager(workdir / "best", ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda metrics: metrics[best_metric], best_mode="max",
                keep_checkpoints_without_metrics=False, enable_async_checkpointing=False,
                create=True))

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(self, step: int, train_state: dict, data_state: dict, meta: dict) -> None:
        """Saves the full train state (atomic); keeps the newest `keep`."""
        self.latest.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(train_state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)), force=True)
        self.latest.wait_until_finished()

    def restore(self, step: int, target_state: dict) -> tuple[dict, dict, dict]:
        """(train state with the shardings of `target_state`, data state, meta) at `step`."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target_state)
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        return restored.state, restored.data, restored.meta

    def save_best(self, step: int, trainable: dict, metrics: dict, meta: dict) -> None:
        """Offers the params for 'best'; kept only if `metrics[best_metric]` beats the best."""
        if self.best is None or metrics.get(self.best_metric) is None:
            return
        self.best.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(trainable),
            meta=ocp.args.JsonSave({**meta, "metrics": metrics})),
            metrics={k: float(v) for k, v in metrics.items() if v is not None}, force=True)
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        if self.best is not None:
            self.best.close()


# ---- load_run -------------------------------------------------------------------------------
def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a run directory written by "
                                f"`python -m zsad_jax.train --workdir {workdir}`")
    return config_from_dict(json.loads(path.read_text()))


def _find_step(workdir: pathlib.Path, which: str) -> tuple[str, int]:
    if which not in ("best", "latest"):
        raise ValueError(f"which={which!r}: use 'best' or 'latest'")
    if which == "best" and (workdir / "best").is_dir():
        manager = _manager(workdir / "best", ocp.CheckpointManagerOptions(create=False))
        step = manager.latest_step()
        manager.close()
        if step is not None:
            return "best", step
        log.warning("%s has no best checkpoint (no evaluation ran); using the latest", workdir)
    elif which == "best":
        log.warning("%s has no best checkpoint (no evaluation ran); using the latest", workdir)
    manager = _manager(workdir / "checkpoints", ocp.CheckpointManagerOptions(create=False))
    step = manager.latest_step()
    manager.close()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}: the run saved none yet")
    return "checkpoints", step


def load_run(workdir: str | pathlib.Path, which: str = "best") -> tuple[ml_collections.ConfigDict,
                                                                           Any, Any]:
    """(config, method, params) of a trained run; `which` = "best" (falls back to the latest
    checkpoint when no evaluation ran) or "latest". Params are the method's full pytree (frozen
    weights rebuilt by `method.init` and checked against the saved fingerprint)."""
    from zsad_jax import methods

    workdir = pathlib.Path(workdir)
    config = load_config(workdir)
    method = methods.build(config)
    kind, step = _find_step(workdir, which)
    params = method.init(jax.random.PRNGKey(config.seed))
    trainable, frozen, layout = state_lib.split_params(params, method.trainable_mask(params))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = {p: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device)
                for p, v in trainable.items()}
    manager = _manager(workdir / kind, ocp.CheckpointManagerOptions(create=False))
    if kind == "best":
        restored = manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        trainable = restored.params
    else:
        from zsad_jax.training import optimizer as optimizer_lib

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
    log.info("Loaded %s checkpoint step %d of %s", kind, step, workdir)
    return config, method, state_lib.merge_params(trainable, frozen, layout)
