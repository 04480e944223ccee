"""Following the fleet between ticks: the change feed and the coalescing of notifications (pure logic).

The real thing (daemons, PostgreSQL, kernels) is in test_fleet.py and
test_hostile.py; here the Follower's decisions and the Coalescer's schedule
are checked against fakes, where each branch can be forced.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from fakes import FakeBackend, fake_config
from netaddr import IPNetwork

from netblock.firewall import Change
from netblock.model import Block
from netblock.run import fleet
from netblock.system import hostaddrs

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
LATER = NOW + timedelta(days=1)


class FeedStore:
    """The few store calls the follower makes, with a scripted change feed."""

    def __init__(self):
        self.feed: tuple[list[Block], list[str], int, int] = ([], [], 0, 0)
        self.asked: list[int] = []

    def change_mark(self) -> int:
        return 7

    def changes_since(self, mark):
        self.asked.append(mark)
        return self.feed

    def allowlist(self):
        return []

    def delivered_since(self, since):
        return set()

    def peer_addresses(self):
        return [IPNetwork("203.0.113.202/32")]


class AddingBackend(FakeBackend):
    def add(self, additions):
        self.calls.append("add")
        self.elements.update(additions)
        return Change(added=list(additions))


class Runner:
    def __init__(self, tmp_path):
        self.store = FeedStore()
        self.config = fake_config(lock_file=str(tmp_path / "lock"))
        self._backend = AddingBackend()
        self._backend.ensure()
        self.applied = set()
        self.follower = fleet.Follower()
        self.synced = 0
        self.logged: list[str] = []

    def backend(self):
        return self._backend

    def clock(self):
        return NOW

    def log(self, message):
        self.logged.append(message)

    def _sync(self, now, result):  # the full reconcile, as Runner._sync does it
        self.synced += 1
        fleet.before_sync(self)
        fleet.after_sync(self, type("R", (), {"desired": {IPNetwork("198.18.4.0/24"): LATER}})())

    def sync_now(self) -> list[str]:  # what fleet.follow_change calls: the full reconcile, no errors
        self._sync(NOW, None)
        return []


def block(net: str, expires=LATER) -> Block:
    return Block(IPNetwork(net), "r", "policy", NOW, expires)


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: [IPNetwork("203.0.113.201/32")])
    r = Runner(tmp_path)
    r._sync(NOW, None)  # the tick's reconcile: the follower knows the kernel from here
    r.synced = 0
    return r


def test_new_single_addresses_are_added_without_a_full_reconcile(runner):
    runner.store.feed = ([block("198.51.100.7/32"), block("203.0.113.202/32"), block("203.0.113.201/32"),
                          block("198.18.4.9/32")], [], 9, 0)
    fleet.follow_change(runner, {"blocks"})
    assert runner.synced == 0 and runner.store.asked == [7]
    # a peer's and this host's own address are protected; one inside an installed /24 is there already
    assert runner._backend.elements == {IPNetwork("198.51.100.7/32"): LATER}
    assert runner.follower.mark == 9 and IPNetwork("198.51.100.7/32") in runner.applied


@pytest.mark.parametrize("feed, tables", [
    (([block("198.51.100.0/24")], [], 9, 0), {"blocks"}),  # a prefix: aggregation's business
    (([], ["198.18.4.0/24"], 9, 0), {"blocks"}),  # a removal: counters are sampled first
    (([block("198.18.4.9/32", expires=None)], [], 9, 0), {"blocks"}),  # extends an installed element
    (([], [], 9, 1), {"blocks"}),  # a row skipped on receipt: the full path logs it
    (([block("198.51.100.7/32")], [], 9, 0), {"blocks", "allowlist"}),  # not only blocks changed
    (([block("198.51.100.7/32")], [], 9, 0), {"?"}),  # reconnected, or an unknown payload
])
def test_anything_but_plain_additions_takes_the_full_reconcile(runner, feed, tables):
    runner.store.feed = feed
    fleet.follow_change(runner, tables)
    assert runner.synced == 1 and "add" not in runner._backend.calls


def test_a_notify_storm_gets_one_reconcile_per_interval_and_slow_full_ones_widen_their_gap():
    c = fleet.Coalescer(0.0)
    assert c.interval == fleet.COALESCE_MIN_S
    t, runs = 0.0, 0
    c.done(t)
    while t < 10.0:  # a notification every millisecond for ten seconds
        c.note(t)
        if c.ready(t):
            runs += 1
            c.done(t, took=0.01)
        t += 0.001
    assert runs <= 10.0 / fleet.COALESCE_MIN_S + 1
    c.done(20.0, took=3.0)  # a full reconcile of a large set took 3 s: the next full one waits as long,
    c.note(20.5)
    assert c.ready(20.5) and not c.full_allowed(20.5)  # a change the feed can follow does not
    c.defer()
    assert not c.ready(22.9) and c.ready(23.0) and c.full_allowed(23.0)
    c.done(23.0, took=0.01, full=False)
    c.note(23.1)
    assert not c.ready(23.1) and c.ready(23.0 + fleet.COALESCE_MIN_S)


def test_a_full_reconcile_that_must_wait_is_deferred_not_dropped(runner):
    runner.store.feed = ([], ["198.18.4.0/24"], 9, 0)
    assert fleet.follow_change(runner, {"blocks"}, full_allowed=False) == "deferred"
    assert runner.synced == 0 and runner.follower.mark == 7  # the feed is read again next time
    assert fleet.follow_change(runner, {"blocks"}) == "full" and runner.synced == 1
