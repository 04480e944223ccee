"""The tick, the event loop and sd_notify, against a fake backend (the kernel test runs the real one).

The loop test runs Daemon.run() in the test's main thread (signals are only
delivered there) while a helper thread writes log lines and sends the signals.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from netaddr import IPNetwork

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from fakes import FakeBackend  # noqa: E402
from helpers import append, daemon_toml, dnsbl_policy, run_daemon, runner  # noqa: E402
from loglines import delivery, dnsbl_reject  # noqa: E402

from netblock import config as config_mod  # noqa: E402
from netblock.decide.tracker import newly_crossing  # noqa: E402
from netblock.errors import KernelError  # noqa: E402
from netblock.run.daemon import Daemon  # noqa: E402
from netblock.store.sqlite import Store  # noqa: E402
from netblock.system import hostaddrs
from netblock.system.sdnotify import Notifier  # noqa: E402

# A pinned instant, not today: in this file it meets only fakes, the store and pure functions,
# never the kernel's or the real clock (scripts/test-clock.sh runs the suite 400 days ahead).
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def reject(ip: str, minute: int = 0) -> str:
    return dnsbl_reject(ip, f"2026-11-27T11:{minute:02d}:00+00:00")


def delivered(ip: str) -> str:
    return delivery(ip, "2026-11-27T10:00:00+00:00", "2026-11-27T10:00:01+00:00", host="mail.example")


def make_config(tmp_path, tick="1h", extra=""):
    log = tmp_path / "mail.log"
    log.touch()
    toml = daemon_toml(f"{tmp_path}/lock", [log], tick=tick, daemon='coalesce = "50ms"', policy=dnsbl_policy())
    return config_mod.loads(toml + extra), log


@pytest.fixture(autouse=True)
def no_host_addresses(monkeypatch):
    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: [])


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "nb.db")
    yield s
    s.close()


class FlakyBackend(FakeBackend):
    """Fails while ``broken`` is set, like a kernel refusing a transaction."""

    broken = False

    def apply(self, desired):
        if self.broken:
            raise KernelError("nft: Could not process rule: No buffer space available")
        return super().apply(desired)


# ------------------------------------------------------------------ the tick

def test_tick_reads_decides_and_syncs(tmp_path, store):
    cfg, log = make_config(tmp_path)
    append(log, reject("198.18.4.1", 1), reject("198.18.4.1", 2), reject("198.18.4.2", 3),
          delivered("198.18.4.9"), reject("198.18.4.9", 4), reject("198.18.4.9", 5))
    backend = FakeBackend()
    result = runner(cfg, store, backend, clock=lambda: NOW).tick()
    assert result.ok and result.observations == 6 and result.decided == 1
    # the delivered sender crossed the threshold too, but is never blocked
    assert backend.elements == {IPNetwork("198.18.4.1/32"): datetime(2026, 11, 28, 11, 2, tzinfo=timezone.utc)}
    assert store.samples()  # the sampling hook ran


def test_widened_prefix_keeps_the_delivered_sender_out(tmp_path, store):
    cfg, log = make_config(tmp_path)
    append(log, delivered("198.18.5.200"))
    for i in (1, 2, 3):
        append(log, reject(f"198.18.5.{i}", i), reject(f"198.18.5.{i}", i + 10))
    backend = FakeBackend()
    runner(cfg, store, backend, clock=lambda: NOW).tick()
    kernel = set(backend.elements)
    assert IPNetwork("198.18.5.200/32") not in kernel
    assert not any(IPNetwork("198.18.5.200/32") in n for n in kernel)
    assert IPNetwork("198.18.5.0/25") in kernel and IPNetwork("198.18.5.201/32") in kernel


def test_a_failing_kernel_is_retried_and_loses_nothing(tmp_path, store):
    cfg, log = make_config(tmp_path)
    append(log, reject("198.18.6.1", 1), reject("198.18.6.1", 2))
    backend = FlakyBackend()
    backend.broken = True
    err = io.StringIO()
    r = runner(cfg, store, backend, stderr=err, clock=lambda: NOW)
    first = r.tick()
    assert not first.ok and first.observations == 2
    lines = [line for line in err.getvalue().splitlines() if "tick failed" in line]
    assert lines and all("Traceback" not in line for line in lines)
    assert "No buffer space" in lines[0]
    assert backend.elements == {}
    backend.broken = False
    second = r.tick()
    assert second.ok and IPNetwork("198.18.6.1/32") in backend.elements
    assert len(store.observations()) == 2


def test_drift_is_repaired_and_logged(tmp_path, store):
    cfg, log = make_config(tmp_path)
    append(log, reject("198.18.7.1", 1), reject("198.18.7.1", 2))
    backend = FakeBackend()
    err = io.StringIO()
    r = runner(cfg, store, backend, stderr=err, clock=lambda: NOW)
    r.tick()
    assert "drift repaired" not in err.getvalue()
    backend.elements.clear()  # `nft flush ruleset` behind netblock's back
    result = r.tick()
    assert result.restored == 1 and IPNetwork("198.18.7.1/32") in backend.elements
    assert "drift repaired: restored 1 netblock(s) missing from the kernel (198.18.7.1/32)" in err.getvalue()


def test_expired_blocks_leave_the_kernel_on_a_later_tick(tmp_path, store):
    cfg, log = make_config(tmp_path)
    append(log, reject("198.18.8.1", 1), reject("198.18.8.1", 2))
    backend = FakeBackend()
    clock = [NOW]
    r = runner(cfg, store, backend, clock=lambda: clock[0])
    r.tick()
    assert IPNetwork("198.18.8.1/32") in backend.elements
    clock[0] = NOW + timedelta(days=2)
    r.tick()
    assert backend.elements == {}


def test_newly_crossing_needs_the_threshold_and_no_active_block(tmp_path, store):
    cfg, log = make_config(tmp_path)
    append(log, reject("198.18.9.1", 1))
    r = runner(cfg, store, FakeBackend(), clock=lambda: NOW)
    r.read_all()
    ip = store.observations()[0].ip
    assert not newly_crossing(store, cfg, [ip], NOW)
    append(log, reject("198.18.9.1", 2))
    r.read_all()
    assert newly_crossing(store, cfg, [ip], NOW)
    r.tick()
    assert not newly_crossing(store, cfg, [ip], NOW)  # blocked already: the tick extends it


# ------------------------------------------------------------------ sd_notify

def bound_socket(tmp_path, abstract: bool):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"netblock-test-{os.getpid()}-{time.monotonic_ns()}"
        s.bind("\0" + name)
        return s, "@" + name
    path = str(tmp_path / "notify")
    s.bind(path)
    return s, path


@pytest.mark.parametrize("abstract", [False, True])
def test_sdnotify_speaks_the_datagram_protocol(tmp_path, abstract):
    sock, address = bound_socket(tmp_path, abstract)
    sock.settimeout(2)
    try:
        n = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.enabled and n.watchdog_interval == 1.5
        assert n.ready("3 blocks, last tick 12:00")
        assert sock.recv(4096) == b"READY=1\nSTATUS=3 blocks, last tick 12:00"
        assert n.status("line\nbreak")
        assert sock.recv(4096) == b"STATUS=line break"
        assert n.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        n.close()
    finally:
        sock.close()


def test_sdnotify_is_silent_outside_systemd():
    n = Notifier({})
    assert not n.enabled and not n.ready() and n.watchdog_interval is None
    other = Notifier({"NOTIFY_SOCKET": "/nonexistent/socket", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert not other.ready()  # nobody listening: no exception
    assert other.watchdog_interval is None  # the watchdog is meant for another process


# ------------------------------------------------------------------ the event loop

def test_daemon_reacts_at_once_coalesces_reloads_and_stops(tmp_path, store, monkeypatch):
    cfg, log = make_config(tmp_path, tick="1h")  # no tick comes: only events can sync
    sock, address = bound_socket(tmp_path, abstract=True)
    sock.settimeout(0.1)
    backend = FakeBackend()
    err = io.StringIO()
    r = runner(cfg, store, backend, clock=lambda: NOW, follow_mode=True, stderr=err, open_sources=False)
    reloads = []

    def reload_config():
        reloads.append(1)
        return cfg

    notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
    daemon = Daemon(r, reload_config=reload_config, notifier=notifier)
    seen: dict = {}

    def wait(pred, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.02)
        return False

    def driver():
        try:
            seen["started"] = wait(lambda: backend.calls.count("apply") >= 1)
            applies = backend.calls.count("apply")
            append(log, reject("198.18.10.1", 1), reject("198.18.10.2", 1), reject("198.18.10.3", 1))
            append(log, reject("198.18.10.1", 2), reject("198.18.10.2", 2), reject("198.18.10.3", 2))
            seen["blocked"] = wait(lambda: IPNetwork("198.18.10.0/24") in backend.elements)
            time.sleep(0.3)
            seen["syncs"] = backend.calls.count("apply") - applies
            append(log, reject("198.18.10.1", 3))  # already blocked: no sync for it
            time.sleep(0.3)
            seen["syncs_after"] = backend.calls.count("apply") - applies
            os.kill(os.getpid(), signal.SIGHUP)
            seen["reloaded"] = wait(lambda: reloads)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    status = run_daemon(daemon, driver)
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except (socket.timeout, BlockingIOError):
            break
    sock.close()
    assert status == 0
    assert seen == {"started": True, "blocked": True, "syncs": 1, "syncs_after": 1, "reloaded": True}
    assert messages[0].startswith("READY=1\nSTATUS=0 blocks, last tick 2026-11-27 12:00:00Z ok")
    assert "WATCHDOG=1" in messages and messages[-1] == "STOPPING=1"
    assert "configuration reloaded" in err.getvalue()
    # positions were saved as lines came in: a restart reads nothing again
    again = runner(cfg, store, backend, clock=lambda: NOW)
    assert again.read_all()[0] == 0
    assert len(store.observations()) == 7


def test_daemon_is_ready_before_reading_a_backlog_and_reads_it_in_steps(tmp_path, store, monkeypatch):
    from netblock.run import tick as tick_mod
    from netblock.sources import follow

    monkeypatch.setattr(follow, "BATCH_LINES", 4)
    monkeypatch.setattr(tick_mod, "MAX_BATCHES_PER_WAKE", 2)
    cfg, log = make_config(tmp_path, tick="1h")
    for i in range(20):
        append(log, reject(f"198.18.{20 + i}.1", 1), reject(f"198.18.{20 + i}.1", 2))
    backend = FakeBackend()
    r = runner(cfg, store, backend, clock=lambda: NOW, follow_mode=True, open_sources=False)
    stored_at_ready = []

    class Recorder(Notifier):
        def ready(self, status=""):
            stored_at_ready.append(len(store.observations()))
            return True

    reads = []
    real_read = r.read_files

    def counting_read(**kw):
        got = real_read(**kw)
        reads.append(got[0])
        return got

    monkeypatch.setattr(r, "read_files", counting_read)
    d = Daemon(r, reload_config=lambda: cfg, notifier=Recorder({}))

    def driver():
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(backend.elements) < 20:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    assert run_daemon(d, driver) == 0
    assert stored_at_ready == [0]
    assert len(store.observations()) == 40
    assert max(reads) <= 8 and len([n for n in reads if n]) >= 5  # 2 batches of 4 lines per wake
    assert len(backend.elements) == 20


# ------------------------------------------------------------------ floors and caps (issue #15)

def test_store_rows_over_the_ipv4_cap_are_skipped_on_receipt_and_the_rest_installed(tmp_path, store):
    """Rows each under the floor but together over the cap: the widest are skipped on receipt
    (netblock/store/receipt.py, narrowest kept first), logged once; the tick goes on and installs the rest."""
    from netblock.model import Block

    cfg, log = make_config(tmp_path)
    append(log, reject("198.18.6.1", 1), reject("198.18.6.1", 2))
    backend = FakeBackend()
    err = io.StringIO()
    r = runner(cfg, store, backend, stderr=err, clock=lambda: NOW)
    assert r.tick().ok
    assert IPNetwork("198.18.6.1/32") in backend.elements
    # a peer's rows: two under the floor, together over the cap, and one wider than the floor
    store.put_blocks([Block(IPNetwork("16.0.0.0/5"), "peer", "cli", NOW, None),
                      Block(IPNetwork("32.0.0.0/4"), "peer", "cli", NOW, None),
                      Block(IPNetwork("0.0.0.0/2"), "peer", "policy", NOW, None)])
    append(log, reject("198.18.6.2", 3), reject("198.18.6.2", 4))
    result = r.tick()
    assert result.ok, result.errors
    assert {IPNetwork("16.0.0.0/5"), IPNetwork("198.18.6.1/32"), IPNetwork("198.18.6.2/32")} <= set(backend.elements)
    assert IPNetwork("32.0.0.0/4") not in backend.elements and IPNetwork("0.0.0.0/2") not in backend.elements
    text = err.getvalue()
    assert text.count("32.0.0.0/4") == 1 and "over the cap of 2^28" in text
    assert text.count("0.0.0.0/2") == 1 and "wider than /4" in text
    r.tick()
    assert err.getvalue() == text  # said once, not every tick
    store.delete_blocks([IPNetwork("32.0.0.0/4"), IPNetwork("0.0.0.0/2")])
    assert r.tick().ok and IPNetwork("16.0.0.0/5") in backend.elements
    assert err.getvalue() == text  # nothing more to say
