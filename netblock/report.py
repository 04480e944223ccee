"""Kernel counter samples into the weekly "Host/Mask Packets Bytes" table.

Pure functions over samples: the store keeps cumulative (packets, bytes)
per netblock as the kernel reported them at each sample time; the report
turns them into drops inside a window.

* Deltas handle resets: when a counter goes down (element re-created, rules
  reloaded, reboot) the new value counts from 0, never as a negative.
* Roll-up: history of a netblock that was merged into a wider one, or split
  by a carve-out, is reported under the netblock installed at the end of the
  window (for a split, its largest remaining piece), so totals survive
  re-aggregation.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable

from netaddr import IPNetwork

from netblock.model import Sample


@dataclass
class Row:
    netblock: IPNetwork
    packets: int = 0
    bytes: int = 0
    first_seen: datetime | None = None  # first sample in the window that showed new drops
    last_seen: datetime | None = None
    reason: str = ""
    rolled_up: list[IPNetwork] = field(default_factory=list)

    def add(self, packets: int, nbytes: int, when: datetime) -> None:
        self.packets += packets
        self.bytes += nbytes
        if packets or nbytes:
            self.first_seen = when if self.first_seen is None else min(self.first_seen, when)
            self.last_seen = when if self.last_seen is None else max(self.last_seen, when)


def human(n: int) -> str:
    """A number in iptables' own units, as `iptables -L -v` prints it.

    >>> [human(x) for x in (7193, 99999, 100000, 391234, 12_345_678, 9_999_500_000)]
    ['7193', '99999', '100K', '391K', '12M', '10G']
    """
    if n <= 99999:
        return str(n)
    for unit in ("K", "M", "G"):
        n = (n + 500) // 1000
        if n <= 9999:
            return f"{n}{unit}"
    return f"{(n + 500) // 1000}T"


def host_mask(net: IPNetwork) -> str:
    """Single hosts without /32 or /128, as the seed's table shows them."""
    return str(net.ip) if net.size == 1 else str(net.cidr)


def drops(samples: Iterable[Sample], since: datetime | None, until: datetime | None) -> dict[IPNetwork, Row]:
    """Packets and bytes dropped per sampled netblock within [since, until].

    The baseline of each netblock is its last sample before ``since`` (0 if it
    had none: it was created inside the window). A sample lower than the one
    before it is a reset: the kernel counted the new value from 0.
    """
    by_net: dict[IPNetwork, list[Sample]] = defaultdict(list)
    for s in samples:
        if until is None or s.time <= until:
            by_net[s.netblock].append(s)
    rows: dict[IPNetwork, Row] = {}
    for net, series in by_net.items():
        series.sort(key=lambda s: s.time)
        row = Row(net)
        prev_p = prev_b = 0
        for s in series:
            dp, db = s.packets - prev_p, s.bytes - prev_b
            if dp < 0 or db < 0:  # reset: counted again from zero
                dp, db = s.packets, s.bytes
            if since is None or s.time >= since:
                row.add(dp, db, s.time)
            prev_p, prev_b = s.packets, s.bytes
        rows[net] = row
    return rows


def rollup(rows: dict[IPNetwork, Row], final: Iterable[IPNetwork]) -> dict[IPNetwork, Row]:
    """Attribute each sampled netblock's drops to the netblock shown in the report.

    ``final`` is what was installed at the end of the window. A sampled
    netblock inside a final one (merged) counts towards it; one that was split
    counts towards its largest final piece; one that is gone keeps its own row.
    """
    finals = sorted(set(final), key=lambda n: (n.version, n.first, -n.size))
    out: dict[IPNetwork, Row] = {}
    for net, row in rows.items():
        target = next((f for f in finals if f.version == net.version and net in f), None)
        if target is None:
            pieces = [f for f in finals if f.version == net.version and f in net]
            target = max(pieces, key=lambda f: (f.size, -f.first)) if pieces else net
        dest = out.setdefault(target, Row(target))
        if net != target:
            dest.rolled_up.append(net)
        dest.packets += row.packets
        dest.bytes += row.bytes
        for when in (row.first_seen, row.last_seen):
            if when is not None:
                dest.first_seen = when if dest.first_seen is None else min(dest.first_seen, when)
                dest.last_seen = when if dest.last_seen is None else max(dest.last_seen, when)
    return out


def top(rows: Iterable[Row], n: int, by: str = "packets") -> list[Row]:
    key = (lambda r: (-r.packets, -r.bytes)) if by == "packets" else (lambda r: (-r.bytes, -r.packets))
    ranked = sorted((r for r in rows if r.packets or r.bytes), key=lambda r: (*key(r), r.netblock.version,
                                                                            r.netblock.first))
    return ranked[:n]


def table(rows: list[Row], exact: bool = False) -> str:
    """The seed's table: Host/Mask, Packets, Bytes, laid out exactly as posted.

    >>> print(table([Row(IPNetwork("65.214.61.100/32"), 3768, 181_000)]))
    Host/Mask            Packets  Bytes
    65.214.61.100           3768   181K
    """
    num = str if exact else human
    host = max([20] + [len(host_mask(r.netblock)) + 1 for r in rows])
    pw = max([8] + [len(num(r.packets)) + 1 for r in rows])
    bw = max([6] + [len(num(r.bytes)) for r in rows])
    lines = [f"{'Host/Mask':<{host}}{'Packets':>{pw}} {'Bytes':>{bw}}"]
    for r in rows:
        lines.append(f"{host_mask(r.netblock):<{host}}{num(r.packets):>{pw}} {num(r.bytes):>{bw}}")
    return "\n".join(lines)


def thin(samples: list[Sample], before: datetime) -> list[Sample]:
    """Samples older than ``before`` reduced to the last one per netblock per day.

    Cumulative counters telescope, so dropping intermediate samples loses no
    drops (only the exact time of a reset inside a thinned day).
    """
    keep: dict[tuple, Sample] = {}
    recent = []
    for s in samples:
        if s.time >= before:
            recent.append(s)
            continue
        k = (s.netblock, s.time.date())
        if k not in keep or keep[k].time <= s.time:
            keep[k] = s
    return sorted(list(keep.values()) + recent, key=lambda s: (s.time, s.netblock.version, s.netblock.first))
