"""The store interface, run against both backends: SQLite (one host) and PostgreSQL (a fleet).

Every test taking ``st`` runs twice; a difference in semantics between the two
backends fails one of the pair. The tests at the end are PostgreSQL's own:
migrations, what is shared and what is per host, notifications, reconnection
and the password never being shown.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import select
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from helpers import clean_env
from netaddr import IPAddress, IPNetwork

from netblock import store as stores
from netblock.errors import BadInput, StoreError
from netblock.model import AllowEntry, Block, Observation, Sample
from netblock.run import fleet
from netblock.store import postgres as store_pg
from netblock.store.sqlite import Store

# A pinned instant, not today: in this file it meets only fakes, the store and pure functions,
# never the kernel's or the real clock (scripts/test-clock.sh runs the suite 400 days ahead).
T0 = datetime(2026, 11, 20, 12, 0, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
MIN = timedelta(minutes=1)
TABLES = "blocks, allowlist, observations, samples, drops_daily, state, hosts"


@pytest.fixture(scope="module")
def pg_dsn(pg_server):  # noqa: F811
    return pg_server.new_database("conformance")


def _clean(dsn: str) -> None:
    with stores.open(dsn, host_id="mx1") as s:
        s._conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")


@pytest.fixture
def db(request, tmp_path):
    """Where a store lives: an SQLite file, or a PostgreSQL DSN emptied for the test."""
    if request.param == "sqlite":
        return str(tmp_path / "nb.db")
    dsn = request.getfixturevalue("pg_dsn")
    _clean(dsn)
    return dsn


def pytest_generate_tests(metafunc):
    if "db" in metafunc.fixturenames:
        metafunc.parametrize("db", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def st(db):
    with stores.open(db, host_id="mx1") as s:
        yield s


def block(net: str, *, expires: datetime | None = T0 + HOUR, created: datetime = T0, **kw) -> Block:
    return Block(IPNetwork(net), kw.pop("reason", "test"), kw.pop("source", "cli"), created, expires, **kw)


def obs(minutes: int, ip: str, cls: str, **kw) -> Observation:
    return Observation(T0 + timedelta(minutes=minutes), IPAddress(ip), cls, kw.pop("mta", "postfix"), **kw)


# -- the interface ---------------------------------------------------------------


def test_postgresql_store_has_every_public_method_of_the_sqlite_store():
    def public(cls):
        return {n: list(inspect.signature(f).parameters.values()) for n, f in vars(cls).items()
                if not n.startswith("_") and callable(f) and n != "open"}

    mine, theirs = public(store_pg.PgStore), public(Store)
    assert sorted(set(theirs) - set(mine)) == []
    assert {n: str(mine[n]) for n in theirs} == {n: str(s) for n, s in theirs.items()}


def test_open_dispatches_on_the_dsn(db):
    with stores.open(db, host_id="mx1") as s:
        assert type(s) is (store_pg.PgStore if db.startswith("postgresql://") else Store)
        assert s.schema_version() >= 1


def test_naive_datetime_is_refused(st):
    with pytest.raises(ValueError, match="naive"):
        st.put_blocks([block("192.0.2.0/24", created=datetime(2026, 1, 1))])


def test_bad_netblock_text_is_bad_input(st):
    with pytest.raises(BadInput, match="'not-an-ip'"):
        st.get_block("not-an-ip")


# -- blocks ------------------------------------------------------------------------


def test_block_round_trip_and_times_to_the_second(st):
    b = Block(IPNetwork("198.51.100.0/24"), "dnsbl x3", "policy", T0, T0 + 7 * 24 * HOUR, reblocks=2)
    assert st.put_blocks([b]) == 1
    assert st.get_block("198.51.100.0/24") == b
    assert st.get_block("198.51.100.0/25") is None
    st.put_blocks([block("192.0.2.1/32", created=T0.replace(microsecond=999_999), expires=None)])
    got = st.get_block("192.0.2.1/32")
    assert got.created == T0 and got.created.tzinfo is not None and got.expires is None


def test_netblocks_are_canonical(st):
    st.put_blocks([block("192.0.2.77/24"), block("::ffff:198.51.100.0/120"), block("2001:DB8:0:0::1/48")])
    assert [str(b.netblock) for b in st.blocks()] == ["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/48"]
    assert st.get_block("::ffff:198.51.100.0/120") is not None


def test_put_replaces_by_netblock(st):
    st.put_blocks([block("192.0.2.0/24", reason="first")])
    st.put_blocks([block("192.0.2.0/24", reason="second", reblocks=1, expires=None)])
    got = st.get_block("192.0.2.0/24")
    assert st.count_blocks() == 1 and (got.reason, got.reblocks, got.expires) == ("second", 1, None)


def test_blocks_active_expired_and_counts(st):
    st.put_blocks([
        block("203.0.113.0/24", expires=None),
        block("198.51.100.0/24", expires=T0 + HOUR),
        block("192.0.2.0/24", expires=T0 + 2 * HOUR),
        block("2001:db8::/32", expires=T0 - HOUR),
    ])
    now = T0 + HOUR
    assert [str(b.netblock) for b in st.blocks(now=now)] == ["192.0.2.0/24", "203.0.113.0/24"]
    assert [str(b.netblock) for b in st.expired_blocks(now)] == ["198.51.100.0/24", "2001:db8::/32"]
    assert (len(st.blocks()), st.count_blocks(), st.count_blocks(now)) == (4, 4, 2)
    assert st.next_expiry(now) == T0 + 2 * HOUR
    assert st.next_expiry(T0 + 3 * HOUR) is None
    assert st.block_reasons(now) == {
        "203.0.113.0/24": ("test", True), "198.51.100.0/24": ("test", False),
        "192.0.2.0/24": ("test", True), "2001:db8::/32": ("test", False)}


def test_blocks_of_some_sources_and_the_ipv4_space_bound(st):
    st.put_blocks([
        block("203.0.113.0/24", expires=None),
        block("198.51.100.0/25", source="list"),
        block("198.51.100.0/24", source="policy"),
        block("::ffff:192.0.2.0/120", source="policy"),
        block("16.0.0.0/4", source="policy", expires=T0 - HOUR),
        block("2001:db8::/32", source="list"),
    ])
    now = T0
    assert [str(b.netblock) for b in st.blocks(now=now, sources=("cli", "list"))] == [
        "198.51.100.0/25", "203.0.113.0/24", "2001:db8::/32"]
    assert [str(b.netblock) for b in st.blocks(sources=("policy",))] == [
        "16.0.0.0/4", "192.0.2.0/24", "198.51.100.0/24"]
    assert st.v4_block_space(now) == 256 + 128 + 256 + 256  # overlaps twice, IPv4-mapped as IPv4, expired not
    assert st.v4_block_space(T0 - 2 * HOUR) == 256 + 128 + 256 + 256 + (1 << 28)


def test_blocks_touching_a_cidr_are_those_inside_it_and_those_holding_it(st):
    st.put_blocks([
        block("198.18.0.0/16", source="policy"),
        block("198.18.16.0/24"),
        block("198.18.16.7/32"),
        block("198.18.17.0/24"),  # beside, not overlapping
        block("198.18.16.0/22", expires=T0 - HOUR),  # holds it, but expired
        block("::ffff:198.18.16.128/121"),
        block("2001:db8::/32"),
        block("2001:db8:1::/48"),
    ])
    def touching(family, net, plen):
        return sorted(str(b.netblock) for b in st.blocks_touching(family, int(IPNetwork(net).first), plen, T0))

    assert touching(4, "198.18.16.0", 24) == ["198.18.0.0/16", "198.18.16.0/24", "198.18.16.128/25", "198.18.16.7/32"]
    assert touching(4, "198.18.16.7", 32) == ["198.18.0.0/16", "198.18.16.0/24", "198.18.16.7/32"]
    assert touching(4, "198.18.18.0", 24) == ["198.18.0.0/16"]
    assert touching(4, "198.19.0.0", 16) == []
    assert touching(6, "2001:db8:1::", 64) == ["2001:db8:1::/48", "2001:db8::/32"]
    assert touching(6, "2001:db8::", 31) == ["2001:db8:1::/48", "2001:db8::/32"]


def test_blocks_sort_numerically_ipv4_first_and_oldest(st):
    assert st.oldest_block() is None
    st.put_blocks([block(n, created=T0 - i * MIN) for i, n in
                   enumerate(("2001:db8::/32", "198.18.10.0/24", "198.18.9.0/24", "198.18.0.0/15"))])
    assert [str(b.netblock) for b in st.blocks()] == [
        "198.18.0.0/15", "198.18.9.0/24", "198.18.10.0/24", "2001:db8::/32"]
    assert str(st.oldest_block().netblock) == "198.18.0.0/15"


def test_delete_blocks_returns_those_that_existed_in_the_order_given(st):
    st.put_blocks([block("192.0.2.0/24"), block("198.51.100.0/24")])
    gone = st.delete_blocks([IPNetwork("198.51.100.0/24"), "203.0.113.0/24", "192.0.2.9/24", "192.0.2.0/24"])
    assert gone == [IPNetwork("198.51.100.0/24"), IPNetwork("192.0.2.0/24")]
    assert st.count_blocks() == 0 and st.delete_blocks(["192.0.2.0/24"]) == [] and st.delete_blocks([]) == []


def test_put_many_blocks_in_one_call_last_duplicate_wins(st):
    blocks = [block(str(IPNetwork((0xC6120000 + i * 256, 24), 4)), expires=T0 + timedelta(seconds=i))
              for i in range(5_000)]
    blocks.append(replace(blocks[0], reason="again"))
    assert st.put_blocks(iter(blocks)) == 5_001
    assert st.count_blocks() == 5_000
    assert st.count_blocks(T0 + timedelta(seconds=2_499)) == 2_500
    assert st.blocks()[1:3] == blocks[1:3]
    assert st.get_block(blocks[0].netblock).reason == "again"


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
            st.add_observations([obs(0, "192.0.2.1", "no-rdns")])
            raise RuntimeError("boom")
    assert st.count_blocks() == 0 and st.observations() == []
    st.set_state("k", "v")
    assert st.get_state("k") == "v"


def _hammer(db: str, worker: int, rounds: int, barrier) -> None:
    with stores.open(db, host_id=f"mx{worker}") as s:
        barrier.wait()
        for i in range(rounds):
            with s.transaction():
                b = s.get_block("192.0.2.0/24")
                s.put_blocks([replace(b, reblocks=b.reblocks + 1)])
            s.put_blocks([block(f"198.{18 + worker}.{i // 256}.{i % 256}/32")])
            s.add_observations([Observation(T0, IPAddress(f"203.0.113.{worker}"), "no-rdns", "postfix")])


def test_two_processes_lose_no_update(db):
    with stores.open(db, host_id="mx1") as s:
        s.put_blocks([block("192.0.2.0/24")])
    rounds = 100
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_hammer, args=(db, w, rounds, barrier)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    with stores.open(db, host_id="mx1") as s:
        assert s.get_block("192.0.2.0/24").reblocks == 2 * rounds
        assert s.count_blocks() == 1 + 2 * rounds
        assert s.offender_counts(T0) == {(IPAddress("203.0.113.0"), "no-rdns"): rounds,
                                         (IPAddress("203.0.113.1"), "no-rdns"): rounds}


# -- allowlist and observations ----------------------------------------------------------


def test_allowlist_round_trip(st):
    entries = [AllowEntry(IPNetwork("2001:db8:1::/48"), "v6 partner", T0),
               AllowEntry(IPNetwork("198.51.100.0/24"), "backup MX", T0 + HOUR)]
    assert st.allow_add(entries) == 2
    assert st.allowlist() == [entries[1], entries[0]]
    st.allow_add([AllowEntry(IPNetwork("198.51.100.0/24"), "renamed", T0)])
    assert [e.comment for e in st.allowlist()] == ["renamed", "v6 partner"]
    assert st.allow_del(["198.51.100.0/24", "192.0.2.0/24"]) == [IPNetwork("198.51.100.0/24")]
    assert st.allowlist() == [entries[0]]


def test_observations_round_trip_and_filters(st):
    rows = [
        obs(0, "192.0.2.1", "no-rdns", source="/var/log/mail.log", position=1234),
        obs(10, "192.0.2.2", "dnsbl:zen.example", mta="exim", source="journal", position=7),
        obs(20, "::ffff:192.0.2.1", "no-rdns"),
        obs(30, "2001:db8::5", "connect"),
    ]
    assert st.add_observations(rows) == 4
    assert st.add_observations([]) == 0
    got = st.observations()
    assert got[:2] == rows[:2] and got[2].ip == IPAddress("192.0.2.1") and got[2].ip.version == 4
    assert st.observations(since=T0 + 10 * MIN, until=T0 + 30 * MIN) == got[1:3]
    assert st.observations(ip=IPAddress("::ffff:192.0.2.1")) == [got[0], got[2]]
    assert st.observations(cls="connect") == [got[3]]
    assert st.observation_class_counts() == {"connect": 1, "dnsbl:zen.example": 1, "no-rdns": 2}
    assert st.observation_class_counts(T0 + 10 * MIN, T0 + 30 * MIN) == {"dnsbl:zen.example": 1, "no-rdns": 1}


def test_offender_counts(st):
    st.add_observations([
        obs(0, "192.0.2.1", "no-rdns"), obs(5, "192.0.2.1", "no-rdns"), obs(6, "192.0.2.1", "no-rdns"),
        obs(7, "192.0.2.1", "dnsbl:zen.example"), obs(8, "192.0.2.1", "dnsbl:bl.example"),
        obs(9, "192.0.2.1", "connect"), obs(9, "192.0.2.1", "delivered"),
        obs(9, "2001:db8::1", "bad-helo"), obs(9, "192.0.2.9", "dnsblx"),
    ])
    since = T0 + 5 * MIN
    assert st.offender_counts(since) == {
        (IPAddress("192.0.2.1"), "no-rdns"): 2,
        (IPAddress("192.0.2.1"), "dnsbl:zen.example"): 1,
        (IPAddress("192.0.2.1"), "dnsbl:bl.example"): 1,
        (IPAddress("2001:db8::1"), "bad-helo"): 1,
        (IPAddress("192.0.2.9"), "dnsblx"): 1,
    }
    assert st.offender_counts(since, classes=["dnsbl"]) == {
        (IPAddress("192.0.2.1"), "dnsbl:zen.example"): 1, (IPAddress("192.0.2.1"), "dnsbl:bl.example"): 1}
    assert st.offender_counts(T0, classes={"no-rdns", "connect"}) == {(IPAddress("192.0.2.1"), "no-rdns"): 3}
    assert st.offender_counts(T0, classes=[]) == {}
    # The same groups, each with its latest offence: what the policy needs per offender.
    assert st.offender_stats(since, classes=["no-rdns", "bad-helo"]) == {
        (IPAddress("192.0.2.1"), "no-rdns"): (2, T0 + 6 * MIN),
        (IPAddress("2001:db8::1"), "bad-helo"): (1, T0 + 9 * MIN),
    }


def test_delivered_since_and_prune(st):
    st.add_observations([obs(0, "192.0.2.1", "delivered"), obs(60, "192.0.2.2", "delivered"),
                         obs(60, "192.0.2.2", "delivered"), obs(61, "192.0.2.3", "no-rdns")])
    assert st.delivered_since(T0) == {IPAddress("192.0.2.1"), IPAddress("192.0.2.2")}
    assert st.delivered_since(T0 + HOUR) == {IPAddress("192.0.2.2")}
    assert st.prune_observations(T0 + HOUR) == 1
    assert len(st.observations()) == 3 and st.prune_observations(T0 + HOUR) == 0


# -- samples and state ----------------------------------------------------------------------


def test_samples_round_trip(st):
    a, b = IPNetwork("192.0.2.0/24"), IPNetwork("2001:db8::/48")
    assert st.add_samples(T0, {a: (10, 600), b: (1, 80)}) == 2
    st.add_samples(T0 + HOUR, {a: (25, 1500)})
    st.add_samples(T0 + HOUR, {a: (26, 1560)})
    assert st.samples() == [Sample(T0, a, 10, 600), Sample(T0, b, 1, 80), Sample(T0 + HOUR, a, 26, 1560)]
    assert st.samples(netblock="192.0.2.0/24", since=T0 + HOUR) == [Sample(T0 + HOUR, a, 26, 1560)]
    assert st.samples(until=T0 + HOUR) == [Sample(T0, a, 10, 600), Sample(T0, b, 1, 80)]
    st.add_samples(T0 + 2 * HOUR, {b: (2**62, 2**62)})
    assert st.samples(netblock=b)[-1].bytes == 2**62
    assert st.last_samples(["192.0.2.0/24", "198.51.100.0/24"]) == {"192.0.2.0/24": (
        int((T0 + HOUR).timestamp()), 26, 1560)}
    assert st.prune_samples(T0 + HOUR) == 2 and len(st.samples()) == 2


def test_changed_samples_and_drops(st):
    a, b = IPNetwork("192.0.2.0/24"), IPNetwork("198.51.100.7/32")
    assert st.add_changed_samples(T0, {a: (10, 600), b: (0, 0)}) == 2
    assert st.add_changed_samples(T0 + MIN, {a: (10, 600), b: (0, 0)}) == 0  # unchanged: nothing
    assert st.add_changed_samples(T0 + 2 * MIN, {a: (15, 900), b: (4, 240)}) == 2
    assert st.add_changed_samples(T0 + 2 * MIN, {a: (3, 180)}) == 2  # reset in the same second
    st.add_changed_samples(T0 + 25 * HOUR, {a: (5, 300)})
    drops = st.sample_drops(None, None)
    assert drops["198.51.100.7/32"] == (4, 240, T0 + 2 * MIN, T0 + 2 * MIN)
    assert drops["192.0.2.0/24"][:3] == (15 + 3 + 2, 900 + 180 + 120, T0)
    # a window starts from the last sample before it
    assert st.sample_drops(T0 + HOUR, None) == {"192.0.2.0/24": (2, 120, T0 + 25 * HOUR, T0 + 25 * HOUR)}
    day0, day1 = T0.replace(hour=0), T0.replace(hour=0) + 24 * HOUR
    assert st.daily_drops(None, None) == {day0: (22, 1320), day1: (2, 120)}


def test_thin_samples_keeps_the_last_per_day(st):
    a = IPNetwork("192.0.2.0/24")
    for i in range(5):
        st.add_samples(T0 + i * HOUR, {a: (i, i)})
    st.add_samples(T0 + 30 * HOUR, {a: (9, 9)})
    assert st.thin_samples(T0 + 48 * HOUR) == 4
    assert [s.packets for s in st.samples()] == [4, 9]
    assert st.sample_drops(None, None)["192.0.2.0/24"][:2] == (9, 9)


def test_state_round_trip(st):
    assert st.get_state("offset:/var/log/mail.log") is None
    st.set_state("offset:/var/log/mail.log", "1234")
    st.set_state("offset:/var/log/mail.log", "5678")
    assert st.get_state("offset:/var/log/mail.log") == "5678"


# -- PostgreSQL only: migrations, the fleet, notifications, outages, secrets ------------------


def test_fresh_database_is_migrated_once_and_foreign_or_future_ones_are_refused(pg_server):  # noqa: F811
    dsn = pg_server.new_database("mig")
    with stores.open(dsn) as s:
        assert s.schema_version() == store_pg.SCHEMA_VERSION
    with stores.open(dsn) as s:  # a second open finds it current and changes nothing
        assert s.schema_version() == store_pg.SCHEMA_VERSION
    future = pg_server.new_database("future")
    stores.open(future).close()
    pg_server.psql(f"UPDATE schema_version SET version = {store_pg.SCHEMA_VERSION + 1}", db=future.split("/")[3].split("?")[0])
    with pytest.raises(StoreError, match="newer than this netblock"):
        stores.open(future)
    foreign = pg_server.new_database("foreign")
    pg_server.psql("CREATE TABLE customers (id int)", db=foreign.split("/")[3].split("?")[0])
    with pytest.raises(StoreError, match="not netblock's"):
        stores.open(foreign)


def test_blocks_are_shared_state_and_samples_are_per_host(pg_dsn):
    _clean(pg_dsn)
    net = IPNetwork("192.0.2.0/24")
    with stores.open(pg_dsn, host_id="mx1") as a, stores.open(pg_dsn, host_id="mx2") as b:
        a.put_blocks([block("192.0.2.0/24")])
        b.allow_add([AllowEntry(IPNetwork("198.51.100.0/24"), "", T0)])
        assert [x.netblock for x in b.blocks()] == [net] and len(a.allowlist()) == 1
        a.set_state("offset", "1")
        b.set_state("offset", "2")
        assert (a.get_state("offset"), b.get_state("offset")) == ("1", "2")
        # density widening counts what every host saw
        a.add_observations([obs(0, "192.0.2.1", "no-rdns"), obs(1, "192.0.2.2", "no-rdns")])
        b.add_observations([obs(2, "192.0.2.3", "no-rdns")])
        assert {ip for ip, _ in a.offender_counts(T0)} == {IPAddress(f"192.0.2.{i}") for i in (1, 2, 3)}
        # each host's counters are their own series: deltas are summed, not raw counters
        a.add_changed_samples(T0, {net: (100, 1000)})
        b.add_changed_samples(T0, {net: (5, 50)})
        a.add_changed_samples(T0 + MIN, {net: (110, 1100)})
        b.add_changed_samples(T0 + MIN, {net: (2, 20)})  # mx2's counter was reset
        assert a.last_samples([str(net)]) == {str(net): (int((T0 + MIN).timestamp()), 110, 1100)}
        assert a.sample_drops(None, None)[str(net)][:2] == (110 + 5 + 2, 1100 + 50 + 20)
        a.view_host = "mx2"
        assert a.sample_drops(None, None)[str(net)][:2] == (7, 70)
        assert a.observation_class_counts() == {"no-rdns": 1}
        assert a.sample_drops(T0 + MIN, None)[str(net)][:2] == (2, 20)
        assert a.hosts() == ["mx1", "mx2"]


def _wait_readable(listener: fleet.Listener, seconds: float) -> bool:
    fd = listener.fileno()
    assert fd is not None
    return bool(select.select([fd], [], [], seconds)[0])


def test_listener_hears_other_connections_changes_but_not_its_own(pg_dsn):
    _clean(pg_dsn)
    with stores.open(pg_dsn, host_id="mx1") as mine, stores.open(pg_dsn, host_id="mx2") as other:
        listener = fleet.Listener(pg_dsn, own_pid=mine.backend_pid)
        try:
            listener.fileno()
            assert listener.changed()  # just connected: whatever happened before is unknown
            mine.put_blocks([block("192.0.2.0/24")])
            assert _wait_readable(listener, 5) and not listener.changed()
            other.allow_add([AllowEntry(IPNetwork("198.51.100.0/24"), "", T0)])
            assert _wait_readable(listener, 5) and listener.changed()
            other.set_state("k", "v")  # per-host state is nobody else's business
            other.add_observations([obs(0, "192.0.2.1", "no-rdns")])
            assert not _wait_readable(listener, 0.3)
            other.delete_blocks(["192.0.2.0/24"])
            assert _wait_readable(listener, 5) and listener.changed()
        finally:
            listener.close()


def test_store_and_listener_reconnect_after_a_server_restart(pg_server, pg_dsn):  # noqa: F811
    _clean(pg_dsn)
    with stores.open(pg_dsn, host_id="mx1") as s:
        listener = fleet.Listener(pg_dsn, retry_every=0.1)
        try:
            assert listener.fileno() is not None and listener.changed()
            pg_server.stop()
            try:
                with pytest.raises(StoreError) as err:
                    s.put_blocks([block("192.0.2.0/24")])
                assert "password" not in str(err.value)
                assert s.unreachable_since is not None
                heard = []
                for _ in range(3):  # libpq reads the server's goodbye first, then the EOF
                    if listener.fileno() is None:
                        break
                    assert _wait_readable(listener, 5)
                    heard.append(listener.changed())
                assert listener.fileno() is None
                assert heard[-1]  # what happens while it is gone is unknown: sync
            finally:
                pg_server.start()
            time.sleep(store_pg.RECONNECT_EVERY_S)  # failed attempts are at most once per this
            s.put_blocks([block("192.0.2.0/24")])
            assert s.unreachable_since is None and s.count_blocks() == 1
            pg_server.stop()  # a restart between two uses is not even noticed by the next one
            pg_server.start()
            assert s.count_blocks() == 1
            time.sleep(0.2)
            assert listener.fileno() is not None and listener.changed()  # a reconnect syncs once
        finally:
            listener.close()


def test_password_is_never_shown():
    assert store_pg.mask_dsn("postgresql://nb:s3cret@db.example/netblock") == "postgresql://nb:***@db.example/netblock"
    assert store_pg.mask_dsn("postgres:///nb?host=/run/pg&password=s3cret&user=nb") == \
        "postgres:///nb?host=/run/pg&password=***&user=nb"
    with pytest.raises(StoreError) as err:
        stores.open("postgresql://nb:s3cret@/netblock?host=/nonexistent-nb-socket-dir")
    assert "s3cret" not in str(err.value) and "nb:***@" in str(err.value) and "cannot connect" in str(err.value)


def test_sqlite_only_installs_never_import_psycopg(tmp_path):
    code = ("import sys; from netblock import cli; from netblock.run import daemon, fleet; "
            "from netblock import store; "
            f"s = store.open({str(tmp_path / 'nb.db')!r}); s.close(); "
            "print(sorted(m for m in sys.modules if m.startswith('psycopg')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_report_host_on_sqlite_is_only_this_host(tmp_path):
    config = SimpleNamespace(host_id="mx1")
    with stores.open(tmp_path / "nb.db") as s:
        fleet.view_host(s, config, "mx1")  # the one host an SQLite store knows
        with pytest.raises(BadInput, match="--host mx2: .*postgresql://"):
            fleet.view_host(s, config, "mx2")


def test_unreachable_marker_keeps_the_first_failure(tmp_path):
    config = SimpleNamespace(lock_file=str(tmp_path / "run" / "netblock.lock"))
    path = fleet.marker_path(config)
    assert fleet.unreachable_since(config) is None
    fleet.mark_unreachable(path)
    first = fleet.unreachable_since(config)
    assert first is not None and datetime.fromisoformat(first).tzinfo is not None
    fleet.mark_unreachable(path)
    assert fleet.unreachable_since(config) == first
    fleet.mark_reachable(path)
    assert fleet.unreachable_since(config) is None


def test_config_and_errors_never_print_the_password(tmp_path):
    dsn = f"postgresql://nb:s3cret@/netblock?host={tmp_path}/nowhere"
    env = clean_env()
    shown = subprocess.run([sys.executable, "-m", "netblock", "--db", dsn, "config", "--json"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert shown.returncode == 0 and "nb:***@" in shown.stdout and "s3cret" not in shown.stdout
    failed = subprocess.run([sys.executable, "-m", "netblock", "--db", dsn, "list"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert failed.returncode == 1 and "cannot connect" in failed.stderr
    assert "s3cret" not in failed.stderr + failed.stdout and len(failed.stderr.splitlines()) == 1


def test_password_comes_from_pgpassword_or_pgpassfile_and_is_never_shown(pg_server, pg_dsn, tmp_path,  # noqa: F811
                                                                        monkeypatch):
    pg_server.require_password("nbpw", "s3cret-pw")
    db = pg_dsn.split("/")[3].split("?")[0]
    pg_server.psql("GRANT ALL ON ALL TABLES IN SCHEMA public TO nbpw; GRANT ALL ON SCHEMA public TO nbpw", db=db)
    dsn = f"postgresql:///{db}?host={pg_server.dir}&user=nbpw"
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    with pytest.raises(StoreError, match="password") as err:
        stores.open(dsn)
    assert "s3cret" not in str(err.value)
    monkeypatch.setenv("PGPASSWORD", "s3cret-pw")
    with stores.open(dsn, host_id="mx1") as s:
        assert s.schema_version() == store_pg.SCHEMA_VERSION
    monkeypatch.delenv("PGPASSWORD")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:{db}:nbpw:s3cret-pw\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    with stores.open(dsn, host_id="mx1") as s:
        assert s.path == dsn  # nothing to mask: the password never was in the DSN
    wrong = f"postgresql://nbpw:wr0ng-pw@/{db}?host={pg_server.dir}"
    with pytest.raises(StoreError) as err:
        stores.open(wrong)
    assert "wr0ng" not in str(err.value) and "nbpw:***@" in str(err.value)


# -- the per-day roll-up against the samples it is kept from ----------------------------------


def _random_series(st, rng, nets, ticks: int, step: timedelta):
    """Change-only samples with drops, resets (some in the same second as the sample before)."""
    counts = {n: [0, 0] for n in nets}
    start = T0.replace(hour=0) + timedelta(seconds=rng.randrange(86400))
    for k in range(ticks):
        now = start + k * step + timedelta(seconds=rng.randrange(60))
        seen = {}
        for n in nets:
            r = rng.random()
            if r < 0.06:
                counts[n] = [rng.randint(0, 2), rng.randint(0, 80)]  # reset
            elif r < 0.6:
                counts[n][0] += rng.randint(1, 9)
                counts[n][1] += rng.randint(40, 600)
            seen[n] = tuple(counts[n])
        st.add_changed_samples(now, seen)
        if rng.random() < 0.1:  # sync's sample right before it removes, then the tick's in the same second
            n = rng.choice(nets)
            again = (rng.randint(0, 3), rng.randint(0, 100)) if rng.random() < 0.5 else \
                (counts[n][0] + 1, counts[n][1] + 40)
            counts[n] = list(again)
            st.add_changed_samples(now, {n: again})
    return start, start + ticks * step


def _raw(samples, since, until):
    from netblock.reports import tables as rep

    return {str(k.cidr): (r.packets, r.bytes, r.first_seen, r.last_seen)
            for k, r in rep.drops(samples, since, until).items() if r.packets or r.bytes}


def _raw_daily(samples, since, until):
    from netblock.reports import tables as rep

    out = {}
    day = (since or samples[0].time).replace(hour=0, minute=0, second=0, microsecond=0)
    end = until or samples[-1].time
    while day <= end:
        lo, hi = max(day, since) if since else day, min(day + timedelta(days=1) - timedelta(seconds=1), end)
        rows = rep.drops(samples, lo, hi).values()
        total = (sum(r.packets for r in rows), sum(r.bytes for r in rows))
        if total != (0, 0):
            out[day] = total
        day += timedelta(days=1)
    return out


def test_rollup_gives_the_numbers_of_the_samples_for_every_window(st):
    """Windows starting and ending mid-day, on whole days, unbounded: the roll-up path (whole days from
    drops_daily, partial days from samples) against the raw arithmetic over every stored sample."""
    import random

    rng = random.Random(16)
    nets = [IPNetwork("192.0.2.0/25"), IPNetwork("198.51.100.7/32"), IPNetwork("2001:db8:5::/48")]
    start, end = _random_series(st, rng, nets, ticks=260, step=timedelta(minutes=41))
    samples = st.samples()
    assert len({s.time.date() for s in samples}) >= 7
    midnight = start.replace(hour=0, minute=0, second=0)
    windows = [(None, None), (midnight + timedelta(days=1), None), (None, midnight + timedelta(days=3)),
               (midnight + timedelta(days=1), midnight + timedelta(days=4) - timedelta(seconds=1)),
               (midnight + timedelta(days=2, hours=5), midnight + timedelta(days=2, hours=9))]
    for _ in range(25):
        a, b = sorted(rng.uniform(start.timestamp() - 3600, end.timestamp() + 3600) for _ in range(2))
        windows.append((datetime.fromtimestamp(int(a), timezone.utc), datetime.fromtimestamp(int(b), timezone.utc)))
    for since, until in windows:
        assert st.sample_drops(since, until) == _raw(samples, since, until), (since, until)
        assert st.daily_drops(since, until) == _raw_daily(samples, since, until), (since, until)


def test_rollup_backfill_equals_the_rollup_kept_while_sampling(st):
    import random

    rng = random.Random(5)
    _random_series(st, rng, [IPNetwork("192.0.2.0/24"), IPNetwork("2001:db8::/48")], ticks=120,
                   step=timedelta(minutes=53))
    table = "SELECT day, netblock, packets, bytes, first, last FROM drops_daily ORDER BY day, netblock"
    kept = st._all(table)
    assert len(kept) >= 4 and all(p >= 0 and b >= 0 and (p or b) and f <= e for _d, _n, p, b, f, e in kept)
    st.rebuild_daily()
    assert st._all(table) == kept


def test_thinning_leaves_the_rollup_alone(st):
    """Thinning keeps the last sample per day; the roll-up keeps what a reset inside a thinned day
    hid from the samples, and the times drops were first and last seen."""
    a = IPNetwork("192.0.2.0/24")
    for h, p in enumerate([5, 9, 2, 4, 6]):  # a reset at 02:00 on the first day
        st.add_changed_samples(T0.replace(hour=h), {a: (p, p * 40)})
    st.add_changed_samples(T0.replace(hour=10) + 24 * HOUR, {a: (8, 320)})
    day0, day1 = T0.replace(hour=0), T0.replace(hour=0) + 24 * HOUR
    whole = (9 + 2 + 2 + 2 + 2, (9 + 2 + 2 + 2 + 2) * 40, day0, day1.replace(hour=10))
    assert st.sample_drops(None, None)["192.0.2.0/24"] == whole
    assert st.thin_samples(day0 + 48 * HOUR) == 4
    assert [s.packets for s in st.samples()] == [6, 8]
    assert st.sample_drops(None, None)["192.0.2.0/24"] == whole
    assert st.sample_drops(day0, day1 - timedelta(seconds=1))["192.0.2.0/24"] == (15, 600, day0, day0.replace(hour=4))
    assert st.daily_drops(day0, None) == {day0: (15, 600), day1: (2, 80)}


def test_pruning_drops_the_rollup_of_the_days_before(st):
    a = IPNetwork("192.0.2.0/24")
    st.add_changed_samples(T0, {a: (5, 200)})
    st.add_changed_samples(T0 + 24 * HOUR, {a: (7, 280)})
    st.prune_samples(T0.replace(hour=0) + 24 * HOUR)
    assert st.daily_drops(None, None) == {T0.replace(hour=0) + 24 * HOUR: (2, 80)}


def test_rollup_of_same_second_samples_is_recomputed(st):
    """A sample replacing the latest one changes that one's delta (here: no longer a reset), and a
    reset at midnight moves the value before it to the day before: the roll-up follows both."""
    a, b = IPNetwork("192.0.2.0/24"), IPNetwork("198.51.100.0/24")
    midnight = T0.replace(hour=0) + 24 * HOUR
    st.add_changed_samples(T0, {a: (10, 400), b: (4, 160)})
    st.add_changed_samples(T0 + HOUR, {a: (3, 120)})  # reset
    st.add_changed_samples(T0 + HOUR, {a: (12, 480)})  # grew in the same second: 10 -> 12, no reset
    st.add_changed_samples(midnight, {b: (6, 240)})
    st.add_changed_samples(midnight, {b: (1, 40)})  # went down: the 6 moves to 23:59:59
    samples = st.samples()
    assert [(s.time, s.packets) for s in samples if s.netblock == b] == [
        (T0, 4), (midnight - timedelta(seconds=1), 6), (midnight, 1)]
    for since, until in ((None, None), (T0.replace(hour=0), midnight - timedelta(seconds=1)), (midnight, None)):
        assert st.sample_drops(since, until) == _raw(samples, since, until)
    assert st.sample_drops(None, None)["192.0.2.0/24"] == (12, 480, T0, T0 + HOUR)
    assert st.daily_drops(None, None) == {T0.replace(hour=0): (12 + 6, 480 + 240), midnight: (1, 40)}


# -- the fleet's local spool -------------------------------------------------------


def test_spool_flush_is_idempotent_even_after_a_crash_before_the_spool_is_emptied(st, tmp_path, monkeypatch):
    from netblock.store.sqlite import Spool, flush_spool

    path = tmp_path / "run" / "spool.db"
    with Spool.open(path) as sp:
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert not sp.pending() and flush_spool(sp, st) == 0
        with sp.transaction():
            sp.add_observations([obs(1, "192.0.2.1", "dnsbl"), obs(2, "192.0.2.2", "dnsbl")])
            sp.set_state("file:/var/log/mail.log", "pos-1")
        assert sp.pending() and sp.get_state("file:/var/log/mail.log") == "pos-1"
        st.set_state("file:/var/log/mail.log", "pos-0")
        assert flush_spool(sp, st) == 2
        assert not sp.pending() and st.get_state("file:/var/log/mail.log") == "pos-1"

        sp.add_observations([obs(3, "192.0.2.3", "dnsbl")])
        sp.set_state("file:/var/log/mail.log", "pos-2")

        def crash(*_a):
            raise KeyboardInterrupt("killed between the store's commit and emptying the spool")

        monkeypatch.setattr(Spool, "clear", crash)
        with pytest.raises(KeyboardInterrupt):
            flush_spool(sp, st)
        monkeypatch.undo()
        assert sp.pending()
        assert flush_spool(sp, st) == 0  # already in the store: skipped, not counted twice
        assert not sp.pending()
    with Spool.open(path) as sp:  # the same file keeps its epoch: ids go on, never reused
        sp.add_observations([obs(4, "192.0.2.4", "dnsbl")])
        assert flush_spool(sp, st) == 1
    assert sorted(str(o.ip) for o in st.observations()) == [f"192.0.2.{i}" for i in (1, 2, 3, 4)]
    assert st.get_state("file:/var/log/mail.log") == "pos-2"


def test_daemon_writes_go_to_the_spool_while_the_store_is_unreachable_and_catch_up_after(tmp_path):
    class Away:
        """A fleet store whose server is gone: every write fails as unreachable."""

        dsn = "postgresql:///nowhere"
        fleet = True
        unreachable_since = T0

        def transaction(self):
            raise StoreError("postgresql:///nowhere: store unreachable since 2026-11-20T12:00:00+00:00")

        get_state = transaction

    with stores.open(tmp_path / "nb.db") as real:
        config = SimpleNamespace(lock_file=str(tmp_path / "run" / "netblock.lock"),
                                 daemon=SimpleNamespace(spool=str(tmp_path / "state" / "spool.db")))
        logged: list[str] = []
        runner = SimpleNamespace(store=Away(), config=config, spool=None, log=logged.append)
        runner.spool = fleet.spool_for(runner)
        assert runner.spool.path == str(tmp_path / "state" / "spool.db")
        fleet.store_batch(runner, [obs(1, "192.0.2.1", "dnsbl")], {"k": "1"})
        fleet.store_batch(runner, [obs(2, "192.0.2.2", "dnsbl")], {"k": "2"})
        assert fleet.saved_state(runner, "k") == "2"  # positions advance while the store is away
        assert len([m for m in logged if "store unreachable" in m]) == 1
        assert not fleet.flush(runner)

        runner.store = real  # the server answers again
        real.set_state("k", "0")
        fleet.store_batch(runner, [obs(3, "192.0.2.3", "dnsbl")], {"k": "3"})
        assert not runner.spool.pending()
        assert [str(o.ip) for o in real.observations()] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
        assert real.get_state("k") == "3" and fleet.saved_state(runner, "k") == "3"
        runner.spool.close()

    class Broken(Away):
        unreachable_since = None  # reachable but failing: not the spool's business

    runner = SimpleNamespace(store=Broken(), config=config, spool=None, log=logged.append)
    runner.spool = fleet.spool_for(runner)
    with pytest.raises(StoreError):
        fleet.store_batch(runner, [obs(4, "192.0.2.4", "dnsbl")], {"k": "4"})
    assert not runner.spool.pending()
    runner.spool.close()
