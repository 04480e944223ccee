"""The IPv4 coverage cap (limits.py) tried before a store write, so a refused write changes nothing.

``add`` and ``allow del`` can make the next sync block more IPv4 space than
the cap allows. Sync would refuse that state and leave the kernel as it was,
but the store would already hold the write; checked here, inside the write's
transaction, the command is refused before anything is stored. The check
asks what sync would install, so it lives beside sync (run/sync.py), which
is imported only when the cheap bound is not enough.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Iterable

from netaddr import IPNetwork

from netblock import limits
from netblock.model import Block


def check_cap(store, config, now: datetime, *, add: Iterable[Block] = (), unallow: Iterable[IPNetwork] = ()) -> None:
    """LimitExceeded before a write whose sync would block more IPv4 space than the cap (limits.py).

    ``add`` are blocks about to be stored (hand-made), ``unallow`` allowlist
    entries about to be removed. The union of the active blocks is cheap to
    measure and only ever larger than what sync installs, so the exact
    aggregation runs only near the cap.
    """
    from netblock.decide.protect import for_sync as protected
    from netblock.run.sync import compute_desired, max_elements, screen

    add = list(add)
    # The stored blocks' sizes summed, overlaps twice: one query, and never less than what sync installs.
    if store.v4_block_space(now) + limits.v4_addresses((b.netblock for b in add), disjoint=True) \
            <= limits.MAX_V4_ADDRESSES:
        return
    active = {b.netblock: b for b in store.blocks(now=now)}
    active.update((b.netblock, b) for b in add)
    prot = protected(store, config, now=now)
    gone = set(unallow)
    prot = dataclasses.replace(prot, allowlist=[n for n in prot.allowlist if n not in gone],
                               manual=prot.manual + [b.netblock for b in add])
    carve = prot.all()
    limits.check_coverage(compute_desired(screen(active.values(), carve, max_elements(config), [], []), carve),
                          "refused, nothing changed")
