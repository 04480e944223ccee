"""Turn single abusive IPs into the fewest CIDR netblocks that block exactly them.

Everything here works on integer intervals, never on one address object per
input: a spam storm is hundreds of thousands of addresses and the daemon
re-aggregates on every tick. IPv4 runs on numpy int64 arrays (half-open
intervals ``[start, end)``, so ``end`` may be 2**32); IPv6 inputs are few in
practice and use Python ints, which are exact at 128 bits.

IPv4-mapped IPv6 (``::ffff:198.18.1.1``) is folded to IPv4 on the way in,
because the kernel sees such a sender as IPv4 and an IPv6 rule would never
match it.

Text output follows FireHOL iprange's default format: a single host is printed
bare (``198.18.1.1``), any wider netblock with its length (``198.18.0.0/16``),
IPv4 before IPv6, ascending. ``aggregate6`` prints hosts as ``/32``; the
benchmark normalises that difference away.

Why this module is long: the interval algebra (merge, subtract, widen, carve)
and its text fast path are pure functions over one integer representation;
split, one invariant would span several files.
"""

from __future__ import annotations

import re
import socket
import sys
from array import array
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from netaddr import IPAddress, IPNetwork

from netblock.errors import BadInput
from netblock.lazynp import np

_MAPPED_FIRST = 0xFFFF_0000_0000
_MAPPED_LAST = 0xFFFF_FFFF_FFFF

_V4_TOKEN = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})(?:/([0-9]{1,2}))?")
_V6_TOKEN = re.compile(r"([0-9A-Fa-f:.]+)(?:/([0-9]{1,3}))?")


# --------------------------------------------------------------------------
# Interval sets: the two families kept apart.


@dataclass
class _Intervals:
    """Half-open address intervals of both families, not yet merged."""

    v4_start: Any  # array("q") while collecting, a numpy array after
    v4_end: Any
    v6: list[tuple[int, int]]

    @classmethod
    def empty(cls) -> "_Intervals":
        return cls([], [], [])

    def add(self, family: int, start: int, end: int) -> None:
        if family == 4:
            self.v4_start.append(start)
            self.v4_end.append(end)
        else:
            self.v6.append((start, end))

    def v4_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(self.v4_start, dtype=np.int64), np.asarray(self.v4_end, dtype=np.int64))


def _fold_v6(start: int, end: int) -> tuple[int, int, int]:
    """(family, start, end) with anything inside ::ffff:0:0/96 moved to IPv4.

    A v6 prefix wider than /96 that merely contains the mapped range stays
    IPv6: it names IPv6 space, and no IPv4 packet ever matches an IPv6 rule.
    """
    if start >= _MAPPED_FIRST and end - 1 <= _MAPPED_LAST:
        return 4, start - _MAPPED_FIRST, end - _MAPPED_FIRST
    return 6, start, end


def _no_leading_zero(field: str) -> bool:
    return len(field) == 1 or field[0] != "0"


def _parse_token(tok: str) -> tuple[int, int, int] | None:
    """One IP or CIDR as (family, start, end) with host bits masked, or None if malformed.

    Leading zeros in IPv4 fields are refused because ``010`` reads as octal to
    inet_aton and as decimal to most humans.
    """
    m = _V4_TOKEN.fullmatch(tok)
    if m:
        fields = m.groups()
        if not all(_no_leading_zero(f) for f in fields if f is not None):
            return None
        octets = [int(f) for f in fields[:4]]
        plen = 32 if fields[4] is None else int(fields[4])
        if max(octets) > 255 or plen > 32:
            return None
        value = (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]
        size = 1 << (32 - plen)
        start = value & ~(size - 1)
        return 4, start, start + size
    m = _V6_TOKEN.fullmatch(tok)
    if m and ":" in tok:
        addr, plen_text = m.groups()
        try:
            packed = socket.inet_pton(socket.AF_INET6, addr)
        except OSError:
            return None
        if plen_text is not None and not _no_leading_zero(plen_text):
            return None
        plen = 128 if plen_text is None else int(plen_text)
        if plen > 128:
            return None
        size = 1 << (128 - plen)
        start = int.from_bytes(packed, "big") & ~(size - 1)
        return _fold_v6(start, start + size)
    return None


def _interval_of(item: IPNetwork | IPAddress | str) -> tuple[int, int, int]:
    if isinstance(item, IPNetwork):
        first, end, version = item.first, item.last + 1, item.version
    elif isinstance(item, IPAddress):
        first, end, version = int(item), int(item) + 1, item.version
    elif isinstance(item, str):
        parsed = _parse_token(item)
        if parsed is None:
            raise BadInput(f"not an IP address or CIDR: {item!r}")
        return parsed
    else:
        raise BadInput(f"not an IP address or CIDR: {item!r}")
    if version == 6:
        return _fold_v6(first, end)
    return 4, first, end


def _collect(items: Iterable[IPNetwork | IPAddress | str]) -> _Intervals:
    # IPv4 bounds go straight into machine-word arrays: a storm's 100k blocks
    # would otherwise hold two int objects each until numpy takes over.
    out = _Intervals(array("q"), array("q"), [])
    for item in items:
        out.add(*_interval_of(item))
    return out


# --------------------------------------------------------------------------
# IPv4: vectorised.


def _v4_merge(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of half-open intervals: sorted, disjoint, and not touching."""
    if start.size == 0:
        return start, end
    # Sorting one packed key is about twice as fast as argsort plus two gathers;
    # within one start the order of ends does not matter to the running maximum.
    if start.size > 1 and np.all(start[1:] >= start[:-1]):
        s, e = start, end
    else:
        key = np.sort((start.astype(np.uint64) << np.uint64(32)) | (end - start - 1).astype(np.uint64))
        s = (key >> np.uint64(32)).astype(np.int64)
        e = s + (key & np.uint64(0xFFFF_FFFF)).astype(np.int64) + 1
    reach = np.maximum.accumulate(e)
    begins = np.empty(s.size, dtype=bool)
    begins[0] = True
    np.greater(s[1:], reach[:-1], out=begins[1:])
    first = np.flatnonzero(begins)
    last = np.append(first[1:] - 1, s.size - 1)
    return s[first], reach[last]


def _inside(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Which points fall in the merged intervals."""
    if start.size == 0:
        return np.zeros(points.size, dtype=bool)
    i = np.searchsorted(start, points, side="right") - 1
    ok = i >= 0
    result = np.zeros(points.size, dtype=bool)
    result[ok] = points[ok] < end[i[ok]]
    return result


def _v4_subtract(
    bs: np.ndarray, be: np.ndarray, ps: np.ndarray, pe: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Merged blocked minus merged protected, via the elementary segments between all boundaries."""
    if ps.size == 0 or bs.size == 0:
        return bs, be
    cuts = np.unique(np.concatenate((bs, be, ps, pe)))
    left, right = cuts[:-1], cuts[1:]
    keep = _inside(left, bs, be) & ~_inside(left, ps, pe)
    return _v4_merge(left[keep], right[keep])


def _v4_cidrs(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split intervals into the minimal CIDRs: (network, prefixlen), ascending.

    Each round takes, for every interval at once, the largest aligned block
    that starts at its cursor and fits; an interval yields at most 62 blocks,
    so the loop runs over block counts, not over intervals.
    """
    nets, lens = [], []
    cur, end = start.copy(), end.copy()
    while cur.size:
        align = np.frexp((cur & -cur).astype(np.float64))[1] - 1
        align[cur == 0] = 32
        fit = np.frexp((end - cur).astype(np.float64))[1] - 1
        k = np.minimum(align, fit)
        nets.append(cur)
        lens.append(32 - k)
        cur = cur + (np.int64(1) << k.astype(np.int64))
        more = cur < end
        cur, end = cur[more], end[more]
    if not nets:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    net = np.concatenate(nets)
    plen = np.concatenate(lens)
    order = np.argsort(net, kind="stable")
    return net[order], plen[order].astype(np.int64)


# --------------------------------------------------------------------------
# IPv6: exact Python ints.


def _py_merge(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _py_subtract(blocked: list[tuple[int, int]], protected: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Both inputs merged; walks them together."""
    out: list[tuple[int, int]] = []
    j = 0
    for s, e in blocked:
        while j < len(protected) and protected[j][1] <= s:
            j += 1
        k = j
        while s < e and k < len(protected) and protected[k][0] < e:
            ps, pe = protected[k]
            if ps > s:
                out.append((s, ps))
            s = max(s, pe)
            k += 1
        if s < e:
            out.append((s, e))
    return out


def _py_cidrs(intervals: list[tuple[int, int]], bits: int) -> list[tuple[int, int]]:
    out = []
    for s, e in intervals:
        while s < e:
            k = min((s & -s).bit_length() - 1 if s else bits, (e - s).bit_length() - 1)
            out.append((s, bits - k))
            s += 1 << k
    return out


# --------------------------------------------------------------------------
# The pure core.


@dataclass
class _Result:
    """Aggregated CIDRs before they become objects or text."""

    v4_net: np.ndarray
    v4_len: np.ndarray
    v6: list[tuple[int, int]]


def _aggregate_intervals(blocked: _Intervals, protected: _Intervals) -> _Result:
    bs, be = _v4_merge(*blocked.v4_arrays())
    ps, pe = _v4_merge(*protected.v4_arrays())
    net, plen = _v4_cidrs(*_v4_subtract(bs, be, ps, pe))
    v6 = _py_cidrs(_py_subtract(_py_merge(blocked.v6), _py_merge(protected.v6)), 128)
    return _Result(net, plen, v6)


SMALL = 256  # IPv4 intervals (blocked and protected) up to which aggregate() stays in plain Python


def aggregate(
    blocked: Iterable[IPNetwork | IPAddress | str],
    protected: Iterable[IPNetwork | IPAddress | str] = (),
) -> list[IPNetwork]:
    """The fewest non-overlapping CIDRs that cover exactly ``blocked`` minus ``protected``.

    A block that would swallow a protected address is split around it instead
    of being dropped, so one allowlisted host costs at most one extra prefix
    per bit of the block, never the block. Strings are parsed strictly (host
    bits masked); IPv4-mapped IPv6 counts as IPv4. Sorted, IPv4 first.

    >>> [str(n) for n in aggregate(["198.18.0.0/25", "198.18.0.128/25", "198.18.1.1",
    ...                             "::ffff:198.18.1.2", "2001:db8::/33", "2001:db8:8000::/33"])]
    ['198.18.0.0/24', '198.18.1.1/32', '198.18.1.2/32', '2001:db8::/32']
    >>> [str(n) for n in aggregate(["198.18.0.0/29"], protected=["198.18.0.3"])]
    ['198.18.0.0/31', '198.18.0.2/32', '198.18.0.4/30']
    """
    want, keep = _collect(blocked), _collect(protected)
    if len(want.v4_start) + len(keep.v4_start) <= SMALL:
        # A few intervals (one change's zone, netblock/run/delta.py): exact Python ints, no numpy import.
        v4 = _py_cidrs(_py_subtract(_py_merge(zip(want.v4_start, want.v4_end)),
                                    _py_merge(zip(keep.v4_start, keep.v4_end))), 32)
        out = [IPNetwork((n, p), version=4) for n, p in v4]
        out.extend(IPNetwork((n, p), version=6)
                   for n, p in _py_cidrs(_py_subtract(_py_merge(want.v6), _py_merge(keep.v6)), 128))
        return out
    result = _aggregate_intervals(want, keep)
    out = [IPNetwork((n, p), version=4) for n, p in zip(result.v4_net.tolist(), result.v4_len.tolist())]
    out.extend(IPNetwork((n, p), version=6) for n, p in result.v6)
    return out


def protected_builtin() -> list[IPNetwork]:
    """Space no drop rule may cover: blocking it breaks the host itself, never a spammer."""
    return [
        IPNetwork(text)
        for text in (
            "0.0.0.0/32",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "224.0.0.0/4",
            "::/128",
            "::1/128",
            "fe80::/10",
            "ff00::/8",
        )
    ]


_V4_MAPPED_FIRST = 0xFFFF_0000_0000
_V4_MAPPED_LAST = 0xFFFF_FFFF_FFFF


def _span_checked(net: IPNetwork) -> tuple[int, int, int]:
    if net.version == 6 and _V4_MAPPED_FIRST <= net.first and net.last <= _V4_MAPPED_LAST:
        return 4, net.first - _V4_MAPPED_FIRST, net.last - _V4_MAPPED_FIRST
    return net.version, net.first, net.last


# netaddr's IPNetwork is a slotted (_value, _prefixlen, _module) object whose
# properties cost more than the arithmetic behind them; `add -` of 100k asks
# for the span of every target three times over. The shortcuts below are used
# only while a probe of this netaddr says they give what its own API gives.
_new = object.__new__
_V4_MODULE = IPNetwork("0.0.0.0/0")._module


def _span_v4(net: IPNetwork) -> tuple[int, int, int]:
    if type(net) is IPNetwork and net._module is _V4_MODULE:
        value = net._value
        host = (1 << (32 - net._prefixlen)) - 1
        return 4, value & ~host, value | host
    return _span_checked(net)


def _v4_network_fast(value: int, prefixlen: int) -> IPNetwork:
    net = _new(IPNetwork)
    net._value = value
    net._prefixlen = prefixlen
    net._module = _V4_MODULE
    return net


def _v4_network_checked(value: int, prefixlen: int) -> IPNetwork:
    return IPNetwork((value, prefixlen), version=4)


def _probe_fast() -> bool:
    try:
        for text in ("198.18.7.9/24", "0.0.0.0/0", "255.255.255.255/32", "10.0.0.0/8"):
            net = IPNetwork(text)
            fast = _v4_network_fast(net.value, net.prefixlen)
            if (_span_v4(net) != _span_checked(net) or fast != net or hash(fast) != hash(net)
                    or str(fast) != str(net) or fast.first != net.first or fast.cidr != net.cidr
                    or fast.version != 4 or "__dict__" in dir(fast)):
                return False
        return _span_v4(IPNetwork("::ffff:198.18.0.0/112")) == (4, 0xC6120000, 0xC612FFFF)
    except Exception:  # any other netaddr: its own API
        return False


_FAST = _probe_fast()

span = _span_v4 if _FAST else _span_checked
span.__doc__ = """(family, first, last) with IPv4-mapped IPv6 folded into IPv4, as aggregation does."""

v4_network = _v4_network_fast if _FAST else _v4_network_checked
v4_network.__doc__ = """IPNetwork((value, prefixlen), version=4) of a value and prefix length already checked
(an int below 2**32, 0..32): a bulk load builds 100k of them."""


def key_network(version: int, key: int) -> IPNetwork:
    """The netblock of a kernel key (first << 8 | prefixlen), as sync's integer plans and the backends' snapshots
    hold them.

    >>> key_network(4, 0xC6120000 << 8 | 24), key_network(6, 0x20010DB8 << 104 | 32)
    (IPNetwork('198.18.0.0/24'), IPNetwork('2001:db8::/32'))
    """
    return v4_network(key >> 8, key & 255) if version == 4 else IPNetwork((key >> 8, key & 255), version=version)


# --------------------------------------------------------------------------
# Density widening.


@dataclass(frozen=True)
class WidenRule:
    """Block a whole /prefixlen once it holds min_count distinct offenders.

    Offenders are counted as distinct addresses when unit_prefixlen is None,
    else as distinct sub-prefixes of that length (so one busy /24 does not
    make its /16 look like a botnet).
    """

    family: int
    prefixlen: int
    min_count: int
    unit_prefixlen: int | None = None

    def __post_init__(self) -> None:
        bits = {4: 32, 6: 128}.get(self.family)
        unit = self.prefixlen if self.unit_prefixlen is None else self.unit_prefixlen
        if bits is None or not (1 <= self.prefixlen <= unit <= bits) or self.min_count < 1:
            raise BadInput(
                f"widen rule {self}: needs family 4 or 6, 1 <= prefix length <= unit length"
                " <= address bits, and a positive count"
            )


DEFAULT_WIDEN = (
    WidenRule(4, 24, 4, None),
    WidenRule(4, 16, 64, 24),
    WidenRule(6, 64, 2, None),
    WidenRule(6, 48, 8, 64),
)


@dataclass(frozen=True)
class Widened:
    """One widened netblock and why: the rule that fired and the offenders inside it."""

    netblock: IPNetwork
    rule: WidenRule
    offenders: list[IPAddress]


def address_int(ip: IPAddress) -> tuple[int, int]:
    """(family, integer) of an address as widening counts it: IPv4-mapped IPv6 folded into IPv4."""
    family, start, _ = _interval_of(ip)
    return family, start


def _offender_ints(offenders: Iterable[IPAddress | str]) -> tuple[np.ndarray, list[int]]:
    v4: list[int] = []
    v6: list[int] = []
    for item in offenders:
        family, start, _ = _interval_of(item if not isinstance(item, IPNetwork) else item.ip)
        (v4 if family == 4 else v6).append(start)
    return np.unique(np.array(v4, dtype=np.int64)), sorted(set(v6))


def widen_detail(
    offenders: Iterable[IPAddress | str],
    rules: Sequence[WidenRule] = DEFAULT_WIDEN,
    max_prefixlen: dict[int, int] | None = None,
) -> list[Widened]:
    """Every prefix a rule widens to, with its rule and offenders (what ``netblock why`` shows).

    Rules whose prefix is wider than ``max_prefixlen[family]`` never fire.
    Overlapping results (a /24 inside a widened /16) are all listed; callers
    that need a ruleset use :func:`widen`, which merges and carves.
    """
    v4, v6 = _offender_ints(offenders)
    out: list[Widened] = []
    for net, rule, addrs, lo, hi in widen_spans(v4, v6, rules, max_prefixlen):
        inside = [IPAddress(int(a), rule.family) for a in addrs[lo:hi].tolist()]
        out.append(Widened(net, rule, inside))
    return out


def widen_spans(
    v4: np.ndarray,
    v6: list[int],
    rules: Sequence[WidenRule] = DEFAULT_WIDEN,
    max_prefixlen: dict[int, int] | None = None,
) -> Iterator[tuple[IPNetwork, WidenRule, np.ndarray, int, int]]:
    """widen_detail() without an address object per offender: (netblock, rule, addresses, lo, hi).

    ``v4`` and ``v6`` are the sorted distinct offender integers (IPv4-mapped
    already folded); the netblock's offenders are ``addresses[lo:hi]``.  A
    storm's tick widens 100k offenders under several rules, and an object per
    offender per rule is most of its memory when only counts are needed.
    """
    limits = {4: 8, 6: 32} if max_prefixlen is None else max_prefixlen
    v6_addrs = None
    for rule in rules:
        bits = 32 if rule.family == 4 else 128
        if not (limits.get(rule.family, bits) <= rule.prefixlen <= bits):
            continue
        unit = bits if rule.unit_prefixlen is None else rule.unit_prefixlen
        if rule.family == 4:
            found = _widen_v4(v4, rule.prefixlen, unit, rule.min_count)
            addrs = v4
        else:
            found = _widen_py(v6, rule.prefixlen, unit, rule.min_count, bits)
            if v6_addrs is None:
                v6_addrs = np.array(v6, dtype=object)
            addrs = v6_addrs
        size = 1 << (bits - rule.prefixlen)
        for net in found:
            lo, hi = int(np.searchsorted(addrs, net)), int(np.searchsorted(addrs, net + size))
            yield IPNetwork((net, rule.prefixlen), version=rule.family), rule, addrs, lo, hi


def _widen_v4(addrs: np.ndarray, prefixlen: int, unit: int, min_count: int) -> list[int]:
    units = np.unique(addrs >> (32 - unit))
    keys, counts = np.unique(units >> (unit - prefixlen), return_counts=True)
    return (keys[counts >= min_count] << (32 - prefixlen)).tolist()


def _widen_py(addrs: list[int], prefixlen: int, unit: int, min_count: int, bits: int) -> list[int]:
    per_prefix: dict[int, set[int]] = defaultdict(set)
    for a in addrs:
        per_prefix[a >> (bits - prefixlen)].add(a >> (bits - unit))
    return sorted(k << (bits - prefixlen) for k, units in per_prefix.items() if len(units) >= min_count)


def widen(
    offenders: Iterable[IPAddress | str],
    rules: Sequence[WidenRule] = DEFAULT_WIDEN,
    protected: Iterable[IPNetwork | IPAddress | str] = (),
    max_prefixlen: dict[int, int] | None = None,
) -> list[IPNetwork]:
    """Prefixes to block in addition to the offenders themselves, protected space carved out.

    >>> [str(n) for n in widen(["198.18.7.%d" % i for i in (1, 2, 3, 4)])]
    ['198.18.7.0/24']
    >>> widen(["198.18.7.1", "198.18.7.2", "198.18.7.3"])
    []
    """
    found = widen_detail(offenders, rules, max_prefixlen)
    return aggregate([w.netblock for w in found], protected)


# --------------------------------------------------------------------------
# The text path behind `netblock aggregate`.

_DOT, _SLASH, _NL = ord("."), ord("/"), ord("\n")
_FAST_BYTES = b"0123456789./\n"


def _digits_at(buf: np.ndarray, where: np.ndarray) -> np.ndarray:
    return np.maximum(buf[where], ord("0")).astype(np.int16) - ord("0")


_CHUNK = 1 << 20


def _fast_v4(data: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """Parse a buffer holding only ``a.b.c.d[/n]`` lines (and blank lines) without a Python loop per line.

    Returns half-open (start, end) arrays, or None when anything is unusual
    (comments, IPv6, extra fields, any malformed line): the line-by-line parser
    then decides, and names the offending line. Works in chunks of whole lines
    of about 1 MiB, so the per-field temporaries stay small and their memory is
    reused instead of being faulted in afresh for a 100 MB working set.
    """
    if data.translate(None, _FAST_BYTES):
        return None
    if not data.endswith(b"\n"):
        data += b"\n"
    view = memoryview(data)
    starts, ends = [], []
    pos = 0
    while pos < len(data):
        cut = data.find(b"\n", min(pos + _CHUNK, len(data) - 1)) + 1
        parsed = _fast_v4_chunk(np.frombuffer(view[pos:cut], dtype=np.uint8))
        if parsed is None:
            return None
        starts.append(parsed[0])
        ends.append(parsed[1])
        pos = cut
    if not starts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(starts), np.concatenate(ends)


def _fast_v4_chunk(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`_fast_v4` for whole lines, ending with a newline."""
    sep_at = np.flatnonzero(buf < ord("0"))  # only . / and newline are below the digits here
    term = buf[sep_at]
    begin = np.empty_like(sep_at)
    begin[0] = 0
    begin[1:] = sep_at[:-1] + 1
    length = sep_at - begin
    # A zero-length field ended by a newline right after another newline is a blank line.
    prev_nl = np.empty(term.size, dtype=bool)
    prev_nl[0] = True
    prev_nl[1:] = term[:-1] == _NL
    blank = (length == 0) & (term == _NL) & prev_nl
    if blank.any():
        keep = ~blank
        sep_at, term, begin, length = sep_at[keep], term[keep], begin[keep], length[keep]
    if term.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if length.min() < 1 or length.max() > 3:
        return None
    if ((length > 1) & (buf[begin] == ord("0"))).any():
        return None
    # A separator reads as digit 0, so a missing tens digit costs nothing; a
    # hundreds position can still reach into the previous field, hence the mask.
    value = _digits_at(buf, sep_at - 1)
    value += 10 * _digits_at(buf, sep_at - 2)
    value += 100 * _digits_at(buf, sep_at - 3) * (length >= 3)

    is_nl = term == _NL
    line_start = np.empty(term.size, dtype=bool)
    line_start[0] = True
    line_start[1:] = is_nl[:-1]
    first = np.flatnonzero(line_start)
    nfields = np.diff(np.append(first, term.size))
    if not np.isin(nfields, (4, 5)).all():
        return None
    has_len = nfields == 5
    if not (
        (term[first] == _DOT).all()
        and (term[first + 1] == _DOT).all()
        and (term[first + 2] == _DOT).all()
        and (term[first + 3] == np.where(has_len, _SLASH, _NL)).all()
        and (term[first[has_len] + 4] == _NL).all()
    ):
        return None
    octets = [value[first + i].astype(np.int64) for i in range(4)]
    if max(int(o.max()) for o in octets) > 255:
        return None
    plen = np.full(first.size, 32, dtype=np.int64)
    plen[has_len] = value[first[has_len] + 4]
    if plen.max() > 32:
        return None
    addr = (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]
    size = np.int64(1) << (32 - plen)
    start = addr & ~(size - 1)
    return start, start + size


def _parse_text(data: bytes, what: str) -> _Intervals:
    """All addresses of one input text; BadInput names the first malformed line.

    Plain IPv4 lists take the vectorised parser directly. Anything else is cut
    down to the first field of each line in one cheap Python pass, the IPv4
    fields go through the vectorised parser together and only IPv6 fields are
    parsed one by one. If the IPv4 fields are not all plain, the strict
    line-by-line parser runs to find and name the offending line.
    """
    fast = _fast_v4(data)
    if fast is not None:
        return _Intervals(fast[0], fast[1], [])
    text = data.decode("utf-8", errors="replace")
    v4_fields: list[str] = []
    v6_fields: list[tuple[int, str]] = []
    for number, line in enumerate(text.split("\n"), 1):
        if "#" in line:
            line = line.split("#", 1)[0]
        fields = line.split(None, 1)
        if fields:
            if ":" in fields[0]:
                v6_fields.append((number, fields[0]))
            else:
                v4_fields.append(fields[0])
    fast = _fast_v4("\n".join(v4_fields).encode("ascii", errors="replace"))
    if fast is None:
        return _parse_lines(text, what)
    others = _Intervals.empty()
    for number, field in v6_fields:
        parsed = _parse_token(field)
        if parsed is None:
            raise BadInput(f"{what} line {number}: not an IP address or CIDR: {field!r}")
        others.add(*parsed)
    v4_start, v4_end = others.v4_arrays()
    return _Intervals(np.concatenate((fast[0], v4_start)), np.concatenate((fast[1], v4_end)), others.v6)


def _parse_lines(text: str, what: str) -> _Intervals:
    out = _Intervals.empty()
    for number, line in enumerate(text.split("\n"), 1):
        fields = line.split("#", 1)[0].split(None, 1)
        if not fields:
            continue
        parsed = _parse_token(fields[0])
        if parsed is None:
            raise BadInput(f"{what} line {number}: not an IP address or CIDR: {fields[0]!r}")
        out.add(*parsed)
    return out


def _as_bytes(lines: Iterable[str] | str | bytes) -> bytes:
    if isinstance(lines, bytes):
        return lines
    if isinstance(lines, str):
        return lines.encode()
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines).encode()


_OCTET_TABLE: list = []  # the digits of 0..255 right-aligned in 3 cells, built on first use (numpy is imported lazily)


def _octet_digits():
    if not _OCTET_TABLE:
        table = np.zeros((256, 3), dtype=np.uint8)
        for v in range(256):
            t = str(v).encode()
            table[v, 3 - len(t):] = np.frombuffer(t, dtype=np.uint8)
        _OCTET_TABLE.append(table)
    return _OCTET_TABLE[0]


def _format_v4(net: np.ndarray, plen: np.ndarray) -> bytes:
    """iprange-style text for many IPv4 CIDRs, one per line, built as one byte matrix.

    Each row is a fixed-width template whose unused digit cells are NUL; dropping
    the NULs leaves the text, so no Python string is formatted per row.
    """
    if net.size == 0:
        return b""
    rows = np.zeros((net.size, 19), dtype=np.uint8)
    octet_digits = _octet_digits()
    for i in range(4):
        rows[:, 4 * i : 4 * i + 3] = octet_digits[(net >> (24 - 8 * i)) & 0xFF]
    rows[:, [3, 7, 11]] = _DOT
    wide = plen != 32
    rows[wide, 15] = _SLASH
    rows[wide, 16:18] = octet_digits[plen[wide]][:, 1:]
    rows[:, 18] = _NL
    flat = rows.ravel()
    return flat[flat != 0].tobytes()


def _format_v6(cidrs: list[tuple[int, int]]) -> bytes:
    out = []
    for net, plen in cidrs:
        text = socket.inet_ntop(socket.AF_INET6, net.to_bytes(16, "big"))
        out.append(f"{text}\n" if plen == 128 else f"{text}/{plen}\n")
    return "".join(out).encode("ascii")


def _aggregate_bytes(data: bytes, exclude: bytes) -> bytes:
    blocked = _parse_text(data, "input")
    protected = _parse_text(exclude, "exclude")
    result = _aggregate_intervals(blocked, protected)
    return _format_v4(result.v4_net, result.v4_len) + _format_v6(result.v6)


def aggregate_text(data: bytes | str, exclude: bytes | str = b"") -> list[str]:
    """:func:`aggregate_lines` for a whole input at once (the fast way to feed a file or stdin)."""
    out = _aggregate_bytes(
        data.encode() if isinstance(data, str) else data,
        exclude.encode() if isinstance(exclude, str) else exclude,
    )
    return out.decode("ascii").split("\n")[:-1]


def aggregate_lines(lines: Iterable[str], exclude_lines: Iterable[str] = ()) -> list[str]:
    """Merged CIDRs, as text, of IPs/CIDRs given one per line, minus ``exclude_lines``.

    Input: one IPv4 or IPv6 address or CIDR per line, both families mixed;
    blank lines and ``#`` comments allowed; anything after the first
    whitespace-separated field ignored (so ``198.18.1.1 17`` counts-per-IP
    lists work); host bits masked (``198.18.1.7/24`` is 198.18.1.0/24, as
    iprange does); IPv4 fields with leading zeros refused (octal or decimal?).
    A malformed line raises BadInput naming its line number and text.

    Output: iprange's default format (see the module docstring).

    A pure ``a.b.c.d[/n]`` IPv4 input is parsed as one numpy buffer; with
    comments or extra fields one Python pass first cuts each line to its first
    field (IPv6 fields are then parsed one by one, as Python ints). No address
    object is built per line.

    >>> aggregate_lines(["198.18.0.1", "198.18.0.2  # seen 3 times", "", "198.18.0.3/32",
    ...                  "2001:db8::/127"], ["198.18.0.3"])
    ['198.18.0.1', '198.18.0.2', '2001:db8::/127']
    """
    return aggregate_text(_as_bytes(lines), _as_bytes(exclude_lines))


def main_aggregate(stdin=None, stdout=None, exclude_path: str | None = None, json: bool = False) -> int:
    """What ``netblock aggregate [--exclude FILE] [--json]`` runs: stdin in, merged CIDRs out, exit status.

    ``stdin`` is a binary stream (default ``sys.stdin.buffer``), read whole
    because one buffer is what the fast parser wants; ``stdout`` a text stream
    (written through its ``.buffer`` when it has one). With ``json`` the
    output is one JSON array of the same strings. BadInput (malformed line,
    unreadable exclude file) propagates so the CLI prints its one-line message
    and exits 2.
    """
    stdin = sys.stdin.buffer if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    data = stdin.read()
    exclude = b""
    if exclude_path is not None:
        try:
            with open(exclude_path, "rb") as f:
                exclude = f.read()
        except OSError as e:
            raise BadInput(f"cannot read exclude file {exclude_path!r}: {e.strerror}") from None
    out = _aggregate_bytes(data, exclude)
    if json:
        import json as json_module

        stdout.write(json_module.dumps(out.decode("ascii").split("\n")[:-1]) + "\n")
        return 0
    sink = getattr(stdout, "buffer", None)
    if sink is not None:
        stdout.flush()
        sink.write(out)
        sink.flush()
    else:
        stdout.write(out.decode("ascii"))
    return 0
