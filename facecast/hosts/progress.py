"""A dependency-free progress display for long offline jobs, written to stderr.

On a terminal it redraws one line (percent, bar, frames, × real time); elsewhere (logs, CI, pipes) it
prints a plain line at each quarter so that logs stay short but show the job is alive.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_BAR_WIDTH = 24
_REDRAW_S = 0.1


class Progress:
    def __init__(
        self,
        total: int,
        *,
        label: str = "render",
        fps: float = 30.0,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.total = max(1, total)
        self.label = label
        self.fps = fps
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_quarter = 0
        self._done = 0

    def _line(self, done: int) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        frac = min(done / self.total, 1.0)
        speed = done / self.fps / elapsed
        filled = int(frac * _BAR_WIDTH)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        return f"{self.label} {frac * 100:5.1f}% [{bar}] {done}/{self.total} frames  {speed:5.1f}x realtime"

    def note(self, message: str) -> None:
        """A one-off status line for a step that cannot report fractions (e.g. forced alignment)."""
        if self.enabled:
            self.stream.write(f"{self.label}: {message}\n")
            self.stream.flush()

    def update(self, done: int) -> None:
        self._done = done
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            if now - self._last_draw >= _REDRAW_S:
                self._last_draw = now
                self.stream.write("\r" + self._line(done))
                self.stream.flush()
            return
        quarter = min(4, done * 4 // self.total)
        if quarter > self._last_quarter and quarter < 4:
            self._last_quarter = quarter
            self.stream.write(self._line(done) + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Draw the final state (the real frame count may differ slightly from the estimate)."""
        if not self.enabled:
            return
        self.total = max(1, self._done)
        line = self._line(self._done)
        self.stream.write(("\r" + line + "\n") if self.tty else (line + "\n"))
        self.stream.flush()
