"""What the daemon says: levels, the journal's priority prefixes, and a storm in a few lines.

The storm test runs the real Daemon loop in the main thread (signals are only
delivered there) while a helper thread writes a thousand new offenders a
second into the followed log; it counts the lines the daemon wrote.
"""

from __future__ import annotations

import io
import os
import re
import signal
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from netaddr import IPNetwork

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from fakes import FakeBackend  # noqa: E402
from helpers import daemon_toml, dnsbl_policy, run_daemon, runner  # noqa: E402
from loglines import dnsbl_reject  # noqa: E402

from netblock import config as config_mod  # noqa: E402
from netblock.model import Block  # noqa: E402
from netblock.run import daemonlog
from netblock.run.daemon import Daemon  # noqa: E402
from netblock.run.daemonlog import Log  # noqa: E402
from netblock.store.sqlite import Store  # noqa: E402
from netblock.system import hostaddrs

SUMMARY = re.compile(r"\.\.\. and (\d+) more (.+?) in the last \d+s \(")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture(autouse=True)
def no_host_addresses(monkeypatch):
    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: [])


# ------------------------------------------------------------------ the Log itself

def test_levels_filter_and_journal_prefixes_mark_priority():
    out = io.StringIO()
    log = Log(out, "info", prefixes=False)
    log.debug("hidden")
    log.info("started")
    log.warning("store unreachable")
    assert out.getvalue() == "netblock: started\nnetblock: store unreachable\n"
    out = io.StringIO()
    log = Log(out, "debug", prefixes=True)
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert out.getvalue().splitlines() == ["<7>netblock: d", "<6>netblock: i", "<4>netblock: w", "<3>netblock: e"]
    assert daemonlog.lower("info", 1) == "debug" and daemonlog.lower("warning", 5) == "debug"


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path, monkeypatch):
    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert daemonlog.journal_stream(f)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not daemonlog.journal_stream(f)  # inherited from a parent service: not ours
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not daemonlog.journal_stream(io.StringIO())


def test_a_flood_is_shown_up_to_the_burst_then_summarised():
    out, clock = io.StringIO(), Clock()
    log = Log(out, "info", burst=5, interval=10.0, clock=clock, prefixes=False)
    for i in range(1000):  # 1000 a second for one second
        log.event("blocked", f"198.18.{i // 256}.{i % 256}/32", f"blocked 198.18.{i // 256}.{i % 256}/32",
                  noun="netblocks decided")
        clock.t += 0.001
    assert len(out.getvalue().splitlines()) == 5  # the summary waits for the interval to end
    clock.t += 9.5
    log.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 6
    assert SUMMARY.search(lines[-1]).groups() == ("995", "netblocks decided")
    assert "198.18.0.5/32, 198.18.0.6/32, 198.18.0.7/32, ..." in lines[-1]
    log.event("blocked", "x", "blocked x")  # a new interval starts with lines again
    assert out.getvalue().splitlines()[-1] == "netblock: blocked x"


def test_flood_kinds_are_limited_separately_and_quiet_below_info():
    out, clock = io.StringIO(), Clock()
    log = Log(out, "info", burst=2, clock=clock, prefixes=False)
    for i in range(4):
        log.event("blocked", str(i), f"blocked {i}")
        log.event("expired", str(i), f"expired {i}")
    log.flush(force=True)
    lines = out.getvalue().splitlines()
    assert [line for line in lines if "blocked" in line and "more" not in line] == ["netblock: blocked 0",
                                                                                    "netblock: blocked 1"]
    assert sorted(SUMMARY.search(line).groups() for line in lines if SUMMARY.search(line)) == \
        [("2", "blocked"), ("2", "expired")]
    quiet = io.StringIO()
    log = Log(quiet, "warning", clock=clock, prefixes=False)
    log.event("blocked", "1", "blocked 1")
    log.flush(force=True)
    assert quiet.getvalue() == ""


# ------------------------------------------------------------------ the runner's lines

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def make_config(tmp_path, *, threshold=2, widen=True, level="info", tick="1h"):
    log = tmp_path / "mail.log"
    log.touch()
    daemon = f'coalesce = "50ms"\nlog_level = "{level}"'
    policy = dnsbl_policy(threshold=threshold, widen=widen)
    return config_mod.loads(daemon_toml(f"{tmp_path}/lock", [log], tick=tick, daemon=daemon, policy=policy)), log


def reject(ip: str, when: datetime) -> str:
    return dnsbl_reject(ip, when.isoformat())


def test_each_decision_expiry_and_source_is_said_with_its_reason(tmp_path):
    cfg, log = make_config(tmp_path)
    with open(log, "a") as f:
        for ip in ("198.18.5.1", "198.18.5.2", "198.18.5.3"):
            f.write(reject(ip, NOW - timedelta(minutes=10)) + "\n" + reject(ip, NOW - timedelta(minutes=9)) + "\n")
    now = [NOW]
    err = io.StringIO()
    backend = FakeBackend()
    with Store.open(tmp_path / "nb.db") as store:
        r = runner(cfg, store, backend, clock=lambda: now[0], stderr=err)
        r.tick()
        store.put_blocks([Block(IPNetwork("192.0.2.7/32"), "by hand", "cli", NOW, NOW + timedelta(minutes=5)),
                          Block(IPNetwork("192.0.2.8/32"), "by hand", "cli", NOW, None)])
        r.tick()
        store.delete_blocks([IPNetwork("192.0.2.8/32")])
        now[0] = NOW + timedelta(days=2)  # every block has run out
        r.tick()
        r.close_sources()
    said = err.getvalue().splitlines()
    assert said[0] == f"netblock: sources: {log} ([sources] files, the explicit choice: the journal is not read)"
    assert said[1].startswith("netblock: log files are read: any local user can forge")
    assert said[2] == f"netblock: following {log} from its start"
    assert "netblock: blocked 198.18.5.0/24 until 2026-11-28 11:51Z: widened: 3 offenders in the /24" in said
    assert ("netblock: blocked 198.18.5.1/32 until 2026-11-28 11:51Z: 2 dnsbl (dnsbl:zen.example) within 1h "
            "(threshold 2)") in said
    assert "netblock: expired 198.18.5.0/24" in said
    assert "netblock: expired 192.0.2.7/32" in said
    assert "netblock: unblocked 192.0.2.8/32 (deleted or allowed in the store)" in said
    assert not [line for line in said if "kernel: +" in line]  # debug only


def test_debug_adds_each_sync_and_tick(tmp_path):
    cfg, log = make_config(tmp_path, level="debug")
    log.write_text(reject("198.18.5.1", NOW - timedelta(minutes=9)) * 1 + "\n")
    err = io.StringIO()
    with Store.open(tmp_path / "nb.db") as store:
        store.put_blocks([Block(IPNetwork("192.0.2.7/32"), "by hand", "cli", NOW, None)])
        r = runner(cfg, store, factory=FakeBackend, clock=lambda: NOW, stderr=err)
        r.tick()
        r.close_sources()
    said = err.getvalue()
    assert "netblock: kernel: +1 -0 ~0 (1 netblocks)" in said
    assert "netblock: tick: 1 observations, 0 decided, 1 active; kernel +1 -0 ~0" in said


# ------------------------------------------------------------------ a storm through the real loop

STORM = 2000  # new offenders, written at about 1000 a second


def test_a_storm_of_a_thousand_offenders_a_second_takes_a_few_lines(tmp_path, monkeypatch):
    cfg, log = make_config(tmp_path, threshold=1, widen=False)  # every address is a decision of its own
    backend = FakeBackend()
    err = io.StringIO()
    now = datetime.now(timezone.utc)
    done = {}
    with Store.open(tmp_path / "nb.db") as store:
        r = runner(cfg, store, backend, clock=lambda: datetime.now(timezone.utc), follow_mode=True, stderr=err,
                   open_sources=False)
        daemon = Daemon(r, reload_config=lambda: cfg)

        def storm():
            try:
                deadline = time.monotonic() + 30
                while not backend.calls.count("apply") and time.monotonic() < deadline:
                    time.sleep(0.01)  # the daemon's first sync: it is following now
                for second in range(STORM // 1000):
                    for tenth in range(10):
                        with open(log, "a") as f:
                            for i in range(100):
                                n = second * 1000 + tenth * 100 + i
                                f.write(reject(f"198.18.{n // 250}.{n % 250 + 1}", now) + "\n")
                        time.sleep(0.1)
                while store_count() < STORM and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)

        def store_count():
            with Store.open(tmp_path / "nb.db") as s:
                return s.count_blocks()

        status = run_daemon(daemon, storm, join_s=40)
        done["blocks"] = store.count_blocks()
    assert status == 0 and done["blocks"] == STORM
    lines = err.getvalue().splitlines()
    decided = [line for line in lines if line.startswith("netblock: blocked ")]
    summaries = [SUMMARY.search(line).groups() for line in lines if SUMMARY.search(line)]
    hidden = sum(int(n) for n, noun in summaries if noun == "netblocks decided")
    assert len(decided) + hidden == STORM  # every decision is either a line or counted in a summary
    assert len(decided) <= 2 * daemonlog.BURST  # at most two intervals' worth of single lines
    assert not [line for line in lines if "unblocked" in line or "expired" in line]  # merging is no news
    assert len(lines) < 40, lines


def test_dash_v_goes_one_level_below_the_config_and_survives_a_reload(tmp_path):
    cfg, _log = make_config(tmp_path, level="warning")
    with Store.open(tmp_path / "nb.db") as store:
        r = runner(cfg, store, factory=FakeBackend, clock=lambda: NOW, open_sources=False)
        d = Daemon(r, reload_config=lambda: cfg, verbose=1)
        assert r.logger.level == daemonlog.LEVELS["info"]
        louder, _ = make_config(tmp_path, level="info")
        d.reload_config = lambda: louder
        d._do_reload()
        assert r.logger.level == daemonlog.LEVELS["debug"]
        d.run = None  # never started: close what the constructor opened
        d.inotify.close()
        os.close(d._wake_r)
        os.close(d._wake_w)
