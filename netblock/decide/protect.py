"""What must never be blocked: the one protection that the policy, the daemon and sync all consult.

Kept apart by kind so ``why`` and a refusal can name it. Precedence: the
built-in ranges, the allowlist and this host's own addresses are carved out
of every block. A recent deliverer is carved out of the policy's blocks only:
a block a person made by hand (``manual``, the active cli/list blocks) is not
undone by it.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable

from netaddr import IPAddress, IPNetwork, IPSet

from netblock import limits
from netblock.aggregate import protected_builtin, span
from netblock.model import MANUAL_SOURCES
from netblock.system import hostaddrs


@dataclass
class Protection:
    """The protected space by kind, with the lookups the policy (per address) and sync (per netblock) need."""

    builtin: list[IPNetwork]
    allowlist: list[IPNetwork]  # store allowlist + config blocks.allow
    delivered: set[IPAddress]
    own: list[IPNetwork] = field(default_factory=list)
    manual: list[IPNetwork] = field(default_factory=list)  # only sync fills it: deliverers inside lose

    def __post_init__(self) -> None:
        # Sorted merged (first, last) spans per family, searched by bisection:
        # a storm asks about 100k addresses, and IPSet's membership test builds
        # every supernet of each one.
        merged = IPSet(self.builtin + self.allowlist + self.own)
        spans: dict[int, tuple[list[int], list[int]]] = {}
        for net in merged.iter_cidrs():
            firsts, lasts = spans.setdefault(net.version, ([], []))
            firsts.append(net.first)
            lasts.append(net.last)
        self._spans = spans
        self._carved: limits.Carved | None = None

    def covers(self, ip: IPAddress) -> bool:
        if self.delivered and ip in self.delivered:
            return True
        spans = self._spans.get(ip.version)
        if spans is None:
            return False
        value = ip.value
        k = bisect_right(spans[0], value) - 1
        return k >= 0 and value <= spans[1][k]

    def carved(self) -> limits.Carved:
        """Everything sync cuts out of a policy block, priced per block (the element budget)."""
        if self._carved is None:
            self._carved = limits.Carved(self.builtin + self.allowlist + self.own
                                         + [IPNetwork(ip) for ip in self.delivered])
        return self._carved

    def why(self, target: IPNetwork) -> list[tuple[str, str]]:
        """(kind, netblock) of every protection overlapping ``target``."""
        out = []
        for kind, nets in (("builtin", self.builtin), ("allowlist", self.allowlist), ("own address", self.own)):
            out += [(kind, str(n)) for n in nets if overlap(n, target)]
        out += [("delivered", str(ip)) for ip in sorted(self.delivered) if ip in target]
        return out

    def hard(self) -> list[IPNetwork]:
        """What wins over every block, a manual one included."""
        return self.builtin + self.allowlist + self.own

    def split_delivered(self) -> tuple[list[IPNetwork], list[IPNetwork]]:
        """(deliverers still protected, deliverers inside a manual block and so blocked anyway)."""
        delivered = [IPNetwork(ip) for ip in self.delivered]
        if not self.manual or not delivered:
            return delivered, []
        inside = _Cover(self.manual)
        kept: list[IPNetwork] = []
        overridden: list[IPNetwork] = []
        for net in delivered:
            (overridden if inside.covers(net) else kept).append(net)
        return kept, overridden

    def all(self) -> list[IPNetwork]:
        """Everything aggregation carves out of the blocked set."""
        return self.hard() + self.split_delivered()[0]


def protection(store, config, now: datetime, *, own: Iterable[IPNetwork] = ()) -> Protection:
    """What the policy must not decide on right now (``own``: this host's addresses, when the caller has them)."""
    allow = [e.netblock for e in store.allowlist()]
    allow += [IPNetwork(str(t)) for t in config.blocks.allow]
    window = config.policy.delivered_window
    delivered = store.delivered_since(now - window) if window else set()
    return Protection(list(protected_builtin()), allow, set(delivered), list(own))


def for_sync(store, config, *, now: datetime, own: Iterable[IPNetwork] | None = None) -> Protection:
    """Everything aggregation must carve out of the blocked set right now: also this host's own
    addresses (asked of the host when not given) and the manual blocks a deliverer loses to."""
    own = list(hostaddrs.own_addresses() if own is None else own) + fleet_members(store)
    prot = protection(store, config, now, own=own)
    if prot.delivered:
        prot.manual = [b.netblock for b in store.blocks(now=now, sources=MANUAL_SOURCES)]
    return prot


def fleet_members(store) -> list[IPNetwork]:
    """The other MX hosts' own addresses (fleet mode): peers protect each other as each protects itself."""
    return store.peer_addresses()


class _Cover:
    """Whether a netblock lies inside the union of some others (bisection over merged spans)."""

    def __init__(self, nets: Iterable[IPNetwork]):
        merged: dict[int, tuple[list[int], list[int]]] = {}
        for fam, first, last in sorted(span(n) for n in nets):
            firsts, lasts = merged.setdefault(fam, ([], []))
            if lasts and first <= lasts[-1] + 1:
                lasts[-1] = max(lasts[-1], last)
            else:
                firsts.append(first)
                lasts.append(last)
        self._merged = merged

    def covers(self, net: IPNetwork) -> bool:
        fam, first, last = span(net)
        if fam not in self._merged:
            return False
        firsts, lasts = self._merged[fam]
        k = bisect_right(firsts, first) - 1
        return k >= 0 and last <= lasts[k]


def overlap(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.first <= b.last and b.first <= a.last
