"""The ipset backend's set arithmetic: kernel members as arrays, the wanted keys, and their diff.

A key is ``first address << 8 | prefix length``; a timeout of 0 means
permanent. At 100k members a Python pass per member would cost more than
the whole one-member change it serves, so IPv4 goes through numpy (imported
only past NUMPY_FROM members), and a large set is diffed batch by batch
while the kernel is still listing it (StreamDiff).
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter, countOf

from netaddr import IPNetwork

from netblock.firewall.netlink.core import ATTR as _ATTR
from netblock.firewall.netlink.ipset import (
    A_DATA,
    D_BYTES,
    D_CIDR,
    D_IP,
    D_PACKETS,
    D_TIMEOUT,
    IPADDR_V4,
    IPADDR_V6,
    LIST_BATCH,
    walk,
)

MAX_TIMEOUT = 2147483  # seconds; ipset refuses (clamps) longer member timeouts
TOLERANCE = 2.0  # seconds of expiry difference that do not count as a change
NUMPY_FROM = 5000  # below this many members, importing numpy costs more than it saves
CONVERT_SLICE = 4096  # networks converted per C loop, which holds the GIL: see _convert_v4()
SWITCH_INTERVAL = 1e-4  # seconds; the GIL's switch interval while a Listing runs: see quick_gil_handover()


class _Network(IPNetwork):
    """An IPNetwork that carries its hash: counters() returns dicts of 100k of them.

    IPNetwork hashes in Python, through three properties, which made hashing
    the keys of counters() cost more than the kernel's listing itself. The
    hash stored here is the one IPNetwork would compute, so these compare
    and look up exactly like IPNetworks; it is checked at import below.
    """

    __slots__ = ("_hash",)

    def __hash__(self):
        try:
            return self._hash
        except AttributeError:  # made some other way than network()
            return IPNetwork.__hash__(self)

    def __reduce__(self):
        return IPNetwork, ((self._value, self._prefixlen),), (self._value, self._prefixlen, self._module.version)


_Network.__name__ = _Network.__qualname__ = "IPNetwork"  # its repr reads back as the network it stands for
_new_network = IPNetwork.__new__


def network(value: int, prefixlen: int, module, hashed: int | None = None) -> IPNetwork:
    """An IPNetwork without parsing; ``value`` is its first address."""
    net = _new_network(_Network)
    net._value, net._prefixlen, net._module = value, prefixlen, module
    net._hash = hash((module.version, value, value | ((1 << (module.width - prefixlen)) - 1))) \
        if hashed is None else hashed
    return net


def networks(keys: list[int], v6: bool) -> list[IPNetwork]:
    """network() of many keys, their hashes computed in one pass."""
    module = V6 if v6 else V4
    width = module.width
    values = [k >> 8 for k in keys]
    lasts = [v | ((1 << (width - (k & 255))) - 1) for v, k in zip(values, keys)]
    hashes = map(hash, zip(repeat(module.version), values, lasts))
    return [network(v, k & 255, module, h) for v, k, h in zip(values, keys, hashes)]


V4 = IPNetwork("0.0.0.0/0")._module
V6 = IPNetwork("::/0")._module
for _text in ("198.51.100.0/24", "203.0.113.7/32", "0.0.0.0/0", "2001:db8::/32", "::/0", "2001:db8::1/128"):
    _plain = IPNetwork(_text)
    for _made in (network(_plain.first, _plain.prefixlen, _plain._module),
                  networks([_plain.first << 8 | _plain.prefixlen], _plain.version == 6)[0]):
        assert _made == _plain and hash(_made) == hash(_plain) and str(_made) == _text and {_plain: 1}[_made] == 1
del _text, _plain, _made


@dataclass
class Members:
    """A set's members as the kernel lists them, in parallel lists (100k objects would cost more).

    A key is ``address << 8 | prefix length``; a timeout of 0 means permanent.
    """

    keys: list[int] = field(default_factory=list)
    timeouts: list[int] = field(default_factory=list)
    packets: list[int] = field(default_factory=list)
    bytes: list[int] = field(default_factory=list)
    # (keys as uint64, timeouts as int64, packets, bytes) when decoded through numpy: diff_v4() starts
    # from them. Decoded with lists=False, only these are filled: apply() then never makes 4 x 100k ints.
    arrays: tuple | None = field(default=None, repr=False, compare=False)

    def networks(self, v6: bool) -> list[IPNetwork]:
        return networks(self.keys, v6)

    def __len__(self) -> int:
        return len(self.arrays[0]) if self.arrays is not None else len(self.keys)

    def row(self, i: int) -> tuple[int, int, int, int]:
        """(key, timeout, packets, bytes) of member ``i``, as Python ints whichever way it was decoded."""
        if self.keys or self.arrays is None:
            return self.keys[i], self.timeouts[i], self.packets[i], self.bytes[i]
        key, timeout, packets, nbytes = (int(column[i]) for column in self.arrays)
        return key, timeout, packets, nbytes


def fast_members(blob: bytes, v6: bool, lists: bool = True) -> Members | None:
    """Decode members when every one has the kernel's usual layout (ip, cidr, timeout, bytes, packets).

    Returns None when the layout differs, so the caller falls back to the generic walk.
    """
    iplen = 16 if v6 else 4
    size = 4 + (8 + iplen) + 8 + 8 + 12 + 12
    if len(blob) % size:
        return None
    import numpy as np  # only here: its import costs more than decoding a small set

    dtype = np.dtype([("h", "<u2", (2,)), ("iph", "<u2", (4,)), ("ip", "u1", (iplen,)), ("ch", "<u2", (2,)),
                      ("cidr", "u1"), ("pad", "u1", (3,)), ("th", "<u2", (2,)), ("timeout", ">u4"),
                      ("bh", "<u2", (2,)), ("bytes", ">u8"), ("ph", "<u2", (2,)), ("packets", ">u8")])
    rec = np.frombuffer(blob, dtype=dtype)
    words = np.frombuffer(blob, dtype="<u4").reshape(len(rec), size // 4)
    ipaddr = IPADDR_V6 if v6 else IPADDR_V4
    # (length, type) of every attribute header; the kernel sets the byte-order flag on some, not all.
    expect = {"h": (size, A_DATA), "iph": (8 + iplen, D_IP, 4 + iplen, ipaddr), "ch": (5, D_CIDR),
              "th": (8, D_TIMEOUT), "bh": (12, D_BYTES), "ph": (12, D_PACKETS)}
    fields = dtype.fields
    assert fields is not None  # a structured dtype
    for name, values in expect.items():
        offset = fields[name][1] // 4
        for i in range(0, len(values), 2):
            column = words[:, offset + i // 2] & 0x3FFFFFFF
            if not (column == (values[i] | values[i + 1] << 16)).all():
                return None
    if v6:
        halves = np.ascontiguousarray(rec["ip"]).view(">u8").reshape(-1, 2).tolist()
        keys = [(hi << 64 | lo) << 8 | c for (hi, lo), c in zip(halves, rec["cidr"].tolist())]
        return Members(keys, rec["timeout"].tolist(), rec["packets"].tolist(), rec["bytes"].tolist())
    keys = (rec["ip"].view(">u4").ravel().astype(np.uint64) << np.uint64(8)) | rec["cidr"]
    timeouts = rec["timeout"].astype(np.int64)
    arrays = (keys, timeouts, rec["packets"], rec["bytes"])
    if not lists:
        return Members(arrays=arrays)
    return Members(keys.tolist(), timeouts.tolist(), rec["packets"].tolist(), rec["bytes"].tolist(), arrays=arrays)


def slow_members(blob: bytes) -> Members:
    """Generic decode of member nests, for layouts the fast path does not know."""
    out = Members()
    offset = 0
    while offset + 4 <= len(blob):
        length, _ = _ATTR.unpack_from(blob, offset)
        attrs = walk(blob, offset + 4, offset + length)
        offset += (length + 3) & ~3
        inner = walk(blob, *attrs[D_IP])
        a, b = inner.get(IPADDR_V4) or inner[IPADDR_V6]
        cidr = blob[attrs[D_CIDR][0]] if D_CIDR in attrs else (32 if b - a == 4 else 128)
        out.keys.append(int.from_bytes(blob[a:b], "big") << 8 | cidr)
        for attr, column in ((D_TIMEOUT, out.timeouts), (D_PACKETS, out.packets), (D_BYTES, out.bytes)):
            column.append(int.from_bytes(blob[slice(*attrs[attr])], "big") if attr in attrs else 0)
    return out


def decode(blob, v6: bool, lists: bool = True) -> Members:
    if not blob:
        return Members()
    return fast_members(blob, v6, lists) or slow_members(blob)


def wanted(nets: list, expiries: list, version: int, now: float,
            cache: dict | None = None) -> tuple[list[int], list[int]]:
    """(keys, timeouts) of the desired networks of one IP version that have not expired.

    A key is the canonical ``first address << 8 | prefix length``; a
    timeout of 0 means permanent (also for lives beyond MAX_TIMEOUT).
    IPv4 at scale goes through numpy: a Python pass per member would cost
    more than the whole one-member change it serves.
    """
    module = V6 if version == 6 else V4
    if version == 6 or len(nets) < NUMPY_FROM:
        keys, timeouts = [], []
        for net, expiry in zip(nets, expiries):
            if net._module is not module:
                continue
            if expiry is None:
                timeout = 0
            else:
                left = expiry.timestamp() - now
                if left < 1:
                    continue  # already expired: not installed
                timeout = 0 if left > MAX_TIMEOUT else int(left + 0.5)
            host = module.width - net._prefixlen
            keys.append(net._value >> host << host << 8 | net._prefixlen)
            timeouts.append(timeout)
        return keys, timeouts
    keys, timeout, keep = _wanted_v4(nets, expiries, now, cache)
    if keep.all():
        return keys, timeout
    return keys[keep], timeout[keep]


def _wanted_v4(nets: list, expiries: list, now: float, cache: dict | None):
    """(key, timeout, mask of those to install) per network, as numpy arrays: wanted() before its filtering."""
    import numpy as np

    from netblock.firewall.columns import timestamps

    keys, mine = _v4_keys(nets, cache)
    stamps = timestamps(expiries)
    if cache is not None:
        cache["stamps"] = (expiries, stamps)  # for installed_state(), right after
    left = stamps - now
    permanent = np.isnan(left)
    keep = permanent | (left >= 1)
    if mine is not None:
        keep &= mine
    with np.errstate(invalid="ignore"):
        timeout = np.where(permanent | (left > MAX_TIMEOUT), 0, np.floor(left + 0.5)).astype(np.int64)
    return keys, timeout, keep


def sorted_wanted(nets: list, expiries: list, now: float, cache: dict):
    """(keys, timeouts, index into ``nets``) of the IPv4 networks to install, in key order.

    For StreamDiff, which looks each arriving kernel member up among
    them. The sort order is kept in ``cache`` with the keys it sorted: an
    unchanged mapping is not sorted again.
    """
    keys, timeout, keep = _wanted_v4(nets, expiries, now, cache)
    if cache.get("sorted") is not keys:
        cache.update(sorted=keys, order=sort_keys(keys)[1])
    order = cache["order"]
    if not keep.all():
        order = order[keep[order]]
    return keys[order], timeout[order], order


def installed_state(nets: list, expiries: list, version: int, now: float,
                    cache: dict | None = None) -> tuple[bytes | list[int], bytes, float]:
    """What wanted() installs of one IP version, as the one-change path's snapshot keeps it.

    (sorted keys: IPv4 as the bytes of an array('Q'), IPv6 as a list of
    ints; their expiries as the bytes of an array('d'), epoch seconds, NaN
    for permanent; the earliest expiry, inf when none). An expiry is the
    wanted one, also beyond MAX_TIMEOUT where the kernel's member is
    permanent. With the ``cache`` apply() just used, IPv4 at scale reuses
    its keys, sort order and timestamps.
    """
    from array import array

    if version == 4 and len(nets) >= NUMPY_FROM:
        import numpy as np

        from netblock.firewall.columns import timestamps

        keys, mine = _v4_keys(nets, cache)
        held = cache.get("stamps") if cache else None
        stamps = held[1] if held is not None and held[0] is expiries else timestamps(expiries)
        keep = np.isnan(stamps) | (stamps - now >= 1)
        if mine is not None:
            keep &= mine
        order = cache["order"] if cache and cache.get("sorted") is keys else sort_keys(keys)[1]
        order = order[keep[order]]
        sorted_keys, sorted_expiry = keys[order], stamps[order]
        timed = sorted_expiry[~np.isnan(sorted_expiry)]
        earliest = float(timed.min()) if len(timed) else math.inf
        return sorted_keys.astype(np.uint64).tobytes(), sorted_expiry.astype(np.float64).tobytes(), earliest
    module = V6 if version == 6 else V4
    rows = []
    if countOf(map(_MODULE, nets), module):
        for net, expiry in zip(nets, expiries):
            if net._module is not module:
                continue
            e = math.nan if expiry is None else expiry.timestamp()
            if e == e and e - now < 1:
                continue  # already expired: not installed
            host = module.width - net._prefixlen
            rows.append((net._value >> host << host << 8 | net._prefixlen, e))
    rows.sort()
    keys_list = [k for k, _ in rows]
    earliest = min((e for _, e in rows if e == e), default=math.inf)
    return (array("Q", keys_list).tobytes() if version == 4 else keys_list), array("d", [e for _, e in rows]).tobytes(), \
        earliest


def _v4_keys(nets: list, cache: dict | None):
    """(canonical key per network, mask of the IPv4 ones or None when all are) as numpy arrays.

    Reading 100k attributes costs more than the rest of a 1-member change,
    so ``cache`` keeps the last conversion: when ``nets`` starts with the
    very networks converted last time (as when a caller keeps its mapping
    and adds to it), only the new tail is read. Identity is probed first so
    that equal-but-new objects never cost 100k Python comparisons.
    """
    import numpy as np

    last = cache.get("nets") if cache else None
    start = 0
    old = None
    if last and len(last) <= len(nets) and _same_start(nets, last):
        assert cache is not None  # last came from it
        start = len(last)
        old = cache["keys"], cache["mine"]
        if start == len(nets):
            return old
    keys, mine = _convert_v4(nets[start:] if start else nets)
    if old is not None:
        old_keys, old_mine = old
        keys = np.concatenate((old_keys, keys))
        if mine is not None or old_mine is not None:
            mine = np.concatenate((np.ones(len(old_keys), bool) if old_mine is None else old_mine,
                                   np.ones(len(keys) - len(old_keys), bool) if mine is None else mine))
    if cache is not None:
        cache.update(nets=nets, keys=keys, mine=mine)
    return keys, mine


def _same_start(nets: list, last: list) -> bool:
    n = len(last)
    if any(nets[i] is not last[i] for i in (0, n // 2, n - 1)):
        return False
    return nets[:n] == last  # C-speed while the objects are the same ones


def _convert_v4(nets: list):
    """_convert_v4_slice() over slices of CONVERT_SLICE networks.

    Reading attributes in a C loop holds the GIL throughout: converting
    100k networks in one go would keep a Listing thread that has a dump
    message ready waiting for 10 ms, and the kernel would idle meanwhile.
    """
    import numpy as np

    if len(nets) <= CONVERT_SLICE:
        return _convert_v4_slice(nets)
    parts = [_convert_v4_slice(nets[i:i + CONVERT_SLICE]) for i in range(0, len(nets), CONVERT_SLICE)]
    keys = np.concatenate([k for k, _ in parts])
    if all(m is None for _, m in parts):
        return keys, None
    return keys, np.concatenate([np.ones(len(k), bool) if m is None else m for k, m in parts])


def _convert_v4_slice(nets: list):
    import numpy as np

    n = len(nets)
    plens = np.fromiter(map(_PREFIXLEN, nets), dtype=np.int64, count=n).view(np.uint64)
    if countOf(map(_MODULE, nets), V4) == n:
        mine = None
        # int64 converts faster than uint64; IPv4 values fit either way.
        values = np.fromiter(map(_VALUE, nets), dtype=np.int64, count=n).view(np.uint64)
    else:
        mine = np.fromiter(map(id, map(_MODULE, nets)), dtype=np.uint64, count=n) == id(V4)
        idx = np.flatnonzero(mine)
        values = np.zeros(n, dtype=np.uint64)
        values[idx] = np.array([nets[i]._value for i in idx.tolist()], dtype=np.uint64)
        plens = np.where(mine, plens, np.uint64(32))
    host = np.uint64(32) - plens
    return (values >> host << host) << np.uint64(8) | plens, mine


_VALUE, _PREFIXLEN, _MODULE = attrgetter("_value"), attrgetter("_prefixlen"), attrgetter("_module")


def diff(members: Members, keys: list[int], timeouts: list[int]) -> tuple[list, list, list]:
    """(indexes of members to delete, [(key, timeout)] to add, [(key, timeout, member index)] to re-time)."""
    index = dict(zip(members.keys, range(len(members.keys))))
    kernel = members.timeouts
    add, update = [], []
    for key, timeout in zip(keys, timeouts):
        i = index.pop(key, None)
        if i is None:
            add.append((key, timeout))
        elif differs(kernel[i], timeout):
            update.append((key, timeout, i))
    return list(index.values()), add, update


def diff_v4(members: Members, keys, timeouts) -> tuple[list, list, list]:
    """diff() in numpy, for IPv4 keys (they fit in 64 bits): a 1-member change at 100k is then cheap.

    The kernel's keys are sorted once and the wanted ones looked up in them;
    the wanted keys need no sort, so a caller's order costs nothing.
    """
    import numpy as np

    if members.arrays is not None:
        have, have_t = members.arrays[:2]
    else:
        have = np.array(members.keys, dtype=np.uint64)
        have_t = np.array(members.timeouts, dtype=np.int64)
    want = np.asarray(keys, dtype=np.uint64)
    want_t = np.asarray(timeouts, dtype=np.int64)
    if not len(have) or not len(want):
        return list(range(len(have))), list(zip(want.tolist(), want_t.tolist())), []
    # Wanted keys mostly come in order, and binary searches made in order are several times cheaper
    # than the same searches made in the kernel's hash order.
    sorted_have, order = sort_keys(have)
    pos = np.minimum(np.searchsorted(sorted_have, want), len(have) - 1)
    found = sorted_have[pos] == want  # per wanted key: the kernel has it
    at = np.where(found, order[pos], -1)  # per wanted key: its index among the members
    kept = np.zeros(len(have), dtype=bool)  # per kernel member: still wanted
    kept[at[found]] = True
    kernel_t = np.where(found, have_t[np.maximum(at, 0)], 0)
    permanent = (kernel_t == 0) | (want_t == 0)
    changed = found & np.where(permanent, kernel_t != want_t, np.abs(kernel_t - want_t) > TOLERANCE)
    new = ~found
    add = list(zip(want[new].tolist(), want_t[new].tolist()))
    update = list(zip(want[changed].tolist(), want_t[changed].tolist(), at[changed].tolist()))
    return np.flatnonzero(~kept).tolist(), add, update


def sort_keys(keys):
    """(IPv4 keys sorted, their indexes), by a radix sort: prefix length, then the address's low and
    high 16 bits, each pass a stable argsort that numpy does by counting. Half the time of a
    comparison sort at 100k members, the largest single cost of apply() after the kernel's listing.
    """
    import numpy as np

    address = (keys >> np.uint64(8)).astype(np.uint32)
    order = np.argsort((keys & np.uint64(255)).astype(np.uint8), kind="stable")
    low = (address & 0xFFFF).astype(np.uint16)
    order = order[np.argsort(low[order], kind="stable")]
    high = (address >> 16).astype(np.uint16)
    order = order[np.argsort(high[order], kind="stable")]
    return keys[order], order


class StreamDiff:
    """diff_v4(), made batch by batch while the kernel's listing arrives.

    Given the wanted keys in key order (see sorted_wanted), each batch of
    kernel members is decoded, looked up among them and compared as it
    comes, and its columns are appended to arrays allocated up front: at
    100k members all of that is done by the time the listing is, and
    result() has only the few changed members to gather. (Concatenating
    the batches at the end would cost 2 ms, mostly first touches of fresh
    memory.) result() returns what diff_v4() would, in the same order:
    deletions in the kernel's order, additions and re-timings in the
    caller's.
    """

    def __init__(self, keys, timeouts, rank):
        import numpy as np

        self.keys, self.timeouts, self.rank = keys, timeouts, rank  # rank: index into the caller's networks
        self.hit = np.zeros(len(keys), dtype=bool)  # per wanted key: the kernel has it
        self.size = 0  # members fed so far
        room = len(keys) + LIST_BATCH * 1024  # as many members as wanted, and a batch more
        self.columns: tuple[np.ndarray, ...] = (  # as Members.arrays
            np.empty(room, np.uint64), np.empty(room, np.int64), np.empty(room, np.uint64), np.empty(room, np.uint64))
        self.deleted: list = []  # per batch, indexes of the members not wanted
        self.changed: list = []  # per batch, (member indexes, their wanted keys' positions) to re-time

    def feed(self, blob) -> bool:
        """Take one batch of member nests; False (nothing taken) when they need the generic decode."""
        import numpy as np

        if not blob:
            return True
        members = fast_members(blob, False, lists=False)
        if members is None:
            return False
        assert members.arrays is not None  # lists=False fills only them
        have = members.arrays[0]
        first = self.size
        self._store(members.arrays)
        if not len(self.keys):
            self.deleted.append(np.arange(first, self.size))
            return True
        # Binary searches made in key order are several times cheaper than in the kernel's hash order.
        order = sort_keys(have)[1]
        at = np.empty(len(have), np.intp)
        at[order] = np.searchsorted(self.keys, have[order])
        np.minimum(at, len(self.keys) - 1, out=at)
        found = self.keys[at] == have
        self.deleted.append(np.flatnonzero(~found) + first)
        index, at = np.flatnonzero(found), at[found]
        self.hit[at] = True
        kernel_t, want_t = members.arrays[1][index], self.timeouts[at]
        permanent = (kernel_t == 0) | (want_t == 0)
        changed = np.where(permanent, kernel_t != want_t, np.abs(kernel_t - want_t) > TOLERANCE)
        self.changed.append((index[changed] + first, at[changed]))
        return True

    def _store(self, arrays) -> None:
        import numpy as np

        end = self.size + len(arrays[0])
        if end > len(self.columns[0]):  # more members than wanted and a batch: make room for twice as many
            room = max(end, 2 * len(self.columns[0]))
            self.columns = tuple(np.concatenate((c[:self.size], np.empty(room - self.size, c.dtype)))
                                 for c in self.columns)
        for column, values in zip(self.columns, arrays):
            column[self.size:end] = values
        self.size = end

    def result(self) -> tuple[Members, tuple[list, list, list]]:
        """(the members listed, (indexes of members to delete, [(key, timeout)] to add,
        [(key, timeout, member index)] to re-time)), as diff_v4() makes them."""
        import numpy as np

        members = Members(arrays=tuple(c[:self.size] for c in self.columns))
        new = np.flatnonzero(~self.hit)
        new = new[np.argsort(self.rank[new], kind="stable")]
        add = list(zip(self.keys[new].tolist(), self.timeouts[new].tolist()))
        deleted = np.concatenate(self.deleted).tolist() if self.deleted else []
        update = []
        if self.changed:
            index = np.concatenate([i for i, _ in self.changed])
            at = np.concatenate([a for _, a in self.changed])
            by_caller = np.argsort(self.rank[at], kind="stable")
            index, at = index[by_caller], at[by_caller]
            update = list(zip(self.keys[at].tolist(), self.timeouts[at].tolist(), index.tolist()))
        return members, (deleted, add, update)


@contextmanager
def quick_gil_handover():
    """Lower the GIL's switch interval for the block, for a Listing thread's sake.

    When that thread has a batch of dump messages, it needs the GIL briefly
    before it can ask the kernel for the next batch; the kernel builds no
    message meanwhile. A thread waiting for the GIL asks its holder to let
    go only after the switch interval, 5 ms by default: at that rate the
    ten or so handovers of a 100k-member listing would add more than the
    diffing the main thread does meanwhile.
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def differs(kernel: int, wanted: int) -> bool:
    if kernel == 0 or wanted == 0:
        return kernel != wanted
    return abs(kernel - wanted) > TOLERANCE
