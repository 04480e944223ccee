"""The store: netblock's single source of truth, in one SQLite file.

All SQL of the project lives here. The kernel is only a cache of what this
file says, so the store must never lose an update: several ``netblock``
commands and the daemon may run at once, every write is a ``BEGIN IMMEDIATE``
transaction that waits (busy timeout) instead of failing, and callers compose
read-modify-write sequences inside one ``transaction()``.

Representation choices:

* Netblocks are kept as canonical CIDR text (what a human reading the file
  with ``sqlite3`` expects) plus family, first/last address as 16-byte
  big-endian blobs and the prefix length. The blobs give range queries and a
  numeric sort order, and rebuilding an IPNetwork from integers is several
  times faster than parsing text, which matters for 100k blocks.
  IPv4-mapped IPv6 is folded to IPv4 so one sender has one key.
* Times are integer epoch seconds (UTC); they round-trip to the second.
  Naive datetimes are refused: a silent local-time guess would shift expiries.

Why this module is long: all SQL of the single-host store and the spool lives
here by design, with its migrations.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator, Self

from netaddr import IPAddress, IPNetwork

from netblock.errors import StoreError
from netblock.model import NOT_OFFENCES, AllowEntry, Block, Observation, Sample
from netblock.store import DEFAULT_PATH, receipt
from netblock.store._sql import (
    BLOCK_COLS as _BLOCK_COLS,
    DAY,
    StoreCommon,
    canonical_ip,
    canonical_net,
    changed_daily_rows,
    changed_sample_rows,
    day_range as _day_range,
    dt as _dt,
    fold_days,
    net_cols as _net_cols,
    opt_dt as _opt_dt,
    samples_from_rows,
    to_observation as _observation,
    ts as _ts,
)

# Marks the file as netblock's, so pointing --db at some other SQLite file
# is refused instead of being "migrated".
APPLICATION_ID = 0x6E626C6B  # "nblk"

BUSY_TIMEOUT_S = 30.0


# Part of migration step 2 and of Store.rebuild_daily: the roll-up of every
# sample there is, by the report's delta rule (a counter lower than the one
# before it counted again from 0). Released: never edit, append a new step.
DAILY_BACKFILL = """
    INSERT INTO drops_daily (day, netblock, packets, bytes, first, last)
    SELECT time / 86400, netblock, sum(dp), sum(db),
           min(CASE WHEN dp <> 0 OR db <> 0 THEN time END), max(CASE WHEN dp <> 0 OR db <> 0 THEN time END)
    FROM (SELECT time, netblock,
                 CASE WHEN packets < pp OR bytes < pb THEN packets ELSE packets - pp END AS dp,
                 CASE WHEN packets < pp OR bytes < pb THEN bytes ELSE bytes - pb END AS db
          FROM (SELECT time, netblock, packets, bytes,
                       lag(packets, 1, 0) OVER w AS pp, lag(bytes, 1, 0) OVER w AS pb
                FROM samples WINDOW w AS (PARTITION BY netblock ORDER BY time)))
    GROUP BY netblock, time / 86400 HAVING sum(dp) <> 0 OR sum(db) <> 0 ORDER BY 2, 1"""

# MIGRATIONS[i] upgrades a database from user_version i to i + 1. Steps are
# only ever appended: a released step is never edited.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE blocks (
            netblock  TEXT PRIMARY KEY,
            family    INTEGER NOT NULL,
            first     BLOB NOT NULL,
            last      BLOB NOT NULL,
            prefixlen INTEGER NOT NULL,
            reason    TEXT NOT NULL,
            source    TEXT NOT NULL,
            created   INTEGER NOT NULL,
            expires   INTEGER,
            reblocks  INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX blocks_expires ON blocks (expires)",
        "CREATE INDEX blocks_range ON blocks (family, first, last)",
        """CREATE TABLE allowlist (
            netblock  TEXT PRIMARY KEY,
            family    INTEGER NOT NULL,
            first     BLOB NOT NULL,
            last      BLOB NOT NULL,
            prefixlen INTEGER NOT NULL,
            comment   TEXT NOT NULL,
            created   INTEGER NOT NULL
        )""",
        """CREATE TABLE observations (
            id       INTEGER PRIMARY KEY,
            time     INTEGER NOT NULL,
            ip       TEXT NOT NULL,
            cls      TEXT NOT NULL,
            mta      TEXT NOT NULL,
            source   TEXT NOT NULL,
            position INTEGER NOT NULL
        )""",
        "CREATE INDEX observations_time ON observations (time)",
        "CREATE INDEX observations_cls ON observations (cls, time)",
        """CREATE TABLE samples (
            time     INTEGER NOT NULL,
            netblock TEXT NOT NULL,
            packets  INTEGER NOT NULL,
            bytes    INTEGER NOT NULL,
            PRIMARY KEY (time, netblock)
        ) WITHOUT ROWID""",
        "CREATE INDEX samples_netblock ON samples (netblock, time)",
        """CREATE TABLE state (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID""",
    ),
    (
        # The per-day roll-up of samples (see Store.sample_drops), backfilled from the samples there are.
        """CREATE TABLE drops_daily (
            day      INTEGER NOT NULL,
            netblock TEXT NOT NULL,
            packets  INTEGER NOT NULL,
            bytes    INTEGER NOT NULL,
            first    INTEGER,
            last     INTEGER,
            PRIMARY KEY (netblock, day)
        ) WITHOUT ROWID""",
        DAILY_BACKFILL,
    ),
]

SCHEMA_VERSION = len(MIGRATIONS)

class SqliteFile:
    """The file discipline of the store and the spool: BEGIN IMMEDIATE, re-entrant, one-line errors.

    A subclass sets ``path``, ``_conn`` and ``_depth``.
    """

    path: str
    _conn: sqlite3.Connection
    _depth: int

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from None

    @contextmanager
    def transaction(self) -> Iterator[Self]:
        """One write transaction; nested uses join the outermost one.

        ``BEGIN IMMEDIATE`` takes the write lock up front, so a transaction
        that reads and then writes never fails half-way because another
        process wrote in between: it waits up to the busy timeout instead.
        """
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        with self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self
        except BaseException:
            self._depth = 0
            if self._conn.in_transaction:
                with self._errors():
                    self._conn.execute("ROLLBACK")
            raise
        self._depth = 0
        with self._errors():
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _all(self, sql: str, params: Iterable = ()) -> list[tuple]:
        with self._errors():
            return self._conn.execute(sql, tuple(params)).fetchall()

    def _one(self, sql: str, params: Iterable = ()) -> tuple | None:
        with self._errors():
            return self._conn.execute(sql, tuple(params)).fetchone()

    def _row(self, sql: str, params: Iterable = ()) -> tuple:
        """The row a query always yields (an aggregate); StoreError when a damaged store has none,
        never a traceback."""
        row = self._one(sql, params)
        if row is None:
            raise StoreError(f"{self.path}: damaged store: no row for {sql}")
        return row


_ntoa = socket.inet_ntoa  # dotted quad of 4 bytes, as netaddr writes IPv4


def _v4_net_cols(net: IPNetwork) -> tuple[str, int, bytes, bytes, int]:
    """_net_cols() straight from the integers for a canonical IPv4 CIDR (what `add -` of 100k writes);
    anything else through canonical_net()."""
    if type(net) is IPNetwork and net.version == 4:
        value, plen = net.value, net.prefixlen
        host = (1 << (32 - plen)) - 1
        if not value & host:
            return (f"{_ntoa(value.to_bytes(4, 'big'))}/{plen}", 4,
                    value.to_bytes(16, "big"), (value | host).to_bytes(16, "big"), plen)
    return _net_cols(net)


class SqliteStore(SqliteFile, StoreCommon):
    """One open connection to the store file; use as a context manager.

    One host's store: the fleet calls of the Store protocol (netblock/store/__init__.py) have their
    single-host meaning here.
    """

    dsn = None
    fleet = False
    unreachable_since = None  # a local file is never away
    view_host: str | None = None  # one host's samples whatever is asked: there are no others

    def __init__(self, path: str, conn: sqlite3.Connection):
        self.path = path
        self._conn = conn
        self._depth = 0
        self.rejected: dict[tuple[str, str], str] = {}  # rows skipped on receipt (netblock.store.receipt)

    # -- opening ---------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike = DEFAULT_PATH) -> "SqliteStore":
        """Open (creating and upgrading as needed) the SQLite store at ``path`` (netblock.store.open
        chooses between it and the fleet's PostgreSQL)."""
        path = os.fspath(path)
        memory = path == ":memory:"
        old_umask = os.umask(0o077)
        conn = None
        try:
            if not memory:
                _make_parent(path)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            store = cls(path, conn)
            with store._errors():
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                if not memory:
                    conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                store._migrate()
        except sqlite3.Error as e:
            if conn is not None:
                conn.close()
            raise StoreError(f"{path}: {e}") from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        finally:
            os.umask(old_umask)
        if not memory:
            _restrict_modes(path)
        return store

    def _migrate(self) -> None:
        version = self._schema_version_checked()
        if version == SCHEMA_VERSION:
            self._check_application_id()
            return
        with self.transaction():
            # Re-read under the write lock: another process may have upgraded meanwhile.
            version = self._schema_version_checked()
            if version == SCHEMA_VERSION:
                return
            if version == 0:
                if self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise StoreError(f"{self.path}: is an SQLite database but not netblock's")
                self._conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            else:
                self._check_application_id()
            for step in MIGRATIONS[version:]:
                for statement in step:
                    self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _schema_version_checked(self) -> int:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this netblock "
                f"understands ({SCHEMA_VERSION}); upgrade netblock"
            )
        return version

    def _check_application_id(self) -> None:
        app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id != APPLICATION_ID:
            raise StoreError(f"{self.path}: is an SQLite database but not netblock's")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "SqliteStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def schema_version(self) -> int:
        with self._errors():
            return self._conn.execute("PRAGMA user_version").fetchone()[0]

    # -- blocks ----------------------------------------------------------------

    def get_block(self, net: IPNetwork | str) -> Block | None:
        row = self._one(f"SELECT {_BLOCK_COLS} FROM blocks WHERE netblock = ?", (str(canonical_net(net)),))
        return receipt.one_block(self, row)

    def put_blocks(self, blocks: Iterable[Block]) -> int:
        """Insert or replace each block (keyed by its canonical netblock)."""
        seconds: dict[datetime | None, int | None] = {None: None}  # a bulk load's blocks share their times

        def ts(when: datetime | None) -> int | None:
            if when not in seconds:
                seconds[when] = _ts(when)  # type: ignore[arg-type]
            return seconds[when]

        rows = [(*_v4_net_cols(b.netblock), b.reason, b.source, ts(b.created), ts(b.expires), b.reblocks)
                for b in blocks]
        with self.transaction(), self._errors():
            self._conn.executemany(
                """INSERT INTO blocks (netblock, family, first, last, prefixlen,
                                       reason, source, created, expires, reblocks)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (netblock) DO UPDATE SET
                       reason = excluded.reason, source = excluded.source,
                       created = excluded.created, expires = excluded.expires,
                       reblocks = excluded.reblocks""",
                rows,
            )
        return len(rows)

    def delete_blocks(self, nets: Iterable[IPNetwork | str]) -> list[IPNetwork]:
        """Delete the given netblocks; returns those that existed, in the order given."""
        return self._delete("blocks", nets)

    def _delete(self, table: str, nets: Iterable[IPNetwork | str]) -> list[IPNetwork]:
        keys = [canonical_net(n) for n in nets]
        gone = []
        with self.transaction(), self._errors():
            for net in keys:
                if self._conn.execute(f"DELETE FROM {table} WHERE netblock = ?", (str(net),)).rowcount:
                    gone.append(net)
        return gone

    def count_blocks(self, now: datetime | None = None) -> int:
        if now is None:
            return self._row("SELECT count(*) FROM blocks")[0]
        return self._row(
            "SELECT count(*) FROM blocks WHERE expires IS NULL OR expires > ?", (_ts(now),)
        )[0]

    def v4_block_space(self, now: datetime) -> int:
        """The sizes of the active IPv4 blocks summed (overlaps counted twice): a cheap bound for the cap."""
        row = self._row("SELECT sum(1 << (32 - prefixlen)) FROM blocks "
                        "WHERE family = 4 AND (expires IS NULL OR expires > ?)", (_ts(now),))
        return int(row[0] or 0)

    def next_expiry(self, now: datetime) -> datetime | None:
        """When the next active block runs out (what the daemon sleeps towards)."""
        return _opt_dt(self._row("SELECT min(expires) FROM blocks WHERE expires > ?", (_ts(now),))[0])

    def oldest_block(self) -> Block | None:
        row = self._one(f"SELECT {_BLOCK_COLS} FROM blocks ORDER BY created, family, first LIMIT 1")
        return receipt.one_block(self, row)

    # -- allowlist -------------------------------------------------------------

    def allow_add(self, entries: Iterable[AllowEntry]) -> int:
        rows = [(*_net_cols(e.netblock), e.comment, _ts(e.created)) for e in entries]
        with self.transaction(), self._errors():
            self._conn.executemany(
                """INSERT INTO allowlist (netblock, family, first, last, prefixlen, comment, created)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (netblock) DO UPDATE SET
                       comment = excluded.comment, created = excluded.created""",
                rows,
            )
        return len(rows)

    def allow_del(self, nets: Iterable[IPNetwork | str]) -> list[IPNetwork]:
        return self._delete("allowlist", nets)

    def allowlist(self) -> list[AllowEntry]:
        rows = self._all(
            "SELECT family, first, prefixlen, comment, created FROM allowlist "
            "ORDER BY family, first, prefixlen"
        )
        return receipt.allow_entries(self, rows)

    # -- observations ------------------------------------------------------------

    def add_observations(self, obs: Iterable[Observation]) -> int:
        # A busy sender appears thousands of times: format each address once.
        texts: dict = {}
        rows = []
        for o in obs:
            ip = o.ip
            key = (ip.version, ip.value) if isinstance(ip, IPAddress) else ip
            text = texts.get(key)
            if text is None:
                text = texts[key] = str(canonical_ip(ip))
            rows.append((_ts(o.time), text, o.cls, o.mta, o.source, o.position))
        with self.transaction(), self._errors():
            self._conn.executemany(
                "INSERT INTO observations (time, ip, cls, mta, source, position) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def observations(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        ip: IPAddress | str | None = None,
        cls: str | None = None,
    ) -> list[Observation]:
        """Observations with since <= time < until, oldest first.

        There is deliberately no index on ip: it would double the cost of
        every insert, and only interactive questions ("why is this address
        blocked?") filter by ip, where scanning the retention window is fine.
        """
        where, params = _window(since, until)
        if ip is not None:
            where.append("ip = ?")
            params.append(str(canonical_ip(ip)))
        if cls is not None:
            where.append("cls = ?")
            params.append(cls)
        sql = "SELECT time, ip, cls, mta, source, position FROM observations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [o for r in self._all(sql + " ORDER BY time, id", params)
                if receipt.address(self, "observations", r[1]) is not None and (o := _observation(r))]

    def offender_counts(
        self, since: datetime, *, classes: Iterable[str] | None = None
    ) -> dict[tuple[IPAddress, str], int]:
        """How often each (ip, class) offended since ``since`` (inclusive).

        "connect" and "delivered" are never offences. ``classes`` restricts
        the result; a name matches itself and its qualified forms, so
        "dnsbl" selects "dnsbl:zen.spamhaus.org" too.
        """
        return {key: n for key, (n, _) in self.offender_stats(since, classes=classes).items()}

    def offender_stats(
        self, since: datetime, *, classes: Iterable[str] | None = None
    ) -> dict[tuple[IPAddress, str], tuple[int, datetime]]:
        """Like offender_counts, with the time of each (ip, class)'s latest offence.

        One grouped query: the policy needs the last offence of every
        offender, and asking per address made a storm's tick quadratic.
        """
        sql = (
            "SELECT ip, cls, count(*), max(time) FROM observations INDEXED BY observations_time "
            f"WHERE time >= ? AND cls NOT IN ({', '.join('?' * len(NOT_OFFENCES))})"
        )
        params: list = [_ts(since), *NOT_OFFENCES]
        if classes is not None:
            names = sorted(set(classes))
            if not names:
                return {}
            marks = ", ".join("?" * len(names))
            sql += (
                f" AND (cls IN ({marks}) OR (instr(cls, ':') > 0"
                f" AND substr(cls, 1, instr(cls, ':') - 1) IN ({marks})))"
            )
            params += names + names
        rows = self._all(sql + " GROUP BY ip, cls", params)
        receipt.forget(self, "observations")
        return {(a, cls): (n, _dt(last)) for ip, cls, n, last in rows
                if (a := receipt.address(self, "observations", ip)) is not None}

    def delivered_since(self, since: datetime) -> set[IPAddress]:
        """Senders that delivered real mail since ``since``: never block them."""
        rows = self._all(
            "SELECT DISTINCT ip FROM observations INDEXED BY observations_cls "
            "WHERE cls = 'delivered' AND time >= ?",
            (_ts(since),),
        )
        return {a for (ip,) in rows if (a := receipt.address(self, "observations", ip)) is not None}

    def prune_observations(self, before: datetime) -> int:
        with self.transaction(), self._errors():
            return self._conn.execute("DELETE FROM observations WHERE time < ?", (_ts(before),)).rowcount

    # -- counter samples -----------------------------------------------------------

    def add_samples(self, time: datetime, counters: dict[IPNetwork, tuple[int, int]]) -> int:
        """Record the kernel's counters read at ``time``; a repeat for the same time replaces."""
        t = _ts(time)
        rows = [(t, str(canonical_net(net)), int(p), int(b)) for net, (p, b) in counters.items()]
        with self.transaction(), self._errors():
            self._conn.executemany(
                "INSERT OR REPLACE INTO samples (time, netblock, packets, bytes) VALUES (?, ?, ?, ?)",
                rows,
            )
            self._redo_days(self._touched_days(t, [r[1] for r in rows]))
        return len(rows)

    def samples(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        netblock: IPNetwork | str | None = None,
    ) -> list[Sample]:
        """Samples with since <= time < until, by time then netblock."""
        where, params = _window(since, until)
        if netblock is not None:
            where.append("netblock = ?")
            params.append(str(canonical_net(netblock)))
        sql = "SELECT time, netblock, packets, bytes FROM samples"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return samples_from_rows(self._all(sql + " ORDER BY time, netblock", params))

    def prune_samples(self, before: datetime) -> int:
        """Drop samples older than ``before`` (report retention)."""
        with self.transaction(), self._errors():
            self._conn.execute("DELETE FROM drops_daily WHERE day < ?", (_ts(before) // DAY,))
            return self._conn.execute("DELETE FROM samples WHERE time < ?", (_ts(before),)).rowcount

    # -- small state ---------------------------------------------------------------

    def get_state(self, key: str) -> str | None:
        row = self._one("SELECT value FROM state WHERE key = ?", (key,))
        return None if row is None else row[0]

    def set_state(self, key: str, value: str) -> None:
        with self.transaction(), self._errors():
            self._conn.execute(
                "INSERT INTO state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, str(value)),
            )

    # -- reports (samples, class counts) -------------------------------------------

    def observation_class_counts(self, since: datetime | None = None,
                                 until: datetime | None = None) -> dict[str, int]:
        """Observations per class with since <= time < until (all time by default)."""
        where, params = _window(since, until)
        sql = "SELECT cls, count(*) FROM observations"
        if where:
            sql += " INDEXED BY observations_time WHERE " + " AND ".join(where)
        return dict(self._all(sql + " GROUP BY cls ORDER BY cls", params))

    def last_samples(self, nets: Iterable[str]) -> dict[str, tuple[int, int, int]]:
        """{netblock text: (time, packets, bytes)} of the latest sample of each given netblock.

        One statement with an index seek per netblock, so change-only
        sampling of 100k elements costs one round trip, not 100k.
        """
        import json

        rows = self._all(
            "SELECT j.value, s.time, s.packets, s.bytes FROM json_each(?) AS j "
            "JOIN samples AS s ON s.netblock = j.value AND s.time = "
            "(SELECT max(time) FROM samples WHERE netblock = j.value)",
            (json.dumps(list(nets)),),
        )
        return {net: (t, p, b) for net, t, p, b in rows}

    def add_changed_samples(self, time: datetime, counters: dict[IPNetwork, tuple[int, int]]) -> int:
        """Record only the counters that differ from the netblock's latest sample; returns rows written.

        Unchanged counters add nothing a report could use: drops are deltas,
        and a delta of zero is what a missing row already says. That keeps a
        year of one-a-minute sampling proportional to the minutes with drops.
        A sample in the same second as the latest (sync sampling right
        before it removes, then the tick sampling after) replaces it if the
        counter only grew; if it went down, the earlier value moves one
        second back, so a reset is never hidden by it and no sample lands
        after "now" where a report ending now would not see it.
        """
        texts = {net: self._sample_key(net) for net in counters}
        with self.transaction(), self._errors():
            last = self.last_samples(texts.values())
            rows = changed_sample_rows(_ts(time), counters, texts, last)
            self._conn.executemany(
                "INSERT OR REPLACE INTO samples (time, netblock, packets, bytes) VALUES (?, ?, ?, ?)", rows)
            add, redo = changed_daily_rows(rows, last)
            add.sort(key=lambda r: (r[1], r[0]))
            self._conn.executemany(self._DAILY_ADD, add)
            self._redo_days(redo)
        return len(rows)

    _DAILY_ADD = (
        "INSERT INTO drops_daily (day, netblock, packets, bytes, first, last) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (netblock, day) DO UPDATE SET packets = packets + excluded.packets, "
        "bytes = bytes + excluded.bytes, "
        "first = CASE WHEN first IS NULL OR excluded.first < first THEN excluded.first ELSE first END, "
        "last = CASE WHEN last IS NULL OR excluded.last > last THEN excluded.last ELSE last END")

    def _touched_days(self, t: int, nets: list[str]) -> set[tuple[str, int]]:
        """The (netblock, day) pairs whose roll-up a sample written at ``t`` changes: its own day and
        the day of the netblock's next sample, whose delta is now taken against it."""
        pairs = {(net, t // DAY) for net in nets}
        for net in nets:
            row = self._one("SELECT min(time) FROM samples WHERE netblock = ? AND time > ?", (net, t))
            if row and row[0] is not None:
                pairs.add((net, row[0] // DAY))
        return pairs

    def _redo_days(self, pairs: Iterable[tuple[str, int]]) -> None:
        """Recompute the roll-up of each (netblock, day) from its samples (rare: samples that went in
        before a netblock's latest one)."""
        for net, day in sorted(pairs):
            base = self._one("SELECT packets, bytes FROM samples WHERE netblock = ? AND time < ? "
                             "ORDER BY time DESC LIMIT 1", (net, day * DAY))
            series = self._all("SELECT time, packets, bytes FROM samples WHERE netblock = ? AND time >= ? "
                               "AND time < ? ORDER BY time", (net, day * DAY, (day + 1) * DAY))
            self._conn.execute("DELETE FROM drops_daily WHERE day = ? AND netblock = ?", (day, net))
            for d, (p, b, first, end) in fold_days(base or (0, 0), series).items():
                self._conn.execute(self._DAILY_ADD, (d, net, p, b, first, end))

    def rebuild_daily(self) -> None:
        """Recompute the whole roll-up from the samples, as the migration that added it did (for
        samples written behind the store's back, as bench_report does to build a year quickly)."""
        with self.transaction(), self._errors():
            self._conn.execute("DELETE FROM drops_daily")
            self._conn.execute(DAILY_BACKFILL)

    def _drop_deltas(self, since: datetime | None, until: datetime | None) -> Iterator[tuple[str, int, int, int]]:
        """(netblock text, time, packets, bytes) dropped per sample inside [since, until], in time order.

        Each netblock's series starts from its last sample before ``since``
        (0 if none), and a counter lower than the one before it restarted
        from zero (reset). Only the window's rows are read (a range scan of
        the (time, netblock) key) plus one baseline row per netblock sampled
        in it (an index seek each, in one statement): a weekly report does
        not read the year before it.
        """
        import json

        where, params = [], []
        if since is not None:
            where.append("time >= ?")
            params.append(_ts(since))
        if until is not None:
            where.append("time <= ?")
            params.append(_ts(until))
        sql = "SELECT netblock, time, packets, bytes FROM samples"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._all(sql + " ORDER BY time", params)
        last: dict[str, tuple[int, int]] = {}
        if since is not None and rows:
            nets = json.dumps(sorted({r[0] for r in rows}))
            for net, p, b in self._all(
                    "SELECT j.value, s.packets, s.bytes FROM json_each(?) AS j "
                    "JOIN samples AS s ON s.netblock = j.value AND s.time = "
                    "(SELECT max(time) FROM samples WHERE netblock = j.value AND time < ?)",
                    (nets, _ts(since))):
                last[net] = (p, b)
        for net, t, p, b in rows:
            pp, pb = last.get(net, (0, 0))
            last[net] = (p, b)
            if p < pp or b < pb:
                yield net, t, p, b
            else:
                yield net, t, p - pp, b - pb

    def _daily_totals(self, d0: int | None, d1: int | None) -> list[tuple[str, int, int, int | None, int | None]]:
        """(netblock, packets, bytes, first, last) summed over the roll-up's days d0 <= day < d1."""
        where, params = _day_range(d0, d1, "?")
        return self._all("SELECT netblock, sum(packets), sum(bytes), min(first), max(last) FROM drops_daily"
                         + where + " GROUP BY netblock", params)

    def _daily_per_day(self, d0: int | None, d1: int | None) -> list[tuple[int, int, int]]:
        """(day, packets, bytes) of all netblocks together over the roll-up's days d0 <= day < d1."""
        where, params = _day_range(d0, d1, "?")
        return self._all("SELECT day, sum(packets), sum(bytes) FROM drops_daily" + where + " GROUP BY day", params)

    def block_reasons(self, at: datetime) -> dict[str, tuple[str, bool]]:
        """{netblock text: (reason, active at ``at``)} of every block, without building 10k Block objects."""
        t = _ts(at)
        rows = self._all("SELECT netblock, reason, created <= ? AND (expires IS NULL OR expires > ?) FROM blocks",
                         (t, t))
        return {net: (reason, bool(active)) for net, reason, active in rows}

    def thin_samples(self, before: datetime, after: datetime | None = None) -> int:
        """Keep, of the samples older than ``before``, the last per netblock per UTC day; returns rows deleted.

        ``after`` (a previous ``before``) limits the work to the days not
        thinned yet; it is rounded down to its UTC day so that day is redone.

        Counters are cumulative, so the deltas telescope: the dropped
        intermediate rows lose no packet, only when within the day they fell
        (except across a reset inside a thinned day: what was counted before
        it is gone with the rows that showed it).
        """
        with self.transaction(), self._errors():
            return self._conn.execute(
                """DELETE FROM samples WHERE time < :b AND time >= :a AND EXISTS (
                       SELECT 1 FROM samples AS later INDEXED BY samples_netblock
                       WHERE later.netblock = samples.netblock AND later.time > samples.time
                         AND later.time < :b AND later.time / 86400 = samples.time / 86400)""",
                {"b": _ts(before), "a": 0 if after is None else _ts(after) // 86400 * 86400},
            ).rowcount

    # -- the fleet's calls, as one host answers them -------------------------------

    def hosts(self) -> list[str]:
        """No host ids: the file is one host's, and its rows carry none."""
        return []

    def peer_addresses(self) -> list[IPNetwork]:
        """No peers to protect."""
        return []

    def publish_addresses(self, own: Iterable[IPNetwork]) -> bool:
        """Nobody to tell: this host carves its own addresses out by itself."""
        return False

    def may_write(self, source: str) -> bool:
        """No roles: whoever can open the file writes every block."""
        return True

    def backend_pid(self) -> int | None:
        return None

    def change_mark(self) -> int | None:
        """No change feed: only this host writes the file, and it follows its own writes."""
        return None

    def changes_since(self, mark: int) -> tuple[list[Block], list[str], int, int]:
        raise StoreError(f"{self.path}: an SQLite store keeps no change feed (a fleet's PostgreSQL does)")


# The name the tests and older callers know the SQLite store by.
Store = SqliteStore


def _window(since: datetime | None, until: datetime | None) -> tuple[list[str], list]:
    where: list[str] = []
    params: list = []
    if since is not None:
        where.append("time >= ?")
        params.append(_ts(since))
    if until is not None:
        where.append("time < ?")
        params.append(_ts(until))
    return where, params


def _make_parent(path: str) -> None:
    parent = Path(path).parent
    if parent.is_dir():
        return
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"{path}: cannot create directory {parent}: {e.strerror or e}") from None


def _restrict_modes(path: str) -> None:
    """The store holds who mailed whom and when: readable by root only."""
    for name in (path, path + "-wal", path + "-shm"):
        try:
            mode = os.stat(name).st_mode
        except FileNotFoundError:
            continue
        except OSError as e:
            raise StoreError(f"{name}: {e.strerror or e}") from None
        if stat.S_ISREG(mode) and stat.S_IMODE(mode) & 0o077:
            try:
                os.chmod(name, 0o600)
            except OSError as e:
                raise StoreError(f"{name}: cannot make it private (mode 0600): {e.strerror or e}") from None


# -- the fleet's local spool -------------------------------------------------------
#
# While the fleet's PostgreSQL is unreachable a host keeps its own observations
# here, with the log positions (journal cursor) they reach, so a log rotated
# away during the outage loses nothing. Rows carry an increasing id (never
# reused, AUTOINCREMENT) and the file an epoch (random, made with it), so the
# flush can record "spool EPOCH flushed up to ID" in PostgreSQL in the same
# transaction as the rows: a crash between that commit and emptying the spool
# makes the next flush skip what is already there instead of counting it twice.

SPOOL_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS spool_observations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time INTEGER NOT NULL, ip TEXT NOT NULL, cls TEXT NOT NULL,
        mta TEXT, source TEXT, position INTEGER)""",
    "CREATE TABLE IF NOT EXISTS spool_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS spool_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


class Spool(SqliteFile):
    """Observations and state waiting for an unreachable fleet store, in a small private SQLite file."""

    def __init__(self, path: str, conn: sqlite3.Connection, epoch: str):
        self.path = path
        self._conn = conn
        self.epoch = epoch
        self._depth = 0

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Spool":
        import secrets

        path = os.fspath(path)
        old_umask = os.umask(0o077)
        conn = None
        try:
            _make_parent(path)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("BEGIN IMMEDIATE")
            for statement in SPOOL_SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO spool_meta (key, value) VALUES ('epoch', ?)",
                         (secrets.token_hex(8),))
            epoch = conn.execute("SELECT value FROM spool_meta WHERE key = 'epoch'").fetchone()[0]
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn is not None:
                conn.close()
            raise StoreError(f"{path}: {e}") from None
        finally:
            os.umask(old_umask)
        _restrict_modes(path)
        return cls(path, conn, epoch)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_observations(self, obs: Iterable[Observation]) -> int:
        rows = [(_ts(o.time), str(canonical_ip(o.ip)), o.cls, o.mta, o.source, o.position) for o in obs]
        with self.transaction(), self._errors():
            self._conn.executemany(
                "INSERT INTO spool_observations (time, ip, cls, mta, source, position) VALUES (?, ?, ?, ?, ?, ?)",
                rows)
        return len(rows)

    def set_state(self, key: str, value: str) -> None:
        with self.transaction(), self._errors():
            self._conn.execute("INSERT OR REPLACE INTO spool_state (key, value) VALUES (?, ?)", (key, str(value)))

    def get_state(self, key: str) -> str | None:
        with self._errors():
            row = self._conn.execute("SELECT value FROM spool_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def pending(self) -> bool:
        """Anything waiting (observations or positions) for the fleet store."""
        with self._errors():
            return self._conn.execute(
                "SELECT EXISTS (SELECT 1 FROM spool_observations) OR EXISTS (SELECT 1 FROM spool_state)"
            ).fetchone()[0] == 1

    def contents(self) -> tuple[list[tuple[int, Observation]], dict[str, str]]:
        """([(id, observation)] in id order, {state key: value}): what a flush copies."""
        with self._errors():
            rows = self._conn.execute(
                "SELECT id, time, ip, cls, mta, source, position FROM spool_observations ORDER BY id").fetchall()
            state = dict(self._conn.execute("SELECT key, value FROM spool_state").fetchall())
        return [(r[0], _observation(r[1:])) for r in rows], state

    def clear(self, up_to: int, state: dict[str, str]) -> None:
        """Forget what a committed flush copied: rows with id <= ``up_to`` and state still equal to ``state``."""
        with self.transaction(), self._errors():
            self._conn.execute("DELETE FROM spool_observations WHERE id <= ?", (up_to,))
            self._conn.executemany("DELETE FROM spool_state WHERE key = ? AND value = ?", list(state.items()))


def flush_spool(spool: Spool, store) -> int:
    """Copy the spool into ``store`` in one transaction, then empty it; the observations newly added.

    Idempotent: the store's state ``spool:EPOCH`` records the last row id
    copied, in the same transaction, so rows a crash left in the spool after
    the commit are skipped by the next flush.
    """
    rows, state = spool.contents()
    if not rows and not state:
        return 0
    key = f"spool:{spool.epoch}"
    last = rows[-1][0] if rows else 0
    with store.transaction():
        done = int(store.get_state(key) or 0)
        fresh = [o for i, o in rows if i > done]
        store.add_observations(fresh)
        for k, v in state.items():
            store.set_state(k, v)
        if last > done:
            store.set_state(key, str(last))
    spool.clear(last, state)
    return len(fresh)
