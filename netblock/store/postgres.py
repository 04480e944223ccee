"""The store on PostgreSQL: fleet mode, several MX hosts sharing one database.

Same interface and semantics as netblock.store.sqlite.Store (SQLite), so every
caller stays unaware of which one it holds. What differs is only what a
fleet needs:

* Blocks and the allowlist are shared by every host. Observations, counter
  samples and small state carry the id of the host that wrote them.
  Observations are read fleet-wide (density widening counts offenders seen
  by any MX); samples are per host, because each host's kernel counters are
  an independent cumulative series: drops are computed per (host, netblock)
  and then summed, so a fleet report adds deltas, never raw counters.
* A write to blocks or allowlist (by a CLI command, a policy decision or
  pruning, on any host) fires a statement-level trigger that NOTIFYs
  ``netblock_changes``: netblock.run.fleet listens and syncs within a second.
* ``transaction()`` takes one transaction-level advisory lock first, which
  gives every write transaction the serialisation SQLite's ``BEGIN
  IMMEDIATE`` gives: read-modify-write sequences never interleave.
* The connection is re-opened on the next use after it broke (the server
  restarted); ``unreachable_since`` says since when it has been failing.

psycopg is imported only here, and this module only when a DSN is given, so
an SQLite-only install never needs it. The password (from the DSN,
PGPASSWORD or PGPASSFILE, all handled by libpq) never appears in a message.

Why this module is long: all SQL of the fleet's store lives here by design,
with its migrations.
"""

from __future__ import annotations

import os
import re
import socket
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterable, Iterator

from netaddr import IPAddress, IPNetwork

from netblock.errors import StoreError
from netblock.model import NOT_OFFENCES, AllowEntry, Block, Observation, Sample
from netblock.store import receipt
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

CHANNEL = "netblock_changes"
APPLICATION = "netblock"
LOCK_KEY = 0x6E626C6B  # "nblk": the one advisory lock every write transaction takes
LOCK_TIMEOUT = "30s"  # as long as SQLite's busy timeout
CONNECT_TIMEOUT_S = 10
POLICY_SOURCE = "policy"
RECONNECT_EVERY_S = 1.0

# Part of migration step 2 and of PgStore.rebuild_daily: Store's roll-up, per host. Released: never edit.
DAILY_BACKFILL = """
    INSERT INTO drops_daily (host, day, netblock, packets, bytes, first, last)
    SELECT host, time / 86400, netblock, sum(dp)::bigint, sum(db)::bigint,
           min(CASE WHEN dp <> 0 OR db <> 0 THEN time END), max(CASE WHEN dp <> 0 OR db <> 0 THEN time END)
    FROM (SELECT host, time, netblock,
                 CASE WHEN packets < pp OR bytes < pb THEN packets ELSE packets - pp END AS dp,
                 CASE WHEN packets < pp OR bytes < pb THEN bytes ELSE bytes - pb END AS db
          FROM (SELECT host, time, netblock, packets, bytes,
                       lag(packets, 1, 0::bigint) OVER w AS pp, lag(bytes, 1, 0::bigint) OVER w AS pb
                FROM samples WINDOW w AS (PARTITION BY host, netblock ORDER BY time)) AS lagged) AS deltas
    GROUP BY host, time / 86400, netblock HAVING sum(dp) <> 0 OR sum(db) <> 0"""

# -- step 3: a shared database trusts no writer (issue 18) ---------------------------------
#
# Every writer is a PostgreSQL role: the owner (who runs `netblock fleet ...`
# and migrations), one admin role (the root CLI: add, del, allow) and one role
# per MX host (its daemon), mapped to host ids in fleet_roles. Row-level
# security lets a host role write only rows carrying its own host id, and
# blocks only as the policy does (source 'policy', within fleet_limits); the
# allowlist and blocks of other sources belong to the admin role. The owner
# (and a superuser) bypass row-level security, so a fleet that still connects
# as the owner keeps working as before.
#
# CHECK constraints hold every row to what the readers can parse. Rows of an
# existing database that break them are moved to ``quarantine`` (the whole
# row as JSON, with its table and when) before the constraints are added, so
# the migration never fails on old data and nothing is silently lost; control
# characters in block reasons and allowlist comments are replaced by "?"
# instead (the row itself is good).

_MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z, the last second a datetime holds

# Helpers that never raise: a CHECK must say "no", not abort the statement with a cast error.
PG_HELPERS = (
    """CREATE FUNCTION netblock_cidr(t text) RETURNS cidr LANGUAGE plpgsql IMMUTABLE AS $$
        BEGIN RETURN t::cidr; EXCEPTION WHEN others THEN RETURN NULL; END $$""",
    """CREATE FUNCTION netblock_inet(t text) RETURNS inet LANGUAGE plpgsql IMMUTABLE AS $$
        BEGIN RETURN t::inet; EXCEPTION WHEN others THEN RETURN NULL; END $$""",
    # The address in a 16-byte big-endian column (store._net_cols), or NULL.
    """CREATE FUNCTION netblock_addr(fam smallint, b bytea) RETURNS inet LANGUAGE plpgsql IMMUTABLE AS $$
        DECLARE h text := encode(b, 'hex');
        BEGIN
            IF b IS NULL OR length(b) <> 16 THEN RETURN NULL; END IF;
            IF fam = 4 THEN
                IF substr(h, 1, 24) <> repeat('0', 24) THEN RETURN NULL; END IF;
                RETURN '0.0.0.0'::inet + ('x' || lpad(substr(h, 25), 16, '0'))::bit(64)::bigint;
            ELSIF fam = 6 THEN
                RETURN (substr(h, 1, 4) || ':' || substr(h, 5, 4) || ':' || substr(h, 9, 4) || ':' ||
                        substr(h, 13, 4) || ':' || substr(h, 17, 4) || ':' || substr(h, 21, 4) || ':' ||
                        substr(h, 25, 4) || ':' || substr(h, 29, 4))::inet;
            END IF;
            RETURN NULL;
        EXCEPTION WHEN others THEN RETURN NULL;
        END $$""",
    # A netblock row's columns agree: valid CIDR text, its family, prefix length, first and last address.
    """CREATE FUNCTION netblock_net_ok(t text, fam smallint, a bytea, z bytea, plen smallint) RETURNS boolean
        LANGUAGE plpgsql IMMUTABLE AS $$
        DECLARE c cidr := netblock_cidr(t);
        BEGIN
            RETURN c IS NOT NULL AND fam IN (4, 6) AND family(c) = fam AND masklen(c) = plen
               AND host(netblock_addr(fam, a)) = host(c) AND host(netblock_addr(fam, z)) = host(broadcast(c));
        END $$""",
)

# C0, DEL and C1 controls by code point (a locale's [[:cntrl:]] may not cover C1, e.g. CSI 0x9b).
_CONTROLS = r"[\x01-\x1f\x7f-\x9f]"
_NO_CONTROL = "{col} !~ '" + _CONTROLS + "'"


def _clean(*cols: str) -> str:
    return " AND ".join(_NO_CONTROL.format(col=c) for c in cols)


# {table: its CHECK}: what every reader of the table relies on.
ROW_CHECKS = {
    "blocks": ("netblock_net_ok(netblock, family, first, last, prefixlen) AND source IN ('cli', 'list', 'policy') "
               f"AND created BETWEEN 0 AND {_MAX_EPOCH} AND (expires IS NULL OR expires BETWEEN 0 AND {_MAX_EPOCH}) "
               f"AND reblocks >= 0 AND {_clean('reason')}"),
    "allowlist": (f"netblock_net_ok(netblock, family, first, last, prefixlen) AND created BETWEEN 0 AND {_MAX_EPOCH} "
                  f"AND {_clean('comment')}"),
    "observations": ("masklen(netblock_inet(ip)) = CASE family(netblock_inet(ip)) WHEN 4 THEN 32 ELSE 128 END "
                     f"AND time BETWEEN 0 AND {_MAX_EPOCH} AND {_clean('host', 'cls', 'mta', 'source')}"),
    "samples": (f"netblock_cidr(netblock) IS NOT NULL AND time BETWEEN 0 AND {_MAX_EPOCH} "
                f"AND packets >= 0 AND bytes >= 0 AND {_clean('host')}"),
    "drops_daily": f"netblock_cidr(netblock) IS NOT NULL AND packets >= 0 AND bytes >= 0 AND {_clean('host')}",
    "hosts": f"length(host) BETWEEN 1 AND 253 AND {_clean('host')}",
    "state": _clean("host", "key"),
}

# Tables whose rows carry the writing host's id, and the shared ones.
HOST_TABLES = ("observations", "samples", "drops_daily", "state", "hosts", "host_addresses")
SHARED_TABLES = ("blocks", "allowlist")


def _quarantine(table: str, check: str) -> str:
    return (f"WITH bad AS (DELETE FROM {table} WHERE NOT coalesce(({check}), false) RETURNING *) "
            f"INSERT INTO quarantine (tbl, moved, row) "
            f"SELECT '{table}', extract(epoch FROM now())::bigint, to_jsonb(bad) FROM bad")


def _row_security() -> tuple[str, ...]:
    out = []
    admin = "(SELECT netblock_is_admin())"
    policy_row = ("(SELECT netblock_host()) IS NOT NULL AND source = 'policy' "
                  "AND netblock_policy_ok(family, prefixlen, expires)")
    for table in SHARED_TABLES + HOST_TABLES + ("quarantine",):
        out.append(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        out.append(f"CREATE POLICY admin ON {table} USING ({admin}) WITH CHECK ({admin})")
        if table != "quarantine":
            out.append(f"CREATE POLICY everyone_reads ON {table} FOR SELECT USING (true)")
    for table in HOST_TABLES:
        own = "host = (SELECT netblock_host())"
        out.append(f"CREATE POLICY own_rows ON {table} USING ({own}) WITH CHECK ({own})")
    out.append(f"CREATE POLICY host_decides ON blocks FOR INSERT WITH CHECK ({policy_row})")
    out.append("CREATE POLICY host_redecides ON blocks FOR UPDATE "
               "USING ((SELECT netblock_host()) IS NOT NULL AND (source = 'policy' "
               "       OR expires <= extract(epoch FROM now())::bigint)) "
               f"WITH CHECK ({policy_row})")
    return tuple(out)


FLEET_GUARDS: tuple[str, ...] = (
    *PG_HELPERS,
    """CREATE TABLE quarantine (
        id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tbl   text COLLATE "C" NOT NULL,
        moved bigint NOT NULL,
        row   jsonb NOT NULL
    )""",
    f"UPDATE blocks SET reason = regexp_replace(reason, '{_CONTROLS}', '?', 'g') WHERE reason ~ '{_CONTROLS}'",
    f"UPDATE allowlist SET comment = regexp_replace(comment, '{_CONTROLS}', '?', 'g') "
    f"WHERE comment ~ '{_CONTROLS}'",
    *(_quarantine(t, c) for t, c in ROW_CHECKS.items()),
    # coalesce: a CHECK that comes out NULL (a helper's "not an address") would let the row in.
    *(f"ALTER TABLE {t} ADD CONSTRAINT {t}_sane CHECK (coalesce(({c}), false))" for t, c in ROW_CHECKS.items()),
    # Which role is which host; a row without a host is the admin role. Written by the owner only.
    """CREATE TABLE fleet_roles (
        role text COLLATE "C" PRIMARY KEY,
        host text COLLATE "C" UNIQUE
             CHECK (host IS NULL OR (length(host) BETWEEN 1 AND 253 AND host !~ '""" + _CONTROLS + """'))
    )""",
    # What a host role's policy blocks may be: `netblock fleet init-admin` copies them from the admin's config.
    # (netblock_policy_ok allows an hour beyond max_ttl: a host's clock may run ahead of the server's.)
    """CREATE TABLE fleet_limits (
        one           boolean PRIMARY KEY DEFAULT true CHECK (one),
        max_prefix_v4 smallint NOT NULL DEFAULT 16 CHECK (max_prefix_v4 BETWEEN 4 AND 32),
        max_prefix_v6 smallint NOT NULL DEFAULT 48 CHECK (max_prefix_v6 BETWEEN 16 AND 128),
        max_ttl       bigint NOT NULL DEFAULT 7776000 CHECK (max_ttl > 0),
        permanent     boolean NOT NULL DEFAULT false
    )""",
    "INSERT INTO fleet_limits DEFAULT VALUES",
    # Each host's own addresses, which every host carves out of what it drops (single addresses only).
    f"""CREATE TABLE host_addresses (
        host    text COLLATE "C" NOT NULL,
        address text COLLATE "C" NOT NULL,
        PRIMARY KEY (host, address),
        CHECK (coalesce(masklen(netblock_inet(address)) = CASE family(netblock_inet(address)) WHEN 4 THEN 32
                                                           ELSE 128 END AND {_clean('host')}, false))
    )""",
    # search_path is pinned: a role that could put its own fleet_roles first must not become admin.
    """CREATE FUNCTION netblock_host() RETURNS text LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
        SELECT host FROM fleet_roles WHERE role = current_user AND host IS NOT NULL $$""",
    """CREATE FUNCTION netblock_is_admin() RETURNS boolean LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
        SELECT EXISTS (SELECT 1 FROM fleet_roles WHERE role = current_user AND host IS NULL) $$""",
    """CREATE FUNCTION netblock_policy_ok(fam smallint, plen smallint, expires bigint) RETURNS boolean
        LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
        SELECT plen >= CASE fam WHEN 4 THEN l.max_prefix_v4 ELSE l.max_prefix_v6 END
           AND CASE WHEN expires IS NULL THEN l.permanent
                    ELSE expires <= extract(epoch FROM now())::bigint + l.max_ttl + 3600 END
        FROM fleet_limits AS l $$""",
    # Row-level security cannot compare a row with its old version: a host role may extend an
    # active block (another host's evidence counts too) but never shorten or end it.
    """CREATE FUNCTION netblock_blocks_guard() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
        BEGIN
            IF netblock_host() IS NOT NULL AND (OLD.expires IS NULL OR OLD.expires > extract(epoch FROM now()))
               AND ((OLD.expires IS NULL AND NEW.expires IS NOT NULL) OR NEW.expires < OLD.expires) THEN
                RAISE EXCEPTION 'host % may not shorten the active block %', netblock_host(), OLD.netblock
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NEW;
        END $$""",
    """CREATE TRIGGER blocks_guard BEFORE UPDATE ON blocks FOR EACH ROW EXECUTE FUNCTION netblock_blocks_guard()""",
    """CREATE TRIGGER host_addresses_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON host_addresses
        FOR EACH STATEMENT EXECUTE FUNCTION netblock_notify()""",
    # The change feed a host follows between ticks (netblock.run.fleet.Follower): every written block row
    # gets the next number of one sequence, every deleted one leaves its key under such a number,
    # so "what changed since N" is two index range scans instead of reading 100k blocks. Writers
    # hold the advisory lock, so numbers are committed in order. SECURITY DEFINER: no role but
    # the owner may touch the sequence or blocks_gone.
    "CREATE SEQUENCE blocks_changes",
    "ALTER TABLE blocks ADD COLUMN changed bigint NOT NULL DEFAULT 0",
    "CREATE INDEX blocks_changed ON blocks (changed)",
    """CREATE TABLE blocks_gone (
        changed  bigint PRIMARY KEY,
        netblock text COLLATE "C" NOT NULL,
        at       bigint NOT NULL
    )""",
    """CREATE FUNCTION netblock_block_changed() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path FROM CURRENT AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                INSERT INTO blocks_gone VALUES (nextval('blocks_changes'), OLD.netblock,
                                                extract(epoch FROM now())::bigint);
                RETURN OLD;
            END IF;
            NEW.changed := nextval('blocks_changes');
            RETURN NEW;
        END $$""",
    """CREATE FUNCTION netblock_gone_pruned() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path FROM CURRENT AS $$
        BEGIN
            DELETE FROM blocks_gone WHERE at < extract(epoch FROM now())::bigint - 86400;
            RETURN NULL;
        END $$""",
    "CREATE TRIGGER blocks_changes BEFORE INSERT OR UPDATE ON blocks FOR EACH ROW "
    "EXECUTE FUNCTION netblock_block_changed()",
    "CREATE TRIGGER blocks_gone AFTER DELETE ON blocks FOR EACH ROW EXECUTE FUNCTION netblock_block_changed()",
    "CREATE TRIGGER blocks_gone_pruned AFTER DELETE ON blocks FOR EACH STATEMENT "
    "EXECUTE FUNCTION netblock_gone_pruned()",
    # A TRUNCATE leaves no rows behind to follow: its notification says so.
    f"""CREATE OR REPLACE FUNCTION netblock_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME || CASE TG_OP WHEN 'TRUNCATE' THEN ':truncate' ELSE '' END);
              RETURN NULL; END $$""",
    *_row_security(),
)

# MIGRATIONS[i] upgrades a database from version i to i + 1; only ever appended.
# Text is compared byte-wise (COLLATE "C"), as SQLite does, whatever the
# server's locale: the same ORDER BY gives the same order on both backends.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE blocks (
            netblock  text COLLATE "C" PRIMARY KEY,
            family    smallint NOT NULL,
            first     bytea NOT NULL,
            last      bytea NOT NULL,
            prefixlen smallint NOT NULL,
            reason    text COLLATE "C" NOT NULL,
            source    text COLLATE "C" NOT NULL,
            created   bigint NOT NULL,
            expires   bigint,
            reblocks  integer NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX blocks_expires ON blocks (expires)",
        "CREATE INDEX blocks_range ON blocks (family, first, last)",
        """CREATE TABLE allowlist (
            netblock  text COLLATE "C" PRIMARY KEY,
            family    smallint NOT NULL,
            first     bytea NOT NULL,
            last      bytea NOT NULL,
            prefixlen smallint NOT NULL,
            comment   text COLLATE "C" NOT NULL,
            created   bigint NOT NULL
        )""",
        """CREATE TABLE observations (
            id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            host     text COLLATE "C" NOT NULL,
            time     bigint NOT NULL,
            ip       text COLLATE "C" NOT NULL,
            cls      text COLLATE "C" NOT NULL,
            mta      text COLLATE "C" NOT NULL,
            source   text COLLATE "C" NOT NULL,
            position bigint NOT NULL
        )""",
        "CREATE INDEX observations_time ON observations (time)",
        "CREATE INDEX observations_cls ON observations (cls, time)",
        """CREATE TABLE samples (
            host     text COLLATE "C" NOT NULL,
            time     bigint NOT NULL,
            netblock text COLLATE "C" NOT NULL,
            packets  bigint NOT NULL,
            bytes    bigint NOT NULL,
            PRIMARY KEY (host, time, netblock)
        )""",
        "CREATE INDEX samples_netblock ON samples (host, netblock, time)",
        """CREATE TABLE hosts (
            host       text COLLATE "C" PRIMARY KEY,
            first_seen bigint NOT NULL
        )""",
        """CREATE TABLE state (
            host  text COLLATE "C" NOT NULL,
            key   text COLLATE "C" NOT NULL,
            value text COLLATE "C" NOT NULL,
            PRIMARY KEY (host, key)
        )""",
        f"""CREATE FUNCTION netblock_notify() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME); RETURN NULL; END $$""",
        """CREATE TRIGGER blocks_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON blocks
            FOR EACH STATEMENT EXECUTE FUNCTION netblock_notify()""",
        """CREATE TRIGGER allowlist_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON allowlist
            FOR EACH STATEMENT EXECUTE FUNCTION netblock_notify()""",
    ),
    (
        # The per-day roll-up of each host's samples (see Store.sample_drops), backfilled.
        """CREATE TABLE drops_daily (
            host     text COLLATE "C" NOT NULL,
            day      bigint NOT NULL,
            netblock text COLLATE "C" NOT NULL,
            packets  bigint NOT NULL,
            bytes    bigint NOT NULL,
            first    bigint,
            last     bigint,
            PRIMARY KEY (host, day, netblock)
        )""",
        "CREATE INDEX drops_daily_day ON drops_daily (day)",
        DAILY_BACKFILL,
    ),
    FLEET_GUARDS,
]

SCHEMA_VERSION = len(MIGRATIONS)
FLEET_ROLES_SINCE = 3  # the schema version that has fleet_roles


_URI_PASSWORD = re.compile(r"^(postgres(?:ql)?://[^:@/?#]*):[^@/?#]*@")
_PARAM_PASSWORD = re.compile(r"(?i)(password=)[^&\s]*")


def mask_dsn(dsn: str) -> str:
    """The DSN as it may appear in a message or a log: any password replaced by ***."""
    return _PARAM_PASSWORD.sub(r"\1***", _URI_PASSWORD.sub(r"\1:***@", dsn))


def default_host_id() -> str:
    return os.environ.get("NETBLOCK_HOST_ID") or socket.gethostname()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def connect(dsn: str):
    """An autocommit psycopg connection, or StoreError naming the masked DSN."""
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            f"{mask_dsn(dsn)}: PostgreSQL needs psycopg 3: install netblock[fleet] (pip install 'psycopg[binary]')"
        ) from None
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as e:
        raise StoreError(f"{mask_dsn(dsn)}: cannot connect: {_first_line(e)}") from None


class PgStore(StoreCommon):
    """One connection to the fleet's PostgreSQL database; use as a context manager."""

    P = "%s"
    fleet = True

    def __init__(self, dsn: str, conn, host_id: str):
        self.dsn = dsn
        self.path = mask_dsn(dsn)  # what messages name, as Store.path does
        self.host_id = host_id
        self.view_host: str | None = None  # reports: one host's samples, or the fleet's (None)
        self.unreachable_since: datetime | None = None
        self._conn = conn
        self._depth = 0
        self._last_failure = float("-inf")  # when connecting last failed
        self._registered = False  # this host is in the hosts table (reports list it)
        self.role_host: str | None = None  # the fleet host this connection's role is (None: admin or owner)
        self.admin = False
        self.rejected: dict[tuple[str, str], str] = {}  # rows skipped on receipt (netblock.store.receipt)
        self._published: tuple[str, ...] | None = None

    # -- opening ---------------------------------------------------------------

    @classmethod
    def open(cls, dsn: str, *, host_id: str | None = None) -> "PgStore":
        """Connect to ``dsn`` and create or upgrade netblock's tables as needed."""
        conn = connect(dsn)
        store = cls(dsn, conn, host_id or default_host_id())
        try:
            store._setup()
        except BaseException:
            conn.close()
            raise
        return store

    def _setup(self) -> None:
        with self._errors():
            self._conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        self._migrate()
        if SCHEMA_VERSION < FLEET_ROLES_SINCE:
            return
        with self._errors():
            role, self.role_host, admin = self._conn.execute(
                "SELECT current_user, netblock_host(), netblock_is_admin()").fetchone()
        # A host role writes as its own host, whatever the configuration says: refuse a mix-up.
        if self.role_host is not None and self.role_host != self.host_id:
            raise StoreError(f"{self.path}: role {receipt.printable(role)} is fleet host "
                             f"{receipt.printable(self.role_host)}, but this host's id is "
                             f"{receipt.printable(self.host_id)} (host_id in the config)")
        self.admin = bool(admin)

    def may_write(self, source: str) -> bool:
        """Whether this connection's role may write blocks of ``source``: a host role only the policy's."""
        return self.role_host is None or source == POLICY_SOURCE

    def _migrate(self) -> None:
        if self._version_checked() == SCHEMA_VERSION:
            return
        with self.transaction():
            # Re-read under the lock: another host may have upgraded meanwhile.
            version = self._version_checked()
            if version == SCHEMA_VERSION:
                return
            with self._errors():
                if version == 0:
                    tables = self._conn.execute(
                        "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()").fetchone()[0]
                    if tables:
                        raise StoreError(f"{self.path}: is a PostgreSQL database but not netblock's")
                    self._conn.execute("CREATE TABLE schema_version (application text NOT NULL, version integer NOT NULL)")
                    self._conn.execute("INSERT INTO schema_version VALUES (%s, 0)", (APPLICATION,))
                for step in MIGRATIONS[version:]:
                    for statement in step:
                        self._conn.execute(statement)
                self._conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))

    def _version_checked(self) -> int:
        with self._errors():
            present = self._conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
            if not present:
                return 0
            row = self._conn.execute("SELECT application, version FROM schema_version").fetchone()
        if row is None or row[0] != APPLICATION:
            raise StoreError(f"{self.path}: is a PostgreSQL database but not netblock's")
        if row[1] > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {row[1]} is newer than this netblock "
                f"understands ({SCHEMA_VERSION}); upgrade netblock"
            )
        return row[1]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "PgStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def schema_version(self) -> int:
        return self._row("SELECT version FROM schema_version")[0]

    def backend_pid(self) -> int | None:
        """The server process of this connection: notifications it caused carry it."""
        try:
            return self._conn.info.backend_pid
        except Exception:
            return None

    # -- connection, transactions ------------------------------------------------

    def _usable(self) -> None:
        """Re-open a connection that broke (server restart) before the next statement.

        While the server stays away, one attempt per RECONNECT_EVERY_S: a
        daemon reading a busy log would otherwise try to connect per line.
        """
        if self._depth or not (self._conn.closed or self._conn.broken):
            return
        now = time.monotonic()
        if self.unreachable_since is not None and now - self._last_failure < RECONNECT_EVERY_S:
            raise StoreError(f"{self.path}: store unreachable since "
                             f"{self.unreachable_since.isoformat(timespec='seconds')}")
        try:
            self._conn.close()
        except Exception:
            pass
        try:
            self._conn = connect(self.dsn)
        except StoreError:
            self._last_failure = now
            raise
        self._setup()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        import psycopg

        try:
            yield
        except psycopg.Error as e:
            if isinstance(e, psycopg.OperationalError) and (self._conn.closed or self._conn.broken):
                if self.unreachable_since is None:
                    self.unreachable_since = datetime.now(timezone.utc)
            if getattr(e, "sqlstate", None) == "42501":  # refused by row-level security or a missing grant
                raise StoreError(f"{self.path}: refused: {receipt.printable(_first_line(e))} (role "
                                 f"{receipt.printable(self._conn.info.user)}; the root CLI's blocks and the "
                                 f"allowlist need the admin role's DSN)") from None
            raise StoreError(f"{self.path}: {_first_line(e)}") from None
        else:
            self.unreachable_since = None

    def _execute(self, sql: str, params=None):
        """Run one statement; outside a transaction, a connection found dead by it is replaced once.

        A server restart is only noticed by the next statement on the old
        connection; retrying that one statement (a read, or the BEGIN of a
        transaction) on a new connection spares every caller a spurious failure.
        """
        if self._depth:
            with self._errors():
                return self._conn.execute(sql, params)
        for retry in (False, True):
            try:
                self._usable()
            except StoreError:
                if self.unreachable_since is None:
                    self.unreachable_since = datetime.now(timezone.utc)
                raise
            try:
                with self._errors():
                    return self._conn.execute(sql, params)
            except StoreError:
                if retry or not (self._conn.closed or self._conn.broken):
                    raise

    def _all(self, sql: str, params=None) -> list[tuple]:
        cur = self._execute(sql, params)
        with self._errors():
            return cur.fetchall()

    def _one(self, sql: str, params=None) -> tuple | None:
        cur = self._execute(sql, params)
        with self._errors():
            return cur.fetchone()

    def _row(self, sql: str, params=None) -> tuple:
        """The row a query always yields (an aggregate, a table the schema keeps one row in); StoreError
        when a damaged store has none, never a traceback."""
        row = self._one(sql, params)
        if row is None:
            raise StoreError(f"{self.path}: damaged store: no row for {sql}")
        return row

    def _many(self, sql: str, rows: list) -> None:
        if rows:
            with self._errors():
                self._conn.cursor().executemany(sql, rows)

    @contextmanager
    def transaction(self) -> Iterator["PgStore"]:
        """One write transaction; nested uses join the outermost one.

        The advisory lock taken first serialises netblock's write
        transactions across the fleet (waiting up to the lock timeout), so a
        transaction that reads and then writes sees no write in between.
        """
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self._execute("BEGIN")
        self._depth = 1
        try:
            with self._errors():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            yield self
        except BaseException:
            self._depth = 0
            if not (self._conn.closed or self._conn.broken):
                with self._errors():
                    self._conn.execute("ROLLBACK")
            raise
        self._depth = 0
        with self._errors():
            self._conn.execute("COMMIT")

    # -- blocks ----------------------------------------------------------------

    def get_block(self, net: IPNetwork | str) -> Block | None:
        row = self._one(f"SELECT {_BLOCK_COLS} FROM blocks WHERE netblock = %s", (str(canonical_net(net)),))
        return receipt.one_block(self, row)

    def put_blocks(self, blocks: Iterable[Block]) -> int:
        """Insert or replace each block (keyed by its canonical netblock)."""
        rows = [
            (*_net_cols(b.netblock), b.reason, b.source, _ts(b.created),
             None if b.expires is None else _ts(b.expires), b.reblocks)
            for b in blocks
        ]
        with self.transaction():
            if len(rows) > 200:  # one COPY instead of a round trip per row
                self._copy_upsert(rows)
            else:
                self._many(
                    """INSERT INTO blocks (netblock, family, first, last, prefixlen,
                                           reason, source, created, expires, reblocks)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                       ON CONFLICT (netblock) DO UPDATE SET
                           reason = excluded.reason, source = excluded.source,
                           created = excluded.created, expires = excluded.expires,
                           reblocks = excluded.reblocks""",
                    rows,
                )
        return len(rows)

    def _copy_upsert(self, rows: list[tuple]) -> None:
        rows = list({r[0]: r for r in rows}.values())  # the last of duplicates wins, as row by row
        with self._errors():
            self._conn.execute("CREATE TEMP TABLE IF NOT EXISTS incoming_blocks "
                               "(LIKE blocks INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
            with self._conn.cursor().copy(
                    "COPY incoming_blocks (netblock, family, first, last, prefixlen, reason, source, "
                    "created, expires, reblocks) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            self._conn.execute(
                """INSERT INTO blocks SELECT * FROM incoming_blocks
                   ON CONFLICT (netblock) DO UPDATE SET
                       reason = excluded.reason, source = excluded.source,
                       created = excluded.created, expires = excluded.expires,
                       reblocks = excluded.reblocks""")

    def delete_blocks(self, nets: Iterable[IPNetwork | str]) -> list[IPNetwork]:
        """Delete the given netblocks; returns those that existed, in the order given."""
        return self._delete("blocks", nets)

    def _delete(self, table: str, nets: Iterable[IPNetwork | str]) -> list[IPNetwork]:
        keys = [canonical_net(n) for n in nets]
        if not keys:
            return []
        with self.transaction():
            rows = self._all(f"DELETE FROM {table} WHERE netblock = ANY(%s) RETURNING netblock",
                             ([str(k) for k in keys],))
        gone = {text for (text,) in rows}
        out = []
        for net in keys:
            if str(net) in gone:
                gone.discard(str(net))
                out.append(net)
        return out

    def count_blocks(self, now: datetime | None = None) -> int:
        if now is None:
            return self._row("SELECT count(*) FROM blocks")[0]
        return self._row("SELECT count(*) FROM blocks WHERE expires IS NULL OR expires > %s", (_ts(now),))[0]

    def v4_block_space(self, now: datetime) -> int:
        """The sizes of the active IPv4 blocks summed (overlaps counted twice): a cheap bound for the cap."""
        row = self._row("SELECT sum((1::bigint) << (32 - prefixlen)) FROM blocks "
                        "WHERE family = 4 AND (expires IS NULL OR expires > %s)", (_ts(now),))
        return int(row[0] or 0)

    def next_expiry(self, now: datetime) -> datetime | None:
        """When the next active block runs out (what the daemon sleeps towards)."""
        return _opt_dt(self._row("SELECT min(expires) FROM blocks WHERE expires > %s", (_ts(now),))[0])

    def oldest_block(self) -> Block | None:
        row = self._one(f"SELECT {_BLOCK_COLS} FROM blocks ORDER BY created, family, first LIMIT 1")
        return receipt.one_block(self, row)

    # -- allowlist -------------------------------------------------------------

    def allow_add(self, entries: Iterable[AllowEntry]) -> int:
        rows = [(*_net_cols(e.netblock), e.comment, _ts(e.created)) for e in entries]
        with self.transaction():
            self._many(
                """INSERT INTO allowlist (netblock, family, first, last, prefixlen, comment, created)
                   VALUES (%s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (netblock) DO UPDATE SET
                       comment = excluded.comment, created = excluded.created""",
                rows,
            )
        return len(rows)

    def allow_del(self, nets: Iterable[IPNetwork | str]) -> list[IPNetwork]:
        return self._delete("allowlist", nets)

    def allowlist(self) -> list[AllowEntry]:
        rows = self._all("SELECT family, first, prefixlen, comment, created FROM allowlist "
                         "ORDER BY family, first, prefixlen")
        return receipt.allow_entries(self, rows)

    # -- observations ------------------------------------------------------------

    def add_observations(self, obs: Iterable[Observation]) -> int:
        texts: dict = {}
        rows = []
        for o in obs:
            ip = o.ip
            key = (ip.version, ip.value) if isinstance(ip, IPAddress) else ip
            text = texts.get(key)
            if text is None:
                text = texts[key] = str(canonical_ip(ip))
            rows.append((self.host_id, _ts(o.time), text, o.cls, o.mta, o.source, o.position))
        if not rows:
            return 0
        cols = "host, time, ip, cls, mta, source, position"
        # COPY FROM refuses a table under row-level security: a fleet role copies into a temporary
        # table and inserts from there, so the policies see every row; the owner copies directly.
        direct = self.role_host is None and not self.admin
        with self.transaction(), self._errors():
            self._register()
            if not direct:
                self._conn.execute("CREATE TEMP TABLE IF NOT EXISTS incoming_observations (host text, time bigint, "
                                   "ip text, cls text, mta text, source text, position bigint) ON COMMIT DELETE ROWS")
            with self._conn.cursor().copy(
                    f"COPY {'observations' if direct else 'incoming_observations'} ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            if not direct:
                self._conn.execute(f"INSERT INTO observations ({cols}) SELECT {cols} FROM incoming_observations")
        return len(rows)

    def observations(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        ip: IPAddress | str | None = None,
        cls: str | None = None,
    ) -> list[Observation]:
        """Observations of the whole fleet with since <= time < until, oldest first."""
        where, params = _window(since, until)
        if ip is not None:
            where.append("ip = %s")
            params.append(str(canonical_ip(ip)))
        if cls is not None:
            where.append("cls = %s")
            params.append(cls)
        sql = "SELECT time, ip, cls, mta, source, position FROM observations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [o for r in self._all(sql + " ORDER BY time, id", params)
                if receipt.address(self, "observations", r[1]) is not None and (o := _observation(r))]

    def offender_counts(
        self, since: datetime, *, classes: Iterable[str] | None = None
    ) -> dict[tuple[IPAddress, str], int]:
        """How often each (ip, class) offended since ``since``, on any host of the fleet."""
        return {key: n for key, (n, _) in self.offender_stats(since, classes=classes).items()}

    def offender_stats(
        self, since: datetime, *, classes: Iterable[str] | None = None
    ) -> dict[tuple[IPAddress, str], tuple[int, datetime]]:
        """Like offender_counts, with the time of each (ip, class)'s latest offence."""
        sql = "SELECT ip, cls, count(*), max(time) FROM observations WHERE time >= %s AND cls <> ALL(%s)"
        params: list = [_ts(since), list(NOT_OFFENCES)]
        if classes is not None:
            names = sorted(set(classes))
            if not names:
                return {}
            sql += " AND (cls = ANY(%s) OR (strpos(cls, ':') > 0 AND split_part(cls, ':', 1) = ANY(%s)))"
            params += [names, names]
        rows = self._all(sql + " GROUP BY ip, cls", params)
        receipt.forget(self, "observations")
        return {(a, cls): (n, _dt(last)) for ip, cls, n, last in rows
                if (a := receipt.address(self, "observations", ip)) is not None}

    def delivered_since(self, since: datetime) -> set[IPAddress]:
        """Senders that delivered real mail to any host since ``since``: never block them."""
        rows = self._all("SELECT DISTINCT ip FROM observations WHERE cls = 'delivered' AND time >= %s",
                         (_ts(since),))
        return {a for (ip,) in rows if (a := receipt.address(self, "observations", ip)) is not None}

    def prune_observations(self, before: datetime) -> int:
        with self.transaction():
            return self._execute("DELETE FROM observations WHERE time < %s", (_ts(before),)).rowcount

    def observation_class_counts(self, since: datetime | None = None,
                                 until: datetime | None = None) -> dict[str, int]:
        """Observations per class with since <= time < until, of ``view_host`` or the fleet."""
        where, params = _window(since, until)
        self._host_filter(where, params)
        sql = "SELECT cls, count(*) FROM observations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return dict(self._all(sql + " GROUP BY cls ORDER BY cls", params))

    def _host_filter(self, where: list[str], params: list) -> None:
        if self.view_host is not None:
            where.append("host = %s")
            params.append(self.view_host)

    # -- counter samples -----------------------------------------------------------

    _SAMPLE_UPSERT = ("INSERT INTO samples (host, time, netblock, packets, bytes) VALUES (%s, %s, %s, %s, %s) "
                      "ON CONFLICT (host, time, netblock) DO UPDATE SET "
                      "packets = excluded.packets, bytes = excluded.bytes")

    def add_samples(self, time: datetime, counters: dict[IPNetwork, tuple[int, int]]) -> int:
        """Record this host's kernel counters read at ``time``; a repeat for the same time replaces."""
        t = _ts(time)
        rows = [(self.host_id, t, str(canonical_net(net)), int(p), int(b)) for net, (p, b) in counters.items()]
        with self.transaction():
            self._register()
            self._many(self._SAMPLE_UPSERT, rows)
            self._redo_days(self._touched_days(t, [r[2] for r in rows]))
        return len(rows)

    def samples(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        netblock: IPNetwork | str | None = None,
    ) -> list[Sample]:
        """Samples with since <= time < until, by time then netblock, of ``view_host`` or every host."""
        where, params = _window(since, until)
        self._host_filter(where, params)
        if netblock is not None:
            where.append("netblock = %s")
            params.append(str(canonical_net(netblock)))
        sql = "SELECT time, netblock, packets, bytes FROM samples"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return samples_from_rows(self._all(sql + " ORDER BY time, netblock, host", params))

    def prune_samples(self, before: datetime) -> int:
        """Drop samples older than ``before`` (report retention), of every host."""
        with self.transaction():
            self._execute("DELETE FROM drops_daily WHERE day < %s", (_ts(before) // DAY,))
            return self._execute("DELETE FROM samples WHERE time < %s", (_ts(before),)).rowcount

    def last_samples(self, nets: Iterable[str]) -> dict[str, tuple[int, int, int]]:
        """{netblock text: (time, packets, bytes)} of this host's latest sample of each given netblock."""
        rows = self._all(
            "SELECT n, s.time, s.packets, s.bytes FROM unnest(%s::text[]) AS n "
            "JOIN LATERAL (SELECT time, packets, bytes FROM samples "
            "              WHERE host = %s AND netblock = n ORDER BY time DESC LIMIT 1) AS s ON true",
            (list(nets), self.host_id),
        )
        return {net: (t, p, b) for net, t, p, b in rows}


    def add_changed_samples(self, time: datetime, counters: dict[IPNetwork, tuple[int, int]]) -> int:
        """Record only the counters that differ from this host's latest sample (see Store)."""
        texts = {net: self._sample_key(net) for net in counters}
        with self.transaction():
            self._register()
            last = self.last_samples(texts.values())
            rows = changed_sample_rows(_ts(time), counters, texts, last)
            self._many(self._SAMPLE_UPSERT, [(self.host_id, *r) for r in rows])
            add, redo = changed_daily_rows(rows, last)
            add.sort()
            self._many(self._DAILY_ADD, [(self.host_id, *r) for r in add])
            self._redo_days(redo)
        return len(rows)

    _DAILY_ADD = (
        "INSERT INTO drops_daily (host, day, netblock, packets, bytes, first, last) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (host, day, netblock) DO UPDATE SET packets = drops_daily.packets + excluded.packets, "
        "bytes = drops_daily.bytes + excluded.bytes, first = LEAST(drops_daily.first, excluded.first), "
        "last = GREATEST(drops_daily.last, excluded.last)")

    def _touched_days(self, t: int, nets: list[str]) -> set[tuple[str, int]]:
        """This host's (netblock, day) pairs a sample written at ``t`` changes (see Store)."""
        pairs = {(net, t // DAY) for net in nets}
        for net in nets:
            row = self._one("SELECT min(time) FROM samples WHERE host = %s AND netblock = %s AND time > %s",
                            (self.host_id, net, t))
            if row and row[0] is not None:
                pairs.add((net, row[0] // DAY))
        return pairs

    def _redo_days(self, pairs: Iterable[tuple[str, int]]) -> None:
        """Recompute this host's roll-up of each (netblock, day) from its samples (see Store)."""
        h = self.host_id
        for net, day in sorted(pairs):
            base = self._one("SELECT packets, bytes FROM samples WHERE host = %s AND netblock = %s AND time < %s "
                             "ORDER BY time DESC LIMIT 1", (h, net, day * DAY))
            series = self._all("SELECT time, packets, bytes FROM samples WHERE host = %s AND netblock = %s "
                               "AND time >= %s AND time < %s ORDER BY time", (h, net, day * DAY, (day + 1) * DAY))
            self._execute("DELETE FROM drops_daily WHERE host = %s AND day = %s AND netblock = %s", (h, day, net))
            for d, (p, b, first, end) in fold_days(base or (0, 0), series).items():
                self._execute(self._DAILY_ADD, (h, d, net, p, b, first, end))

    def rebuild_daily(self) -> None:
        """Recompute the whole roll-up (every host's) from the samples, as the migration did."""
        with self.transaction():
            self._execute("DELETE FROM drops_daily")
            self._execute(DAILY_BACKFILL)

    def _daily_totals(
            self, d0: int | None, d1: int | None) -> list[tuple[str, int, int, int | None, int | None]]:
        """(netblock, packets, bytes, first, last) over the roll-up's days d0 <= day < d1, of
        ``view_host`` or summed over the fleet's hosts."""
        where, params = self._day_where(d0, d1)
        return self._all("SELECT netblock, sum(packets)::bigint, sum(bytes)::bigint, min(first), max(last) "
                         "FROM drops_daily" + where + " GROUP BY netblock", params)

    def _daily_per_day(self, d0: int | None, d1: int | None) -> list[tuple[int, int, int]]:
        where, params = self._day_where(d0, d1)
        return self._all("SELECT day, sum(packets)::bigint, sum(bytes)::bigint FROM drops_daily" + where
                         + " GROUP BY day", params)

    def _day_where(self, d0: int | None, d1: int | None) -> tuple[str, list]:
        where, params = _day_range(d0, d1, "%s")
        if self.view_host is not None:
            where += (" AND" if where else " WHERE") + " host = %s"
            params.append(self.view_host)
        return where, params

    def _drop_deltas(self, since: datetime | None, until: datetime | None) -> Iterator[tuple[str, int, int, int]]:
        """(netblock text, time, packets, bytes) dropped per sample inside [since, until], in time order.

        Like Store._drop_deltas, but each host's series of a netblock is its
        own (its own baseline, its own resets), for ``view_host`` or every host.
        """
        where, params = [], []
        if since is not None:
            where.append("time >= %s")
            params.append(_ts(since))
        if until is not None:
            where.append("time <= %s")
            params.append(_ts(until))
        self._host_filter(where, params)
        sql = "SELECT host, netblock, time, packets, bytes FROM samples"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._all(sql + " ORDER BY time, host, netblock", params)
        last: dict[tuple[str, str], tuple[int, int]] = {}
        if since is not None and rows:
            keys = sorted({(r[0], r[1]) for r in rows})
            for host, net, p, b in self._all(
                    "SELECT k.h, k.n, s.packets, s.bytes FROM unnest(%s::text[], %s::text[]) AS k(h, n) "
                    "JOIN LATERAL (SELECT packets, bytes FROM samples WHERE host = k.h AND netblock = k.n "
                    "              AND time < %s ORDER BY time DESC LIMIT 1) AS s ON true",
                    ([h for h, _ in keys], [n for _, n in keys], _ts(since))):
                last[(host, net)] = (p, b)
        for host, net, t, p, b in rows:
            pp, pb = last.get((host, net), (0, 0))
            last[(host, net)] = (p, b)
            if p < pp or b < pb:
                yield net, t, p, b
            else:
                yield net, t, p - pp, b - pb

    def block_reasons(self, at: datetime) -> dict[str, tuple[str, bool]]:
        """{netblock text: (reason, active at ``at``)} of every block."""
        t = _ts(at)
        rows = self._all("SELECT netblock, reason, created <= %s AND (expires IS NULL OR expires > %s) FROM blocks",
                         (t, t))
        return {net: (reason, bool(active)) for net, reason, active in rows}

    def thin_samples(self, before: datetime, after: datetime | None = None) -> int:
        """Keep, of this host's samples older than ``before``, the last per netblock per UTC day (see Store)."""
        with self.transaction():
            return self._execute(
                """DELETE FROM samples AS s WHERE host = %(h)s AND time < %(b)s AND time >= %(a)s AND EXISTS (
                       SELECT 1 FROM samples AS later
                       WHERE later.host = s.host AND later.netblock = s.netblock AND later.time > s.time
                         AND later.time < %(b)s AND later.time / 86400 = s.time / 86400)""",
                {"h": self.host_id, "b": _ts(before),
                 "a": 0 if after is None else _ts(after) // 86400 * 86400},
            ).rowcount

    # -- small state (per host: file positions, journal cursor, last tick) ------------

    def get_state(self, key: str) -> str | None:
        row = self._one("SELECT value FROM state WHERE host = %s AND key = %s", (self.host_id, key))
        return None if row is None else row[0]

    def set_state(self, key: str, value: str) -> None:
        with self.transaction():
            self._register()
            self._execute(
                "INSERT INTO state (host, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (host, key) DO UPDATE SET value = excluded.value",
                (self.host_id, key, str(value)),
            )

    # -- fleet -------------------------------------------------------------------

    def hosts(self) -> list[str]:
        """Every host id that has written observations, samples or state, sorted (printable: a peer wrote it)."""
        return [receipt.printable(h) for (h,) in self._all("SELECT host FROM hosts ORDER BY host")]

    def publish_addresses(self, own: Iterable[IPNetwork]) -> bool:
        """Put this host's own addresses in the fleet's list, which every host carves out of what it
        drops; True when the list changed. Nothing is written while it is what was last published."""
        texts = tuple(sorted({str(n.ip) for n in own if n.size == 1}))
        if texts == self._published:
            return False
        with self.transaction():
            self._register()
            have = {a for (a,) in self._all("SELECT address FROM host_addresses WHERE host = %s", (self.host_id,))}
            changed = have != set(texts)
            if changed:
                self._execute("DELETE FROM host_addresses WHERE host = %s AND address <> ALL(%s)",
                              (self.host_id, list(texts)))
                self._many("INSERT INTO host_addresses (host, address) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                           [(self.host_id, t) for t in texts if t not in have])
        self._published = texts
        return changed

    def change_mark(self) -> int:
        """The change feed's position now: changes_since(it) returns what is written after this call."""
        return self._row("SELECT greatest((SELECT max(changed) FROM blocks), "
                         "(SELECT max(changed) FROM blocks_gone), 0)")[0]

    def changes_since(self, mark: int) -> tuple[list[Block], list[str], int, int]:
        """(blocks written, keys of blocks deleted, the new mark, rows skipped) since ``mark``; the
        blocks validated on receipt (an unparseable one is skipped, recorded and counted)."""
        rows = self._all(f"SELECT {_BLOCK_COLS}, changed FROM blocks WHERE changed > %s ORDER BY changed", (mark,))
        gone = self._all("SELECT changed, netblock FROM blocks_gone WHERE changed > %s ORDER BY changed", (mark,))
        last = max([mark] + [r[-1] for r in rows] + [g[0] for g in gone])
        good = receipt.blocks(self, [r[:-1] for r in rows], full=False)
        return good, [receipt.printable(g[1]) for g in gone], last, len(rows) - len(good)

    def peer_addresses(self) -> list[IPNetwork]:
        """Every fleet member's published addresses (validated on receipt: single addresses, a bounded number)."""
        rows = self._all("SELECT host, address FROM host_addresses ORDER BY host, address")
        return receipt.peer_addresses(self, rows)

    def _register(self) -> None:
        """Put this host in the hosts table, once per connection, before its first own row.

        A table of its own because asking the data (DISTINCT host over
        millions of observations) would scan all of it for one short list.
        """
        if self._registered:
            return
        outermost = not self._depth
        with self.transaction():
            self._execute("INSERT INTO hosts (host, first_seen) VALUES (%s, %s) ON CONFLICT (host) DO NOTHING",
                          (self.host_id, int(time.time())))
        # Inside a caller's transaction the row is only sure once that commits: ask again next time.
        self._registered = outermost


def _window(since: datetime | None, until: datetime | None) -> tuple[list[str], list]:
    where: list[str] = []
    params: list = []
    if since is not None:
        where.append("time >= %s")
        params.append(_ts(since))
    if until is not None:
        where.append("time < %s")
        params.append(_ts(until))
    return where, params


# -- roles: `netblock fleet ...`, run with the database owner's DSN ------------------------------

FLEET_GROUP = "netblock_fleet"  # every fleet role is a member: the table grants are made once, to it
_READ = ("schema_version", "blocks", "allowlist", "observations", "samples", "drops_daily", "hosts", "state",
         "host_addresses", "fleet_roles", "fleet_limits", "blocks_gone")
_HOST_WRITES = ("observations", "samples", "drops_daily", "state", "hosts", "host_addresses")
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def role_for(host: str) -> str:
    """The default role name of a host id: netblock_ plus the id, lower case, other characters as '_'."""
    return ("netblock_" + re.sub(r"[^a-z0-9_]", "_", host.lower()))[:63]


def _owner_only(store: PgStore) -> None:
    if store.role_host is not None or store.admin:
        raise StoreError(f"{store.path}: `netblock fleet` creates roles: use the database owner's DSN "
                         f"(this one is {'host ' + store.role_host if store.role_host else 'the admin role'})")


def create_fleet_role(store: PgStore, role: str, host: str | None, password: str) -> None:
    """Create (or re-key) a login role for ``host`` (None: the admin role), grant it what it needs,
    and record which host it is. Row-level security does the rest."""
    from psycopg import sql

    _owner_only(store)
    if not _ROLE_NAME.match(role):
        raise StoreError(f"role name {receipt.printable(role)!r}: use lower-case letters, digits and '_'")
    ident, group = sql.Identifier(role), sql.Identifier(FLEET_GROUP)
    tables = lambda names: sql.SQL(", ").join(map(sql.Identifier, names))  # noqa: E731
    with store.transaction(), store._errors():
        c = store._conn
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (FLEET_GROUP,)).fetchone():
            c.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(group))
        exists = c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        c.execute(sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD {}")
                  .format(ident, sql.Literal(password)))
        c.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(c.execute("SELECT current_schema()").fetchone()[0]), group))
        c.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(tables(_READ), group))
        c.execute(sql.SQL("GRANT INSERT, UPDATE ON blocks TO {}").format(group))
        c.execute(sql.SQL("GRANT INSERT, UPDATE, DELETE ON {} TO {}").format(tables(_HOST_WRITES), group))
        c.execute(sql.SQL("GRANT {} TO {}").format(group, ident))
        if host is None:
            c.execute(sql.SQL("GRANT DELETE ON blocks TO {}").format(ident))
            c.execute(sql.SQL("GRANT INSERT, UPDATE, DELETE ON allowlist TO {}").format(ident))
            c.execute(sql.SQL("GRANT SELECT ON quarantine TO {}").format(ident))
        c.execute("DELETE FROM fleet_roles WHERE role = %s", (role,))
        if host is not None:  # a host has one role: adding it again replaces the old one's mapping
            c.execute("DELETE FROM fleet_roles WHERE host = %s", (host,))
        c.execute("INSERT INTO fleet_roles (role, host) VALUES (%s, %s)", (role, host))


def set_fleet_limits(store: PgStore, max_prefix_v4: int, max_prefix_v6: int, max_ttl: int, permanent: bool) -> None:
    """What a host role's policy blocks may be (row-level security reads them at every write)."""
    _owner_only(store)
    with store.transaction():
        store._execute("UPDATE fleet_limits SET max_prefix_v4 = %s, max_prefix_v6 = %s, max_ttl = %s, permanent = %s",
                       (max_prefix_v4, max_prefix_v6, max_ttl, permanent))


def fleet_overview(store: PgStore) -> dict:
    """Roles, limits and quarantined rows, for `netblock fleet show`."""
    roles = [{"role": receipt.printable(r), "host": None if h is None else receipt.printable(h)}
             for r, h in store._all("SELECT role, host FROM fleet_roles ORDER BY host NULLS FIRST, role")]
    v4, v6, ttl, permanent = store._row(
        "SELECT max_prefix_v4, max_prefix_v6, max_ttl, permanent FROM fleet_limits")
    try:
        quarantined = store._row("SELECT count(*) FROM quarantine")[0]
    except StoreError:
        quarantined = None  # a host role may not read it
    return {"roles": roles, "limits": {"max_prefix_v4": v4, "max_prefix_v6": v6, "max_ttl_s": ttl,
                                       "permanent": permanent}, "quarantined": quarantined}
