"""Run logs: JSON lines (`<workdir>/metrics.jsonl`) and TensorBoard events (`<workdir>/tb/`).

Only process 0 writes. Each JSON line is one record: {"step": int, "time": unix seconds,
"kind": "train" | "eval", ...scalars}; eval scalars are named "<dataset>/<metric>".

A resumed run (`resume_step`) first trims both logs to what its checkpoint holds: JSON lines of
later steps are dropped (an eval line is written after its results, so an evaluation that runs
again on resume has none); TensorBoard purges its events from `resume_step + 1` on. A crash after
a log line therefore never leaves duplicated steps.
"""

from __future__ import annotations

import json
import math
import pathlib
import time

from tensorboardX import SummaryWriter


class MetricsWriter:
    FILE = "metrics.jsonl"

    def __init__(self, workdir: pathlib.Path, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self._tb = None
        self._file = None
        if not enabled:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / self.FILE
        if path.exists():
            trim(path, resume_step)
        self._file = path.open("a", buffering=1)
        self._tb = SummaryWriter(str(workdir / "tb"), purge_step=resume_step + 1)

    def write(self, step: int, scalars: dict, kind: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: (None if v is None or (isinstance(v, float) and not math.isfinite(v))
                     else float(v)) for k, v in scalars.items()}
        self._file.write(json.dumps({"step": int(step), "time": time.time(), "kind": kind,
                                     **clean}) + "\n")
        for name, value in clean.items():
            if value is not None:
                self._tb.add_scalar(f"{kind}/{name}", value, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def trim(path: pathlib.Path, step: int) -> int:
    """Keeps the records of `path` up to step `step`; returns how many were dropped. The file is
    replaced atomically."""
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            keep = record["step"] <= step
        except (json.JSONDecodeError, KeyError, TypeError):
            keep = False                      # a line cut by a crash
        kept += [line] if keep else []
        dropped += not keep
    if dropped:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        tmp.replace(path)
    return dropped
