"""Kernel counters into the store, so reports survive expiry and reloads."""

from __future__ import annotations

from datetime import datetime


def sample(store, backend, now: datetime) -> int:
    """Store one (packets, bytes) sample per installed netblock; returns how many.

    Called every daemon tick, by `netblock sample`, and by sync right before
    it removes or replaces elements, so no dropped packet goes unreported.
    """
    counters = backend.counters()
    if not counters:
        return 0
    return store.add_samples(now, counters)
