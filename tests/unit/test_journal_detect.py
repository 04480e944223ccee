"""The journal as the default source: auto-detection against real journal files.

No journald runs here, so the entries are written into a real journal file by
systemd-journal-remote (journald's own file writer, which keeps the trusted
fields as given) and read back by the real journalctl through ``--file``:
the same binary, arguments and JSON netblock uses on a systemd host. Entry
times are relative to the clock, so the tests hold on any date.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from fakes import FakeBackend, daemon_config  # noqa: E402
from helpers import runner  # noqa: E402
from loglines import dnsbl_message  # noqa: E402

from netblock.sources import journal  # noqa: E402
from netblock.sources.journal import Choice, Detection, choose, detect  # noqa: E402
from netblock.store.sqlite import Store  # noqa: E402

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
UNITS = ("postfix.service", "postfix@-.service", "exim4.service", "sendmail.service")
SPAMMER = "198.51.100.7"


def rejection(ip: str) -> str:
    return dnsbl_message(ip)


def postfix(when: datetime, ip: str = SPAMMER, **over) -> dict:
    """An entry as journald writes it for Debian's postfix@-.service smtpd."""
    e = {"_SYSTEMD_UNIT": "postfix@-.service", "_COMM": "smtpd", "_UID": "108", "_GID": "114",
         "_EXE": "/usr/lib/postfix/sbin/smtpd", "SYSLOG_IDENTIFIER": "postfix/smtpd", "_TRANSPORT": "syslog",
         "PRIORITY": "6", "_HOSTNAME": "mx", "MESSAGE": rejection(ip), "__REALTIME_TIMESTAMP": when}
    e.update(over)
    return e


def forged(when: datetime, ip: str = SPAMMER) -> dict:
    """`logger -t postfix/smtpd ...` by uid 1000 in a login session."""
    return postfix(when, ip, _COMM="logger", _EXE="/usr/bin/logger", _UID="1000", _GID="1000",
                   _SYSTEMD_UNIT="session-3.scope")


def write_journal(path, entries: list[dict]) -> None:
    """A real journal file holding ``entries`` (journal export format through systemd-journal-remote)."""
    out = []
    for n, e in enumerate(entries, 1):
        when = e["__REALTIME_TIMESTAMP"]
        fields = {"__CURSOR": f"s=1;i={n}", "__REALTIME_TIMESTAMP": str(int(when.timestamp() * 1_000_000)),
                  "__MONOTONIC_TIMESTAMP": str(1_000_000 + n), "_BOOT_ID": "0123456789abcdef0123456789abcdef"}
        fields.update({k: v for k, v in e.items() if k != "__REALTIME_TIMESTAMP"})
        out.append("".join(f"{k}={v}\n" for k, v in fields.items()) + "\n")
    subprocess.run([JOURNAL_REMOTE, f"--output={path}", "-"], input="".join(out).encode(), check=True,
                   capture_output=True)


@pytest.fixture
def real_journal(tmp_path, monkeypatch):
    """Write entries into a journal file that netblock's journalctl calls then read (``--file``)."""
    if not os.path.exists(JOURNAL_REMOTE):
        pytest.fail(f"{JOURNAL_REMOTE} missing: scripts/setup.sh installs systemd-journal-remote")
    path = tmp_path / "system.journal"
    wrapper = tmp_path / "journalctl"
    wrapper.write_text(f"#!/bin/sh\nexec journalctl --file={path} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("NETBLOCK_JOURNALCTL", str(wrapper))
    return lambda entries: write_journal(path, entries)


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


# ------------------------------------------------------------------ detect() on real journal files

def test_recent_mta_entries_make_the_journal_the_source(real_journal):
    t = now()
    real_journal([postfix(t - timedelta(hours=3)), postfix(t - timedelta(minutes=5))])
    found = detect(UNITS, now=t)
    assert found == Detection(True, 2, ())


def test_forgeries_and_old_entries_are_no_evidence(real_journal):
    t = now()
    real_journal([forged(t - timedelta(minutes=1)), forged(t - timedelta(minutes=2)),
                  postfix(t - timedelta(days=2))])  # the MTA logged here, but not in the last day
    found = detect(UNITS, now=t)
    assert found.available and found.trusted == 0 and found.other_units == ()


def test_an_mta_program_in_an_unlisted_unit_is_named(real_journal):
    t = now()
    real_journal([postfix(t - timedelta(minutes=1), _SYSTEMD_UNIT="postfix-custom.service")])
    found = detect(UNITS, now=t)
    assert found == Detection(True, 0, ("postfix-custom.service",))
    choice = choose((), "auto", UNITS, lambda: found)
    assert not choice.journal and "postfix-custom.service, which is not in [sources] journal_units" in choice.reason


def test_no_journalctl_means_no_journal(tmp_path, monkeypatch):
    monkeypatch.setenv("NETBLOCK_JOURNALCTL", str(tmp_path / "missing-journalctl"))
    found = detect(UNITS, now=now())
    assert not found.available and "not found" in found.error
    choice = choose((), "auto", UNITS, lambda: found)
    assert choice.mode == "none" and "journalctl cannot be used" in choice.reason


# ------------------------------------------------------------------ choose(): the pure rule

def _never() -> Detection:
    raise AssertionError("journalctl must not be asked when the settings decide")


@pytest.mark.parametrize("files, setting, mode", [
    ((), True, "journal"),
    (("/var/log/mail.log",), True, "files+journal"),
    (("/var/log/mail.log",), False, "files"),
    ((), False, "none"),
    (("/var/log/mail.log",), "auto", "files"),  # files are the explicit choice
])
def test_explicit_settings_decide_without_asking_the_journal(files, setting, mode):
    choice = choose(files, setting, UNITS, _never)
    assert choice.mode == mode and not choice.detected


def test_auto_without_files_follows_the_detection():
    assert choose((), "auto", UNITS, lambda: Detection(True, 5)).mode == "journal"
    nothing = choose((), "auto", UNITS, lambda: Detection(True, 0))
    assert nothing.mode == "none" and nothing.detected
    assert "set [sources] files for a maillog" in nothing.reason


def test_only_file_mode_carries_the_forgery_warning():
    assert journal.file_source_forgery_warning(Choice((), True, "journal")) is None
    warning = journal.file_source_forgery_warning(Choice(("/var/log/mail.log",), False, "files"))
    assert "any local user can forge" in warning and "logger -t postfix/smtpd" in warning


# ------------------------------------------------------------------ the daemon's tick reads what it detected

def config(journal_setting, files=()):
    return daemon_config(files, journal_setting, UNITS)


def test_run_once_reads_the_auto_detected_journal_and_ignores_forgeries(real_journal, tmp_path):
    t = now()
    real_journal([postfix(t - timedelta(minutes=3)), forged(t - timedelta(minutes=2), "198.51.100.66"),
                  postfix(t - timedelta(minutes=1))])
    err = io.StringIO()
    with Store.open(tmp_path / "nb.db") as store:
        r = runner(config("auto"), store, factory=FakeBackend, clock=lambda: t, stderr=err)
        try:
            n, _ = r.read_all()
        finally:
            r.close_sources()
        assert n == 2
        assert {str(o.ip) for o in store.observations()} == {SPAMMER}
        assert {o.source for o in store.observations()} == {"journal"}
    assert "sources: the journal (auto-detected: 2 recent entries" in err.getvalue()
    assert "forge" not in err.getvalue()


def test_configured_files_turn_the_automatic_journal_off(real_journal, tmp_path):
    t = now()
    real_journal([postfix(t - timedelta(minutes=1))])
    log = tmp_path / "mail.log"
    log.write_text("")
    err = io.StringIO()
    with Store.open(tmp_path / "nb.db") as store:
        r = runner(config("auto", [log]), store, factory=FakeBackend, clock=lambda: t, stderr=err)
        try:
            assert r.journal is None and list(r.followers) == [str(log)]
            assert r.read_all()[0] == 0
        finally:
            r.close_sources()
    said = err.getvalue()
    assert f"sources: {log} ([sources] files, the explicit choice" in said
    assert said.count("any local user can forge") == 1


def test_a_journal_found_later_is_picked_up_by_the_next_tick(real_journal, tmp_path):
    t = now()
    real_journal([forged(t - timedelta(minutes=1))])
    err = io.StringIO()
    with Store.open(tmp_path / "nb.db") as store:
        r = runner(config("auto"), store, factory=FakeBackend, clock=lambda: t, stderr=err)
        try:
            assert r.journal is None and r.choice.mode == "none"
            real_journal([postfix(t - timedelta(seconds=30))])  # the MTA starts logging
            result = r.tick()
            assert r.choice.mode == "journal" and result.observations == 1
        finally:
            r.close_sources()
    assert "sources: nothing yet: no entries of postfix.service" in err.getvalue()
