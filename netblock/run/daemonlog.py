"""What the daemon tells its operator: one line per event on stderr, at a level.

systemd hands stderr to the journal, which adds the time and the unit; when
stderr is that journal stream (``$JOURNAL_STREAM`` names its device and inode)
each line starts with the ``<N>`` syslog priority prefix, so ``journalctl -p
warning`` finds the failures. In a terminal the lines are plain.

Events that come in floods (a block decided, a block expired) are
rate-limited per kind: at most ``burst`` lines per ``interval``, then one
summary line with the count and a few examples when the interval is over, so
a storm of a thousand offenders a second costs a line every few seconds, not
a thousand.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
LEVEL_NAMES = tuple(LEVELS)
_SYSLOG_PRIORITY = {10: 7, 20: 6, 30: 4, 40: 3}  # debug, info, warning, err
BURST = 10  # lines of one kind shown per interval before they are only counted
INTERVAL = 10.0  # seconds
EXAMPLES = 3  # subjects named in a summary


def lower(level: str, steps: int) -> str:
    """The level ``steps`` below ``level`` (``-v`` on the command line), never below debug."""
    index = max(0, LEVEL_NAMES.index(level) - steps)
    return LEVEL_NAMES[index]


def journal_stream(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal's own stream for this service (systemd sets $JOURNAL_STREAM)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    if not want:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


@dataclass
class _Flood:
    """One kind of event within its current interval."""

    started: float
    shown: int = 0
    hidden: int = 0
    examples: list[str] = field(default_factory=list)


class Log:
    """Leveled, flood-limited lines on a stream; ``netblock: `` prefixed like every other message."""

    def __init__(self, stream: TextIO | None = None, level: str = "info", *, burst: int = BURST,
                 interval: float = INTERVAL, clock: Callable[[], float] = time.monotonic,
                 prefixes: bool | None = None):
        self.stream = stream or sys.stderr
        self.level = LEVELS[level]
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self.prefixes = journal_stream(self.stream) if prefixes is None else prefixes
        self._floods: dict[str, _Flood] = {}
        self._nouns: dict[str, str] = {}

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.level

    def write(self, level: str, message: str) -> None:
        value = LEVELS[level]
        if value < self.level:
            return
        prefix = f"<{_SYSLOG_PRIORITY[value]}>" if self.prefixes else ""
        try:
            print(f"{prefix}netblock: {message}", file=self.stream, flush=True)
        except (OSError, ValueError):
            pass  # a closed stderr must not stop the daemon

    def debug(self, message: str) -> None:
        self.write("debug", message)

    def info(self, message: str) -> None:
        self.write("info", message)

    def warning(self, message: str) -> None:
        self.write("warning", message)

    def error(self, message: str) -> None:
        self.write("error", message)

    def event(self, kind: str, subject: str, message: str, *, noun: str | None = None) -> None:
        """An info line that may come by the thousand: shown up to ``burst`` per interval, then counted.

        ``subject`` names the thing (a netblock) in the summary; ``noun``
        completes "and N more ..." (default: ``kind``).
        """
        if LEVELS["info"] < self.level:
            return
        now = self.clock()
        flood = self._floods.get(kind)
        if flood is not None and now - flood.started >= self.interval:
            self._summarise(kind, flood)
            flood = None
        if flood is None:
            flood = self._floods[kind] = _Flood(now)
        self._nouns[kind] = noun or kind
        if flood.shown < self.burst:
            flood.shown += 1
            self.info(message)
            return
        flood.hidden += 1
        if len(flood.examples) < EXAMPLES:
            flood.examples.append(subject)

    def flush(self, *, force: bool = False) -> None:
        """Summaries of the intervals that are over (all of them with ``force``, e.g. at exit)."""
        now = self.clock()
        for kind, flood in list(self._floods.items()):
            if force or now - flood.started >= self.interval:
                self._summarise(kind, flood)
                del self._floods[kind]

    def _summarise(self, kind: str, flood: _Flood) -> None:
        if not flood.hidden:
            return
        seconds = max(1, round(self.clock() - flood.started))
        more = ", ".join(flood.examples) + (", ..." if flood.hidden > len(flood.examples) else "")
        self.info(f"... and {flood.hidden} more {self._nouns.get(kind, kind)} in the last {seconds}s "
                  f"({more}; lines of this kind are limited to {self.burst} per {self.interval:g}s)")
