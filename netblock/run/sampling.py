"""Kernel counters into the store, so reports survive expiry and reloads.

Sampling is change-only: a netblock's row is written when its counters differ
from its latest stored sample (and the first time it is seen). The daemon
samples every tick, but a blocked netblock usually drops nothing for most
minutes, so a year of history grows with the minutes that had drops rather
than with minutes × netblocks (5e9 rows for 10k netblocks sampled each minute).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

THIN_EVERY = timedelta(days=1)
THINNED_KEY = "samples_thinned"  # state key: when retention thinning last ran
THINNED_UP_TO_KEY = "samples_thinned_before"  # state key: samples before this are thinned already


def sample(store, backend, now: datetime) -> int:
    """Store the changed (packets, bytes) of every installed netblock; returns rows written.

    Called every daemon tick, by `netblock sample`, and by sync right before
    it removes or replaces elements, so no dropped packet goes unreported.
    """
    return record(store, backend.counters(), now)


def record(store, counters, now: datetime) -> int:
    if not counters:
        return 0
    return store.add_changed_samples(now, counters)


def thin_if_due(store, now: datetime, retention: timedelta) -> int | None:
    """Thin samples older than ``retention`` to one per netblock per day, at most once a day.

    The store's per-day roll-up, which reports over whole days read, is left
    as it was, so thinning costs a report nothing over those days (not even
    the drops a reset inside a thinned day would hide from the samples left).
    Returns rows deleted, or None when the last thinning is less than a day old.
    """
    last = store.get_state(THINNED_KEY)
    if last is not None and now.timestamp() - float(last) < THIN_EVERY.total_seconds():
        return None
    done = store.get_state(THINNED_UP_TO_KEY)
    cutoff = now - retention
    after = None if done is None else datetime.fromtimestamp(float(done), timezone.utc)
    deleted = store.thin_samples(cutoff, after)
    store.set_state(THINNED_KEY, str(now.timestamp()))
    store.set_state(THINNED_UP_TO_KEY, str(cutoff.timestamp()))
    return deleted
