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

import socket
from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable

from netaddr import IPNetwork

from netblock.model import Sample
from netblock.printable import printable


@dataclass
class Row:
    netblock: IPNetwork
    packets: int = 0
    bytes: int = 0
    first_seen: datetime | None = None  # first sample in the window that showed new drops
    last_seen: datetime | None = None
    reason: str = ""
    rolled_up: list[IPNetwork] = field(default_factory=list)

    def merge(self, other: "Row") -> None:
        """Take in another row's drops (and what it rolled up) as this netblock's."""
        self.packets += other.packets
        self.bytes += other.bytes
        self.rolled_up += [n for n in [other.netblock, *other.rolled_up] if n != self.netblock]
        for when in (other.first_seen, other.last_seen):
            if when is not None:
                self.first_seen = when if self.first_seen is None else min(self.first_seen, when)
                self.last_seen = when if self.last_seen is None else max(self.last_seen, when)

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


def parse_net(text: str) -> IPNetwork:
    """A canonical "addr/len" as the store writes it, several times faster than IPNetwork(text).

    >>> parse_net("198.18.1.0/24"), parse_net("2001:db8::/32")
    (IPNetwork('198.18.1.0/24'), IPNetwork('2001:db8::/32'))
    """
    addr, _, plen = text.partition("/")
    if ":" in addr:
        return IPNetwork((int.from_bytes(socket.inet_pton(socket.AF_INET6, addr), "big"), int(plen)), 6)
    return IPNetwork((int.from_bytes(socket.inet_aton(addr), "big"), int(plen or 32)), 4)


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

    ``final`` is what was installed at the end of the window (non-overlapping,
    as the kernel holds it). A sampled netblock inside a final one (merged)
    counts towards it; one that was split counts towards its largest final
    piece; one that is gone keeps its own row. Bisection keeps 10k rows
    against 10k finals at n log n.
    """
    finals = sorted(set(final), key=lambda n: (n.version, n.first, -n.size))
    keys = [(f.version, f.first) for f in finals]
    out: dict[IPNetwork, Row] = {}
    for net, row in rows.items():
        target = net
        i = bisect_right(keys, (net.version, net.first)) - 1
        if i >= 0 and finals[i].version == net.version and finals[i].last >= net.last:
            target = finals[i]
        else:
            j = bisect_left(keys, (net.version, net.first))
            pieces = []
            while j < len(finals) and keys[j] <= (net.version, net.last):
                if finals[j].last <= net.last:
                    pieces.append(finals[j])
                j += 1
            if pieces:
                target = max(pieces, key=lambda f: (f.size, -f.first))
        out.setdefault(target, Row(target)).merge(row)
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


# -- rejection classes and the summary, from the observations ----------------

NOT_REJECTIONS = ("connect", "delivered")
CLASS_NAMES = {
    "dynamic": "dynamic IP",
    "no-rdns": "bad or no reverse DNS",
    "bad-helo": "bad HELO",
    "unknown-user": "unknown user",
    "relay-denied": "relay denied",
    "sender-rejected": "sender address rejected",
    "auth-failed": "SASL authentication failed",
    "lost-connection": "lost connection (storm)",
    "protocol": "SMTP protocol violation",
    "pregreet": "pregreet (talked before the banner)",
    "hangup": "hung up before the banner",
    "rejected": "other rejection",
}
# Postscreen turns these away before the banner.
BEFORE_BANNER = ("pregreet", "hangup", "dnsbl:postscreen")


def class_label(cls: str) -> str:
    """The wording of the seed's class table: `class bl-<zone>` for DNSBL zones."""
    if cls.startswith("dnsbl:"):
        return f"class bl-{cls.split(':', 1)[1]}"
    return CLASS_NAMES.get(cls, cls)


@dataclass
class ClassRow:
    cls: str
    label: str
    count: int
    dead: bool = False  # a DNSBL zone with no hits in the window


def classes(in_window: dict[str, int], known_zones: Iterable[str] = ()) -> list[ClassRow]:
    """Rejections by class, biggest first; DNSBL zones known but silent are flagged.

    ``in_window`` maps class → count inside the window; ``known_zones`` are
    DNSBL classes seen at any time (or configured): those with zero hits in
    the window get a row of their own, marked dead.
    """
    rows = [ClassRow(c, class_label(c), n) for c, n in in_window.items() if c not in NOT_REJECTIONS and n]
    for zone in sorted(set(known_zones)):
        if zone.startswith("dnsbl:") and not in_window.get(zone):
            rows.append(ClassRow(zone, class_label(zone), 0, dead=True))
    rows.sort(key=lambda r: (-r.count, r.label))
    return rows


def classes_table(rows: list[ClassRow], since: datetime, until: datetime) -> str:
    total = sum(r.count for r in rows)
    labels = [printable(r.label) for r in rows]
    width = max([30] + [len(label) + 2 for label in labels])
    lines = [f"Connection-time rejections {since:%Y-%m-%d %H:%M} .. {until:%Y-%m-%d %H:%M} UTC",
             f"{'total':<{width}}{total:>9}"]
    for r, label in zip(rows, labels):
        lines.append(f"{label:<{width}}{r.count:>9}" + ("  no hits — dead or useless?" if r.dead else ""))
    return "\n".join(lines)


@dataclass
class Summary:
    connections: int
    client_ips: int
    rejections: int
    rejected_ips: int
    reached_banner: int
    delivered_ips: int
    blocks_added: int
    blocks_expired: int
    packets: int
    bytes: int
    weekly_average_connections: float | None
    storm: bool


def summary(obs, earlier_connections: int | None, weeks_of_history: float, blocks, drops_rows,
            since: datetime, until: datetime, storm_factor: float = 2.0) -> Summary:
    """The week in numbers. ``obs`` are the observations inside the window;
    ``earlier_connections`` counts connections in the 4 weeks before it."""
    connects = [o for o in obs if o.cls == "connect"]
    rejections = [o for o in obs if o.cls not in NOT_REJECTIONS]
    before_banner = {o.ip for o in rejections if o.cls in BEFORE_BANNER}
    window_weeks = (until - since).total_seconds() / (7 * 86400)
    avg = None
    storm = False
    if earlier_connections and weeks_of_history > 0:
        avg = earlier_connections / weeks_of_history
        storm = len(connects) > storm_factor * avg * window_weeks
    return Summary(
        connections=len(connects),
        client_ips=len({o.ip for o in connects}),
        rejections=len(rejections),
        rejected_ips=len({o.ip for o in rejections}),
        reached_banner=len([o for o in connects if o.ip not in before_banner]),
        delivered_ips=len({o.ip for o in obs if o.cls == "delivered"}),
        blocks_added=len([b for b in blocks if since <= b.created <= until]),
        blocks_expired=len([b for b in blocks if b.expires is not None and since <= b.expires <= until]),
        packets=sum(r.packets for r in drops_rows),
        bytes=sum(r.bytes for r in drops_rows),
        weekly_average_connections=avg,
        storm=storm,
    )


def summary_table(s: Summary, since: datetime, until: datetime) -> str:
    rows = [
        ("SMTP connections", s.connections),
        ("distinct client IPs", s.client_ips),
        ("rejections", s.rejections),
        ("distinct rejected IPs", s.rejected_ips),
        ("connections that reached the banner", s.reached_banner),
        ("distinct IPs that delivered mail", s.delivered_ips),
        ("blocks added", s.blocks_added),
        ("blocks expired", s.blocks_expired),
        ("packets dropped", human(s.packets)),
        ("bytes dropped", human(s.bytes)),
    ]
    lines = [f"Summary {since:%Y-%m-%d %H:%M} .. {until:%Y-%m-%d %H:%M} UTC"]
    lines += [f"{k:<38}{v:>9}" for k, v in rows]
    if s.storm:
        lines.append(f"STORM: {s.connections} connections, over {s.weekly_average_connections:.0f}/week "
                     "on average in the 4 weeks before")
    return "\n".join(lines)
