"""The kernel side: one module per backend behind one interface, the ``Backend`` protocol.

Nothing else in netblock touches netfilter. A backend is created with
``get_backend(name, settings)`` and offers five calls every backend makes
in full:

* ``ensure()``   create the skeleton (table/sets/chain/jump rule) idempotently;
                 a second call changes nothing and resets no counter.
* ``apply(desired)``  make the kernel equal to ``desired`` ({netblock: expiry or
                 None}) in one transaction, touching only the difference, so
                 elements that stay keep their counters. Returns a ``Change``.
* ``counters()`` {netblock: (packets, bytes)} for every installed netblock.
* ``installed()`` {netblock: kernel expiry or None} as the kernel has it now.
* ``remove()``   tear down everything the backend created, nothing else.

and the cheap paths, which a backend that lacks them answers "not here" through
``BackendBase`` (None or False: the caller takes the full path), so no caller
asks a backend what it can do: ``add()``, ``region_view()``,
``installed_proven()``, ``counters_of()``, ``apply_region()`` and
``counter_columns()``.

Netblocks are ``netaddr.IPNetwork`` in canonical form (host bits clear,
IPv4-mapped IPv6 already turned into IPv4) and must not overlap: the
aggregation step guarantees both. Expiries are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterator, Mapping, Protocol, Sequence

from netaddr import IPNetwork

from netblock.errors import BadInput

BACKENDS = ("nftables", "ipset", "iptables", "dryrun")  # dryrun: records what it would do, touches no kernel
# "count": the same sets and elements, a rule that counts connection attempts (SYN
# without ACK) per netblock and lets them through: what "drop" would have dropped.
VERDICTS = ("drop", "reject", "count")

Desired = Mapping[IPNetwork, "datetime | None"]


class KeyedDesired(Mapping[IPNetwork, "datetime | None"]):
    """A desired state planned in integers: ``by_key`` {(version, first << 8 | prefixlen): epoch seconds,
    NaN permanent}, the {IPNetwork: expiry} dict built by ``build`` only when someone reads it.

    A full sync of 100k netblocks plans in integers (run/sync.plan_keys); the nftables backend applies
    ``by_key`` as it is, and the CLI only counts it, so neither pays for 100k IPNetworks and their
    hashes. Every other reader sees the very dict the plan always made.
    """

    def __init__(self, by_key: dict[tuple[int, int], float],
                 build: Callable[[], dict[IPNetwork, "datetime | None"]]) -> None:
        self.by_key = by_key
        self._build: Callable[[], dict[IPNetwork, datetime | None]] | None = build
        self._built: dict[IPNetwork, datetime | None] = {}

    def _dict(self) -> dict[IPNetwork, "datetime | None"]:
        if self._build is not None:
            self._built, self._build = self._build(), None
        return self._built

    def __len__(self) -> int:
        return len(self.by_key)

    def __getitem__(self, net: IPNetwork) -> "datetime | None":
        return self._dict()[net]

    def __iter__(self) -> Iterator[IPNetwork]:
        return iter(self._dict())

    def __contains__(self, net: object) -> bool:
        return net in self._dict()

    def keys(self):
        return self._dict().keys()

    def values(self):
        return self._dict().values()

    def items(self):
        return self._dict().items()

    def get(self, net, default=None):
        return self._dict().get(net, default)

    def __repr__(self) -> str:
        return repr(self._dict())


@dataclass(frozen=True)
class Settings:
    """What every backend matches and does; defaults are the port-25 drop."""

    ports: tuple[int, ...] = (25,)
    families: tuple[str, ...] = ("ipv4", "ipv6")
    verdict: str = "drop"  # or "reject": tcp reset; or "count": count SYNs, drop nothing
    hook: str = "input"  # nftables only: or "prerouting" at raw priority, before conntrack
    maxelem: int = 1_048_576  # ipset only: far above ipset's default 65536

    def __post_init__(self) -> None:
        if not self.ports or any(not 0 < p < 65536 for p in self.ports):
            raise BadInput(f"ports: {list(self.ports)!r} must be 1..65535")
        if not self.families or set(self.families) - {"ipv4", "ipv6"}:
            raise BadInput(f"families: {list(self.families)!r} must be ipv4 and/or ipv6")
        if self.verdict not in VERDICTS:
            raise BadInput(f"verdict: {self.verdict!r} must be drop, reject or count")
        if self.hook not in ("input", "prerouting"):
            raise BadInput(f"hook: {self.hook!r} must be input or prerouting")
        if self.maxelem < 1:
            raise BadInput(f"maxelem: {self.maxelem!r} must be positive")


@dataclass
class Change:
    """What one apply() did to the kernel."""

    added: list[IPNetwork] = field(default_factory=list)
    removed: list[IPNetwork] = field(default_factory=list)
    updated: list[IPNetwork] = field(default_factory=list)  # same netblock, new expiry

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)


@dataclass
class RegionView:
    """What netblock last wrote, proven current by the backend: {version: (sorted keys, expiries)}.

    Keys are first << 8 | prefixlen, expiries epoch seconds (NaN: permanent).
    ``genid`` and ``cookie`` are the proof (nftables: the ruleset generation and
    the network namespace), handed back to ``apply_region()``, which refuses
    once the kernel moved on. ``exact``: the proof covers every element, so
    the daemon's tick may skip its full sync (nftables' generation does;
    ipset's set headers vouch only for the zone of a change). ``timed``: the
    kernel holds the expiries (iptables holds none: its expiries are only
    what netblock wanted, and a new one changes no rule).
    """

    genid: int
    cookie: int
    sets: dict
    exact: bool = True
    timed: bool = True


class Backend(Protocol):
    name: str
    settings: Settings
    description: str  # for `netblock status`, e.g. "nftables table inet netblock via libnftables"

    def ensure(self) -> None: ...
    def apply(self, desired: Desired) -> Change: ...
    def counters(self) -> dict[IPNetwork, tuple[int, int]]: ...
    def installed(self) -> dict[IPNetwork, datetime | None]: ...
    def remove(self) -> None: ...

    def add(self, additions: Desired) -> Change | None:
        """Install plain additions as one small transaction; None when they are not expressible
        as such (or the backend has no cheap path): then the caller runs a full sync."""
        ...

    def verdict(self) -> str | None:
        """The verdict the installed rule has ("drop", "reject", "count"); None when netblock's
        rule is not there or matches no setting."""
        ...

    def region_view(self, whole: bool = False) -> RegionView | None:
        """What netblock last wrote, if the backend can prove the kernel still holds it; else None
        (then `add`/`del` take the full sync, and the tick never skips one). ``whole``: the caller
        (the daemon's tick) needs every element proven, ``exact``, and the backend may read for it."""
        ...

    def installed_proven(self) -> dict[IPNetwork, datetime | None] | None:
        """installed() without reading the kernel, when region_view() proves it; else None."""
        ...

    def counters_of(self, view: RegionView, keys: list[tuple[int, int]]) -> dict[IPNetwork, tuple[int, int]]:
        """{netblock: (packets, bytes)} of the installed elements ``keys`` ((version, first << 8 | prefixlen))."""
        ...

    def apply_region(self, view: RegionView, removed: list[tuple[int, int]],
                     added: list[tuple[int, int, float | None]],
                     updated: list[tuple[int, int, float | None]], lapsed: Sequence[tuple[int, int]] = ()) -> bool:
        """Remove, add and re-time elements in one transaction guarded by ``view``; False when the
        kernel moved on since (the caller runs the full sync). ``lapsed``: elements past their expiry
        that a kernel with timeouts dropped by itself; they leave only what netblock remembers."""
        ...

    def counter_columns(self) -> dict[int, tuple] | None:
        """counters() as arrays, {version: (sorted keys first << 8 | prefixlen, packets, bytes)}, for the
        daemon's periodic sample; None when the backend reads no columns (then counters() it is)."""
        ...


class BackendBase:
    """The cheap paths of the Backend protocol, for a backend that has none of them.

    Every answer sends the caller down the full path (a full sync, a kernel
    dump, counters() read whole), which is what those backends always did.
    """

    def add(self, additions: Desired) -> Change | None:
        return None

    def region_view(self, whole: bool = False) -> RegionView | None:
        return None

    def installed_proven(self) -> dict[IPNetwork, datetime | None] | None:
        return None

    def counters_of(self: Backend, view: RegionView, keys: list[tuple[int, int]]) -> dict[IPNetwork, tuple[int, int]]:
        wanted = set(keys)
        return {n: c for n, c in self.counters().items() if (n.version, n.first << 8 | n.prefixlen) in wanted}

    def apply_region(self, view: RegionView, removed: list[tuple[int, int]],
                     added: list[tuple[int, int, float | None]],
                     updated: list[tuple[int, int, float | None]], lapsed: Sequence[tuple[int, int]] = ()) -> bool:
        return False

    def counter_columns(self) -> dict[int, tuple] | None:
        return None


def installed_verdict(backend: Backend) -> str | None:
    """The verdict netblock's rule in the kernel has now."""
    return backend.verdict()


def get_backend(name: str, settings: Settings | None = None) -> Backend:
    """Load the backend module by name; each module exposes ``create(settings)``."""
    if name not in BACKENDS:
        raise BadInput(f"backend: {name!r} is not one of {', '.join(BACKENDS)}")
    module = importlib.import_module(f"netblock.firewall.{name}")
    return module.create(settings or Settings())
