"""The blocking policy: when observations become blocks, and why.

Per rejection class the configuration says how many observations from one
address within a window make a block, how long the block lives, and whether
the class feeds density widening. ``decide()`` is a pure function of the store
(and the clock): run twice on the same store it returns the same blocks, with
the expiry anchored on the *last* offending observation rather than on "now",
so re-deciding an active block on every tick does not push its expiry (and the
kernel's timeout) forward by itself; only new offences do.

Senders that delivered accepted mail recently, allowlisted space and the
built-in protected ranges are never decided on. A widened prefix that would
swallow one of them is still decided: aggregation carves the protected
addresses out of it at sync time, so the rest of the botnet's /24 is blocked.

With ``[routed] enabled`` the same offenders also widen to the prefix their
provider announces (netblock/decide/routed.py says when, and why those defaults).

``netblock why`` reads these steps through decide/explain.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Iterable, Iterator

import numpy as np
from netaddr import IPAddress, IPNetwork

from netblock import durations, limits
from netblock.aggregate import WidenRule, address_int, widen_spans
from netblock.decide.manual import later
from netblock.decide.protect import Protection, overlap, protection
from netblock.model import Block

SOURCE = "policy"


@dataclass(frozen=True)
class ClassRule:
    """One class's rule: threshold observations within window → block for ttl."""

    name: str  # "dnsbl" covers every "dnsbl:ZONE"
    threshold: int
    window: timedelta
    ttl: timedelta | None  # None: permanent
    widen: bool


# -- reading the configuration ------------------------------------------------

def class_rules(config) -> dict[str, ClassRule]:
    """``[policy.classes]`` as ClassRules; a class without a window uses ``policy.window``."""
    policy = config.policy
    out = {}
    for name, spec in policy.classes.items():
        ttl = spec.ttl
        if isinstance(ttl, timedelta) and ttl <= timedelta(0):
            ttl = None
        out[name] = ClassRule(name, int(spec.threshold), spec.window or policy.window, ttl, bool(spec.widen))
    return out


def rule_for(rules: dict[str, ClassRule], cls: str) -> ClassRule | None:
    """The rule of an observation class: its own, else its family's (``dnsbl:ZONE`` → ``dnsbl``)."""
    rule = rules.get(cls)
    if rule is None and ":" in cls:
        rule = rules.get(cls.split(":", 1)[0])
    return rule


@dataclass(frozen=True)
class WidenSettings:
    enabled: bool
    rules: tuple[WidenRule, ...]
    window: timedelta
    max_prefixlen: dict[int, int]


def widen_settings(config) -> WidenSettings:
    w = config.widen
    limits = {4: w.max_prefix_v4, 6: w.max_prefix_v6}
    return WidenSettings(w.enabled, tuple(w.rules), w.window or config.policy.window, limits)



# -- the element budget: a widened block that would cost too much falls back to its offenders --

def budget(config) -> int:
    """``[policy] max_elements_per_block``."""
    return config.policy.max_elements_per_block


def fallback_reason(net: IPNetwork, limit: int) -> str:
    return (f"offender in {net}: the widened block would take more than {limit} kernel elements "
            "with its protected addresses cut out")


def within_budget(block: Block, offenders: Iterable[tuple[IPAddress, datetime | None]], sh: Protection,
                  limit: int, now: datetime) -> list[Block]:
    """``[block]`` when cutting the protected space out of it costs at most ``limit`` kernel
    elements, else one block per offender (``(address, expiry)``) it was widened from.

    A thousand recent deliverers inside a widened /48 would otherwise cost
    about 69,000 elements (5,000 inside a /16): protection must not let a
    sender who gets a few messages through make the kernel's set explode.
    """
    if sh.carved().cost(block.netblock, limit) <= limit:
        return [block]
    text = fallback_reason(block.netblock, limit)
    out = []
    for ip, expires in offenders:
        if expires is not None and expires <= now:
            continue
        out.append(Block(IPNetwork(ip), text, SOURCE, now, expires))
    return out


# -- deciding ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Offence:
    """One address over one rule's threshold, with what the block would be.

    A rule counts all the classes it covers together: listings in two DNSBL
    zones are two ``dnsbl`` offences.
    """

    ip: IPAddress
    classes: tuple[str, ...]
    count: int
    last: datetime
    rule: ClassRule

    @property
    def expires(self) -> datetime | None:
        return None if self.rule.ttl is None else self.last + self.rule.ttl

    @property
    def label(self) -> str:
        if self.classes == (self.rule.name,):
            return self.rule.name
        return f"{self.rule.name} ({', '.join(self.classes)})"


def find_offences(store, rules: dict[str, ClassRule], now: datetime, shield_: Protection,
              *, only: Iterable[str] | None = None, window: timedelta | None = None) -> list[Offence]:
    """Every (ip, rule) at or over the rule's threshold within its window (or ``window``).

    A class with threshold 0 never blocks on its own; for widening (``only``
    given) one observation of it makes an offender.
    """
    return list(_iter_offences(store, rules, now, shield_, only=only, window=window))


def _iter_offences(store, rules: dict[str, ClassRule], now: datetime, shield_: Protection,
                   *, only: Iterable[str] | None = None, window: timedelta | None = None) -> Iterator[Offence]:
    """find_offences() one by one, for callers that fold them as they come (a storm has 100k)."""
    chosen = {n: r for n, r in rules.items()
              if (only is None and r.threshold > 0) or (only is not None and n in only)}
    by_window: dict[timedelta, list[str]] = {}
    for name, rule in chosen.items():
        by_window.setdefault(window or rule.window, []).append(name)
    for win, names in by_window.items():
        since = now - win
        stats = store.offender_stats(since, classes=names)
        totals: dict[tuple[IPAddress, str], list] = {}
        rule_of: dict[str, ClassRule | None] = {}
        for (ip, cls), (n, last) in stats.items():
            owner = rule_of[cls] if cls in rule_of else rule_of.setdefault(cls, rule_for(rules, cls))
            if owner is None or owner.name not in names:
                continue  # a class with a rule of its own, counted there
            entry = totals.get((ip, owner.name))
            if entry is None:
                totals[ip, owner.name] = [n, (cls,), last]
            else:
                entry[0] += n
                entry[1] += (cls,)
                entry[2] = max(entry[2], last)
        del stats
        for (ip, name), (n, classes, last) in totals.items():
            rule = rules[name]
            if n < max(rule.threshold, 1) or shield_.covers(ip):
                continue
            yield Offence(ip, classes if len(classes) == 1 else tuple(sorted(set(classes))), n, last, rule)


def decide(store, config, now: datetime) -> list[Block]:
    """The policy blocks the store's observations call for at ``now`` (no writes)."""
    rules = class_rules(config)
    if not rules:
        return []
    sh = protection(store, config, now)
    # Widening first, while nothing else is held: each pass loads every
    # offender from the store, and a storm's per-address blocks are many.
    # The per-address blocks still take precedence over a widened one.
    wider = _widened(store, rules, config, now, sh) + _routed(store, rules, config, now, sh)
    decided: dict[IPNetwork, Block] = {}
    # A storm repeats a few reasons and expiries 100k times: share equal ones.
    same: dict = {}
    for off in _iter_offences(store, rules, now, sh):
        expires = off.expires
        if expires is not None and expires <= now:
            continue
        if expires is not None:
            expires = same.setdefault((expires, expires.tzinfo), expires)
        net = IPNetwork(off.ip)
        reason = (f"{off.count} {off.label} within {durations.format(off.rule.window)} "
                  f"(threshold {off.rule.threshold})")
        reason = same.setdefault(reason, reason)
        block = Block(net, reason, SOURCE, now, expires)
        old = decided.get(net)
        if old is None or (old.expires is not None and (block.expires is None or block.expires > old.expires)):
            decided[net] = block
    for block in wider:
        decided.setdefault(block.netblock, block)
    return sorted(decided.values(), key=lambda b: (b.netblock.version, b.netblock.first, b.netblock.prefixlen))


def _widened(store, rules, config, now, sh: Protection) -> list[Block]:
    ws = widen_settings(config)
    names = [n for n, r in rules.items() if r.widen]
    if not ws.enabled or not ws.rules or not names:
        return []
    ends = _OffenderEnds()
    for off in _iter_offences(store, rules, now, sh, only=names, window=ws.window):
        ends.add(off.ip, off.expires)
    if not ends:
        return []
    v4, v6 = ends.offenders()
    found = sorted(widen_spans(v4, v6, ws.rules, ws.max_prefixlen), key=lambda w: w[0].prefixlen)
    kept: list = []
    for w in found:
        if any(overlap(k[0], w[0]) for k in kept):
            continue  # a wider prefix already covers it
        kept.append(w)
    out = []
    limit = budget(config)
    for net, rule, addrs, lo, hi in kept:
        found_any, expires = ends.latest(net)
        if not found_any:
            continue
        if expires is not None and expires <= now:
            continue
        reason = f"widened: {hi - lo} offenders in {net}"
        offenders = (ends.own_end(IPAddress(int(a), rule.family), expires) for a in addrs[lo:hi].tolist())
        out += within_budget(Block(net, reason, SOURCE, now, expires), offenders, sh, limit, now)
    return out


class _OffenderEnds:
    """The latest expiry per widening offender, in sorted integer arrays instead of a dict of addresses.

    An IPv4-mapped IPv6 offender counts for widening as its IPv4 address, but
    its expiry belongs to the IPv6 address, which no widened IPv4 prefix
    holds: only offenders whose folded family is their own lend an expiry.
    """

    _PERMANENT = float("inf")

    def __init__(self) -> None:
        self._v4: list[int] = []
        self._v6: list[int] = []
        self._own: dict[int, list[int]] = {4: [], 6: []}
        self._keys: dict[int, list[float]] = {4: [], 6: []}
        self._when: dict[int, list[datetime | None]] = {4: [], 6: []}

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)

    def add(self, ip: IPAddress, expires: datetime | None) -> None:
        family, value = address_int(ip)
        (self._v4 if family == 4 else self._v6).append(value)
        if family != ip.version:
            return
        self._own[family].append(value)
        self._keys[family].append(self._PERMANENT if expires is None else expires.timestamp())
        self._when[family].append(expires)

    def offenders(self) -> tuple[np.ndarray, list[int]]:
        """Sorted distinct offender integers per family, for widen_spans()."""
        v4 = np.unique(np.array(self._v4, dtype=np.int64))
        v6 = sorted(set(self._v6))
        self._v4 = self._v6 = []
        self._index: dict[int, tuple] = {}
        for family in (4, 6):
            values = np.array(self._own[family], dtype=np.int64 if family == 4 else object)
            order = np.argsort(values, kind="stable")
            self._index[family] = (values[order], np.array(self._keys[family], dtype=np.float64)[order], order)
        return v4, v6

    def own_end(self, ip: IPAddress, default: datetime | None) -> tuple[IPAddress, datetime | None]:
        """(ip, the expiry of its own offences), or ``default`` for an IPv4-mapped one counted as IPv4."""
        found, expires = self.latest(IPNetwork(ip))
        return ip, (expires if found else default)

    def latest(self, net: IPNetwork) -> tuple[bool, datetime | None]:
        """(any offender inside ``net`` has an expiry, the latest of them; None when one is permanent)."""
        values, keys, order = self._index[net.version]
        lo, hi = int(np.searchsorted(values, net.first)), int(np.searchsorted(values, net.last, side="right"))
        if lo == hi:
            return False, None
        k = lo + int(np.argmax(keys[lo:hi]))
        return True, self._when[net.version][int(order[k])]


# -- widening to announced prefixes (netblock/decide/routed.py) -------------------------------

def routed_input(store, rules, config, now, sh: Protection):
    """(settings, table, offences) for the routed level, or None while it is off."""
    from netblock.decide import asn, routed

    rs = routed.settings(config)
    names = [n for n, r in rules.items() if r.widen]
    if not rs.enabled or not names:
        return None
    return rs, asn.from_config(config), find_offences(store, rules, now, sh, only=names, window=rs.window)


def _routed(store, rules, config, now, sh: Protection) -> list[Block]:
    from netblock.decide import routed

    found = routed_input(store, rules, config, now, sh)
    if found is None:
        return []
    rs, table, offences = found
    ends: dict[IPAddress, datetime | None] = {}
    for off in offences:
        ends[off.ip] = off.expires if off.ip not in ends else later(ends[off.ip], off.expires)
    limit = budget(config)
    out = []
    for block in routed.blocks(offences, table, rs, sh.builtin + sh.allowlist + sh.own, now):
        inside = ((ip, e) for ip, e in ends.items() if ip.version == block.netblock.version and ip in block.netblock)
        out += within_budget(block, inside, sh, limit, now)
    return out


def record(store, decided: Iterable[Block], now: datetime) -> list[Block]:
    """Write decisions to the store without churn; returns the blocks that are new or extended.

    An active block is only touched when the decision expires later than it
    does; a hand-made (cli/list) block keeps its reason and source. A block
    that had expired counts as re-blocked.
    """
    changed = []
    with store.transaction():
        for block in decided:
            if limits.too_wide(block.netblock):
                continue  # never, whatever the configuration says (limits.py)
            old = store.get_block(block.netblock)
            if old is None:
                new = block
            elif old.expires is not None and old.expires <= now:
                new = replace(block, reblocks=old.reblocks + 1)
            elif old.expires is None:
                continue
            elif block.expires is None or block.expires > old.expires:
                if old.source == SOURCE:
                    new = replace(block, created=old.created, reblocks=old.reblocks)
                elif not store.may_write(old.source):
                    continue  # the admin's block: a fleet host's role leaves it as it is
                else:
                    new = replace(old, expires=block.expires)
            else:
                continue
            changed.append(new)
        if changed:
            store.put_blocks(changed)
    return changed
