"""netblock's fixed floors and caps: what no block, however it was made, may exceed.

These hold on every path: a prefix typed with ``--force``, a decision of the
policy, a row read from the store at sync (a fleet's store may hold a
compromised peer's rows). They are not configurable, so a typo in a config
file or a stolen peer cannot lift them; the configurable limits
(``[blocks] max_prefix_v4``, ``[widen] max_prefix_v4``, …) only ever narrow.

* Width floor: nothing wider than /4 (IPv4, 268 million addresses) or /16
  (IPv6). A /4 is already a sixteenth of the address space; a block wider
  than that is a mistake or an attack, never a spammer.
* Coverage cap: the IPv4 space the kernel drops is at most 2^28 addresses
  in total (one /4's worth), so a flood of wide blocks, each under the
  floor, still cannot cut a server off from most of the Internet.

Everything here is pure (netblocks in, numbers or one-line refusals out),
so the fleet code can validate what it receives with the same functions.
"""

from __future__ import annotations

from typing import Iterable

from netaddr import IPNetwork

from netblock.errors import LimitExceeded

MIN_PREFIXLEN = {4: 4, 6: 16}
MAX_V4_ADDRESSES = 1 << 28

_MAPPED_FIRST = 0xFFFF_0000_0000
_MAPPED_LAST = 0xFFFF_FFFF_FFFF


def family_and_prefixlen(net: IPNetwork) -> tuple[int, int]:
    """(family, prefix length) with IPv4-mapped IPv6 counted as the IPv4 it is.

    >>> family_and_prefixlen(IPNetwork("::ffff:198.18.0.0/112"))
    (4, 16)
    """
    if net.version == 6 and net.prefixlen >= 96 and _MAPPED_FIRST <= net.first and net.last <= _MAPPED_LAST:
        return 4, net.prefixlen - 96
    return net.version, net.prefixlen


def too_wide(net: IPNetwork) -> bool:
    """Whether ``net`` is wider than the floor of its family.

    >>> too_wide(IPNetwork("16.0.0.0/4")), too_wide(IPNetwork("0.0.0.0/3"))
    (False, True)
    >>> too_wide(IPNetwork("2001::/16")), too_wide(IPNetwork("2000::/15"))
    (False, True)
    """
    family, plen = family_and_prefixlen(net)
    return plen < MIN_PREFIXLEN[family]


def width_refusal(net: IPNetwork) -> str | None:
    """Why ``net`` may never be blocked, or None.

    >>> width_refusal(IPNetwork("0.0.0.0/1"))
    '/1 is wider than /4, the widest IPv4 block netblock ever installs (even with --force)'
    >>> width_refusal(IPNetwork("198.18.0.0/15")) is None
    True
    """
    if not too_wide(net):
        return None
    family, plen = family_and_prefixlen(net)
    floor = MIN_PREFIXLEN[family]
    return (f"/{plen} is wider than /{floor}, the widest IPv{family} block netblock ever installs "
            "(even with --force)")


def check_width(net: IPNetwork, what: str | None = None) -> None:
    """LimitExceeded naming ``what`` (default: the netblock) if ``net`` is too wide.

    >>> check_width(IPNetwork("128.0.0.0/1"))
    Traceback (most recent call last):
    ...
    netblock.errors.LimitExceeded: 128.0.0.0/1: /1 is wider than /4, the widest IPv4 block netblock ever installs (even with --force)
    """
    why = width_refusal(net)
    if why:
        raise LimitExceeded(f"{what or net}: {why}")


def v4_addresses(nets: Iterable[IPNetwork], *, disjoint: bool = False) -> int:
    """How many IPv4 addresses the union of ``nets`` covers (IPv4-mapped IPv6 counted as IPv4).

    Overlaps count once, so the answer is the same for a block list before and
    after aggregation; ``disjoint`` (aggregation's output) skips the sorting.

    >>> v4_addresses([IPNetwork("198.18.0.0/24"), IPNetwork("198.18.0.128/25"), IPNetwork("2001:db8::/32")])
    256
    >>> v4_addresses([IPNetwork("::ffff:198.18.0.0/120"), IPNetwork("198.18.1.1/32")])
    257
    """
    if disjoint:
        return sum(1 << (32 - plen) for family, plen in map(family_and_prefixlen, nets) if family == 4)
    spans = []
    for net in nets:
        if net.version == 4:
            spans.append((net.first, net.last))
        elif _MAPPED_FIRST <= net.first and net.last <= _MAPPED_LAST:
            spans.append((net.first - _MAPPED_FIRST, net.last - _MAPPED_FIRST))
    total, reach = 0, -1
    for first, last in sorted(spans):
        if last <= reach:
            continue
        total += last - max(first, reach + 1) + 1
        reach = last
    return total


def coverage_refusal(nets: Iterable[IPNetwork], *, disjoint: bool = False) -> str | None:
    """Why a kernel state of ``nets`` may not be installed (over the IPv4 cap), or None.

    >>> coverage_refusal([IPNetwork("16.0.0.0/4")]) is None
    True
    >>> coverage_refusal([IPNetwork("16.0.0.0/4"), IPNetwork("198.18.0.1/32")])
    'it would block 268435457 IPv4 addresses, over the cap of 268435456 (2^28)'
    """
    total = v4_addresses(nets, disjoint=disjoint)
    if total <= MAX_V4_ADDRESSES:
        return None
    return f"it would block {total} IPv4 addresses, over the cap of {MAX_V4_ADDRESSES} (2^28)"


def check_coverage(nets: Iterable[IPNetwork], head: str = "the kernel is left as it was", *,
                   disjoint: bool = False) -> None:
    """LimitExceeded if the kernel state ``nets`` would block more IPv4 space than the cap.

    >>> check_coverage([IPNetwork("0.0.0.0/4"), IPNetwork("16.0.0.0/4")])
    Traceback (most recent call last):
    ...
    netblock.errors.LimitExceeded: the kernel is left as it was: it would block 536870912 IPv4 addresses, over the cap of 268435456 (2^28)
    """
    why = coverage_refusal(nets, disjoint=disjoint)
    if why:
        raise LimitExceeded(f"{head}: {why}")


# -- what one block costs in kernel elements once protected space is carved out of it --

DEFAULT_MAX_ELEMENTS_PER_BLOCK = 64


class Carved:
    """Protected space as merged, sorted spans per family, for pricing many blocks against it.

    IPv4-mapped IPv6 is folded to IPv4, as aggregation folds it.
    """

    def __init__(self, nets: Iterable[IPNetwork]):
        spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for net in nets:
            family, first, last = _span(net)
            spans[family].append((first, last))
        self._firsts: dict[int, list[int]] = {}
        self._lasts: dict[int, list[int]] = {}
        for family, items in spans.items():
            firsts: list[int] = []
            lasts: list[int] = []
            for first, last in sorted(items):
                if lasts and first <= lasts[-1] + 1:
                    lasts[-1] = max(lasts[-1], last)
                else:
                    firsts.append(first)
                    lasts.append(last)
            self._firsts[family], self._lasts[family] = firsts, lasts

    def cost(self, net: IPNetwork, limit: int | None = None) -> int:
        """Kernel elements (CIDRs) ``net`` takes with the protected space cut out of it.

        Counting stops once past ``limit``: the answer is then only known to exceed it.

        >>> Carved([IPNetwork("198.18.0.3/32")]).cost(IPNetwork("198.18.0.0/29"))
        3
        >>> Carved([IPNetwork("198.18.%d.1/32" % i) for i in range(100)]).cost(IPNetwork("198.18.0.0/16"), 64)
        65
        >>> Carved([IPNetwork("198.18.0.0/15")]).cost(IPNetwork("198.18.0.0/16"))
        0
        """
        from bisect import bisect_left, bisect_right

        family, first, last = _span(net)
        bits = 32 if family == 4 else 128
        firsts, lasts = self._firsts[family], self._lasts[family]
        lo = bisect_left(lasts, first)
        hi = bisect_right(firsts, last)
        total, cursor = 0, first
        for k in range(lo, hi):
            if firsts[k] > cursor:
                total += _cidrs(cursor, firsts[k], bits)
                if limit is not None and total > limit:
                    return total
            cursor = max(cursor, lasts[k] + 1)
        if cursor <= last:
            total += _cidrs(cursor, last + 1, bits)
        return total


def _span(net: IPNetwork) -> tuple[int, int, int]:
    if net.version == 6 and _MAPPED_FIRST <= net.first and net.last <= _MAPPED_LAST:
        return 4, net.first - _MAPPED_FIRST, net.last - _MAPPED_FIRST
    return net.version, net.first, net.last


def _cidrs(start: int, end: int, bits: int) -> int:
    """How many CIDRs the half-open interval [start, end) splits into (the greedy, minimal split)."""
    n = 0
    while start < end:
        k = min((start & -start).bit_length() - 1 if start else bits, (end - start).bit_length() - 1)
        start += 1 << k
        n += 1
    return n
