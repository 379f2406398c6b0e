"""The regression farm's live progress: jobs done / failed / running out of the total.

On a terminal a tqdm bar (redrawn in place on stderr); elsewhere (CI logs, pytest) a log
line at most every `every` seconds and at the end, so a log is not flooded with redraws.
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

__all__ = ["Progress"]

log = logging.getLogger("cosim.tb.farm")


class Progress:
    def __init__(self, total: int, every: float = 10.0) -> None:
        self.total = total
        self.done = self.failed = self.running = 0
        self.every = every
        self._last = 0.0
        self._bar = tqdm(total=total, unit="job", dynamic_ncols=True, file=sys.stderr,
                         disable=not sys.stderr.isatty())

    def update(self, done: int, failed: int, running: int) -> None:
        step = done - self.done
        self.done, self.failed, self.running = done, failed, running
        if not self._bar.disable:
            self._bar.set_postfix(failed=failed, running=running, refresh=not step)
            self._bar.update(step)
            return
        now = time.monotonic()
        if now - self._last >= self.every or done == self.total:
            self._last = now
            log.info("jobs: %d/%d done, %d failed, %d running", done, self.total, failed,
                     running)

    def close(self) -> None:
        self._bar.close()
