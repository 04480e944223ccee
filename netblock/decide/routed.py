"""Widening by routing data: block the prefix a provider announces when its zombies are many and spread.

The seed's kernel table shows whole allocations blocked next to /24s and
single hosts (221.216.0.0/13, 219.128.0.0/12, 61.128.0.0/10): during a storm a
postmaster blocks the network a provider actually routes, because the
zombies in a dynamic-address pool come from all over it and fixed /24 or /16
density rules see only a few in each. The routing table (netblock/decide/asn.py)
says where that network ends, so the block stops at the provider's own
boundary instead of at an arbitrary bit.

The rule ("routed prefix" level), applied to the offenders of the classes
that feed widening (``widen = true``) within ``[routed] window``:

    an announced prefix is blocked when at least ``min_offenders`` distinct
    offending addresses, spread over at least ``min_spread`` distinct /24s
    (IPv4) or /48s (IPv6), fall within it;

with these limits:

* Never wider than ``max_prefix_v4`` / ``max_prefix_v6``. An announcement
  wider than that is judged in parts of the maximum size: each /12 of a
  /10 needs its own offenders, and only the parts that have them are
  blocked. Every covering announcement is considered, not only the longest
  match, and the widest one that qualifies wins (a provider's /13 over its
  own /16s).
* Never an AS on ``do_not_widen`` (the webmail and mail-service providers a
  site exchanges real mail with: one compromised account there must not cut
  off everyone on it). Their addresses do not count as offenders of a
  covering prefix, and their more-specific announcements inside a widened
  prefix are left out of the block.
* Never a prefix that is protected as a whole (allowlist, built-in ranges,
  this host's addresses). Protected addresses and senders that delivered
  real mail *inside* a routed prefix are carved out by sync's aggregation,
  as for every other block.

Defaults, and why: ``min_offenders = 16``, ``min_spread = 8`` within
``window = 1d``, ``max_prefix_v4 = 12``, ``max_prefix_v6 = 32``. A storm of
the seed's shape (31 zombies over 20 /24s of AS4808's 221.216.0.0/13 in the
2014 RouteViews table) blocks exactly that /13 with them.

* Off unless ``[routed] enabled = true`` (which needs ``[report] asn_file``):
  netblock ships no routing table, and this is the widest widening it does,
  so a site opts in knowingly, not by configuring a table for ``report asn``.
* 16 addresses in 8 /24s is four times the address count density widening
  needs for one /24 (4), and nearly three times what CrowdSec's range rule
  needs (more than 5 addresses): a storm's shape, where a provider's pool
  sends from everywhere at once, not one compromised host, NAT or server rack.
  Eight /24s rules out a burst from a single subnet, which the /24 density
  rule handles at the right size; announcements of a /24 or smaller never
  qualify.
* One day, like ``[widen] window``: the routed block lives as long as its
  offenders' own blocks (the last offence plus the class TTL), so a storm
  that ends is forgotten a day later, and a quiet provider is not blocked
  for zombies collected over weeks.
* /12 (a million addresses) is as wide as a provider's regional access
  network usually is. A /10 like 61.128.0.0/10 is a national backbone's
  aggregate over many regional networks: blocking it for 16 zombies in one
  region would be out of all proportion. A storm that really covers the
  whole /10 qualifies in each of its four /12s, and aggregation merges the
  four into 61.128.0.0/10 in the kernel, as in the seed's table. A site that
  wants the /10 from fewer offenders sets ``max_prefix_v4 = 10``.
* /32 for IPv6 is the usual size of a provider's whole allocation; IPv6
  offenders are counted per /48 (a customer site).

Everything here is pure (offenders + table in, candidates out); policy.py
supplies the offenders and turns candidates into blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Iterable, Mapping, Sequence

import numpy as np
from netaddr import IPAddress, IPNetwork, IPSet

from netblock.aggregate import aggregate
from netblock.decide.asn import Table, address
from netblock.model import Block

SOURCE = "policy"
UNIT = {4: 24, 6: 48}  # offenders' spread is counted in distinct sub-prefixes of this length


@dataclass(frozen=True)
class Settings:
    enabled: bool
    min_offenders: int
    min_spread: int
    window: timedelta
    max_prefixlen: tuple[tuple[int, int], ...]  # ((4, 12), (6, 32))
    do_not_widen: frozenset[int]

    def limit(self, version: int) -> int:
        return dict(self.max_prefixlen)[version]


def settings(config) -> Settings:
    """``[routed]`` as Settings (the defaults when the config has no such section)."""
    r = config.routed
    return Settings(bool(r.enabled), int(r.min_offenders), int(r.min_spread), r.window,
                    ((4, int(r.max_prefix_v4)), (6, int(r.max_prefix_v6))), frozenset(r.do_not_widen))


@dataclass(frozen=True)
class Candidate:
    """An announced prefix (or its maximum-size part) holding offenders, and whether it is blocked.

    ``netblock`` is what would be blocked: ``announced`` itself, or the part
    of the maximum size holding these offenders when the announcement is
    wider. ``refused`` says why it is not blocked ("" when it is);
    ``carved`` lists do-not-widen announcements left out of it.
    """

    netblock: IPNetwork
    announced: IPNetwork
    asn: int
    offenders: tuple[IPAddress, ...]
    spread: int
    refused: str = ""
    carved: tuple[IPNetwork, ...] = ()

    @property
    def blocked(self) -> bool:
        return not self.refused

    @property
    def unit(self) -> int:
        return UNIT[self.netblock.version]

    def parts(self) -> list[IPNetwork]:
        """The CIDRs to block: the netblock minus do-not-widen announcements."""
        return aggregate([self.netblock], list(self.carved)) if self.carved else [self.netblock]


@dataclass
class _Group:
    """Offenders inside one candidate, before it is judged."""

    announced: IPNetwork
    netblock: IPNetwork
    asn: int
    members: list[IPAddress]
    spread: int


def _groups_v4(addrs: list[IPAddress], table: Table, s: Settings) -> list[_Group]:
    """The candidates of IPv4 offenders, grouped with numpy (a storm has tens of thousands)."""
    if not addrs:
        return []
    ips = np.array([a.value for a in addrs], dtype=np.int64)
    origin, _ = table.lookup_v4(ips)
    keep = ~np.isin(origin, list(s.do_not_widen))  # their own network is one we exchange mail with
    ips = ips[keep]
    members = [a for a, k in zip(addrs, keep.tolist()) if k]
    limit = s.limit(4)
    out = []
    for length, idx, asns in table.matches_v4(ips):
        size = max(length, limit)  # wider announcements are judged in parts of the maximum size
        net = ips[idx] >> (32 - size)  # within one length, the part determines the announcement
        units = np.unique((net << 24) | (ips[idx] >> (32 - UNIT[4])))
        parts, first, counts = np.unique(net, return_index=True, return_counts=True)
        spreads = np.unique(units >> 24, return_counts=True)[1]
        order = np.argsort(net, kind="stable")
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        for part, f, n, spread, lo in zip(parts.tolist(), first.tolist(), counts.tolist(), spreads.tolist(),
                                          starts.tolist()):
            inside = [members[i] for i in idx[order[lo:lo + n]].tolist()]
            start = part << (32 - size)
            announced = IPNetwork((start >> (32 - length) << (32 - length), length), 4)
            out.append(_Group(announced, IPNetwork((start, size), 4), int(asns[f]), inside, spread))
    return out


def _groups_py(addrs: list[IPAddress], table: Table, s: Settings) -> list[_Group]:
    """The candidates of IPv6 offenders, one address at a time (they are few)."""
    groups: dict[tuple[IPNetwork, IPNetwork], _Group] = {}
    for ip in addrs:
        routes = table.routes(ip)
        if not routes or routes[-1].asn in s.do_not_widen:
            continue
        bits, limit = _bits(ip), s.limit(ip.version)
        for route in routes:
            net = route.prefix
            if net.prefixlen < limit:
                shift = bits - limit
                net = IPNetwork((ip.value >> shift << shift, limit), ip.version)
            group = groups.setdefault((route.prefix, net), _Group(route.prefix, net, route.asn, [], 0))
            group.members.append(ip)
    for g in groups.values():
        g.spread = len({ip.value >> (_bits(ip) - UNIT[ip.version]) for ip in g.members})
    return list(groups.values())


def assess(offenders: Iterable[IPAddress | str], table: Table, s: Settings,
           protected: Sequence[IPNetwork] = (), *, refused: bool = True) -> list[Candidate]:
    """Every candidate that holds at least one offender (only the blocked ones unless ``refused``).

    Sorted widest first. ``protected`` (allowlist, built-in, own addresses)
    refuses a candidate that lies wholly inside it. A candidate covered by a
    wider blocked one is refused as "inside" it, so the blocked candidates
    never overlap.
    """
    unique = {address(ip) for ip in offenders}
    v4 = sorted((a for a in unique if a.version == 4), key=lambda a: a.value)
    v6 = sorted((a for a in unique if a.version == 6), key=lambda a: a.value)
    dnw = s.do_not_widen
    safe = IPSet(protected)
    out: list[Candidate] = []
    for g in _groups_v4(v4, table, s) + _groups_py(v6, table, s):
        net, unit = g.netblock, UNIT[g.netblock.version]
        carved: tuple[IPNetwork, ...] = ()
        if g.asn in dnw:
            why = f"AS{g.asn} is on [routed] do_not_widen"
        elif len(g.members) < s.min_offenders or g.spread < s.min_spread:
            why = (f"{len(g.members)} offenders in {g.spread} /{unit}s, "
                   f"needs {s.min_offenders} in {s.min_spread}")
        elif net in safe:
            why = "protected as a whole"
        else:
            why = ""
            carved = tuple(r.prefix for r in table.within(net, dnw))
            if carved and not aggregate([net], list(carved)):
                why = "do-not-widen announcements cover all of it"
        if why and not refused:
            continue
        out.append(Candidate(net, g.announced, g.asn, tuple(g.members), g.spread, why, carved))
    out.sort(key=lambda c: (c.netblock.version, c.netblock.prefixlen, c.netblock.first, c.announced.prefixlen))
    kept: list[Candidate] = []
    final = []
    for c in out:
        if c.blocked:
            wider = next((k for k in kept if _overlap(k.netblock, c.netblock)), None)
            if wider is not None:
                if not refused:
                    continue
                c = replace(c, refused=f"inside {wider.netblock}, blocked already")
            else:
                kept.append(c)
        final.append(c)
    return final


def find(offenders: Iterable[IPAddress | str], table: Table, s: Settings,
         protected: Sequence[IPNetwork] = ()) -> list[Candidate]:
    """The candidates to block: non-overlapping, each the widest that qualifies."""
    return assess(offenders, table, s, protected, refused=False)


def _bits(ip: IPAddress) -> int:
    return 32 if ip.version == 4 else 128


def _overlap(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.first <= b.last and b.first <= a.last


def reason(c: Candidate, table: Table) -> str:
    """``routed: 31 offenders in 20 /24s of AS4808 CHINA169-BJ 221.216.0.0/13`` (one line, for the store)."""
    where = str(c.announced)
    if c.netblock != c.announced:
        where += f" (its /{c.netblock.prefixlen} {c.netblock})"
    return f"routed: {len(c.offenders)} offenders in {c.spread} /{c.unit}s of {table.handle(c.asn)} {where}"


def blocks(offences: Iterable, table: Table, s: Settings, protected: Sequence[IPNetwork],
           now: datetime) -> list[Block]:
    """Blocks for the qualifying candidates among ``offences`` (anything with ``.ip`` and ``.expires``).

    A routed block lives as long as the longest-lived block of its offenders
    (permanent if any is), anchored on their offences, so deciding again on
    the next tick does not extend it by itself.
    """
    expiry: dict[IPAddress, datetime | None] = {}
    for off in offences:
        ip = address(off.ip)
        if ip in expiry:
            old = expiry[ip]
            expiry[ip] = None if old is None or off.expires is None else max(old, off.expires)
        else:
            expiry[ip] = off.expires
    if not expiry:
        return []
    out = []
    for c in find(list(expiry), table, s, protected):
        ends = [e for ip in c.offenders if (e := expiry[ip]) is not None]
        expires = max(ends) if len(ends) == len(c.offenders) else None
        if expires is not None and expires <= now:
            continue
        text = reason(c, table)
        out += [Block(net, text, SOURCE, now, expires) for net in c.parts()]
    return out


def describe(c: Candidate, table: Table, classes: Mapping[IPAddress, Sequence[str]] | None = None) -> dict:
    """A candidate for ``netblock why --json``."""
    classes = classes or {}
    return {
        "netblock": str(c.netblock),
        "announced": str(c.announced),
        "asn": c.asn,
        "as_name": table.name(c.asn),
        "offenders": [{"ip": str(ip), "classes": list(classes.get(ip, ()))} for ip in c.offenders],
        "spread": c.spread,
        "unit": f"/{c.unit}",
        "blocked": c.blocked,
        "refused": c.refused,
        "carved": [str(n) for n in c.carved],
    }


def render(d: dict, *, limit: int = 20) -> list[str]:
    """``netblock why`` lines for one :func:`describe` result."""
    name = f" ({d['as_name']})" if d["as_name"] else ""
    part = "" if d["netblock"] == d["announced"] else f", its part {d['netblock']}"
    state = "BLOCK" if d["blocked"] else f"no block ({d['refused']})"
    lines = [f"routed: {d['announced']} announced by AS{d['asn']}{name}{part}: "
             f"{len(d['offenders'])} offenders in {d['spread']} {d['unit']}s -> {state}"]
    for o in d["offenders"][:limit]:
        lines.append(f"  offender {o['ip']}: {', '.join(o['classes']) or '-'}")
    if len(d["offenders"]) > limit:
        lines.append(f"  ... and {len(d['offenders']) - limit} more (--json lists all)")
    if d["carved"]:
        lines.append(f"  left out (do_not_widen): {', '.join(d['carved'])}")
    return lines
