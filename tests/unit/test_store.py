"""The SQLite store's own behaviour: files and modes, schema upgrades, locking, failures.

What every store must do (round-trips, transactions, offender counts, two
writers at once) is in test_store_conformance.py, run against SQLite and
PostgreSQL alike.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from netaddr import IPAddress, IPNetwork

from netblock.errors import StoreError
from netblock.model import Block, Observation
from netblock.store import sqlite as store_mod
from netblock.store.sqlite import SCHEMA_VERSION, Store

# A pinned instant, not today: in this file it meets only fakes, the store and pure functions,
# never the kernel's or the real clock (scripts/test-clock.sh runs the suite 400 days ahead).
T0 = datetime(2026, 11, 20, 12, 0, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


@pytest.fixture
def st(tmp_path):
    with Store.open(tmp_path / "nb.db") as s:
        yield s


def block(net: str, *, expires: datetime | None = T0 + HOUR, created: datetime = T0, **kw) -> Block:
    return Block(IPNetwork(net), kw.pop("reason", "test"), kw.pop("source", "cli"), created, expires, **kw)


# -- opening, files, schema ------------------------------------------------------


def test_open_creates_private_directory_and_files(tmp_path):
    path = tmp_path / "var" / "lib" / "netblock" / "nb.db"
    old = os.umask(0o022)
    try:
        with Store.open(path) as s:
            s.set_state("k", "v")
            assert s.path == str(path)
            files = [path, path.with_name("nb.db-wal"), path.with_name("nb.db-shm")]
            assert all(f.exists() for f in files)
            for f in files:
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_open_tightens_a_world_readable_file(tmp_path):
    path = tmp_path / "nb.db"
    Store.open(path).close()
    os.chmod(path, 0o644)
    Store.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_wal_mode_and_current_schema(tmp_path):
    with Store.open(tmp_path / "nb.db") as s:
        assert s.schema_version() == SCHEMA_VERSION
    conn = sqlite3.connect(tmp_path / "nb.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_empty_file_is_version_0_and_gets_migrated(tmp_path):
    path = tmp_path / "nb.db"
    path.write_bytes(b"")
    with Store.open(path) as s:
        assert s.schema_version() == SCHEMA_VERSION
        s.put_blocks([block("192.0.2.0/24")])
        assert s.count_blocks() == 1


def test_old_database_is_upgraded_step_by_step(tmp_path, monkeypatch):
    """A v1 file gains what a later step adds, and keeps its data."""
    path = tmp_path / "nb.db"
    with Store.open(path) as s:
        s.put_blocks([block("192.0.2.0/24")])
    steps = store_mod.MIGRATIONS + [("CREATE TABLE extra (x INTEGER)", "INSERT INTO extra VALUES (42)")]
    monkeypatch.setattr(store_mod, "MIGRATIONS", steps)
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", len(steps))
    with Store.open(path) as s:
        assert s.schema_version() == len(steps)
        assert s._conn.execute("SELECT x FROM extra").fetchall() == [(42,)]
        assert [b.netblock for b in s.blocks()] == [IPNetwork("192.0.2.0/24")]
    with Store.open(path) as s:  # already current: the step does not run twice
        assert s._conn.execute("SELECT count(*) FROM extra").fetchone()[0] == 1


def test_database_from_the_future_is_refused(tmp_path):
    path = tmp_path / "nb.db"
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=rf"nb\.db: schema version {SCHEMA_VERSION + 1} is newer"):
        Store.open(path)


def test_corrupt_file_is_a_store_error(tmp_path):
    path = tmp_path / "nb.db"
    path.write_bytes(b"this is not an SQLite database at all\n" * 200)
    with pytest.raises(StoreError) as err:
        Store.open(path)
    msg = str(err.value)
    assert str(path) in msg and "not a database" in msg and "\n" not in msg


def test_someone_elses_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not netblock's"):
        Store.open(path)


def test_unwritable_paths_are_store_errors(tmp_path):
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    with pytest.raises(StoreError, match="cannot create directory"):
        Store.open(a_file / "sub" / "nb.db")
    with pytest.raises(StoreError, match=str(tmp_path)):
        Store.open(tmp_path)  # a directory, not a file


def test_refused_write_is_a_store_error_and_leaves_no_transaction(tmp_path):
    with Store.open(tmp_path / "nb.db") as s:
        s._conn.execute("PRAGMA query_only = ON")
        with pytest.raises(StoreError, match=r"nb\.db: attempt to write a readonly database"):
            s.set_state("k", "v")
        assert not s._conn.in_transaction
        s._conn.execute("PRAGMA query_only = OFF")
        s.set_state("k", "v")
        assert s.get_state("k") == "v"


def test_closed_store_raises_store_error(tmp_path):
    s = Store.open(tmp_path / "nb.db")
    s.close()
    with pytest.raises(StoreError):
        s.count_blocks()


# -- blocks ------------------------------------------------------------------------


def test_block_round_trip(st):
    b = Block(IPNetwork("198.51.100.0/24"), "dnsbl x3", "policy", T0, T0 + 7 * 24 * HOUR, reblocks=2)
    assert st.put_blocks([b]) == 1
    assert st.get_block(IPNetwork("198.51.100.0/24")) == b
    assert st.get_block("198.51.100.0/24") == b
    assert st.get_block("198.51.100.0/25") is None


def test_times_round_trip_to_the_second(st):
    created = T0.replace(microsecond=999_999)
    st.put_blocks([block("192.0.2.1/32", created=created, expires=None)])
    got = st.get_block("192.0.2.1/32")
    assert got.created == T0 and got.created.tzinfo is not None
    assert got.expires is None
    other_tz = datetime(2026, 11, 20, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    st.put_blocks([block("192.0.2.2/32", created=other_tz)])
    assert st.get_block("192.0.2.2/32").created == T0


def test_blocks_sort_numerically_ipv4_first(st):
    st.put_blocks([block(n) for n in ("2001:db8::/32", "198.18.10.0/24", "198.18.9.0/24", "198.18.0.0/15")])
    assert [str(b.netblock) for b in st.blocks()] == [
        "198.18.0.0/15", "198.18.9.0/24", "198.18.10.0/24", "2001:db8::/32"]


def test_oldest_block(st):
    assert st.oldest_block() is None
    st.put_blocks([block("192.0.2.0/24", created=T0), block("198.51.100.0/24", created=T0 - HOUR)])
    assert str(st.oldest_block().netblock) == "198.51.100.0/24"


def test_delete_blocks_returns_those_that_existed(st):
    st.put_blocks([block("192.0.2.0/24"), block("198.51.100.0/24")])
    gone = st.delete_blocks([IPNetwork("198.51.100.0/24"), "203.0.113.0/24", "192.0.2.9/24"])
    assert gone == [IPNetwork("198.51.100.0/24"), IPNetwork("192.0.2.0/24")]
    assert st.count_blocks() == 0
    assert st.delete_blocks(["192.0.2.0/24"]) == []


def test_put_many_blocks_in_one_call(st):
    blocks = [block(str(IPNetwork((0xC6120000 + i * 256, 24), 4)), expires=T0 + timedelta(seconds=i))
              for i in range(20_000)]
    assert st.put_blocks(iter(blocks)) == 20_000
    assert st.count_blocks() == 20_000
    assert st.count_blocks(T0 + timedelta(seconds=9_999)) == 10_000
    assert st.blocks()[:3] == blocks[:3]


# -- transactions -------------------------------------------------------------------


def _hammer(path: str, worker: int, rounds: int, barrier) -> None:
    """Read-modify-write the same rows as the other worker, plus rows of its own."""
    with Store.open(path) as s:
        barrier.wait()
        for i in range(rounds):
            with s.transaction():
                b = s.get_block("192.0.2.0/24")
                s.put_blocks([replace(b, reblocks=b.reblocks + 1)])
                s.set_state("counter", str(int(s.get_state("counter")) + 1))
            s.put_blocks([block(f"198.{18 + worker}.{i // 256}.{i % 256}/32")])
            s.add_observations([Observation(T0, IPAddress(f"203.0.113.{worker}"), "no-rdns", "postfix")])


def test_a_held_write_lock_times_out_as_store_error(tmp_path, monkeypatch):
    path = tmp_path / "nb.db"
    Store.open(path).close()
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.05)
    with Store.open(path) as a, Store.open(path) as b:
        with a.transaction():
            a.set_state("k", "a")
            with pytest.raises(StoreError, match="database is locked"):
                b.set_state("k", "b")
        assert b.get_state("k") == "a"


# -- allowlist ------------------------------------------------------------------------


# -- observations ------------------------------------------------------------------------


def obs(minutes: int, ip: str, cls: str, **kw) -> Observation:
    return Observation(T0 + timedelta(minutes=minutes), IPAddress(ip), cls, kw.pop("mta", "postfix"), **kw)


def test_query_plans_use_the_indexes(st):
    """The daemon runs these every tick over up to retention's worth of rows."""
    def plan(sql, *params):
        return " ".join(r[-1] for r in st._conn.execute("EXPLAIN QUERY PLAN " + sql, params))

    assert "blocks_expires" in plan("SELECT min(expires) FROM blocks WHERE expires > ?", 0)
    assert "blocks_expires" in plan("SELECT count(*) FROM blocks WHERE expires <= ?", 0)
    # offender_counts and delivered_since name their index (INDEXED BY): a
    # dropped or renamed index makes them fail here rather than scan the table.
    st.offender_counts(T0)
    st.delivered_since(T0)


# -- samples and state ----------------------------------------------------------------------


def test_in_memory_store_for_tests_of_others():
    with Store.open(":memory:") as s:
        s.put_blocks([block("192.0.2.0/24")])
        assert s.count_blocks() == 1


def test_upgrade_backfills_the_daily_rollup_from_the_samples(tmp_path):
    """A version 1 file (samples, no roll-up) opened by this netblock: whole-day windows read the
    roll-up the migration built, and it agrees with the samples, resets included."""
    from netblock.reports import tables as rep

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    for statement in store_mod.MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {store_mod.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    t0 = int(T0.timestamp())
    series = {"192.0.2.0/24": [5, 9, 2, 30, 31, 1], "2001:db8::/48": [0, 0, 4, 4, 8, 8]}
    conn.executemany("INSERT INTO samples (time, netblock, packets, bytes) VALUES (?, ?, ?, ?)",
                     [(t0 + k * 9 * 3600, net, p, p * 40) for net, ps in series.items() for k, p in enumerate(ps)])
    conn.commit()
    conn.close()
    with Store.open(path) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s._conn.execute("SELECT count(*) FROM drops_daily").fetchone()[0] == 5  # not the day 2001:db8::/48 dropped nothing
        samples = s.samples()
        day0 = T0.replace(hour=0)
        for since, until in ((None, None), (day0 + 24 * HOUR, None), (day0, day0 + 48 * HOUR - timedelta(seconds=1))):
            raw = {str(k.cidr): (r.packets, r.bytes, r.first_seen, r.last_seen)
                   for k, r in rep.drops(samples, since, until).items() if r.packets or r.bytes}
            assert s.sample_drops(since, until) == raw
        assert s.sample_drops(None, None)["192.0.2.0/24"][:2] == (9 + 2 + 28 + 1 + 1, (9 + 2 + 28 + 1 + 1) * 40)
