"""Progress of a training: compilation as its own phase, then a bar (or plain lines in logs).

The first step includes compiling the step function (seconds to minutes); an ETA that counts it
is meaningless, so the bar starts after it. In a terminal it is a tqdm bar; when stderr is not a
terminal (a log file, a batch job) it prints a plain line every ~5% of the run instead, without
the carriage returns and escape codes of a bar.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


class Progress:
    def __init__(self, total: int, initial: int, *, enabled: bool = True, desc: str = "train"):
        self.total, self.initial, self.enabled, self.desc = total, initial, enabled, desc
        self.tty = sys.stderr.isatty()
        self._bar = None
        self._started = time.perf_counter()
        self._first_done = None
        self._fields: dict[str, float] = {}
        self._next_line = 0
        if enabled and initial < total:
            log.info("compiling the %s step (the first step includes it) ...", desc)

    def update(self, step: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._first_done is None:
            self._first_done = now
            log.info("compiled and ran the first %s step in %.1f s", self.desc, now - self._started)
            if self.tty:
                from tqdm import tqdm

                self._bar = tqdm(total=self.total, initial=step, desc=self.desc, dynamic_ncols=True,
                                 mininterval=1.0)
            self._next_line = step
            return
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
        elif step >= self._next_line or step == self.total:
            self._next_line = step + max(self.total // 20, 1)
            done = step - self.initial - 1
            eta = (now - self._first_done) / max(done, 1) * (self.total - step)
            extra = "".join(f", {k} {v:.4g}" for k, v in self._fields.items())
            log.info("%s step %d/%d (%d%%)%s, ETA %s", self.desc, step, self.total,
                     100 * step // max(self.total, 1), extra, _clock(eta))

    def postfix(self, **fields: float) -> None:
        self._fields = fields
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in fields.items()}, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
