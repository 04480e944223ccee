"""What a block made by hand (`netblock add`) stores, beside what the store already holds, and
what `add` refuses outright.

The policy's own merge is ``policy.record``: a decision only ever extends an
active block. A postmaster's add is different on purpose: it counts as a
re-block even while the old block is active (fail2ban's bantime.increment:
a repeat offender stays out longer each time), yet never shortens what is
already in force. Kept apart from policy.py so `add` does not import numpy.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime, timedelta

from netaddr import IPNetwork

from netblock.model import Block


def later(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later of two expiries, None (permanent) being the latest."""
    if a is None or b is None:
        return None
    return max(a, b)


def escalated_ttl(base: timedelta, reblocks: int, factor: float, cap: timedelta | None) -> timedelta:
    """base × factor^reblocks, capped: a repeat offender stays out longer each time (fail2ban's bantime.increment)."""
    try:
        seconds = base.total_seconds() * (factor ** reblocks)
    except OverflowError:
        seconds = float("inf")
    if cap is not None and seconds > cap.total_seconds():
        return cap
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        return timedelta.max if cap is None else cap


def block(net: IPNetwork, old: Block | None, *, now: datetime, ttl: timedelta | None, permanent: bool,
          reason: str | None, source: str, rules) -> Block:
    """The block to store for ``net`` added by hand, given the store's row ``old`` (active or history).

    ``rules`` is the config's [blocks] table (default_ttl, reblock_factor,
    max_ttl); ``ttl`` None means its default_ttl; ``reason`` None keeps the
    old one. A row the store remembers makes this a re-block, whose time is
    escalated; an old block still active keeps its expiry when that is later.

    >>> from datetime import datetime, timedelta, timezone
    >>> from netaddr import IPNetwork
    >>> from netblock.config import BlocksConfig
    >>> now, net = datetime(2030, 1, 1, tzinfo=timezone.utc), IPNetwork("198.18.1.0/24")
    >>> rules = BlocksConfig(default_ttl=timedelta(days=1), reblock_factor=2.0)
    >>> first = block(net, None, now=now, ttl=None, permanent=False, reason="spam", source="cli", rules=rules)
    >>> first.expires - now, first.reblocks
    (datetime.timedelta(days=1), 0)
    >>> again = block(net, first, now=now, ttl=None, permanent=False, reason=None, source="cli", rules=rules)
    >>> again.expires - now, again.reblocks, again.reason
    (datetime.timedelta(days=2), 1, 'spam')
    >>> short = block(net, again, now=now, ttl=timedelta(hours=1), permanent=False, reason=None,
    ...               source="cli", rules=rules)
    >>> short.expires == again.expires, short.reblocks
    (True, 2)
    """
    reblocks = old.reblocks + 1 if old is not None else 0
    expires: datetime | None
    if permanent:
        expires = None
    else:
        base = ttl if ttl is not None else rules.default_ttl
        try:
            expires = now + escalated_ttl(base, reblocks, rules.reblock_factor, rules.max_ttl)
        except OverflowError:  # beyond year 9999 without a max_ttl: that is permanent
            expires = None
        if old is not None and (old.expires is None or old.expires > now):
            expires = later(old.expires, expires)
    if reason is None:
        reason = old.reason if old is not None else ""
    return Block(netblock=net, reason=reason, source=source, created=now, expires=expires, reblocks=reblocks)


def remembered(store, nets) -> dict[IPNetwork, Block]:
    """The stored rows (active or history) of ``nets``: one lookup each, or one scan when that is cheaper.

    A list of 100k targets against a store of similar size is read in one
    pass instead of 100k queries.
    """
    if len(nets) > 1000 and store.count_blocks() <= 2 * len(nets):
        return {b.netblock: b for b in store.blocks() if b.netblock in nets}
    found = {}
    for net in nets:
        old = store.get_block(net)
        if old is not None:
            found[net] = old
    return found


class Refusals:
    """Answers "is this target entirely inside protected space?" for many targets fast.

    A target merely overlapping protected space is fine: aggregation carves
    the protected part out. One entirely inside it could never be installed,
    so it is refused with the reason.
    """

    delivered: "Refusals | None" = None  # recent deliverers: not refused, and not carved out of a manual block

    def __init__(self, labelled: list[tuple[IPNetwork, str]]):
        from netblock.aggregate import span

        self.labelled = labelled
        self.merged: dict[int, tuple[list[int], list[int]]] = {}
        spans = sorted(span(net) for net, _ in labelled)
        for fam, first, last in spans:
            firsts, lasts = self.merged.setdefault(fam, ([], []))
            if lasts and first <= lasts[-1] + 1:
                lasts[-1] = max(lasts[-1], last)
            else:
                firsts.append(first)
                lasts.append(last)

    def why(self, net: IPNetwork) -> str | None:
        from netblock.aggregate import span

        fam, first, last = span(net)
        if fam not in self.merged:
            return None
        firsts, lasts = self.merged[fam]
        k = bisect_right(firsts, first) - 1
        if k < 0 or lasts[k] < last:
            return None
        for prot, label in self.labelled:
            pf, pfirst, plast = span(prot)
            if pf == fam and pfirst <= first and last <= plast:
                return f"{label} {prot}" if prot.prefixlen < (32 if prot.version == 4 else 128) else label
        return "protected space"

    def carved(self, net: IPNetwork) -> list[tuple[IPNetwork, str]]:
        """(protected netblock, label) of each protection inside ``net``: what sync cuts out of it."""
        if not self.merged:
            return []  # nothing protected (no recent deliverer): `add -` of 100k asks 100k times
        from netblock.aggregate import span

        fam, first, last = span(net)
        if fam not in self.merged:
            return []
        firsts, lasts = self.merged[fam]
        k = bisect_right(firsts, last) - 1
        if k < 0 or lasts[k] < first:
            return []
        out = []
        for prot, label in self.labelled:
            pf, pfirst, plast = span(prot)
            if pf == fam and pfirst <= last and first <= plast:
                out.append((prot, label))
        return out


def refusals(store, config, now: datetime) -> Refusals:
    """What `add` refuses outright: sync's protected space, minus recent deliverers.

    A sender that delivered mail is carved out by sync but may still be
    blocked by hand: the next sync after the delivery window honours it.
    """
    from netblock.decide.protect import for_sync as protected

    prot = protected(store, config, now=now)
    labelled = [(net, "protected: built-in never-block range") for net in prot.builtin]
    labelled += [(net, "protected: allowlisted") for net in prot.allowlist]
    labelled += [(net, "protected: this host's own address") for net in prot.own]
    guard = Refusals(labelled)
    guard.delivered = Refusals([(IPNetwork(ip), "delivered") for ip in prot.delivered])
    return guard
