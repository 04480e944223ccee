"""One change to the store, carried to the kernel at the cost of the change.

`add`, `del` and `allow add` change a few netblocks of a store that may
hold 100k. sync.sync() would recompute the whole desired set and read the
whole kernel set back; here only the *zone* of the change is recomputed:
the changed netblocks, grown until it holds every installed element and
every active block that overlaps it. Inside the zone the desired elements
are computed exactly as sync computes them (the same screen, carve-outs and
aggregation, over the blocks and protections of the zone); outside it the
kernel is left as it is, except that a new element merges upwards with an
installed sibling as aggregation would have merged them.

This is only a shortcut, taken when it is provably equal to sync: the
backend must show that the kernel still holds what netblock last wrote
(nftables by its ruleset generation; ipset by its set headers, checking the
zone's own members as it writes; iptables by a digest of its chain), and
the zone must stay small.
Otherwise ``sync_change`` runs sync() itself. Whatever this path leaves,
the next full sync (the daemon's tick, `run-once`, `sync`) would leave too.

Blocks that ran out are a change too: the daemon's tick hands their
netblocks here instead of syncing 100k in full (run/tick.py, _carry). An
element past its expiry in a kernel that times elements out (nftables) is
*lapsed*: the kernel dropped it itself and refuses to delete it, so it
leaves only the snapshot, and an element wanted again is added anew.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timezone

from netaddr import IPNetwork

from netblock import limits
from netblock.aggregate import key_network
from netblock.model import MANUAL_SOURCES
from netblock.system import hostaddrs
from netblock.system.lock import DEFAULT_TIMEOUT, kernel_lock

ZONE_LIMIT = 4096  # blocks or elements in the zone past which the full sync is cheaper to reason about
# Seconds past its expiry after which an element is surely gone from a kernel that times elements out:
# the kernel starts an element's timeout when it processes the element, up to a large batch's length
# after netblock computed it. Closer to its expiry than this, an element takes the full sync.
LAPSE_GRACE = 5.0
_BITS = {4: 32, 6: 128}


@dataclass
class DeltaResult:
    """What report_sync() prints: the change and how many netblocks the kernel holds now.

    ``before`` and ``after`` are the zone's elements with their expiries (None: permanent), as the
    kernel held them (lapsed ones included) and as it holds them now: outside the zone nothing
    changed, so the daemon updates its memory of the kernel and says what expired from them alone.
    """

    change: object
    count: int
    notes: list[str] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)


def sync_change(store, backend, config, nets, *, now: datetime, lock_timeout: float = DEFAULT_TIMEOUT,
                full=None, cap_checked: bool = False):
    """Carry the change of ``nets`` (blocks added or deleted, allowlist entries added) to the kernel.

    ``full()`` runs the full sync and is called whenever the shortcut
    cannot prove itself (see the module docstring). ``cap_checked``: the
    caller refused a write past the IPv4 cap already (`add`'s check_cap).
    """
    if 0 < len(nets) <= ZONE_LIMIT:
        with kernel_lock(config.lock_file, timeout=lock_timeout):
            result = _try(store, backend, config, list(nets), now, cap_checked)
        if result is not None:
            return result
    return full()


def _key(net_first: int, plen: int) -> int:
    return net_first << 8 | plen


def _span(version: int, key: int) -> tuple[int, int]:
    first, plen = key >> 8, key & 255
    return first, first + (1 << (_BITS[version] - plen)) - 1


def _folded(net: IPNetwork) -> tuple[int, int, int]:
    """(version, first, prefixlen) with IPv4-mapped IPv6 folded into IPv4, as the kernel keys it."""
    version, plen = limits.family_and_prefixlen(net)
    first = net.first - 0xFFFF_0000_0000 if version == 4 and net.version == 6 else net.first
    return version, first, plen


class _Installed:
    """The installed elements of one family, searched by bisection over the snapshot's sorted keys."""

    def __init__(self, version: int, keys, expiry):
        self.version, self.keys, self.expiry = version, keys, expiry

    def overlapping(self, first: int, last: int) -> list[int]:
        """Indexes of the elements overlapping [first, last] (disjoint elements: one may start before it)."""
        lo = bisect_left(self.keys, first << 8)
        hi = bisect_right(self.keys, last << 8 | 255)
        out = list(range(lo, hi))
        if lo and _span(self.version, self.keys[lo - 1])[1] >= first:
            out.insert(0, lo - 1)
        return out

    def index(self, key: int) -> int | None:
        i = bisect_left(self.keys, key)
        return i if i < len(self.keys) and self.keys[i] == key else None


def _try(store, backend, config, nets, now: datetime, cap_checked: bool):
    from netblock.firewall import Change

    backend.ensure()
    view = backend.region_view()
    if view is None:
        return None
    installed = {v: _Installed(v, *cols) for v, cols in view.sets.items()}
    now_ts = now.timestamp()

    # The zone: disjoint CIDRs (version, first, prefixlen), grown to hold whatever overlaps it.
    zone = {_folded(n) for n in nets}
    blocks: dict = {}
    elements: dict[tuple[int, int], float] = {}
    lapsed: dict[tuple[int, int], float] = {}  # past their expiry: the kernel dropped them itself
    for _round in range(64):
        grown = set()
        for version, first, plen in zone:
            if version not in installed:
                return None  # a family netblock does not install: let sync say what it does
            last = first + (1 << (_BITS[version] - plen)) - 1
            inst = installed[version]
            for i in inst.overlapping(first, last):
                k, e = inst.keys[i], inst.expiry[i]
                if view.timed and e <= now_ts:
                    if e > now_ts - LAPSE_GRACE:
                        return None  # the kernel may hold it a moment longer: the full sync reads it
                    lapsed[(version, k)] = e
                else:
                    elements[(version, k)] = e
                if (k & 255) < plen:
                    grown.add((version, k >> 8, k & 255))
            for b in store.blocks_touching(version, first, plen, now):
                v, bfirst, bplen = _folded(b.netblock)
                blocks[b.netblock] = b
                if bplen < plen:
                    grown.add((v, bfirst, bplen))
            if len(blocks) > ZONE_LIMIT or len(elements) > ZONE_LIMIT:
                return None
        if not grown:
            break
        zone = _outermost(zone | grown)
    else:
        return None

    from netblock.aggregate import protected_builtin
    from netblock.decide.protect import Protection, fleet_members
    from netblock.run.sync import compute_desired, screen

    def touches(net: IPNetwork) -> bool:
        version, first, plen = _folded(net)
        last = first + (1 << (_BITS[version] - plen)) - 1
        return any(v == version and first <= zf + (1 << (_BITS[v] - zp)) - 1 and zf <= last for v, zf, zp in zone)

    allow = [e.netblock for e in store.allowlist()] + [IPNetwork(t) for t in config.blocks.allow]
    window = config.policy.delivered_window
    delivered = store.delivered_since(now - window) if window else set()
    prot = Protection(
        builtin=[n for n in protected_builtin() if touches(n)],
        allowlist=[n for n in allow if touches(n)],
        own=[n for n in [*hostaddrs.own_addresses(), *fleet_members(store)] if touches(n)],  # and the fleet's
        delivered={ip for ip in delivered if touches(IPNetwork(ip))},
        manual=[b.netblock for b in blocks.values() if b.source in MANUAL_SOURCES],
    )
    carve = prot.all()
    budget = config.policy.max_elements_per_block
    too_wide: list = []
    over_budget: list = []
    desired = compute_desired(screen(blocks.values(), carve, budget, too_wide, over_budget), carve)

    # The zone's new elements, merged upwards as aggregation merges: with each other, and with an
    # installed sibling outside the zone (which the kernel holds because sync wanted it).
    new: dict[tuple[int, int], float] = {}
    for net, expires in desired.items():
        version, first, plen = _folded(net)
        new[(version, _key(first, plen))] = math.nan if expires is None else expires.timestamp()
    gone: dict[tuple[int, int], float] = dict(elements)
    merged = True
    while merged:
        merged = False
        for version, k in sorted(new):
            if (version, k) not in new or not k & 255:
                continue
            bits, first, plen = _BITS[version], k >> 8, k & 255
            sibling = _key(first ^ (1 << (bits - plen)), plen)
            if (version, sibling) in new:
                sexp = new.pop((version, sibling))
            else:
                at = installed[version].index(sibling)
                if at is None or (version, sibling) in elements or (version, sibling) in lapsed:
                    continue
                sexp = installed[version].expiry[at]
                if view.timed and sexp <= now_ts:
                    if sexp > now_ts - LAPSE_GRACE:
                        return None
                    lapsed[(version, sibling)] = sexp  # gone from the kernel: nothing to merge with
                    continue
                gone[(version, sibling)] = sexp
            exp = new.pop((version, k))
            exp = math.nan if math.isnan(exp) or math.isnan(sexp) else max(exp, sexp)
            parent = plen - 1
            new[(version, _key(first >> (bits - parent) << (bits - parent), parent))] = exp
            merged = True

    zone_before = {**gone, **lapsed}  # what the zone held: the change's input, as the kernel had it

    # The cap: only a change that blocks more IPv4 space can cross it. `add` checked it before writing
    # (check_cap); otherwise the stored blocks summed, never less than what sync installs, must be under it.
    growth = _v4_size(new) - _v4_size(gone)
    if growth > 0 and not cap_checked and store.v4_block_space(now) > limits.MAX_V4_ADDRESSES:
        return None

    added, updated, removed = [], [], []
    change = Change()
    for (version, k), exp in sorted(new.items()):
        net = key_network(version, k)
        if (version, k) in gone:
            have = gone.pop((version, k))
            if _differs(have, exp, now_ts):
                updated.append((version, k, None if math.isnan(exp) else exp))
                if view.timed:  # as sync's diff(): a kernel without expiries has nothing to re-time
                    change.updated.append(net)
        else:
            added.append((version, k, None if math.isnan(exp) else exp))
            change.added.append(net)
    for version, k in sorted(gone):
        removed.append((version, k))
        change.removed.append(key_network(version, k))

    if removed:  # their counters go with them: keep what they counted, for these elements only
        from netblock.errors import NetblockError
        from netblock.run import sampling

        try:
            counted = backend.counters_of(view, removed)
        except NetblockError:
            return None  # the full sync reads them with the rest
        sampling.record(store, counted, now)
    if not backend.apply_region(view, removed, added, updated, sorted(lapsed)):
        return None
    if view.timed:  # elements that lapsed outside the zone are out of the kernel too, if not of the snapshot
        count = sum(1 for inst in installed.values() for e in inst.expiry if not e <= now_ts)
        count += len(added) - len(removed)
    else:
        count = sum(len(inst.keys) for inst in installed.values()) + len(added) - len(removed)
    notes = [f"{b.netblock} [{b.source}] ignored: {limits.width_refusal(b.netblock)}" for b in too_wide]
    notes += [f"{b.netblock} [{b.source}] left out: cutting the protected addresses out of it takes more "
              f"than {budget} kernel elements ([policy] max_elements_per_block); its offenders are "
              "blocked one by one instead" for b, _cost in over_budget]
    return DeltaResult(change=change, count=count, notes=notes,
                       before={key_network(v, k): _when(e) for (v, k), e in zone_before.items()},
                       after={key_network(v, k): _when(e) for (v, k), e in new.items()})


def _when(expires: float) -> datetime | None:
    return None if math.isnan(expires) else datetime.fromtimestamp(expires, timezone.utc)


def _v4_size(elements) -> int:
    return sum(1 << (32 - (k & 255)) for v, k in elements if v == 4)


def _outermost(cidrs: set) -> set:
    """The CIDRs not inside another of the set."""
    out = set()
    for version, first, plen in cidrs:
        inside = any(v == version and p < plen and first >> (_BITS[v] - p) == f >> (_BITS[v] - p)
                     for v, f, p in cidrs)
        if not inside:
            out.add((version, first, plen))
    return out


def _differs(current: float, wanted: float, now: float) -> bool:
    """Whether an installed expiry (NaN: permanent) is far enough from the wanted one to re-time it.

    The nftables backend's own tolerance: 1% of the remaining life, between 2 s and a minute.
    """
    if math.isnan(current) or math.isnan(wanted):
        return math.isnan(current) != math.isnan(wanted)
    slack = min(60.0, max(2.0, (wanted - now) / 100))
    return abs(current - wanted) > slack
