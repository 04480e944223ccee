"""The ipset backend's one change at the cost of the change: the four calls of netblock/run/delta.py.

ipset has no ruleset generation. What stands in for it is a snapshot of
what netblock last wrote (per set the sorted keys and wanted expiries, in
/run/netblock/ipset/, one file per network namespace) together with each
set's header as the kernel gave it right after that write: live members,
memory size, hash seed (new with every create) and hash size. The snapshot
is trusted while every header still says the same, read with one small
request per set and no listing, and while no member in it has reached its
expiry (the kernel stops counting an expired member at once, so the count
alone could no longer tell).

That check is cheap but not a proof: a hand edit that deletes one member and
adds another of the same size can leave the header as it was. So before it
writes, the change tests each member it re-times or removes (TEST, one small
request each), adds with NLM_F_EXCL (a member the snapshot did not know is
refused, and the adds made so far are taken back) and removes with NLM_F_EXCL
(a member already gone is refused): any disagreement returns False and the
caller runs the full sync, which reads the set. And RegionView.exact is
False: the daemon's tick does not take the headers as proof of the whole
set. It asks for region_view(whole=True), which also lists each set and
compares every member and timeout with the snapshot in arrays
(proves_whole): only then is the view exact and the tick's full sync
skipped, so a hand edit anywhere is repaired by the next tick, as before.

ipset has no transactions. The order of the writes keeps the set from ever
blocking less than both the state before and the state after: first every
addition (of both families), then the re-timings, then the removals. A
failure part-way leaves a set that blocks at least what the change meant
it to, and the full sync that follows settles it.

Counters: ipset cannot read one member's counters without listing the set,
so counters_of() (called only when a change removes members, to sample them
first) takes one listing and finds the members in its bytes, with no
Python object per listed member; counter_columns() (the daemon's periodic
sample) decodes the whole listing into arrays.
"""

from __future__ import annotations

import errno
import functools
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from netaddr import IPNetwork

from netblock import firewall
from netblock.firewall.columns import spliced
from netblock.firewall.ipset_diff import MAX_TIMEOUT, TOLERANCE, V4, V6, Members, decode, network, sort_keys
from netblock.firewall.names import IPSET_SET
from netblock.firewall.netlink.core import ATTR as _ATTR
from netblock.firewall.netlink.ipset import (
    CMD_ADD,
    CMD_DEL,
    D_BYTES,
    D_CIDR,
    D_PACKETS,
    Netlink,
    NetlinkError,
    encode_member,
    walk,
)
from netblock.firewall.snapshot import SnapshotFile

SNAPSHOT = SnapshotFile("ipset", 1)
EXPIRY_MARGIN = 2.0  # seconds: a member this close to its expiry may or may not be counted by the kernel
FIND_UP_TO = 16  # removed members looked up by a byte search of the listing; more: one decode of it all

# Listings counters_of() took in this process: the tests tell them from a change path that read a set back.
COUNTER_LISTINGS = 0

_VERSION = {"ipv4": 4, "ipv6": 6}
_FAMILY = {4: "ipv4", 6: "ipv6"}


@dataclass
class RegionView(firewall.RegionView):
    """The sets as netblock last wrote them, while their headers agree: {version: (sorted keys, expiries)}.

    Keys are first << 8 | prefixlen, expiries epoch seconds (NaN: permanent),
    as the nftables backend's view. ``exact`` is False: the headers vouch
    for the sets' size, not for each member (see the module docstring);
    ipset has no generation, so ``genid`` is 0.
    """

    heads: dict = field(default_factory=dict)  # {family: header facts at netblock's last write}
    earliest: float = math.inf  # the first expiry among the members (inf: none)


# ---------------------------------------------------------------- the snapshot file

def read(cookie: int) -> dict | None:
    return SNAPSHOT.read(cookie)


def write(cookie: int, sets: dict, heads: dict, earliest: float) -> None:
    """Write the snapshot: ``sets`` {family: (keys, expiries)} in file form, ``heads`` {family: header facts}."""
    SNAPSHOT.write(cookie, {"sets": sets, "heads": heads, "earliest": earliest})


def forget(cookie: int) -> None:
    SNAPSHOT.forget(cookie)


def heads_of(nl: Netlink, families) -> dict | None:
    """{family: header facts} of our sets as the kernel has them now; None when a set is missing."""
    out = {}
    for family in families:
        header = nl.header(IPSET_SET[family])
        if header is None:
            return None
        out[family] = header.facts()
    return out


# ---------------------------------------------------------------- the four calls

def region_view(nl: Netlink, families) -> RegionView | None:
    """The snapshot as a RegionView, if every set's header still says what it said after netblock's write."""
    cookie = nl.netns_cookie()
    data = read(cookie)
    if data is None or data["earliest"] <= time.time() + EXPIRY_MARGIN:
        return None
    heads = heads_of(nl, families)
    try:
        if heads is None or any(tuple(data["heads"][f]) != facts for f, facts in heads.items()):
            return None
        sets = {}
        for family in families:
            keys, expiry = data["sets"][family]
            keys = memoryview(keys).cast("Q") if family == "ipv4" else list(keys)
            expiry = memoryview(expiry).cast("d")
            if len(keys) != len(expiry):
                return None
            sets[_VERSION[family]] = (keys, expiry)
    except (LookupError, TypeError, ValueError):
        return None
    return RegionView(0, cookie, sets, exact=False, heads=data["heads"], earliest=data["earliest"])


def proves_whole(nl: Netlink, families, view: RegionView, orders: dict | None = None) -> bool:
    """Whether the sets hold exactly the view's members, each with the timeout the full sync would leave.

    One listing per set (about 40 ms of kernel time at 100k) compared in
    arrays, no Python object per member: what lets the daemon's tick skip its
    full sync on ipset while still catching any hand edit, a swap that keeps
    the header included. ``orders`` keeps each set's sort order between
    calls (see in_key_order).
    """
    import numpy as np

    now = time.time()
    for family in families:
        version = _VERSION[family]
        keys, expiry = view.sets[version]
        _headers, blob = nl.list(IPSET_SET[family])
        got_keys, got_timeouts, _packets, _bytes = columns(decode(blob, version == 6, lists=False), version == 6)
        if len(got_keys) != len(keys):
            return False
        order, got_keys = in_key_order(got_keys, family, {} if orders is None else orders)
        want = np.frombuffer(keys, dtype=np.uint64) if version == 4 else np.array(list(keys), dtype=object)
        if not np.array_equal(got_keys, want):
            return False
        left = np.frombuffer(expiry, dtype=np.float64) - now  # NaN: permanent
        wanted = np.where(np.isnan(left) | (left > MAX_TIMEOUT), 0,
                          np.maximum(1, np.floor(np.nan_to_num(left) + 0.5))).astype(np.int64)
        kernel = got_timeouts[order]
        zero = (kernel == 0) | (wanted == 0)
        if np.any(np.where(zero, kernel != wanted, np.abs(kernel - wanted) > TOLERANCE)):
            return False
    return True


def columns(members: Members, v6: bool) -> tuple:
    """(keys, timeouts, packets, bytes) of a decoded listing as numpy arrays, in the kernel's order.

    Keys are uint64 for IPv4, Python ints (dtype object) for IPv6; timeouts
    int64; counters possibly big-endian views of the listing's buffer.
    """
    import numpy as np

    if members.arrays is not None:
        return members.arrays
    return (np.array(members.keys, dtype=object if v6 else np.uint64), np.array(members.timeouts, dtype=np.int64),
            np.array(members.packets, dtype=np.uint64), np.array(members.bytes, dtype=np.uint64))


def in_key_order(keys, family: str, orders: dict) -> tuple:
    """(the permutation that sorts ``keys``, the keys sorted), reusing the last one kept in ``orders``.

    The kernel lists a hash set in its hash's order, which stays the same
    while the set does: the order of the last listing is tried first and
    kept only if the keys come out strictly increasing (members are unique,
    so then it is the sort), which costs one pass instead of a sort.
    """
    import numpy as np

    order = orders.get(family)
    if order is not None and len(order) == len(keys):
        ordered = keys[order]
        if len(ordered) < 2 or bool(np.all(ordered[1:] > ordered[:-1])):
            return order, ordered
    if keys.dtype == np.uint64:
        ordered, order = sort_keys(keys)
    else:
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
    orders[family] = order
    return order, ordered


def counter_columns(nl: Netlink, families, orders: dict) -> dict[int, tuple]:
    """{version: (sorted keys, packets, bytes)} of the sets, one listing each decoded straight into arrays.

    A missing set has no members. ``orders`` as for proves_whole: the
    daemon samples a set it has just proven, in the same hash order.
    """
    import numpy as np

    out = {}
    for family in families:
        v6 = family == "ipv6"
        try:
            _headers, blob = nl.list(IPSET_SET[family])
        except NetlinkError as exc:
            if exc.errno != errno.ENOENT:
                raise
            blob = bytearray()
        keys, _timeouts, packets, nbytes = columns(decode(blob, v6, lists=False), v6)
        order, keys = in_key_order(keys, family, orders)
        # Copies in native order: what the daemon keeps until its next sample holds no listing.
        out[6 if v6 else 4] = (keys, packets[order].astype(np.uint64), nbytes[order].astype(np.uint64))
    return out


def trim_heap() -> None:
    """Give the pages a listing used back to the system: the daemon's tick lists every set every 30 s.

    After its first large free, glibc serves buffers of a listing's size
    from the heap and keeps them when freed, so without this an idle daemon
    at 100k members holds about 17 MB more than it uses; malloc_trim takes
    about a millisecond.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc


def installed_proven(view: RegionView) -> dict[IPNetwork, datetime | None]:
    """installed() from the view: its members with their wanted expiries (none has expired, or there is no view)."""
    out: dict[IPNetwork, datetime | None] = {}
    for version, (keys, expiry) in view.sets.items():
        module = V6 if version == 6 else V4
        for k, e in zip(keys, expiry):
            out[network(k >> 8, k & 255, module)] = None if e != e else datetime.fromtimestamp(e, timezone.utc)
    return out


def counters_of(nl: Netlink, keys: list[tuple[int, int]]) -> dict[IPNetwork, tuple[int, int]]:
    """{netblock: (packets, bytes)} of the members ``keys`` ((version, first << 8 | prefixlen)); absent ones left out.

    One listing per family (ipset reads no single member's counters);
    a few members are found by searching the listing's bytes for their
    address and prefix, more by decoding it all once.
    """
    global COUNTER_LISTINGS
    out: dict[IPNetwork, tuple[int, int]] = {}
    for version in (4, 6):
        mine = [k for v, k in keys if v == version]
        if not mine:
            continue
        COUNTER_LISTINGS += 1
        _headers, blob = nl.list(IPSET_SET[_FAMILY[version]])
        module = V6 if version == 6 else V4
        found = _find(blob, mine, version) if len(mine) <= FIND_UP_TO else None
        if found is None:
            members = decode(blob, version == 6)
            index = dict(zip(members.keys, range(len(members.keys))))
            found = {k: (members.packets[index[k]], members.bytes[index[k]]) for k in mine if k in index}
        for k, counted in found.items():
            out[network(k >> 8, k & 255, module)] = counted
    return out


def _find(blob: bytes | bytearray, keys: list[int], version: int) -> dict[int, tuple[int, int]] | None:
    """{key: (packets, bytes)} of the members found in a listing's bytes; None when one is not found plainly.

    A member is the nest (DATA (IP (IPADDR address)) (CIDR prefix) ...):
    the address followed by the CIDR attribute is searched for, and the
    headers before it checked, so a match elsewhere is never taken.
    """
    width = 16 if version == 6 else 4
    out = {}
    for key in keys:
        needle = (key >> 8).to_bytes(width, "big") + _ATTR.pack(5, D_CIDR) + bytes([key & 255])
        pos = blob.find(needle)
        while pos >= 0:
            start = pos - 4 - 4 - 4  # IPADDR header, IP header, DATA header
            if start >= 0 and (start & 3) == 0:
                length, kind = _ATTR.unpack_from(blob, start)
                iplen, ipkind = _ATTR.unpack_from(blob, start + 4)
                if kind & 0x3FFF == 7 and iplen == 8 + width and ipkind & 0x3FFF == 1 and start + length <= len(blob):
                    attrs = walk(blob, start + 4, start + length)
                    if D_PACKETS in attrs and D_BYTES in attrs:
                        out[key] = (int.from_bytes(blob[slice(*attrs[D_PACKETS])], "big"),
                                    int.from_bytes(blob[slice(*attrs[D_BYTES])], "big"))
                        break
            pos = blob.find(needle, pos + 1)
        else:
            return None
    return out


def _timeout(expires: float | None, now: float) -> int:
    """The kernel timeout of a wanted expiry, as apply() computes it (0: permanent, also beyond MAX_TIMEOUT)."""
    if expires is None:
        return 0
    left = expires - now
    return 0 if left > MAX_TIMEOUT else max(1, int(left + 0.5))


def apply_region(nl: Netlink, families, view: RegionView, removed: list[tuple[int, int]],
                 added: list[tuple[int, int, float | None]], updated: list[tuple[int, int, float | None]]) -> bool:
    """Add, re-time and remove the given members, in that order; False (the caller runs the full sync) on any doubt.

    Keys are (version, first << 8 | prefixlen), expiries epoch seconds
    (None: permanent). On success the snapshot is written anew with the
    headers the kernel gives after the writes.
    """
    if nl.netns_cookie() != view.cookie:
        return False
    if any(_FAMILY[v] not in families for v in [r[0] for r in removed] + [a[0] for a in added + updated]):
        return False
    now = time.time()

    def members(rows: list[tuple[int, int, float | None]], timed: bool) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {}
        for v, k, e in rows:
            batch = out.setdefault(IPSET_SET[_FAMILY[v]], [])
            batch.append(encode_member(k >> 8, k & 255, v == 6, len(batch) + 1, _timeout(e, now) if timed else None))
        return out

    adds, ups = members(added, True), members(updated, True)
    dels = members([(v, k, None) for v, k in removed], False)
    try:
        for v, k in removed + [(u[0], u[1]) for u in updated]:
            if not nl.test(IPSET_SET[_FAMILY[v]], encode_member(k >> 8, k & 255, v == 6, 1)):
                forget(view.cookie)
                return False  # the kernel no longer holds what the snapshot says
        done: list[tuple[str, list[bytes]]] = []
        for name, batch in adds.items():
            try:
                nl.adt(CMD_ADD, name, batch, exclusive=True)
            except NetlinkError as exc:
                # Take back what this change added: the kernel held a member the snapshot did not know.
                done.append((name, batch[:max(exc.lineno - 1, 0)] if exc.lineno else batch))
                for undo_name, undo in done:
                    nl.adt(CMD_DEL, undo_name, undo)
                forget(view.cookie)
                return False
            done.append((name, batch))
        for name, batch in ups.items():
            nl.adt(CMD_ADD, name, batch)  # -exist: a new timeout, the counters stay
        for name, batch in dels.items():
            nl.adt(CMD_DEL, name, batch, exclusive=True)
        heads = heads_of(nl, families)
    except NetlinkError:
        forget(view.cookie)
        return False
    if heads is None:
        forget(view.cookie)
        return False
    sets = {_FAMILY[v]: spliced(keys, expiry, v, removed, added, updated) for v, (keys, expiry) in view.sets.items()}
    changed = [e for _v, _k, e in added + updated if e is not None]
    write(view.cookie, sets, heads, min([view.earliest, *changed]))
    return True
