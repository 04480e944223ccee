""""Delivered" only on proof that the MTA accepted a message (issue #15, hole 5).

smtpd's "QUEUEID: client=" (first accepted RCPT) and sendmail's "from=" line
announce a transaction; qmgr's "(queue active)" and sendmail's "to=...,
stat=Sent|queued" prove it.  sources.join pairs them by queue ID: in ingest
(one pass over all the files, in order), in the daemon (the open pairs saved
with the log positions, so a rotation or a restart between the two lines
loses nothing), with bounded memory and a time limit.
"""

from __future__ import annotations

import io
import os
import sys
from datetime import datetime, timedelta, timezone

import pytest
from netaddr import IPAddress

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from fakes import FakeBackend  # noqa: E402
from helpers import runner  # noqa: E402

from netblock import cli, config as config_mod, sources  # noqa: E402
from netblock.sources import join  # noqa: E402
from netblock.sources.join import Join  # noqa: E402
from netblock.store.sqlite import Store  # noqa: E402
from netblock.system import hostaddrs

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
QID = "4XyZ1k2LmNz9abe"


def client(ip: str, qid: str = QID, at: str = "10:00:00") -> str:
    return f"2026-11-27T{at}+00:00 mx postfix/smtpd[42]: {qid}: client=unknown[{ip}]"


def active(qid: str = QID, at: str = "10:00:02", sender: str = "a@example.org") -> str:
    return f"2026-11-27T{at}+00:00 mx postfix/qmgr[43]: {qid}: from=<{sender}>, size=1234, nrcpt=1 (queue active)"


def settle(*lines: str, j: Join | None = None) -> list[tuple[str, str]]:
    j = j or Join()
    obs = [o for line in lines if (o := sources.parse_line(line, marks=True)) is not None]
    return [(str(o.ip), o.cls) for o in j.observations(obs)]


def test_client_line_alone_is_no_delivery():
    assert settle(client("192.0.2.1")) == []
    assert sources.parse_line(client("192.0.2.1")) is None  # without marks: nothing at all


def test_client_then_queue_active_is_a_delivery():
    assert settle(client("192.0.2.1"), active()) == [("192.0.2.1", "delivered")]
    # each proof counts once
    assert settle(client("192.0.2.1"), active(), active()) == [("192.0.2.1", "delivered")]


@pytest.mark.parametrize("ending", [
    # the zombie that passed RCPT and dropped the connection
    "2026-11-27T10:00:05+00:00 mx postfix/smtpd[42]: lost connection after DATA (120 bytes) from unknown[192.0.2.1]",
    # header_checks REJECT at the end of DATA
    f"2026-11-27T10:00:05+00:00 mx postfix/cleanup[44]: {QID}: reject: header Subject: buy from unknown[192.0.2.1]; "
    "from=<a@example.org> to=<b@example.net> proto=ESMTP helo=<x>: 5.7.1 Message content rejected",
    # a milter at END-OF-MESSAGE
    f"2026-11-27T10:00:05+00:00 mx postfix/smtpd[42]: {QID}: milter-reject: END-OF-MESSAGE from unknown[192.0.2.1]: "
    "5.7.1 Spam; from=<a@example.org> to=<b@example.net> proto=ESMTP helo=<x>",
    # qmgr's other lines about the ID
    f"2026-11-27T10:00:05+00:00 mx postfix/qmgr[43]: {QID}: removed",
])
def test_a_transaction_that_never_reaches_the_queue_is_no_delivery(ending):
    assert ("192.0.2.1", "delivered") not in settle(client("192.0.2.1"), ending)


def test_a_forged_qmgr_line_proves_nothing():
    forged = [
        active().replace("postfix/qmgr[43]", "postfix/smtpd[43]"),  # the wrong daemon
        active().replace("postfix/qmgr[43]", "logger[43]"),
        # a sender holding the fixed text, on a line that is no activation
        f"2026-11-27T10:00:02+00:00 mx postfix/qmgr[43]: {QID}: from=<\"x>, size=1, nrcpt=1 (queue active)\"@e>, "
        "status=expired, returned to sender",
    ]
    for line in forged:
        assert settle(client("192.0.2.1"), line) == [], line


def test_a_reused_queue_id_belongs_to_its_newest_client():
    assert settle(client("192.0.2.1"), client("192.0.2.2"), active()) == [("192.0.2.2", "delivered")]


def test_a_transaction_that_never_completes_is_forgotten():
    late = active(at="11:00:03")  # more than join.TTL (1h) after the client line
    assert settle(client("192.0.2.1"), late) == []
    j = Join(limit=3)
    settle(*(client(f"192.0.2.{i}", qid=f"QID{i:04d}A") for i in range(5)), j=j)
    assert len(j.open) == 3 and ("postfix", "QID0000A") not in j.open
    # a newer client line also drops the ones past the time limit
    settle(client("192.0.2.9", qid="QID9999A", at="23:00:00"), j=j)
    assert list(j.open) == [("postfix", "QID9999A")]


def test_open_transactions_survive_dump_and_load():
    j = Join()
    settle(client("192.0.2.1"), j=j)
    k = Join()
    k.load(j.dump())
    assert settle(active(), j=k) == [("192.0.2.1", "delivered")]
    for bad in ("", "[", '{"a": 1}', '[["postfix", "Q", "x", "192.0.2.1"]]', '[["postfix", "Q", 1, "300.1.1.1"]]'):
        k.load(bad)
        assert not k.open


def test_sendmail_from_then_stat_sent_is_a_delivery():
    frm = ("Nov 27 10:00:00 mx sm-mta[9]: 5AR07Xab030000: from=<a@example.org>, size=2345, class=0, nrcpts=1, "
           "msgid=<abc@example.org>, proto=ESMTP, daemon=MTA-v4, relay=mail.example.org [192.0.2.30]")
    sent = ("Nov 27 10:00:01 mx sm-mta[9]: 5AR07Xab030000: to=<b@example.net>, delay=00:00:01, xdelay=00:00:00, "
            "mailer=local, pri=32345, dsn=2.0.0, stat=Sent")
    aborted = ("Nov 27 10:00:01 mx sm-mta[9]: 5AR07Xab030000: to=<b@example.net>, delay=00:00:03, pri=30345, "
               "stat=Message rejected by milter")
    assert settle(frm, sent) == [("192.0.2.30", "delivered")]
    assert settle(frm, aborted) == []
    assert settle(frm) == []


def test_exim_accept_line_is_a_delivery_by_itself():
    line = "2026-11-27 10:00:00 1tGxYz-000ABC-5h <= a@example.org H=(h) [192.0.2.40]:1 P=esmtp S=1"
    assert settle(line) == [("192.0.2.40", "delivered")]


def test_ambiguous_lines_are_counted():
    j = Join()
    line = ('2026-11-27 10:00:00 SMTP protocol error in "AUTH x" H=[198.51.100.1] y" H=(h) [192.0.2.1] '
            "AUTH command used when not advertised")
    assert settle(line, j=j) == [] and j.ambiguous == 1


# ------------------------------------------------------------- ingest and the daemon

@pytest.fixture(autouse=True)
def no_host_addresses(monkeypatch):
    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: [])


def _ingest(tmp_path, monkeypatch, *argv: str) -> str:
    """`netblock ingest ...` the way tests/unit/test_sources_batch.py runs it (fake kernel)."""
    monkeypatch.setenv("NETBLOCK_NOW", NOW.isoformat())
    conf = tmp_path / "netblock.toml"
    conf.write_text(f'lock_file = "{tmp_path}/lock"\nhost_id = "mx1"\n')
    out, err = io.StringIO(), io.StringIO()
    args = cli.build_parser().parse_args(list(argv))
    ctx = cli.Context(args, stdout=out, stderr=err)
    ctx._config, ctx._backend, ctx._store = config_mod.load(conf, explicit=True), FakeBackend(), \
        Store.open(tmp_path / "nb.db")
    try:
        assert args.handler(args, ctx) == 0, err.getvalue()
    finally:
        ctx.close()
    return out.getvalue()


def test_ingest_pairs_across_rotated_files(tmp_path, monkeypatch):
    old, new = tmp_path / "mail.log.1", tmp_path / "mail.log"
    old.write_text(client("192.0.2.1") + "\n" + client("192.0.2.2", qid="QID0002A") + "\n")
    new.write_text(active() + "\n")
    out = _ingest(tmp_path, monkeypatch, "ingest", "--dry-run", str(old), str(new))
    assert "1 observations" in out and "delivered" in out
    line = ('2026-11-27 10:00:00 SMTP protocol error in "AUTH x" H=[198.51.100.1] y" H=(h) [192.0.2.1] '
            "AUTH command used when not advertised")
    new.write_text(line + "\n")
    out = _ingest(tmp_path, monkeypatch, "ingest", "--dry-run", str(new))
    assert "0 observations" in out and "1  ambiguous" in out


def _runner(tmp_path, store, log):
    cfg = config_mod.loads(f'lock_file = "{tmp_path}/lock"\n[sources]\nfiles = ["{log}"]\n')
    return runner(cfg, store, factory=FakeBackend, clock=lambda: NOW)


def test_daemon_pairs_across_a_rotation_and_a_restart(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text(client("192.0.2.1") + "\n")
    store = Store.open(tmp_path / "nb.db")
    r = _runner(tmp_path, store, log)
    r.read_all()
    assert not store.delivered_since(NOW - timedelta(days=1))
    assert store.get_state(join.STATE_KEY)  # the open transaction is saved with the position
    r.close_sources()
    # logrotate, then a new process (run-once, or a restarted daemon)
    os.rename(log, tmp_path / "mail.log.1")
    log.write_text(active() + "\n")
    r = _runner(tmp_path, store, log)
    r.read_all()
    r.close_sources()
    assert store.delivered_since(NOW - timedelta(days=1)) == {IPAddress("192.0.2.1")}
    store.close()


def test_journal_entries_pair_the_same_way():
    msgs = [("postfix/smtpd", f"{QID}: client=unknown[192.0.2.5]"),
            ("postfix/qmgr", f"{QID}: from=<a@example.org>, size=1, nrcpt=1 (queue active)")]
    obs = [sources.parse_message(p, m, NOW, marks=True) for p, m in msgs]
    assert [(str(o.ip), o.cls) for o in Join().observations(obs)] == [("192.0.2.5", "delivered")]
