"""sync(): the desired set (aggregation, carve-outs, expiries), dry runs, the kernel lock."""

from __future__ import annotations

import fcntl
import os
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from netaddr import IPAddress, IPNetwork

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from fakes import FakeBackend, fake_config  # noqa: E402

from netblock.errors import Busy  # noqa: E402
from netblock.model import AllowEntry, Block, Observation  # noqa: E402
from netblock.run.sync import compute_desired, diff, sync  # noqa: E402
from netblock.store.sqlite import Store  # noqa: E402
from netblock.system import hostaddrs  # noqa: E402
from netblock.system.lock import kernel_lock  # noqa: E402

# A pinned instant, not today: in this file it meets only fakes, the store and pure functions,
# never the kernel's or the real clock (scripts/test-clock.sh runs the suite 400 days ahead).
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
OWN = [IPNetwork("203.0.113.25/32"), IPNetwork("2001:db8:25::1/128")]


def N(text):
    return IPNetwork(text)


def block(net, expires=NOW + timedelta(days=1), created=NOW - timedelta(hours=1), source="cli"):
    return Block(netblock=N(net), reason="t", source=source, created=created, expires=expires)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: list(OWN))
    store = Store.open(tmp_path / "nb.db")
    yield store, FakeBackend(), fake_config(str(tmp_path / "run" / "lock"))
    store.close()


def test_adjacent_blocks_merge_and_expire_with_the_last():
    early, late = NOW + timedelta(hours=1), NOW + timedelta(days=3)
    got = compute_desired([block("198.18.4.0/25", early), block("198.18.4.128/25", late)], [])
    assert got == {N("198.18.4.0/24"): late}


def test_a_permanent_block_makes_its_merged_cidr_permanent():
    got = compute_desired([block("198.18.4.0/25", None), block("198.18.4.128/25")], [])
    assert got == {N("198.18.4.0/24"): None}


def test_nested_block_extends_the_covering_cidr_but_not_others():
    short, long_ = NOW + timedelta(hours=1), NOW + timedelta(days=9)
    got = compute_desired(
        [block("198.18.0.0/16", short), block("198.18.7.7", long_), block("198.19.1.1", short)], [])
    assert got == {N("198.18.0.0/16"): long_, N("198.19.1.1/32"): short}


def test_carve_out_splits_a_block_and_every_piece_keeps_its_expiry():
    when = NOW + timedelta(days=2)
    got = compute_desired([block("198.18.8.0/29", when)], [N("198.18.8.3/32")])
    assert got == {N("198.18.8.0/31"): when, N("198.18.8.2/32"): when, N("198.18.8.4/30"): when}


def test_ipv4_mapped_blocks_land_on_ipv4_with_their_expiry():
    when = NOW + timedelta(days=2)
    got = compute_desired([block("::ffff:198.18.9.9/128", when), block("2001:db8:1::/48", None)], [])
    assert got == {N("198.18.9.9/32"): when, N("2001:db8:1::/48"): None}


def test_sync_installs_active_blocks_minus_every_kind_of_protected(env):
    store, backend, config = env
    config = replace(config, blocks=replace(config.blocks, allow=("198.51.100.128/25",)))
    store.put_blocks([
        block("203.0.113.0/24"),                    # contains this host's own address
        block("198.51.100.0/24"),                   # half allowlisted in the config
        block("198.18.10.0/30", source="policy"),   # one sender delivered mail recently
        block("198.18.14.0/30"),                    # the same, but blocked by hand: a manual block wins
        block("198.18.11.0/24"),                    # one sender delivered long ago: still blocked whole
        block("198.18.12.0/24"),                    # allowlisted in the store
        block("198.18.13.0/24", NOW - timedelta(seconds=1)),  # expired
        block("127.0.0.0/30"),                      # built-in protected
        block("2001:db8:25::/64"),                  # contains our IPv6 address
    ])
    store.allow_add([AllowEntry(N("198.18.12.0/24"), "partner", NOW)])
    store.add_observations([
        Observation(NOW - timedelta(days=1), IPAddress("198.18.10.1"), "delivered", "postfix"),
        Observation(NOW - timedelta(days=60), IPAddress("198.18.11.1"), "delivered", "postfix"),
        Observation(NOW - timedelta(days=1), IPAddress("198.18.14.1"), "delivered", "postfix"),
    ])
    result = sync(store, backend, config, now=NOW)
    got = list(backend.elements)

    def dropped(addr):
        return any(IPAddress(addr) in net for net in got)

    assert dropped("198.51.100.127") and not dropped("198.51.100.128") and not dropped("198.51.100.255")
    assert dropped("203.0.113.24") and not dropped("203.0.113.25") and dropped("203.0.113.26")
    assert set(got) >= {N("198.18.10.0/32"), N("198.18.10.2/31")} and not dropped("198.18.10.1")
    assert N("198.18.11.0/24") in got
    assert N("198.18.14.0/30") in got
    assert not dropped("198.18.12.7") and not dropped("198.18.13.7")
    assert not dropped("127.0.0.1")
    assert dropped("2001:db8:25::2") and not dropped("2001:db8:25::1")
    assert result.desired == backend.elements
    assert sorted(result.change.added) == sorted(got) and not result.change.removed


def test_own_addresses_are_read_at_every_sync(env):
    store, backend, config = env
    store.put_blocks([block("203.0.113.0/30")])
    sync(store, backend, config, now=NOW)
    assert set(backend.elements) == {N("203.0.113.0/30")}
    OWN.append(N("203.0.113.1/32"))
    try:
        sync(store, backend, config, now=NOW)
    finally:
        OWN.pop()
    assert set(backend.elements) == {N("203.0.113.0/32"), N("203.0.113.2/31")}


def test_expired_blocks_leave_the_kernel_and_a_second_sync_changes_nothing(env):
    store, backend, config = env
    store.put_blocks([block("198.18.1.0/24", NOW + timedelta(hours=1)), block("198.18.2.0/24", None)])
    sync(store, backend, config, now=NOW)
    assert set(backend.elements) == {N("198.18.1.0/24"), N("198.18.2.0/24")}
    later = sync(store, backend, config, now=NOW + timedelta(hours=2))
    assert later.change.removed == [N("198.18.1.0/24")] and not later.change.added
    assert later.installed_before.keys() == {N("198.18.1.0/24"), N("198.18.2.0/24")}
    again = sync(store, backend, config, now=NOW + timedelta(hours=2))
    assert not again.change


def test_dry_run_reports_the_diff_and_touches_nothing(env):
    store, backend, config = env
    backend.present = True
    backend.elements = {N("198.18.9.7/32"): None, N("198.18.3.0/24"): NOW + timedelta(days=5)}
    store.put_blocks([block("198.18.1.0/24"), block("198.18.3.0/24", NOW + timedelta(days=1))])
    before = dict(backend.elements)
    result = sync(store, backend, config, now=NOW, dry_run=True)
    assert backend.elements == before and backend.mutations == []
    assert result.change.added == [N("198.18.1.0/24")]
    assert result.change.removed == [N("198.18.9.7/32")]
    assert result.change.updated == [N("198.18.3.0/24")]
    assert not os.path.exists(config.lock_file)


def test_diff_tolerates_seconds_of_kernel_countdown_and_timeout_less_backends():
    want = {N("198.18.1.0/24"): NOW + timedelta(days=1), N("198.18.2.0/24"): None}
    close = {N("198.18.1.0/24"): NOW + timedelta(days=1, seconds=-2), N("198.18.2.0/24"): None}
    assert not diff(close, want)
    no_timeouts = {N("198.18.1.0/24"): None, N("198.18.2.0/24"): None}  # iptables rules
    assert not diff(no_timeouts, want)
    off = {N("198.18.1.0/24"): NOW + timedelta(hours=1), N("198.18.2.0/24"): NOW}
    assert diff(off, want).updated == [N("198.18.1.0/24"), N("198.18.2.0/24")]


def test_sync_waits_for_the_lock_then_gives_up_busy(env, tmp_path):
    store, backend, config = env
    store.put_blocks([block("198.18.1.0/24")])
    os.makedirs(os.path.dirname(config.lock_file), exist_ok=True)
    fd = os.open(config.lock_file, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(Busy, match="lock"):
            sync(store, backend, config, now=NOW, lock_timeout=0.2)
        assert backend.mutations == []
    finally:
        os.close(fd)
    sync(store, backend, config, now=NOW, lock_timeout=0.2)
    assert set(backend.elements) == {N("198.18.1.0/24")}


def test_lock_is_reentrant_and_creates_its_directory(tmp_path):
    path = tmp_path / "a" / "b" / "lock"
    with kernel_lock(path, timeout=0.2):
        with kernel_lock(path, timeout=0.2):
            pass
        fd = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_compute_desired_takes_a_one_shot_iterable_of_blocks():
    """desired_for hands over the store's list and nothing else: a generator must do as well."""
    when = NOW + timedelta(days=2)
    blocks = [block("198.18.4.0/25", when), block("198.18.4.128/25", None), block("2001:db8:1::/48", when)]
    assert compute_desired(iter(blocks), []) == compute_desired(blocks, []) == \
        {N("198.18.4.0/24"): None, N("2001:db8:1::/48"): when}


def test_a_terminal_sees_a_progress_bar_of_the_sync_steps(env):
    import io

    from netblock.run.sync import SYNC_STEPS
    from netblock.system.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    store, backend, config = env
    store.put_blocks([block("198.18.1.0/24")])
    screen = Terminal()
    with Progress(SYNC_STEPS, "sync", screen) as bar:
        sync(store, backend, config, now=NOW, stage=bar.advance)
    assert bar.done == SYNC_STEPS
    assert f"sync [{'#' * 30}] {SYNC_STEPS}/{SYNC_STEPS}" in screen.getvalue()
    quiet = io.StringIO()  # a script's stderr: nothing drawn
    with Progress(SYNC_STEPS, "sync", quiet) as bar:
        sync(store, backend, config, now=NOW, stage=bar.advance)
    assert quiet.getvalue() == ""
