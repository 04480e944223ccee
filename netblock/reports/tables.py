"""Kernel counter samples into the weekly "Host/Mask Packets Bytes" table.

Pure functions over samples: the store keeps cumulative (packets, bytes)
per netblock as the kernel reported them at each sample time; the report
turns them into drops inside a window.

* Deltas handle resets: when a counter goes down (element re-created, rules
  reloaded, reboot) the new value counts from 0, never as a negative.
* Blocks as decided: the kernel holds pieces (the aggregated blocks minus
  the carve-outs, which change with every delivered sender), but a
  postmaster decided blocks. Each sampled piece is reported under the
  decided block holding it (see Decisions), its reason and its carve-outs.
* Comparison: each row and class beside the previous window of the same
  length, so "SBL hits are way up" and "dropped out of the list" show.

Why this module is long: the report's pure data layer (deltas, pieces folded
into decided blocks, windows) and the table text it feeds.
"""

from __future__ import annotations

import socket
from bisect import bisect_left, bisect_right
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable

from netaddr import IPNetwork

from netblock.model import NOT_OFFENCES, Sample, host_mask
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
    carved: list[IPNetwork] = field(default_factory=list)  # carve-outs inside the block: not dropped
    prev_rank: int | None = None  # rank in the previous window (None: no drops there)
    prev_packets: int | None = None

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


@dataclass(frozen=True)
class Decision:
    """A block as decided: one CIDR of the store's blocks merged, before any carve-out."""

    netblock: IPNetwork
    reason: str
    blocks: int  # store blocks it merges


_V6 = 1 << 128  # IPv6 lies above IPv4 on one number line


def span(net: IPNetwork) -> tuple[int, int]:
    """(first, last) of a netblock on one number line, IPv6 above IPv4: one int compare per bisection step.

    >>> span(IPNetwork("198.18.1.0/24")) == (0xC6120100, 0xC61201FF)
    True
    >>> span(IPNetwork("::/127")) == (1 << 128, (1 << 128) + 1)
    True
    """
    v4 = net.version == 4
    host = (1 << ((32 if v4 else 128) - net.prefixlen)) - 1
    first = net.value & ~host
    return (first, first | host) if v4 else (_V6 + first, _V6 + (first | host))


def _cidrs(lo: int, hi: int) -> Iterable[tuple[int, int]]:
    """The fewest CIDRs covering [lo, hi] (one family), as spans on span()'s number line."""
    base = _V6 if lo >= _V6 else 0
    while lo <= hi:
        off = lo - base
        size = off & -off if off else 1 << (128 if base else 32)
        while size > hi - lo + 1:
            size >>= 1
        yield lo, lo + size - 1
        lo += size


def _net(lo: int, hi: int) -> IPNetwork:
    """The CIDR of a span (built only for the rows shown: netaddr objects cost microseconds each)."""
    v6 = lo >= _V6
    return IPNetwork((lo - _V6 if v6 else lo, (128 if v6 else 32) - (hi - lo).bit_length()), 6 if v6 else 4)


class Decisions:
    """The store's blocks merged into CIDRs (no carve-outs), and which of them holds a netblock.

    Merging is the aggregation sync does, without the protected space: every
    kernel piece lies inside exactly one of these CIDRs (aggregation only
    ever splits around carve-outs, and CIDRs nest or are disjoint), so the
    pieces of one decision, however the carve-outs cut it over time, add up
    to one row. A merged CIDR takes the reason of its widest block (the
    earliest created of equals). Integer spans, not netaddr objects: a
    report builds this for 10k blocks up to four times.
    """

    def __init__(self, blocks: Iterable):
        spans = sorted(((span(b.netblock), b) for b in blocks), key=lambda sb: sb[0])
        merged: list[list[int]] = []
        for (lo, hi), _b in spans:
            if merged and lo <= merged[-1][1] + 1 and (lo >= _V6) == (merged[-1][0] >= _V6):
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        cidrs = [c for lo, hi in merged for c in _cidrs(lo, hi)]
        self._firsts = [lo for lo, _ in cidrs]
        self._lasts = [hi for _, hi in cidrs]
        best: dict[int, tuple] = {}
        self._count: dict[int, int] = defaultdict(int)
        for (lo, hi), b in spans:
            i = self._at(lo, hi)
            if i is None:
                continue
            self._count[i] += 1
            rank = (lo - hi, b.created, not b.reason)
            if i not in best or rank < best[i][0]:
                best[i] = (rank, b.reason)
        self._reason = {i: r for i, (_rank, r) in best.items()}
        self._made: dict[int, Decision] = {}

    def _at(self, lo: int, hi: int) -> int | None:
        i = bisect_right(self._firsts, lo) - 1
        return i if i >= 0 and self._lasts[i] >= hi else None

    def _decision(self, i: int) -> Decision:
        d = self._made.get(i)
        if d is None:
            d = self._made[i] = Decision(_net(self._firsts[i], self._lasts[i]), self._reason.get(i, ""),
                                         self._count[i])
        return d

    @property
    def decisions(self) -> list[Decision]:
        return [self._decision(i) for i in range(len(self._firsts))]

    def find(self, net: IPNetwork) -> Decision | None:
        """The decision holding ``net`` (a kernel piece), or None."""
        i = self._at(*span(net))
        return None if i is None else self._decision(i)


def group(pieces: Iterable[Row], *decisions: Decisions) -> list[Row]:
    """Rows per decided block: each piece's row under the first of ``decisions`` that holds it.

    A piece no decision holds (its block was deleted) keeps a row of its own.
    Rows are keyed by span while grouping (hashing netaddr objects costs more
    than the grouping itself), and a piece that is its whole block is reused.
    """
    out: dict[tuple[int, int], Row] = {}
    for row in pieces:
        lo_hi = span(row.netblock)
        found: tuple[Decisions, int] | None = None
        key = lo_hi
        for ds in decisions:
            i = ds._at(*lo_hi)
            if i is not None:
                found, key = (ds, i), (ds._firsts[i], ds._lasts[i])
                break
        target = out.get(key)
        if target is None and key == lo_hi:
            if found is not None:
                row.reason = found[0]._reason.get(found[1], "")
            out[key] = row
            continue
        if target is None:
            assert found is not None  # key differs from lo_hi only for a found decision
            d = found[0]._decision(found[1])
            target = out[key] = Row(d.netblock, reason=d.reason)
        target.merge(row)
    return list(out.values())


def carve_outs(rows: Iterable[Row], protected: Iterable[IPNetwork]) -> None:
    """Fill each row's ``carved`` with the protected netblocks inside it (merged), in address order."""
    from netblock.aggregate import aggregate

    prot = sorted(protected, key=lambda n: (n.version, n.first))
    keys = [(n.version, n.first) for n in prot]
    for r in rows:
        net = r.netblock
        lo = bisect_left(keys, (net.version, net.first))
        hi = bisect_right(keys, (net.version, net.last))
        inside = [p for p in prot[lo:hi] if p.last <= net.last]
        r.carved = aggregate(inside) if inside else []


def ranked(rows: Iterable[Row], by: str = "packets") -> list[Row]:
    key = (lambda r: (-r.packets, -r.bytes)) if by == "packets" else (lambda r: (-r.bytes, -r.packets))
    return sorted((r for r in rows if r.packets or r.bytes), key=lambda r: (*key(r), r.netblock.version,
                                                                          r.netblock.first))


def top(rows: Iterable[Row], n: int, by: str = "packets") -> list[Row]:
    return ranked(rows, by)[:n]


def compare(shown: list[Row], current: list[Row], previous: Iterable[Row], n: int,
            by: str = "packets") -> list[Row]:
    """Set each shown row's previous rank and packets; returns the rows of the previous top n that
    are not shown any more (with this window's drops, 0 when none, and their previous rank)."""
    before = ranked(previous, by)
    rank = {span(r.netblock): (i + 1, r.packets) for i, r in enumerate(before)}
    for r in shown:
        r.prev_rank, r.prev_packets = rank.get(span(r.netblock), (None, None))
    now = {span(r.netblock) for r in shown}
    left = [(span(r.netblock), r) for r in before[:n] if span(r.netblock) not in now]
    if not left:
        return []
    wanted = {key for key, _ in left}
    found = {key: c for c in current if (key := span(c.netblock)) in wanted}
    gone = []
    for key, r in left:
        g = found.get(key) or Row(r.netblock, reason=r.reason)
        g.prev_rank, g.prev_packets = rank[key]
        gone.append(g)
    return gone


def table(rows: list[Row], exact: bool = False, dropped_out: list[Row] | None = None) -> str:
    """The seed's table: Host/Mask, Packets, Bytes, laid out exactly as posted.

    A block with carve-outs is marked ``*`` and footnoted. With
    ``dropped_out`` (a comparison was made) two columns show the previous
    window's packets and rank ("new": no drops there), and the rows that left
    the top are named below.

    >>> print(table([Row(IPNetwork("65.214.61.100/32"), 3768, 181_000)]))
    Host/Mask            Packets  Bytes
    65.214.61.100           3768   181K
    >>> r = Row(IPNetwork("198.19.0.0/16"), 120, 4800, carved=[IPNetwork("198.19.44.44/32")], prev_rank=2,
    ...         prev_packets=90)
    >>> print(table([r, Row(IPNetwork("198.18.5.0/24"), 7, 280)], dropped_out=[
    ...       Row(IPNetwork("203.0.113.0/24"), 40, 1600, prev_rank=1, prev_packets=40)]))
    Host/Mask            Packets  Bytes  Before  Rank
    198.19.0.0/16*           120   4800      90    #2
    198.18.5.0/24              7    280       -   new
    * 198.19.0.0/16 except 198.19.44.44
    Dropped out: 203.0.113.0/24 (#1, 40 packets)
    """
    num = str if exact else human
    compare = dropped_out is not None

    def name(r: Row) -> str:
        return host_mask(r.netblock) + ("*" if r.carved else "")

    host = max([20] + [len(name(r)) + 1 for r in rows])
    pw = max([8] + [len(num(r.packets)) + 1 for r in rows])
    bw = max([6] + [len(num(r.bytes)) for r in rows])
    head = f"{'Host/Mask':<{host}}{'Packets':>{pw}} {'Bytes':>{bw}}"
    cw = max([7] + [len(num(r.prev_packets)) + 1 for r in rows if r.prev_packets is not None])
    lines = [head + (f"{'Before':>{cw + 1}}  Rank" if compare else "")]
    for r in rows:
        line = f"{name(r):<{host}}{num(r.packets):>{pw}} {num(r.bytes):>{bw}}"
        if compare:
            before = "-" if r.prev_packets is None else num(r.prev_packets)
            line += f"{before:>{cw + 1}}{'new' if r.prev_rank is None else f'#{r.prev_rank}':>6}"
        lines.append(line)
    for r in rows:
        if r.carved:
            lines.append(f"* {host_mask(r.netblock)} except {', '.join(host_mask(c) for c in r.carved)}")
    if dropped_out:
        lines.append("Dropped out: " + ", ".join(
            f"{host_mask(r.netblock)} (#{r.prev_rank}, {num(r.prev_packets or 0)} packets)" for r in dropped_out))
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


@dataclass
class OriginDrops:
    asn: int | None
    owner: str
    packets: int
    bytes: int
    blocks: list[IPNetwork]


def drops_by_origin(rows: Iterable[Row], origin, name) -> list[OriginDrops]:
    """Drops per origin AS, most packets first; a block counts for the AS announcing its first address.

    ``origin(ip)`` gives the AS number (None: not announced), ``name(asn)`` its owner.
    """
    acc: dict[int | None, OriginDrops] = {}
    for r in rows:
        if not (r.packets or r.bytes):
            continue
        asn = origin(r.netblock.network)
        o = acc.get(asn)
        if o is None:
            o = acc[asn] = OriginDrops(asn, name(asn) if asn is not None else "not announced", 0, 0, [])
        o.packets += r.packets
        o.bytes += r.bytes
        o.blocks.append(r.netblock)
    out = sorted(acc.values(), key=lambda o: (-o.packets, -o.bytes, o.asn is None, o.asn or 0))
    for o in out:
        o.blocks.sort(key=lambda n: (n.version, n.first))
    return out


def origin_table(rows: list[OriginDrops], exact: bool = False) -> str:
    """``Packets | Bytes | Blocks | ASN | (owner)``, beside the distinct-IPs table of the ASN report.

    >>> print(origin_table([OriginDrops(64500, "EXAMPLE-NET", 7193, 391_000, [IPNetwork("198.18.0.0/24")])]))
    Packets |  Bytes | Blocks | ASN   | (owner)
       7193 |   391K |      1 | 64500 | (EXAMPLE-NET)
    """
    num = str if exact else human
    pw = max([7] + [len(num(o.packets)) for o in rows])
    bw = max([6] + [len(num(o.bytes)) for o in rows])
    aw = max([3] + [len(str(o.asn)) for o in rows if o.asn is not None])
    lines = [f"{'Packets':>{pw}} | {'Bytes':>{bw}} | Blocks | {'ASN':<{aw}} | (owner)"]
    for o in rows:
        asn = "-" if o.asn is None else str(o.asn)
        lines.append(f"{num(o.packets):>{pw}} | {num(o.bytes):>{bw}} | {len(o.blocks):>6} | {asn:<{aw}} | ({o.owner})")
    return "\n".join(lines)


# -- rejection classes and the summary, from the observations ----------------

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
    previous: int | None = None  # count in the previous window (None: no comparison made)


def classes(in_window: dict[str, int], known_zones: Iterable[str] = (),
            previous: dict[str, int] | None = None) -> list[ClassRow]:
    """Rejections by class, biggest first; DNSBL zones known but silent are flagged.

    ``in_window`` maps class → count inside the window; ``known_zones`` are
    DNSBL classes seen at any time (or configured): those with zero hits in
    the window get a row of their own, marked dead. With ``previous`` (the
    counts of the window before), each row carries its count there, and a
    class that had hits only there gets a row of 0.
    """
    rows = [ClassRow(c, class_label(c), n) for c, n in in_window.items() if c not in NOT_OFFENCES and n]
    for zone in sorted(set(known_zones)):
        if zone.startswith("dnsbl:") and not in_window.get(zone):
            rows.append(ClassRow(zone, class_label(zone), 0, dead=True))
    if previous is not None:
        shown = {r.cls for r in rows}
        rows += [ClassRow(c, class_label(c), 0) for c, n in previous.items()
                 if n and c not in NOT_OFFENCES and c not in shown]
        for r in rows:
            r.previous = previous.get(r.cls, 0)
    rows.sort(key=lambda r: (-r.count, -(r.previous or 0), r.label))
    return rows


def change(now: int, before: int) -> str:
    """The change against the previous window, as a postmaster says it.

    >>> [change(30, 10), change(5, 10), change(4, 0), change(0, 0), change(10, 10)]
    ['+20 (+200%)', '-5 (-50%)', '+4 (new)', '0', '0']
    """
    if now == before:
        return "0"
    if not before:
        return f"+{now} (new)"
    return f"{now - before:+d} ({(now - before) * 100 / before:+.0f}%)"


def classes_table(rows: list[ClassRow], since: datetime, until: datetime) -> str:
    total = sum(r.count for r in rows)
    compare = any(r.previous is not None for r in rows)
    labels = [printable(r.label) for r in rows]
    width = max([30] + [len(label) + 2 for label in labels])
    head = f"Connection-time rejections {since:%Y-%m-%d %H:%M} .. {until:%Y-%m-%d %H:%M} UTC"
    if compare:
        prev_total = sum(r.previous or 0 for r in rows)
        lines = [head, f"{'':<{width}}{'count':>9}{'before':>9}  change",
                 f"{'total':<{width}}{total:>9}{prev_total:>9}  {change(total, prev_total)}"]
    else:
        lines = [head, f"{'total':<{width}}{total:>9}"]
    for r, label in zip(rows, labels):
        line = f"{label:<{width}}{r.count:>9}"
        if compare:
            line += f"{r.previous or 0:>9}  {change(r.count, r.previous or 0)}"
        lines.append(line + ("  no hits — dead or useless?" if r.dead else ""))
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


# postscreen hands a client over to smtpd right after its own tests (the greeting wait and the
# DNSBL lookups, seconds): smtpd's "connect from" later than this is another session.
HANDOVER = timedelta(minutes=5)


def sessions(obs) -> list:
    """The connect observation that starts each SMTP session, in time order.

    Exim logs one line per connection. Behind postscreen, Postfix logs a
    session that passes twice: postscreen's CONNECT (mta "postscreen"), then
    smtpd's "connect from" when postscreen hands the client over. An smtpd
    connect continues a session when an earlier postscreen CONNECT of the
    same client, within HANDOVER, has not been continued yet; clients that
    open parallel sessions pair one by one. Within one second a CONNECT
    sorts first (its log line is written before the handover's).

    >>> from datetime import timezone
    >>> from netaddr import IPAddress
    >>> from netblock.model import Observation as O
    >>> t, ip = datetime(2026, 11, 21, tzinfo=timezone.utc), IPAddress("198.51.100.7")
    >>> len(sessions([O(t, ip, "connect", "postscreen"), O(t, ip, "connect", "postfix"),
    ...               O(t, ip, "connect", "postscreen"), O(t + HANDOVER * 2, ip, "connect", "postfix")]))
    3
    """
    connects = sorted((o for o in obs if o.cls == "connect"),
                      key=lambda o: (o.time, o.mta != "postscreen", o.source, o.position))
    waiting: dict = defaultdict(deque)
    out = []
    for o in connects:
        if o.mta == "postscreen":
            waiting[o.ip].append(o.time)
        elif o.mta == "postfix" and o.ip in waiting:
            q = waiting[o.ip]
            while q and o.time - q[0] > HANDOVER:
                q.popleft()
            if q:
                q.popleft()
                continue
        out.append(o)
    return out


def summary(obs, earlier_connections: int | None, weeks_of_history: float, blocks, drops_rows,
            since: datetime, until: datetime, storm_factor: float = 2.0) -> Summary:
    """The week in numbers. ``obs`` are the observations inside the window;
    ``earlier_connections`` counts sessions in the 4 weeks before it. A
    connection is an SMTP session, counted once (see sessions)."""
    connects = sessions(obs)
    rejections = [o for o in obs if o.cls not in NOT_OFFENCES]
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
        ("SMTP connections (sessions)", s.connections),
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
