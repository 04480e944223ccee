"""What the SQLite and PostgreSQL stores share: the row encodings, the time conversions and the drop folds.

Both stores keep the same columns (netblock text, family, first/last address
blobs, prefix length; epoch seconds) and fold counter deltas the same way, so
the rules live here once; each store keeps only its own SQL dialect.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable

from netaddr import AddrFormatError, IPAddress, IPNetwork

from netblock.errors import BadInput
from netblock.model import Block, Observation, Sample
from netblock.store import receipt

DAY = 86400

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SECOND = timedelta(seconds=1)


# -- conversions --------------------------------------------------------------

def ts(when: datetime) -> int:
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when.isoformat()} given to the store; use aware UTC")
    return (when - _EPOCH) // _SECOND


def dt(seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def opt_dt(seconds: int | None) -> datetime | None:
    return None if seconds is None else _EPOCH + timedelta(seconds=seconds)


def canonical_net(net: IPNetwork | IPAddress | str) -> IPNetwork:
    """The store's key form: host bits cleared, IPv4-mapped IPv6 folded to IPv4."""
    if not isinstance(net, IPNetwork):
        try:
            net = IPNetwork(net)
        except (AddrFormatError, ValueError, TypeError):
            raise BadInput(f"netblock: {net!r} is not an IP address or CIDR") from None
    if net.version == 6 and net.prefixlen >= 96 and net.ip.is_ipv4_mapped():
        return IPNetwork((int(net.ip) & 0xFFFFFFFF, net.prefixlen - 96), 4).cidr
    return net.cidr


def canonical_ip(ip: IPAddress | str) -> IPAddress:
    if not isinstance(ip, IPAddress):
        try:
            ip = IPAddress(ip)
        except (AddrFormatError, ValueError, TypeError):
            raise BadInput(f"address: {ip!r} is not an IP address") from None
    if ip.version == 6 and ip.is_ipv4_mapped():
        return ip.ipv4()
    return ip


def net_cols(net: IPNetwork | str) -> tuple[str, int, bytes, bytes, int]:
    net = canonical_net(net)
    return (
        str(net),
        net.version,
        net.first.to_bytes(16, "big"),
        net.last.to_bytes(16, "big"),
        net.prefixlen,
    )


def to_net(family: int, first: bytes, prefixlen: int) -> IPNetwork:
    return IPNetwork((int.from_bytes(first, "big"), prefixlen), family)


BLOCK_COLS = "family, first, prefixlen, reason, source, created, expires, reblocks, netblock"
BLOCK_ORDER = "ORDER BY family, first, prefixlen"


def to_block(row: tuple) -> Block:
    family, first, prefixlen, reason, source, created, expires, reblocks = row[:8]
    return Block(
        netblock=to_net(family, first, prefixlen),
        reason=reason,
        source=source,
        created=dt(created),
        expires=opt_dt(expires),
        reblocks=reblocks,
    )


def to_observation(row: tuple) -> Observation:
    time, ip, cls, mta, source, position = row
    return Observation(dt(time), IPAddress(ip), cls, mta, source, position)


def samples_from_rows(rows) -> list[Sample]:
    """(time, netblock text, packets, bytes) rows as Samples, one IPNetwork per distinct netblock."""
    nets: dict[str, IPNetwork] = {}
    out = []
    for t, text, packets, nbytes in rows:
        net = nets.get(text)
        if net is None:
            net = nets[text] = IPNetwork(text)
        out.append(Sample(dt(t), net, packets, nbytes))
    return out


def changed_sample_rows(t: int, counters, texts: dict, last: dict) -> list[tuple[int, str, int, int]]:
    """The (time, netblock, packets, bytes) rows a change-only sample writes (see add_changed_samples).

    ``texts`` maps each counted netblock to its key in the samples table,
    ``last`` a key to its latest stored (time, packets, bytes). Sorted, so
    both B-trees are appended to in key order rather than split all over.
    """
    rows = []
    for net, (p, b) in counters.items():
        text = texts[net]
        prev = last.get(text)
        if prev is None:
            rows.append((t, text, int(p), int(b)))
            continue
        lt, lp, lb = prev
        if (p, b) == (lp, lb):
            continue
        if lt < t or (p >= lp and b >= lb):
            rows.append((max(lt, t), text, int(p), int(b)))
        else:
            rows.append((lt - 1, text, lp, lb))
            rows.append((lt, text, int(p), int(b)))
    rows.sort()
    return rows


def fold_days(base: tuple[int, int], series: Iterable[tuple[int, int, int]]) -> dict[int, list]:
    """{day: [packets, bytes, first, last]} dropped by one counter series of (time, packets, bytes), in
    time order, that follows a sample of ``base``: the roll-up's rows for the days it dropped anything.

    ``first``/``last`` are the times of the day's first and last sample that showed drops (None
    when none did), so first_seen/last_seen stay exact to the second over whole days.
    """
    out: dict[int, list] = {}
    pp, pb = base
    for t, p, b in series:
        if p < pp or b < pb:  # reset: counted again from zero
            dp, db = p, b
        else:
            dp, db = p - pp, b - pb
        pp, pb = p, b
        a = out.get(t // DAY)
        if a is None:
            a = out[t // DAY] = [0, 0, None, None]
        a[0] += dp
        a[1] += db
        if dp or db:
            if a[2] is None:
                a[2] = t
            a[3] = t
    return {day: a for day, a in out.items() if a[2] is not None}


def changed_daily_rows(rows: list[tuple[int, str, int, int]], last: dict
                       ) -> tuple[list[tuple[int, str, int, int, int | None, int | None]], set[tuple[str, int]]]:
    """What the rows of changed_sample_rows add to the roll-up: (day, netblock, packets, bytes, first,
    last) to add for rows appended after their netblock's latest sample, and the (netblock, day)
    pairs to recompute where a row replaced or went in before it (same-second samples)."""
    add, redo = [], set()
    for t, text, p, b in rows:
        prev = last.get(text)
        if prev is not None and t <= prev[0]:
            redo.add((text, t // DAY))
            continue
        base = (0, 0) if prev is None else (prev[1], prev[2])
        for day, (dp, db, first, end) in fold_days(base, [(t, p, b)]).items():
            add.append((day, text, dp, db, first, end))
    return add, redo


def split_window(since: datetime | None, until: datetime | None
                 ) -> tuple[list[tuple[datetime | None, datetime | None]], tuple[int | None, int | None] | None]:
    """[since, until] as the pieces to read from raw samples (the partial first and last days) and the
    whole UTC days [d0, d1) between them to read from the roll-up (None: unbounded; no days: None).

    A sample's delta is taken against the sample before it wherever the window starts, so the
    pieces' drops add up to the window's.
    """
    s = None if since is None else ts(since)
    u = None if until is None else ts(until)
    d0 = None if s is None else -(-s // DAY)
    d1 = None if u is None else (u + 1) // DAY
    if d0 is not None and d1 is not None and d0 >= d1:
        return [(since, until)], None
    pieces: list[tuple[datetime | None, datetime | None]] = []
    if s is not None and d0 is not None and s < d0 * DAY:
        pieces.append((since, dt(d0 * DAY - 1)))
    if u is not None and d1 is not None and u >= d1 * DAY:
        pieces.append((dt(d1 * DAY), until))
    return pieces, (d0, d1)


def day_range(d0: int | None, d1: int | None, mark: str) -> tuple[str, list]:
    where, params = [], []
    if d0 is not None:
        where.append(f"day >= {mark}")
        params.append(d0)
    if d1 is not None:
        where.append(f"day < {mark}")
        params.append(d1)
    return (" WHERE " + " AND ".join(where) if where else ""), params


class StoreCommon:
    """The methods both stores share: pure folds over their ``_drop_deltas``, ``_daily_totals`` and
    ``_daily_per_day``, the samples' key, and the block reads whose SQL differs only in the
    driver's placeholder (``P``: "?" for sqlite3, "%s" for psycopg)."""

    P = "?"

    def _all(self, sql: str, params: Iterable = ()) -> list[tuple]:
        raise NotImplementedError

    def blocks(self, *, now: datetime | None = None, sources: Iterable[str] | None = None) -> list[Block]:
        """Blocks still active at ``now`` (all of them when ``now`` is None), sorted by address.

        ``sources`` keeps only blocks of those sources (e.g. the hand-made ones).
        """
        p = self.P
        where: list[str] = []
        params: list = []
        if now is not None:
            where.append(f"(expires IS NULL OR expires > {p})")
            params.append(ts(now))
        if sources is not None:
            sources = list(sources)
            where.append(f"source IN ({', '.join([p] * len(sources))})")
            params += sources
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._all(f"SELECT {BLOCK_COLS} FROM blocks {clause}{BLOCK_ORDER}", params)
        return receipt.blocks(self, rows)

    def block_keys(self, now: datetime) -> list[tuple[int, int, int, int | None, tuple]]:
        """Active blocks at ``now`` as receipt.block_keys() tuples: blocks() without an object per row."""
        rows = self._all(f"SELECT {BLOCK_COLS} FROM blocks WHERE (expires IS NULL OR expires > {self.P}) "
                         "", (ts(now),))  # unordered: the caller sorts the keys, not the rows
        return receipt.block_keys(self, rows)

    def blocks_touching(self, family: int, first: int, prefixlen: int, now: datetime) -> list[Block]:
        """Active blocks overlapping one CIDR of ``family``: those inside it and those holding it.

        Two index lookups whatever the store holds: what a one-block change
        reads (netblock/run/delta.py) instead of every block.
        """
        p = self.P
        bits = 32 if family == 4 else 128
        last = first + (1 << (bits - prefixlen)) - 1
        active = f"(expires IS NULL OR expires > {p})"
        rows = self._all(f"SELECT {BLOCK_COLS} FROM blocks WHERE family = {p} AND first BETWEEN {p} AND {p} "
                         f"AND prefixlen >= {p} AND {active}",
                         (family, first.to_bytes(16, "big"), last.to_bytes(16, "big"), prefixlen, ts(now)))
        if prefixlen:
            holders = {(first >> (bits - n) << (bits - n)).to_bytes(16, "big") for n in range(prefixlen)}
            rows += self._all(f"SELECT {BLOCK_COLS} FROM blocks WHERE family = {p} AND first IN "
                              f"({', '.join([p] * len(holders))}) AND prefixlen < {p} AND last >= {p} AND {active}",
                              (family, *holders, prefixlen, last.to_bytes(16, "big"), ts(now)))
        return receipt.blocks(self, rows, full=False)

    def expired_blocks(self, now: datetime) -> list[Block]:
        rows = self._all(f"SELECT {BLOCK_COLS} FROM blocks WHERE expires <= {self.P} {BLOCK_ORDER}", (ts(now),))
        return receipt.blocks(self, rows, full=False)

    def expired_between(self, since: datetime, until: datetime) -> list[Block]:
        """Blocks that ran out in (since, until]: what the daemon's tick carries to the kernel as a change
        (netblock/run/delta.py) instead of a full sync. One index range on ``expires``."""
        rows = self._all(f"SELECT {BLOCK_COLS} FROM blocks WHERE expires > {self.P} AND expires <= {self.P} "
                         f"{BLOCK_ORDER}", (ts(since), ts(until)))
        return receipt.blocks(self, rows, full=False)

    def _drop_deltas(self, since: datetime | None, until: datetime | None) -> Iterable[tuple[str, int, int, int]]:
        raise NotImplementedError

    def _daily_totals(self, d0: int | None, d1: int | None) -> list[tuple[str, int, int, int | None, int | None]]:
        raise NotImplementedError

    def _daily_per_day(self, d0: int | None, d1: int | None) -> list[tuple[int, int, int]]:
        raise NotImplementedError

    @staticmethod
    def _sample_key(net: IPNetwork) -> str:
        """canonical_net(net) as text; an IPv4 CIDR with its host bits clear (what every backend
        returns) is formatted straight from its integers, which 100k samples a tick notice."""
        if isinstance(net, IPNetwork) and net._module.version == 4:
            value, plen = net._value, net._prefixlen
            if not value & ((1 << (32 - plen)) - 1):
                return f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}/{plen}"
        return str(canonical_net(net))

    def sample_drops(self, since: datetime | None, until: datetime | None
                     ) -> dict[str, tuple[int, int, datetime | None, datetime | None]]:
        """{netblock text: (packets, bytes, first_seen, last_seen)} of the netblocks that dropped
        anything within [since, until]; the store-side twin of report.drops().

        Whole UTC days come from the roll-up (drops_daily: one row per netblock and day, kept as
        samples are written), only the partial first and last days from the samples, so a year
        costs 365 days of roll-up rather than every sample in it.
        """
        pieces, days = split_window(since, until)
        acc: dict[str, list] = {}
        get = acc.get
        for lo, hi in pieces:
            for net, t, dp, db in self._drop_deltas(lo, hi):
                if dp or db:
                    a = get(net)
                    if a is None:
                        acc[net] = [dp, db, t, t]
                    else:
                        a[0] += dp
                        a[1] += db
                        a[2] = min(a[2], t)
                        a[3] = max(a[3], t)
        if days is not None:
            for net, p, b, first, last in self._daily_totals(*days):
                if first is None:
                    continue
                a = get(net)
                if a is None:
                    acc[net] = [p, b, first, last]
                else:
                    a[0] += p
                    a[1] += b
                    a[2] = min(a[2], first)
                    a[3] = max(a[3], last)
        return {net: (p, b, dt(first), dt(last)) for net, (p, b, first, last) in acc.items()}

    def daily_drops(self, since: datetime | None, until: datetime | None) -> dict[datetime, tuple[int, int]]:
        """{UTC midnight: (packets, bytes)} dropped by all netblocks together, per day of the window
        that had drops (whole days from the roll-up, as sample_drops)."""
        pieces, days = split_window(since, until)
        acc: dict[int, list[int]] = {}
        for lo, hi in pieces:
            for to_net, t, dp, db in self._drop_deltas(lo, hi):
                if dp or db:
                    a = acc.setdefault(t // DAY, [0, 0])
                    a[0] += dp
                    a[1] += db
        if days is not None:
            for day, p, b in self._daily_per_day(*days):
                a = acc.setdefault(day, [0, 0])
                a[0] += p
                a[1] += b
        return {dt(day * DAY): (p, b) for day, (p, b) in sorted(acc.items())}
