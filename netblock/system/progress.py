"""A minimal progress bar: drawn only when stderr is a terminal, so scripts stay quiet."""

from __future__ import annotations

import time


class Progress:
    def __init__(self, total: int, label: str, stream):
        self.total = max(total, 1)
        self.label = label
        self.stream = stream
        self.done = 0
        self.enabled = hasattr(stream, "isatty") and stream.isatty()
        self._last = 0.0

    def __enter__(self) -> "Progress":
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= 0.1 or self.done >= self.total:
            self._last = now
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            self.stream.write(f"\r{self.label} [{bar:<30}] {self.done}/{self.total}")
            self.stream.flush()

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
