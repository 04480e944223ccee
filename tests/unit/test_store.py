"""The store: round-trips, schema upgrades, file modes, concurrency, failures."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from netaddr import IPAddress, IPNetwork

from netblock import store as store_mod
from netblock.errors import BadInput, StoreError
from netblock.model import AllowEntry, Block, Observation, Sample
from netblock.store import SCHEMA_VERSION, Store

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


def test_naive_datetime_is_refused(st):
    with pytest.raises(ValueError, match="naive"):
        st.put_blocks([block("192.0.2.0/24", created=datetime(2026, 1, 1))])


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


def test_netblocks_are_canonical(st):
    st.put_blocks([
        block("192.0.2.77/24"),  # host bits
        block("::ffff:198.51.100.0/120"),  # IPv4-mapped
        block("2001:DB8:0:0::1/48"),
    ])
    nets = [str(b.netblock) for b in st.blocks()]
    assert nets == ["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/48"]
    raw = st._conn.execute("SELECT netblock FROM blocks ORDER BY netblock").fetchall()
    assert sorted(n for (n,) in raw) == sorted(nets)
    assert st.get_block("::ffff:198.51.100.0/120") is not None


def test_bad_netblock_text_is_bad_input(st):
    with pytest.raises(BadInput, match="'not-an-ip'"):
        st.get_block("not-an-ip")


def test_put_replaces_by_netblock(st):
    st.put_blocks([block("192.0.2.0/24", reason="first")])
    st.put_blocks([block("192.0.2.0/24", reason="second", reblocks=1, expires=None)])
    assert st.count_blocks() == 1
    got = st.get_block("192.0.2.0/24")
    assert (got.reason, got.reblocks, got.expires) == ("second", 1, None)


def test_blocks_active_expired_and_counts(st):
    st.put_blocks([
        block("203.0.113.0/24", expires=None),
        block("198.51.100.0/24", expires=T0 + HOUR),
        block("192.0.2.0/24", expires=T0 + 2 * HOUR),
        block("2001:db8::/32", expires=T0 - HOUR),
    ])
    now = T0 + HOUR  # a block expiring exactly now is expired
    active = [str(b.netblock) for b in st.blocks(now=now)]
    assert active == ["192.0.2.0/24", "203.0.113.0/24"]
    assert [str(b.netblock) for b in st.expired_blocks(now)] == ["198.51.100.0/24", "2001:db8::/32"]
    assert len(st.blocks()) == 4
    assert st.count_blocks() == 4
    assert st.count_blocks(now) == 2
    assert st.next_expiry(now) == T0 + 2 * HOUR
    assert st.next_expiry(T0 + 3 * HOUR) is None


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


def test_nested_transactions_commit_together(st):
    with st.transaction():
        st.put_blocks([block("192.0.2.0/24")])
        with st.transaction():
            st.allow_add([AllowEntry(IPNetwork("198.51.100.0/24"), "partner", T0)])
        st.set_state("k", "v")
    assert st.count_blocks() == 1 and len(st.allowlist()) == 1 and st.get_state("k") == "v"


def test_failed_transaction_rolls_everything_back(st):
    with pytest.raises(RuntimeError):
        with st.transaction():
            st.put_blocks([block("192.0.2.0/24")])
            st.allow_add([AllowEntry(IPNetwork("198.51.100.0/24"), "", T0)])
            raise RuntimeError("boom")
    assert st.count_blocks() == 0 and st.allowlist() == []
    st.set_state("k", "v")  # the connection is usable again
    assert st.get_state("k") == "v"


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


def test_two_processes_lose_no_update(tmp_path):
    path = str(tmp_path / "nb.db")
    with Store.open(path) as s:
        s.put_blocks([block("192.0.2.0/24")])
        s.set_state("counter", "0")
    rounds = 150
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_hammer, args=(path, w, rounds, barrier)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    with Store.open(path) as s:
        assert s.get_block("192.0.2.0/24").reblocks == 2 * rounds
        assert s.get_state("counter") == str(2 * rounds)
        assert s.count_blocks() == 1 + 2 * rounds
        counts = s.offender_counts(T0)
        assert counts == {(IPAddress("203.0.113.0"), "no-rdns"): rounds,
                          (IPAddress("203.0.113.1"), "no-rdns"): rounds}


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


def test_allowlist_round_trip(st):
    entries = [
        AllowEntry(IPNetwork("2001:db8:1::/48"), "v6 partner", T0),
        AllowEntry(IPNetwork("198.51.100.0/24"), "backup MX", T0 + HOUR),
    ]
    assert st.allow_add(entries) == 2
    assert st.allowlist() == [entries[1], entries[0]]
    st.allow_add([AllowEntry(IPNetwork("198.51.100.0/24"), "renamed", T0)])
    assert [e.comment for e in st.allowlist()] == ["renamed", "v6 partner"]
    assert st.allow_del(["198.51.100.0/24", "192.0.2.0/24"]) == [IPNetwork("198.51.100.0/24")]
    assert st.allowlist() == [entries[0]]


# -- observations ------------------------------------------------------------------------


def obs(minutes: int, ip: str, cls: str, **kw) -> Observation:
    return Observation(T0 + timedelta(minutes=minutes), IPAddress(ip), cls, kw.pop("mta", "postfix"), **kw)


def test_observations_round_trip_and_filters(st):
    rows = [
        obs(0, "192.0.2.1", "no-rdns", source="/var/log/mail.log", position=1234),
        obs(10, "192.0.2.2", "dnsbl:zen.example", mta="exim", source="journal", position=7),
        obs(20, "::ffff:192.0.2.1", "no-rdns"),  # stored folded to IPv4
        obs(30, "2001:db8::5", "connect"),
    ]
    assert st.add_observations(rows) == 4
    got = st.observations()
    assert got[:2] == rows[:2]
    assert got[2].ip == IPAddress("192.0.2.1") and got[2].ip.version == 4
    assert st.observations(since=T0 + timedelta(minutes=10), until=T0 + timedelta(minutes=30)) == got[1:3]
    assert st.observations(ip="192.0.2.1") == [got[0], got[2]]
    assert st.observations(ip=IPAddress("::ffff:192.0.2.1")) == [got[0], got[2]]
    assert st.observations(cls="connect") == [got[3]]


def test_offender_counts(st):
    st.add_observations([
        obs(0, "192.0.2.1", "no-rdns"),
        obs(5, "192.0.2.1", "no-rdns"),
        obs(6, "192.0.2.1", "no-rdns"),
        obs(7, "192.0.2.1", "dnsbl:zen.example"),
        obs(8, "192.0.2.1", "dnsbl:bl.example"),
        obs(9, "192.0.2.1", "connect"),
        obs(9, "192.0.2.1", "delivered"),
        obs(9, "2001:db8::1", "bad-helo"),
        obs(9, "192.0.2.9", "dnsblx"),
    ])
    since = T0 + timedelta(minutes=5)
    assert st.offender_counts(since) == {
        (IPAddress("192.0.2.1"), "no-rdns"): 2,
        (IPAddress("192.0.2.1"), "dnsbl:zen.example"): 1,
        (IPAddress("192.0.2.1"), "dnsbl:bl.example"): 1,
        (IPAddress("2001:db8::1"), "bad-helo"): 1,
        (IPAddress("192.0.2.9"), "dnsblx"): 1,
    }
    assert st.offender_counts(since, classes=["dnsbl"]) == {
        (IPAddress("192.0.2.1"), "dnsbl:zen.example"): 1,
        (IPAddress("192.0.2.1"), "dnsbl:bl.example"): 1,
    }
    assert st.offender_counts(T0, classes={"no-rdns", "connect"}) == {(IPAddress("192.0.2.1"), "no-rdns"): 3}
    assert st.offender_counts(T0, classes=[]) == {}


def test_delivered_since_and_prune(st):
    st.add_observations([
        obs(0, "192.0.2.1", "delivered"),
        obs(60, "192.0.2.2", "delivered"),
        obs(60, "192.0.2.2", "delivered"),
        obs(61, "192.0.2.3", "no-rdns"),
    ])
    assert st.delivered_since(T0) == {IPAddress("192.0.2.1"), IPAddress("192.0.2.2")}
    assert st.delivered_since(T0 + HOUR) == {IPAddress("192.0.2.2")}
    assert st.prune_observations(T0 + HOUR) == 1
    assert len(st.observations()) == 3
    assert st.prune_observations(T0 + HOUR) == 0


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


def test_samples_round_trip(st):
    a, b = IPNetwork("192.0.2.0/24"), IPNetwork("2001:db8::/48")
    assert st.add_samples(T0, {a: (10, 600), b: (1, 80)}) == 2
    st.add_samples(T0 + HOUR, {a: (25, 1500)})
    st.add_samples(T0 + HOUR, {a: (26, 1560)})  # same reading time: replaced
    assert st.samples() == [
        Sample(T0, a, 10, 600), Sample(T0, b, 1, 80), Sample(T0 + HOUR, a, 26, 1560)]
    assert st.samples(netblock="192.0.2.0/24", since=T0 + HOUR) == [Sample(T0 + HOUR, a, 26, 1560)]
    assert st.samples(until=T0 + HOUR) == [Sample(T0, a, 10, 600), Sample(T0, b, 1, 80)]
    big = 2**62
    st.add_samples(T0 + 2 * HOUR, {b: (big, big)})
    assert st.samples(netblock=b)[-1].bytes == big
    assert st.prune_samples(T0 + HOUR) == 2
    assert len(st.samples()) == 2


def test_state_round_trip(st):
    assert st.get_state("offset:/var/log/mail.log") is None
    st.set_state("offset:/var/log/mail.log", "1234")
    st.set_state("offset:/var/log/mail.log", "5678")
    st.set_state("cursor", "s=abc;i=1")
    assert st.get_state("offset:/var/log/mail.log") == "5678"
    assert st.get_state("cursor") == "s=abc;i=1"


def test_in_memory_store_for_tests_of_others():
    with Store.open(":memory:") as s:
        s.put_blocks([block("192.0.2.0/24")])
        assert s.count_blocks() == 1
