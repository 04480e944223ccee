"""The program's clock, pinned by NETBLOCK_NOW for tests.

Two clocks meet in netblock. This one says what "now" is for decisions, the
store, expiry in the store and reports. The kernel keeps its own: a backend
hands it durations (expiry minus the *real* time of the call) and reads back
remaining time, so kernel timeouts always run on the real clock. Pinning this
clock therefore moves the store's idea of time, not the kernel's: a block
that expired before the real present is never installed, and `expire` with a
pinned future removes from the kernel exactly what the store says has ended.
Tests pin relative to the real clock (NETBLOCK_NOW = real now + offset), never
to a calendar date, so they pass on any day; scripts/test-clock.sh runs the
unit and kernel tests with the whole user space moved 400 days ahead.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

PIN_VARIABLE = "NETBLOCK_NOW"


def pinned() -> datetime | None:
    """The pinned instant, or None when the clock runs.

    >>> os.environ[PIN_VARIABLE] = "2026-11-27T01:30:00"
    >>> pinned().isoformat()
    '2026-11-27T01:30:00+00:00'
    >>> del os.environ[PIN_VARIABLE]
    """
    text = os.environ.get(PIN_VARIABLE)
    if not text:
        return None
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def now() -> datetime:
    """The current time, aware, in UTC (or as pinned)."""
    return pinned() or datetime.now(timezone.utc)
