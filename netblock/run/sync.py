"""The one code path that makes the kernel equal to the store.

The CLI's mutating commands, `run-once` and every daemon tick call sync();
nothing else decides what goes into the kernel, so a crash, a reboot or a
hand-edited ruleset is repaired by whichever of them runs next.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable, Mapping

from netaddr import IPNetwork

from netblock import limits
from netblock.aggregate import aggregate, key_network, span
from netblock.decide import protect
from netblock.errors import NetblockError
from netblock.firewall import Change, KeyedDesired
from netblock.model import Block
from netblock.system.lock import DEFAULT_TIMEOUT, kernel_lock

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_PERMANENT = object()  # marks a desired netblock covered by a permanent block

# Kernel timeouts count down in whole seconds (and were set a moment before the
# store's expiry was computed), so a smaller difference is no drift.
EXPIRY_TOLERANCE = timedelta(seconds=5)


@dataclass
class SyncResult:
    desired: Mapping[IPNetwork, datetime | None]  # a KeyedDesired, built into a dict only when read
    change: Change
    installed_before: dict[IPNetwork, datetime | None] = field(default_factory=dict)
    missing: str | None = None  # dry run only: why nothing could be read (skeleton not installed)
    notes: list[str] = field(default_factory=list)  # store blocks left out (Plan.notes())

    @property
    def count(self) -> int:
        """How many netblocks the kernel holds after this sync (what delta.DeltaResult.count says too)."""
        return len(self.desired)


def received(store, blocks: list[Block]) -> list[Block]:
    """The store's blocks that pass validation on receipt (see netblock.store.receipt): a row breaking
    the width floors or the coverage cap is skipped and recorded, never installed, never fatal."""
    from netblock.store.receipt import within_floors

    return within_floors(store, blocks)


def _netblocks_and_expiries(blocks: Iterable[Block]) -> tuple[list[IPNetwork], list[datetime | None]]:
    """The two columns compute_desired needs; its own frame keeps no Block once this returns."""
    blocked, ends = [], []
    for block in blocks:
        blocked.append(block.netblock)
        ends.append(block.expires)
    return blocked, ends


def compute_desired(blocks: Iterable[Block], protect: Iterable[IPNetwork]) -> dict[IPNetwork, datetime | None]:
    """{CIDR: expiry} for the kernel: aggregated blocks minus protected.

    A CIDR that merges several blocks expires with the last of them (never, if
    any is permanent): dropping it earlier would unblock a still-active block,
    and the next sync after the earlier expiry splits it again anyway.
    """
    # Only the netblocks and expiries are needed: dropping the Blocks here
    # frees a storm's 100k reasons before aggregation runs (when the caller
    # passed the only reference, as desired_for does).
    blocked, ends = _netblocks_and_expiries(blocks)
    blocks = ()
    nets = aggregate(blocked, list(protect))
    families: dict[int, tuple[list[int], list[int], list[int]]] = {}
    for i, net in enumerate(nets):
        fam, first, last = span(net)
        firsts, lasts, index = families.setdefault(fam, ([], [], []))
        firsts.append(first)
        lasts.append(last)
        index.append(i)
    # aggregate() sorts, but do not rely on it for correctness of the bisection
    for fam, (firsts, lasts, index) in list(families.items()):
        order = sorted(range(len(firsts)), key=firsts.__getitem__)
        families[fam] = ([firsts[k] for k in order], [lasts[k] for k in order], [index[k] for k in order])

    latest: list = [None] * len(nets)  # None: not yet seen; _PERMANENT; else the latest expiry
    for netblock, expires in zip(blocked, ends):
        fam, first, last = span(netblock)
        if fam not in families:
            continue
        firsts, lasts, index = families[fam]
        k = bisect_right(firsts, last) - 1
        while k >= 0 and lasts[k] >= first:
            i = index[k]
            if expires is None:
                latest[i] = _PERMANENT
            elif latest[i] is None or (latest[i] is not _PERMANENT and expires > latest[i]):
                latest[i] = expires
            k -= 1
    return {net: (None if when is _PERMANENT else when) for net, when in zip(nets, latest)}


@dataclass
class Plan:
    """What sync will install, and the store's blocks it leaves out (and why)."""

    desired: Mapping[IPNetwork, datetime | None]
    too_wide: list[Block] = field(default_factory=list)  # wider than netblock's floor (limits.py)
    over_budget: list[tuple[Block, int]] = field(default_factory=list)  # (policy prefix, cost counted past budget)
    budget: int = limits.DEFAULT_MAX_ELEMENTS_PER_BLOCK
    v4: int | None = None  # IPv4 addresses desired covers, when plan_keys() counted them

    def check_coverage(self) -> None:
        """limits.check_coverage() of the desired set: refused whole, the kernel keeps what it has."""
        if self.v4 is None or self.v4 > limits.MAX_V4_ADDRESSES:
            limits.check_coverage(self.desired, disjoint=True)

    def notes(self) -> list[str]:
        """One line per block left out, for the CLI's warnings and the daemon's log."""
        out = [f"{b.netblock} [{b.source}] ignored: {limits.width_refusal(b.netblock)}" for b in self.too_wide]
        out += [f"{b.netblock} [{b.source}] left out: cutting the protected addresses out of it takes more "
                f"than {self.budget} kernel elements ([policy] max_elements_per_block); its offenders are "
                "blocked one by one instead" for b, _cost in self.over_budget]
        return out


def max_elements(config) -> int:
    """``[policy] max_elements_per_block``: what one decided block may cost in kernel elements.

    Read here, not through decide.policy.budget(): importing the policy imports numpy (0.15 s)."""
    return config.policy.max_elements_per_block


def screen(blocks: Iterable[Block], carve: list[IPNetwork], budget: int,
           too_wide: list[Block], over_budget: list[tuple[Block, int]]) -> Iterable[Block]:
    """The blocks sync may install, one by one; the others go to ``too_wide`` / ``over_budget``.

    A row wider than the floor never reaches the kernel, whoever wrote it (a
    fleet peer, an old version, a hand-edited store). A policy prefix (a
    widened or routed block) whose carve-outs would cost more than ``budget``
    elements is left out: the policy blocks its offenders one by one instead
    (policy.decide), so a thousand deliverers inside a widened /48 cost its
    few offenders' elements, not 64,000.
    """
    carved = None
    for block in blocks:
        net = block.netblock
        if limits.too_wide(net):
            too_wide.append(block)
            continue
        if block.source == "policy" and net.size > 1:
            if carved is None:
                carved = limits.Carved(carve)
            cost = carved.cost(net, budget)
            if cost > budget:
                over_budget.append((block, cost))
                continue
        yield block


def plan(store, config, *, now: datetime, own: Iterable[IPNetwork] | None = None) -> Plan:
    """The desired kernel state from the store as it is now, with what it leaves out.

    No store transaction is held here: sync runs under the kernel lock, and a
    caller holding the store's write lock while waiting for the kernel lock
    would deadlock against us. A write racing these reads is picked up by the
    next sync, which every writer runs after committing.
    """
    keyed = plan_keys(store, config, now=now, own=own)
    if keyed is not None:
        want = keyed.desired
        v4 = sum(1 << (32 - (k & 255)) for v, k in want if v == 4)
        return Plan(KeyedDesired(want, lambda: _networks_of(want)), keyed.too_wide, keyed.over_budget,
                    max_elements(config), v4)
    return plan_objects(store, config, now=now, own=own)


def _networks_of(want: dict[tuple[int, int], float]) -> dict[IPNetwork, datetime | None]:
    """KeyPlan.desired as plan()'s {IPNetwork: expiry}, in key order."""
    ends = {e: None if e != e else _EPOCH + timedelta(seconds=e) for e in set(want.values())}
    return {key_network(v, k): ends[want[v, k]] for v, k in sorted(want)}


def plan_objects(store, config, *, now: datetime, own: Iterable[IPNetwork] | None = None) -> Plan:
    """plan() with a Block per stored block: the reference plan_keys() is tested against, and its fallback."""
    carve = protect.for_sync(store, config, now=now, own=own).all()
    budget = max_elements(config)
    too_wide: list[Block] = []
    over_budget: list[tuple[Block, int]] = []
    desired = compute_desired(screen(received(store, store.blocks(now=now)), carve, budget, too_wide, over_budget), carve)
    return Plan(desired, too_wide, over_budget, budget)


@dataclass
class KeyPlan:
    """plan() as integers: {(version, first << 8 | prefixlen): expiry epoch seconds, NaN permanent}."""

    desired: dict[tuple[int, int], float]
    too_wide: list[Block] = field(default_factory=list)
    over_budget: list[tuple[Block, int]] = field(default_factory=list)


def plan_keys(store, config, *, now: datetime, own: Iterable[IPNetwork] | None = None) -> KeyPlan | None:
    """plan() without a Python object per block, or None where it would not be the same.

    A block whose span neither overlaps nor touches another block's, nor
    overlaps protected space, is its own kernel element: aggregation merges
    only overlapping or adjacent spans, carving only cuts protected space,
    and screen() leaves out only what floors or carving price. Those blocks
    stay integers; the others (a few, on a real store) go through the very
    screen() and compute_desired() plan() runs. None when the IPv4
    cap is at stake (plan() picks what fits).
    """
    from netblock.store import receipt

    if max_elements(config) < 1:
        return None
    keys = receipt.floor_keys(store, store.block_keys(now))
    if keys is None:
        return None
    carve = protect.for_sync(store, config, now=now, own=own).all()
    guarded: dict[int, tuple[list[int], list[int]]] = {}
    for fam, first, last in sorted(span(n) for n in carve):
        firsts, lasts = guarded.setdefault(fam, ([], []))
        firsts.append(first)
        lasts.append(last)
    maxlast = {fam: _running_max(lasts) for fam, (_f, lasts) in guarded.items()}
    desired: dict[tuple[int, int], float] = {}
    tangled: list[tuple] = []
    for fam in (4, 6):
        mine = sorted(k for k in keys if k[0] == fam)
        bits = 32 if fam == 4 else 128
        firsts, lasts = guarded.get(fam, ([], []))
        reach = maxlast.get(fam, [])
        if fam == 4 and len(mine) >= ALONE_IN_ARRAYS:
            tangled += _alone_v4(mine, firsts, reach, desired)
            continue
        before = -2
        for i, k in enumerate(mine):
            first = k[1]
            last = first + (1 << (bits - k[2])) - 1
            alone = before + 1 < first and (i + 1 == len(mine) or last + 1 < mine[i + 1][1])
            before = max(before, last)
            if alone and firsts:
                j = bisect_right(firsts, last) - 1  # protected spans starting at or before our last
                alone = j < 0 or reach[j] < first
            if alone:
                desired[(fam, first << 8 | k[2])] = math.nan if k[3] is None else float(k[3])
            else:
                tangled.append(k[4])
    too_wide: list[Block] = []
    over_budget: list[tuple[Block, int]] = []
    if tangled:
        found = receipt.blocks(store, tangled, full=False)
        for net, when in compute_desired(screen(found, carve, max_elements(config), too_wide, over_budget),
                                         carve).items():
            fam, first, _last = span(net)
            plen = net.prefixlen - (96 if net.version == 6 and fam == 4 else 0)
            desired[(fam, first << 8 | plen)] = math.nan if when is None else when.timestamp()
    return KeyPlan(desired, too_wide, over_budget)


ALONE_IN_ARRAYS = 1000  # IPv4 keys from which plan_keys() finds the lone ones in arrays (_alone_v4)


def _alone_v4(mine: list[tuple], firsts: list[int], reach: list[int],
              desired: dict[tuple[int, int], float]) -> list[tuple]:
    """plan_keys()' loop over sorted IPv4 keys in numpy: the lone ones go into ``desired`` (in the same
    order), the rows of the others are returned. At 100k keys the loop cost a tenth of a second."""
    from netblock.lazynp import np

    n = len(mine)
    first = np.fromiter((k[1] for k in mine), dtype=np.int64, count=n)
    plen = np.fromiter((k[2] for k in mine), dtype=np.int64, count=n)
    ends = np.fromiter((math.nan if k[3] is None else k[3] for k in mine), dtype=np.float64, count=n)
    last = first + (np.int64(1) << (32 - plen)) - 1
    before = np.empty(n, dtype=np.int64)  # the furthest last of the keys before each
    before[0] = -2
    np.maximum.accumulate(last[:-1], out=before[1:])
    alone = before + 1 < first
    alone[:-1] &= last[:-1] + 1 < first[1:]
    if firsts:
        j = np.searchsorted(np.array(firsts, dtype=np.int64), last, side="right") - 1
        alone &= (j < 0) | (np.array(reach, dtype=np.int64)[np.maximum(j, 0)] < first)
    pick = np.flatnonzero(alone)
    desired.update(zip([(4, k) for k in ((first[pick] << 8) | plen[pick]).tolist()], ends[pick].tolist()))
    return [mine[i][4] for i in np.flatnonzero(~alone).tolist()]


def _running_max(values: list[int]) -> list[int]:
    out, top = [], -1
    for v in values:
        top = max(top, v)
        out.append(top)
    return out


def desired_for(store, config, *, now: datetime, own: Iterable[IPNetwork] | None = None):
    """The desired kernel state from the store as it is now (see plan())."""
    return plan(store, config, now=now, own=own).desired


def diff(installed: Mapping[IPNetwork, datetime | None],
         desired: Mapping[IPNetwork, datetime | None]) -> Change:
    """What apply(desired) would have to do to ``installed``.

    An installed element without an expiry is not "updated": the iptables
    backend has no timeouts, and its rules are removed by sync instead.
    """
    change = Change()
    wanted = {_identity(net): want for net, want in desired.items()}
    held = {_identity(net) for net in installed}
    for net in desired:
        if _identity(net) not in held:
            change.added.append(net)
    for net, have in installed.items():
        key = _identity(net)
        if key not in wanted:
            change.removed.append(net)
            continue
        want = wanted[key]
        if have is not None and (want is None or abs(have - want) > EXPIRY_TOLERANCE):
            change.updated.append(net)
    for part in (change.added, change.removed, change.updated):
        part.sort(key=span)
    return change


@dataclass
class Drift:
    """What `status` says of the kernel: how many netblocks are desired and installed, and how they differ."""

    desired: int
    installed: int
    missing: int  # desired, not installed
    extra: int  # installed, not desired
    expiry: int  # installed with another expiry
    absent: str | None = None  # why nothing could be read (netblock's kernel objects are not there)


def drift(store, backend, config, *, now: datetime) -> Drift:
    """diff(read_installed(), desired_for()) counted, in integers where the kernel's generation proves
    netblock's last state and plan_keys() answers; otherwise through those very functions."""
    view = backend.region_view()
    planned = plan_keys(store, config, now=now) if view is not None else None
    if view is None or planned is None:
        desired = desired_for(store, config, now=now)
        read, absent = read_installed(backend)
        change = diff(read, desired)
        return Drift(len(desired), len(read), len(change.added), len(change.removed), len(change.updated),
                     absent)
    want = planned.desired
    now_ts = now.timestamp()
    tolerance = EXPIRY_TOLERANCE.total_seconds()
    installed = extra = expiry = found = 0
    for version, (keys, ends) in view.sets.items():
        for k, have in zip(keys, ends):
            if have == have and have <= now_ts:
                continue  # past its timeout: the kernel has dropped it
            installed += 1
            wanted = want.get((version, k))
            if wanted is None:
                extra += 1
                continue
            found += 1
            if view.timed and have == have and (wanted != wanted or abs(have - wanted) > tolerance):
                expiry += 1
    return Drift(len(want), installed, len(want) - found, extra, expiry)


def _identity(net: IPNetwork) -> tuple[int, int, int]:
    """What IPNetwork's == compares (version, first, last), as plain ints: hashing 100k IPNetworks
    through netaddr's key() cost diff() seconds."""
    width = 32 if net.version == 4 else 128
    plen = net.prefixlen
    return net.version, net.value >> (width - plen), plen


def read_installed(backend) -> tuple[dict[IPNetwork, datetime | None], str | None]:
    """installed(), or ({}, why) when netblock's kernel objects are not there at all.

    Read-only callers (dry run, status) must not ensure() the skeleton, and a
    flushed ruleset is exactly the drift they report. Backends say "missing"
    with a plain NetblockError; every more specific error (permission, missing
    tool or kernel feature, a stranger's object) still propagates.
    """
    try:
        proven = backend.installed_proven()
        return (dict(backend.installed()) if proven is None else proven), None
    except NetblockError as exc:
        if type(exc) is not NetblockError:
            raise
        return {}, str(exc)


SYNC_STEPS = 4  # store read, kernel read, counters sampled, kernel apply: what `stage` is called for


def sync(store, backend, config, *, now: datetime, dry_run: bool = False, lock: bool = True,
         lock_timeout: float = DEFAULT_TIMEOUT, own: Iterable[IPNetwork] | None = None,
         stage=None) -> SyncResult:
    """Make the kernel equal to the store (or, with dry_run, only say how it differs).

    The store is read under the kernel lock, so of two concurrent syncs the one
    that applies last has also read last. ``own`` overrides this host's
    addresses (tests); by default they are read from the kernel every time.
    ``stage()`` is called after each of the SYNC_STEPS steps (a progress bar:
    at 100k netblocks each step takes seconds).
    """
    stage = stage or (lambda: None)
    if dry_run:
        planned = plan(store, config, now=now, own=own)
        planned.check_coverage()
        stage()
        installed, missing = read_installed(backend)
        stage()
        return SyncResult(desired=planned.desired, change=diff(installed, planned.desired),
                          installed_before=installed, missing=missing, notes=planned.notes())
    if not lock:
        return _apply(store, backend, config, now=now, own=own, stage=stage)
    with kernel_lock(config.lock_file, timeout=lock_timeout):
        return _apply(store, backend, config, now=now, own=own, stage=stage)


def _apply(store, backend, config, *, now, own, stage) -> SyncResult:
    planned = plan(store, config, now=now, own=own)
    desired = planned.desired
    planned.check_coverage()
    stage()
    backend.ensure()
    proven = backend.installed_proven()
    installed = dict(backend.installed()) if proven is None else proven  # no dump while the generation proves it
    stage()
    change_plan = diff(installed, desired) if installed else Change()  # empty (a restore): nothing goes
    if change_plan.removed or change_plan.updated:  # their counters go with them: keep what they counted
        from netblock.run import sampling

        sampling.sample(store, backend, now)
    stage()
    change = backend.apply(desired)
    stage()
    return SyncResult(desired=desired, change=change, installed_before=installed, notes=planned.notes())
