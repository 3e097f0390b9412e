"""Run logs: JSON lines (`<workdir>/metrics.jsonl`) and TensorBoard events (`<workdir>/tb/`).

Only process 0 writes. Each JSON line is one record: {"step": int, "time": unix seconds,
"kind": "train" | "eval", ...scalars}; eval scalars are named "<dataset>/<metric>".
"""

from __future__ import annotations

import json
import math
import pathlib
import time


class MetricsWriter:
    def __init__(self, workdir: pathlib.Path, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        self._file = None
        if not enabled:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        self._file = (workdir / "metrics.jsonl").open("a", buffering=1)
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(workdir / "tb"))

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
