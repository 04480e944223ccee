"""The journald reader against a fake journalctl that replays recorded JSON entries.

The entries have the shape `journalctl -o json` prints for Postfix on Debian
(postfix@-.service, _COMM=smtpd, the postfix user's system uid), plus forgeries
a local user can write with `logger -t postfix/smtpd`: same identifier and
message, but journald's own fields give them away.
"""

from __future__ import annotations

import json
import os
import select
import stat
import sys
from datetime import datetime, timedelta, timezone

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from fakes import FakeBackend, daemon_config  # noqa: E402
from helpers import run_daemon, runner  # noqa: E402
from loglines import no_rdns_message  # noqa: E402

from netblock.sources import journal  # noqa: E402
from netblock.sources.journal import Journal, command, trusted  # noqa: E402
from netblock.store.sqlite import Store  # noqa: E402

# A pinned instant, not today: in this file it meets only fakes, the store and pure functions,
# never the kernel's or the real clock (scripts/test-clock.sh runs the suite 400 days ahead).
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
UNIT = "postfix@-.service"


def rejection(ip: str) -> str:
    return no_rdns_message(ip)


def entry(n: int, ip: str, **over) -> dict:
    when = NOW - timedelta(minutes=30) + timedelta(seconds=n)
    e = {
        "__CURSOR": f"s=0123456789abcdef;i={n:x};b=feed;m={n:x};t={n:x};x={n:x}",
        "__REALTIME_TIMESTAMP": str(int(when.timestamp() * 1_000_000)),
        "__MONOTONIC_TIMESTAMP": str(1_000_000 + n),
        "_BOOT_ID": "feed",
        "PRIORITY": "6",
        "SYSLOG_FACILITY": "2",
        "SYSLOG_IDENTIFIER": "postfix/smtpd",
        "SYSLOG_PID": "4242",
        "MESSAGE": rejection(ip),
        "_PID": "4242",
        "_UID": "108",
        "_GID": "114",
        "_COMM": "smtpd",
        "_EXE": "/usr/lib/postfix/sbin/smtpd",
        "_CMDLINE": "smtpd -n smtp -t inet -u -c -o stress= -s 2",
        "_SYSTEMD_UNIT": UNIT,
        "_SYSTEMD_SLICE": "system-postfix.slice",
        "_TRANSPORT": "syslog",
        "_HOSTNAME": "mx",
    }
    e.update(over)
    return e


def forged(n: int, ip: str) -> dict:
    """What `logger -t postfix/smtpd ...` run by uid 1000 in a login session looks like."""
    return entry(n, ip, _COMM="logger", _EXE="/usr/bin/logger", _UID="1000", _GID="1000",
                 _CMDLINE="logger -t postfix/smtpd", _SYSTEMD_UNIT="session-3.scope",
                 _SYSTEMD_SLICE="user-1000.slice")


FAKE = r'''
import json, sys, time
args = sys.argv[1:]
with open(sys.argv[0] + ".args", "a") as f:
    f.write(json.dumps(args) + "\n")
with open(sys.argv[0] + ".entries") as f:
    entries = [json.loads(line) for line in f if line.strip()]
after = [a.split("=", 1)[1] for a in args if a.startswith("--after-cursor=")]
if after:
    cursors = [e["__CURSOR"] for e in entries]
    entries = entries[cursors.index(after[0]) + 1:]
for e in entries:  # no unit filtering: netblock must not rely on journalctl's
    print(json.dumps(e), flush=True)
if "--follow" in args:
    time.sleep(30)
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A journalctl replaying ``fake.entries``; its invocations land in ``fake.args``."""
    path = tmp_path / "journalctl"
    path.write_text(f"#!{sys.executable}\n" + FAKE)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("NETBLOCK_JOURNALCTL", str(path))

    class Fake:
        def set(self, entries):
            with open(f"{path}.entries", "w") as f:
                for e in entries:
                    f.write(json.dumps(e) + "\n")

        def calls(self):
            with open(f"{path}.args") as f:
                return [json.loads(line) for line in f]

    return Fake()


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "nb.db")
    yield s
    s.close()


def config():
    return daemon_config(journal=True, units=[UNIT])


def run_once(store) -> int:
    r = runner(config(), store, factory=FakeBackend, clock=lambda: NOW)
    try:
        return r.read_all()[0]
    finally:
        r.close_sources()


# ------------------------------------------------------------------ trust

def test_only_journald_fields_decide_trust():
    units = (UNIT,)
    assert trusted(entry(1, "198.51.100.7"), units)
    assert not trusted(forged(2, "198.51.100.8"), units)
    # forged from inside the right unit by a relaying tool, or by a person's uid
    assert not trusted(entry(3, "198.51.100.9", _COMM="logger"), units)
    assert not trusted(entry(4, "198.51.100.9", _UID="1001"), units)
    assert not trusted(entry(5, "198.51.100.9", _SYSTEMD_UNIT="postfix.service"), units)
    missing = entry(6, "198.51.100.9")
    del missing["_SYSTEMD_UNIT"]
    assert not trusted(missing, units)
    # a client cannot smuggle trusted fields: only the underscore ones count
    assert not trusted(entry(7, "198.51.100.9", _SYSTEMD_UNIT="user@1000.service",
                             SYSTEMD_UNIT=UNIT, COMM="smtpd"), units)


def test_binary_fields_are_decoded():
    e = entry(1, "198.51.100.7", _COMM=list(b"smtpd"))
    assert trusted(e, (UNIT,))
    got = journal.to_entry(dict(e, MESSAGE=list(rejection("198.51.100.7").encode())))
    assert got.message == rejection("198.51.100.7")
    assert got.time == NOW - timedelta(minutes=30) + timedelta(seconds=1)


def test_command_matches_units_on_the_trusted_field():
    args = command([UNIT, "exim4.service"], cursor="c1", follow=True, since=None, journalctl="jc")
    assert args[:2] == ["jc", "--output=json"]
    assert "--follow" in args and "--after-cursor=c1" in args
    assert args[-2:] == [f"_SYSTEMD_UNIT={UNIT}", "_SYSTEMD_UNIT=exim4.service"]
    first = command([UNIT], cursor=None, follow=False, since=NOW, journalctl="jc")
    assert f"--since=@{int(NOW.timestamp())}" in first and "--follow" not in first


# ------------------------------------------------------------------ into the store

def test_forged_entries_are_ignored_and_the_cursor_resumes(fake, store):
    batch1 = [entry(1, "198.51.100.7"), forged(2, "198.51.100.8"), entry(3, "198.51.100.9")]
    batch2 = [entry(4, "198.51.100.10"), forged(5, "198.51.100.11")]
    fake.set(batch1)
    assert run_once(store) == 2
    assert {str(o.ip) for o in store.observations()} == {"198.51.100.7", "198.51.100.9"}
    assert all(o.source == "journal" for o in store.observations())
    assert store.get_state(journal.STATE_KEY) == batch1[2]["__CURSOR"]

    fake.set(batch1 + batch2)
    assert run_once(store) == 1
    assert len(store.observations()) == 3
    calls = fake.calls()
    assert not any(a.startswith("--after-cursor") for a in calls[0])
    assert any(a.startswith("--since=@") for a in calls[0])
    assert f"--after-cursor={batch1[2]['__CURSOR']}" in calls[1]
    assert store.get_state(journal.STATE_KEY) == batch2[1]["__CURSOR"]  # a forgery still moves it on
    assert run_once(store) == 0  # nothing new: nothing stored twice
    assert len(store.observations()) == 3


def test_forgery_inside_the_unit_is_ignored_but_moves_the_cursor(fake, store):
    inside = entry(2, "198.51.100.8", _COMM="logger", _UID="1000")
    fake.set([entry(1, "198.51.100.7"), inside])
    assert run_once(store) == 1
    assert store.get_state(journal.STATE_KEY) == inside["__CURSOR"]


def test_follow_mode_reads_entries_as_they_come(fake):
    fake.set([entry(1, "198.51.100.7"), forged(2, "198.51.100.8"), entry(3, "198.51.100.9")])
    j = Journal([UNIT], follow=True)
    j.start()
    try:
        got = []
        for _ in range(50):  # bounded: the fake prints at once, then sleeps
            ready, _, _ = select.select([j.fileno()], [], [], 0.2)
            if ready:
                batch = j.read()
                got += batch.entries
                j.commit(batch)
            if len(got) >= 2:
                break
        assert [e.program for e in got] == ["postfix/smtpd", "postfix/smtpd"]
        assert j.cursor == entry(3, "x")["__CURSOR"]
        assert "--follow" in fake.calls()[0] and "--lines=0" in fake.calls()[0]
    finally:
        j.stop()


def test_a_failing_store_rewinds_journalctl_to_the_saved_cursor(fake, store, monkeypatch):
    from netblock.errors import StoreError

    fake.set([entry(1, "198.51.100.7"), entry(2, "198.51.100.8")])
    r = runner(config(), store, factory=FakeBackend, clock=lambda: NOW)
    real = store.add_observations

    def broken(obs):
        raise StoreError("database is locked")

    monkeypatch.setattr(store, "add_observations", broken)
    with pytest.raises(StoreError):
        r.read_all()
    assert store.get_state(journal.STATE_KEY) is None
    monkeypatch.setattr(store, "add_observations", real)
    try:
        assert r.read_all()[0] == 2
    finally:
        r.close_sources()
    assert len(store.observations()) == 2
    assert len(fake.calls()) == 2  # journalctl was started again, from the same (no) cursor


def test_the_daemon_loop_reacts_to_journal_entries(fake, store, tmp_path, monkeypatch):
    import signal
    import time

    from netaddr import IPNetwork

    from netblock import config as config_mod
    from netblock.run.daemon import Daemon
    from netblock.system import hostaddrs
    from netblock.system.sdnotify import Notifier

    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: [])
    cfg = config_mod.loads(f"""
lock_file = "{tmp_path}/lock"
[sources]
journal = true
journal_units = ["{UNIT}"]
[daemon]
tick = "1h"
[policy.classes.no-rdns]
threshold = 2
window = "1h"
ttl = "1d"
widen = false
""")
    fake.set([entry(1, "198.51.100.7"), forged(2, "198.51.100.8"), forged(3, "198.51.100.8"),
              entry(4, "198.51.100.7")])
    backend = FakeBackend()
    r = runner(cfg, store, backend, clock=lambda: NOW, follow_mode=True, open_sources=False)
    d = Daemon(r, reload_config=lambda: cfg, notifier=Notifier({}))

    def driver():
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not backend.elements:
            time.sleep(0.02)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    assert run_daemon(d, driver) == 0
    assert set(backend.elements) == {IPNetwork("198.51.100.7/32")}  # the forged address never
    assert store.get_state(journal.STATE_KEY) == entry(4, "x")["__CURSOR"]
