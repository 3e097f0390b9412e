"""A run directory: its config, its checkpoints (Orbax), its lock.

Layout of a run directory (`--workdir`):

    config.json          the resolved config of the run (written once; resume compares with it)
    checkpoints/<step>/  latest `config.train.keep` train states: trainable params, optimizer
                         state, step, rng (Orbax, atomic: written to a temporary dir, then renamed),
                         the data iterator state and metadata (JSON)
    best/<step>/         the trainable params with the best `config.train.best_metric` so far
    .lock                the training that holds the directory (pid and host inside)
    final.json           {"step": N}, written when the training has run all its steps
    eval/                the evaluation results, one folder per checkpoint (zsad_jax.evaluation)

Frozen parameters are not saved: they come back from `method.init(PRNGKey(config.seed))` and the
converted weights files, and their sha256 fingerprint, recorded in every checkpoint, is checked on
load (a changed weights file is an error, not a silent mismatch). `zsad_jax.runs.load_run` gives
a trained run back for evaluation and prediction.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pathlib
import socket

import jax
import ml_collections
import orbax.checkpoint as ocp

from zsad_jax.config_lib import config_from_dict, config_to_dict

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
FINAL_FILE = "final.json"
EVAL_DIR = "eval"
# Keys whose change never blocks a resume.
RESUME_NEUTRAL_KEYS = ("train.allow_config_change",)


class ConfigMismatchError(RuntimeError):
    """Resuming a run with a config that differs from the saved one."""


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


def write_or_check_config(workdir: pathlib.Path, config: ml_collections.ConfigDict,
                          has_checkpoint: bool) -> bool:
    """Writes `config.json`; for a run with a checkpoint, refuses a changed config unless
    `config.train.allow_config_change` (a run that never saved a checkpoint trained nothing: its
    config is replaced). Returns True if a saved config was kept (a resume)."""
    path = workdir / CONFIG_FILE
    current = config_to_dict(config)
    if path.exists() and has_checkpoint:
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
    if path.exists() and config_differences(json.loads(path.read_text()), current):
        log.info("%s: no checkpoint was saved under the old config; it is replaced", path)
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


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a run directory written by "
                                f"`python -m zsad_jax.train --workdir {workdir}`")
    return config_from_dict(json.loads(path.read_text()))


def manager(directory: pathlib.Path) -> ocp.CheckpointManager:
    """A read-only manager of an existing checkpoint folder (checkpoints/ or best/)."""
    return _manager(directory, ocp.CheckpointManagerOptions(create=False))


class RunLockedError(RuntimeError):
    """Another training holds the run directory."""


class RunLock:
    """An exclusive lock on a run directory for one training (process 0 of a run takes it).

    `fcntl.flock` on `<workdir>/.lock`, which holds the holder's pid and host: a second training
    of the same directory is refused at once, naming them. The OS releases the lock when the
    holder exits, however it exits (kill -9 included).
    """

    def __init__(self, workdir: pathlib.Path):
        self.path = pathlib.Path(workdir) / ".lock"
        self._fd = None

    def __enter__(self) -> RunLock:
        if jax.process_index() != 0:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(f"{self.path.parent} is being trained by another process ({holder}); "
                                 f"wait for it to end, or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def mark_final(workdir: pathlib.Path, step: int) -> None:
    """Records that the training ran all its steps (the last checkpoint is `step`)."""
    if jax.process_index() == 0:
        tmp = workdir / (FINAL_FILE + ".tmp")
        tmp.write_text(json.dumps({"step": int(step)}) + "\n")
        tmp.replace(workdir / FINAL_FILE)


def final_step(workdir: str | pathlib.Path) -> int | None:
    """The last step of a finished training, None while it is unfinished."""
    path = pathlib.Path(workdir) / FINAL_FILE
    return int(json.loads(path.read_text())["step"]) if path.is_file() else None
