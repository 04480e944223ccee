"""What `netblock expire` does to the store: which blocks expired since it last ran, and the purge.

A block that expires stays in the store as history (a re-block escalates
from it). `expire` names each expiry once: it keeps the time of its last run
in the store's state, so a cron job that runs it reports every expiry
exactly once, and the first run reports them all. Blocks that expired longer
than ``[blocks] max_ttl`` ago no longer count for escalation and are purged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from netblock.model import Block

STATE_KEY = "cli.expire.last"


@dataclass
class Expired:
    newly: list[Block] = field(default_factory=list)  # expired since the last run (every one on the first)
    purged: list[Block] = field(default_factory=list)  # expired over max_ttl ago: deleted from the store


def _parse_time(text: str | None) -> datetime | None:
    """A time this module stored; anything unreadable counts as never (all expiries are news)."""
    try:
        when = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    return when if when is None or when.tzinfo else when.replace(tzinfo=timezone.utc)


def expire(store, now: datetime, keep: timedelta | None) -> Expired:
    """One run's bookkeeping, in one transaction: the news since the last run, and the purge past ``keep``."""
    with store.transaction():
        expired = store.expired_blocks(now)
        last = _parse_time(store.get_state(STATE_KEY))
        newly = [b for b in expired if last is None or b.expires > last]
        purge = [b for b in expired if keep is not None and b.expires <= now - keep]
        store.delete_blocks([b.netblock for b in purge])
        store.set_state(STATE_KEY, now.isoformat())
    return Expired(newly, purge)
