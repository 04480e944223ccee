"""Durations as people write them (``90s``, ``12h``, ``7d``, ``1d12h``) and as netblock prints them.

One syntax for the command line and the config file: units largest first,
each at most once, a whole number before each; a bare number is refused
(seconds or days is exactly the guess not to make). Milliseconds are allowed
only where a caller asks for them (the daemon's coalescing delay).
"""

from __future__ import annotations

import re
from datetime import timedelta

UNITS = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
    "ms": timedelta(milliseconds=1),
}
_WITH_MS = re.compile("".join(f"(?:([0-9]+){unit})?" for unit in UNITS))
_WHOLE_SECONDS = re.compile("".join(f"(?:([0-9]+){unit})?" for unit in UNITS if unit != "ms"))


def parse(text: object, *, milliseconds: bool = False) -> timedelta | None:
    """The duration ``text`` writes, or None when it is not the syntax; OverflowError when too long.

    >>> parse("1d12h")
    datetime.timedelta(days=1, seconds=43200)
    >>> parse("7") is None, parse("50ms") is None, parse("50ms", milliseconds=True)
    (True, True, datetime.timedelta(microseconds=50000))
    """
    pattern = _WITH_MS if milliseconds else _WHOLE_SECONDS
    m = pattern.fullmatch(text) if isinstance(text, str) and text else None
    if m is None or not any(m.groups()):
        return None
    return sum((int(n) * size for n, size in zip(m.groups(), UNITS.values()) if n), timedelta(0))


def format(value: timedelta, *, weeks: bool = False, zero: str = "0s") -> str:
    """The largest unit that states ``value`` exactly (weeks only when asked): 604800 s -> 7d, or 1w.

    >>> format(timedelta(days=14)), format(timedelta(days=14), weeks=True), format(timedelta(seconds=90))
    ('14d', '2w', '90s')
    """
    if not value:
        return zero
    for unit, size in UNITS.items():
        if (weeks or unit != "w") and value % size == timedelta(0):
            return f"{value // size}{unit}"
    raise ValueError(f"{value!r} is not a whole number of milliseconds")
