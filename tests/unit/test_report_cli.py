"""`netblock sample`, `netblock report` and its files, against a real store and a fake kernel.

The fake's counters are set by hand, so every number below is written out;
tests/kernel/test_report.py proves the same with real SYNs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from datetime import datetime, timedelta, timezone
from html import escape as html_escape
from pathlib import Path

import pytest
from netaddr import IPNetwork

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from fakes import FakeBackend  # noqa: E402

from netblock import cli, config  # noqa: E402
from netblock.errors import NetblockError  # noqa: E402
from netblock.reports import plot
from netblock.run import sampling
from netblock.store.sqlite import Store  # noqa: E402
from netblock.system import hostaddrs

# A pinned instant, not today: in this file it meets only fakes, the store and pure functions,
# never the kernel's or the real clock (scripts/test-clock.sh runs the suite 400 days ahead).
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
N = IPNetwork


class CountingBackend(FakeBackend):
    """The fake kernel, with counters a test sets; re-created elements start from zero."""

    def __init__(self):
        super().__init__()
        self.counts: dict = {}

    def apply(self, desired):
        change = super().apply(desired)
        for net in change.removed:
            self.counts.pop(net, None)
        return change

    def counters(self) -> dict:
        self.calls.append("counters")
        return {net: self.counts.get(net, (0, 0)) for net in self.elements}

    def flush(self) -> None:
        """What `nft flush ruleset` or a reboot does."""
        self.elements, self.counts = {}, {}


class Harness:
    def __init__(self, tmp_path, monkeypatch):
        self.tmp = tmp_path
        self.db = tmp_path / "nb.db"
        conf = tmp_path / "netblock.toml"
        conf.write_text(f'lock_file = "{tmp_path}/lock"\nhost_id = "mx1"\n')
        self.config = config.load(conf, explicit=True)
        self.backend = CountingBackend()
        self.monkeypatch = monkeypatch
        self.at(NOW)

    def at(self, when: datetime) -> None:
        self.now = when
        self.monkeypatch.setenv("NETBLOCK_NOW", when.isoformat())

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        try:
            args = cli.build_parser().parse_args(list(argv))
        except SystemExit as exc:
            return exc.code, "", ""
        ctx = cli.Context(args, stdout=out, stderr=err)
        ctx._config, ctx._backend, ctx._store = self.config, self.backend, Store.open(self.db)
        try:
            rc = args.handler(args, ctx)
        except NetblockError as exc:
            err.write(f"netblock: {exc}\n")
            rc = exc.exit_status
        finally:
            ctx.close()
        return rc, out.getvalue(), err.getvalue()

    def ok(self, *argv: str) -> str:
        rc, out, err = self(*argv)
        assert rc == 0, err
        return out

    def refused(self, *argv: str) -> str:
        rc, out, err = self(*argv)
        assert rc == 2 and out == "", (rc, out, err)
        assert len(err.strip().splitlines()) == 1, err
        return err.strip()

    def report(self, *argv: str) -> list[dict]:
        """The rows of this window only (the comparison has tests of its own)."""
        return json.loads(self.ok("report", "--json", "--no-compare", *argv))

    def count(self, net: str, packets: int, nbytes: int | None = None) -> None:
        self.backend.counts[N(net)] = (packets, packets * 40 if nbytes is None else nbytes)

    def sample(self, when: datetime) -> None:
        self.at(when)
        self.ok("sample")

    def sample_rows(self) -> int:
        with Store.open(self.db) as store:
            return len(store.samples())


@pytest.fixture
def nb(tmp_path, monkeypatch):
    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: [N("192.0.2.250/32")])
    return Harness(tmp_path, monkeypatch)


def minutes(m: int) -> datetime:
    return NOW + timedelta(minutes=m)


def totals(rows: list[dict]) -> dict[str, tuple[int, int]]:
    return {r["netblock"]: (r["packets"], r["bytes"]) for r in rows}


# ---------------------------------------------------------------- top

def test_report_ranks_by_drops_in_the_window_with_the_seed_layout(nb):
    nb.ok("add", "198.18.1.0/24", "198.18.3.0/24", "203.0.113.7", "2001:db8:5::/48", "--reason", "storm")
    nb.sample(minutes(0))
    nb.count("198.18.1.0/24", 7193, 391_234)
    nb.count("198.18.3.0/24", 4058, 195_300)
    nb.count("203.0.113.7/32", 3768, 181_000)
    nb.sample(minutes(10))
    nb.at(minutes(20))
    assert nb.ok("report", "--no-compare").splitlines() == [
        "Host/Mask            Packets  Bytes",
        "198.18.1.0/24           7193   391K",
        "198.18.3.0/24           4058   195K",
        "203.0.113.7             3768   181K",
    ]
    assert nb.ok("report", "--exact", "--no-compare").splitlines()[1] == "198.18.1.0/24           7193 391234"
    rows = nb.report()
    assert [(r["netblock"], r["packets"], r["bytes"], r["reason"]) for r in rows] == [
        ("198.18.1.0/24", 7193, 391_234, "storm"), ("198.18.3.0/24", 4058, 195_300, "storm"),
        ("203.0.113.7/32", 3768, 181_000, "storm")]
    assert rows[0]["first_seen"] == rows[0]["last_seen"] == "2026-11-27T12:10:00Z"
    assert [r["netblock"] for r in nb.report("--top", "1")] == ["198.18.1.0/24"]
    nb.count("2001:db8:5::/48", 10, 999_999)
    nb.sample(minutes(30))
    nb.at(minutes(40))
    assert [r["netblock"] for r in nb.report("--by", "bytes")][:2] == ["2001:db8:5::/48", "198.18.1.0/24"]
    table = list(csv.DictReader(io.StringIO(nb.ok("report", "--csv", "--no-compare"))))
    assert [(r["netblock"], r["packets"]) for r in table][:2] == [("198.18.1.0/24", "7193"), ("198.18.3.0/24", "4058")]
    assert table[0]["first_seen"] == "2026-11-27T12:10:00+00:00"
    # a window after the drops shows none of them
    nb.at(minutes(24 * 60))
    assert nb.report("--since", "1h") == []


def test_window_uses_the_sample_before_it_as_baseline(nb):
    nb.ok("add", "198.18.1.0/24")
    for m, packets in ((0, 10), (60, 25), (120, 40)):
        nb.count("198.18.1.0/24", packets)
        nb.sample(minutes(m))
    rows = nb.report("--from", minutes(30).isoformat(), "--to", minutes(150).isoformat())
    assert totals(rows) == {"198.18.1.0/24": (30, 1200)}
    rows = nb.report("--from", minutes(-5).isoformat(), "--to", minutes(61).isoformat())
    assert totals(rows) == {"198.18.1.0/24": (25, 1000)}


def test_change_only_sampling_writes_a_row_only_when_a_counter_moved(nb):
    nb.ok("add", "198.18.1.0/24", "198.18.3.0/24")
    nb.sample(minutes(0))
    assert nb.sample_rows() == 2  # first sight of each: the baseline
    for m in range(1, 6):
        nb.sample(minutes(m))
    assert nb.sample_rows() == 2
    nb.count("198.18.3.0/24", 4)
    nb.sample(minutes(6))
    nb.sample(minutes(7))
    assert nb.sample_rows() == 3
    nb.at(minutes(8))
    assert totals(nb.report()) == {"198.18.3.0/24": (4, 160)}


def test_del_and_expire_sample_before_removing(nb):
    nb.ok("add", "198.18.1.0/24", "198.18.3.0/24")
    nb.ok("add", "203.0.113.0/24", "--ttl", "1h")
    nb.sample(minutes(0))
    nb.count("198.18.1.0/24", 7)
    nb.count("203.0.113.0/24", 3)
    nb.at(minutes(1))
    nb.ok("del", "198.18.1.0/24")  # no `sample` in between: sync itself keeps the 7
    nb.at(minutes(59, ))
    nb.count("203.0.113.0/24", 5)
    nb.at(minutes(61))
    nb.ok("expire")
    assert N("203.0.113.0/24") not in nb.backend.elements
    nb.sample(minutes(62))
    assert totals(nb.report()) == {"198.18.1.0/24": (7, 280), "203.0.113.0/24": (5, 200)}


def test_merge_rolls_history_into_the_wider_block_and_a_flush_is_a_reset(nb):
    nb.ok("add", "198.18.1.0/26", "198.18.1.128/26", "198.18.9.0/24", "--reason", "first")
    nb.sample(minutes(0))
    nb.count("198.18.1.0/26", 7)
    nb.count("198.18.1.128/26", 5)
    nb.count("198.18.9.0/24", 3)
    nb.sample(minutes(1))
    nb.at(minutes(2))
    assert totals(nb.report()) == {"198.18.1.0/26": (7, 280), "198.18.1.128/26": (5, 200),
                                   "198.18.9.0/24": (3, 120)}
    nb.ok("add", "198.18.1.0/24", "--reason", "merged")  # the /26s' elements are replaced by the /24
    assert set(nb.backend.elements) == {N("198.18.1.0/24"), N("198.18.9.0/24")}
    nb.count("198.18.1.0/24", 4)
    nb.sample(minutes(3))
    nb.at(minutes(4))
    rows = nb.report()
    assert totals(rows) == {"198.18.1.0/24": (16, 640), "198.18.9.0/24": (3, 120)}
    assert rows[0]["reason"] == "merged"

    nb.backend.flush()  # behind netblock's back
    nb.at(minutes(5))
    nb.ok("sync")
    nb.sample(minutes(5))
    nb.count("198.18.9.0/24", 2)
    nb.sample(minutes(6))
    nb.at(minutes(7))
    assert totals(nb.report()) == {"198.18.1.0/24": (16, 640), "198.18.9.0/24": (5, 200)}


def test_same_second_sample_after_a_reset_is_not_hidden(nb):
    with Store.open(nb.db) as store:
        store.add_changed_samples(NOW, {N("198.18.1.0/24"): (7, 280)})
        store.add_changed_samples(NOW, {N("198.18.1.0/24"): (9, 360)})  # grew: replaces
        store.add_changed_samples(NOW, {N("198.18.1.0/24"): (1, 40)})  # went down: the 9 moves a second back
        assert [(s.time - NOW, s.packets) for s in store.samples()] == [(timedelta(seconds=-1), 9), (timedelta(0), 1)]
        assert store.sample_drops(None, None)["198.18.1.0/24"][:2] == (10, 400)


def test_thinning_runs_once_a_day_and_keeps_totals(nb):
    net = N("198.18.1.0/24")
    start = (NOW - timedelta(days=500)).replace(hour=0)
    with Store.open(nb.db) as store:
        for h in range(0, 72):
            store.add_changed_samples(start + timedelta(hours=h), {net: (h, h * 40)})
        before = store.sample_drops(None, None)
        deleted = sampling.thin_if_due(store, NOW, timedelta(days=400))
        assert deleted == 72 - 3 and len(store.samples()) == 3
        assert store.sample_drops(None, None)["198.18.1.0/24"][:2] == before["198.18.1.0/24"][:2] == (71, 2840)
        assert sampling.thin_if_due(store, NOW + timedelta(hours=1), timedelta(days=400)) is None
        assert sampling.thin_if_due(store, NOW + timedelta(days=1), timedelta(days=400)) == 0


def test_window_refusals(nb):
    assert "--since and --from" in nb.refused("report", "--since", "1d", "--from", "2026-11-20")
    assert "'yesterday'" in nb.refused("report", "--from", "yesterday")
    assert "empty window" in nb.refused("report", "--from", "2026-11-27", "--to", "2026-11-20")
    assert "--top: 0" in nb.refused("report", "--top", "0")


# ---------------------------------------------------------------- classes and summary

LOG = """\
Oct 30 10:00:00 mx1 postfix/smtpd[100]: connect from unknown[192.0.2.50]
Oct 30 10:00:01 mx1 postfix/smtpd[100]: NOQUEUE: reject: RCPT from unknown[192.0.2.50]: 554 5.7.1 Service unavailable; Client host [192.0.2.50] blocked using bl.spamcop.net; from=<a@example.org> to=<b@example.net> proto=ESMTP helo=<x>
Oct 31 10:00:00 mx1 postfix/smtpd[101]: connect from unknown[192.0.2.51]
Nov 20 10:00:00 mx1 postfix/smtpd[200]: connect from unknown[198.51.100.7]
Nov 20 10:00:01 mx1 postfix/smtpd[200]: NOQUEUE: reject: RCPT from unknown[198.51.100.7]: 554 5.7.1 Service unavailable; Client host [198.51.100.7] blocked using zen.spamhaus.org; from=<a@example.org> to=<b@example.net> proto=ESMTP helo=<x>
Nov 21 10:00:00 mx1 postfix/smtpd[201]: connect from unknown[198.51.100.7]
Nov 21 10:00:01 mx1 postfix/smtpd[201]: NOQUEUE: reject: RCPT from unknown[198.51.100.7]: 554 5.7.1 Service unavailable; Client host [198.51.100.7] blocked using zen.spamhaus.org; from=<a@example.org> to=<b@example.net> proto=ESMTP helo=<x>
Nov 22 10:00:00 mx1 postfix/smtpd[202]: connect from unknown[192.0.2.11]
Nov 22 10:00:01 mx1 postfix/smtpd[202]: NOQUEUE: reject: RCPT from unknown[192.0.2.11]: 450 4.7.1 Client host rejected: cannot find your reverse hostname, [192.0.2.11]; from=<x@example.com> to=<y@example.net> proto=ESMTP helo=<example.com>
Nov 23 10:00:00 mx1 postfix/smtpd[203]: connect from unknown[192.0.2.13]
Nov 23 10:00:01 mx1 postfix/smtpd[203]: NOQUEUE: reject: RCPT from unknown[192.0.2.13]: 504 5.5.2 <WIN-ABC123>: Helo command rejected: need fully-qualified hostname; from=<x@example.com> to=<y@example.net> proto=ESMTP helo=<WIN-ABC123>
Nov 24 10:00:00 mx1 postfix/smtpd[204]: connect from 44-100-51-198.dynamic.example.net[198.51.100.44]
Nov 24 10:00:01 mx1 postfix/smtpd[204]: NOQUEUE: reject: RCPT from 44-100-51-198.dynamic.example.net[198.51.100.44]: 554 5.7.1 <44-100-51-198.dynamic.example.net[198.51.100.44]>: Client host rejected: Your IP is dynamic, please use your ISP's relay; from=<x@example.com> to=<y@example.net> proto=ESMTP helo=<pc>
Nov 25 10:00:00 mx1 postfix/smtpd[205]: connect from mail.example.org[203.0.113.5]
Nov 25 10:00:01 mx1 postfix/smtpd[205]: 4XyZ1k2LmNz9abc: client=mail.example.org[203.0.113.5]
Nov 25 10:00:02 mx1 postfix/qmgr[99]: 4XyZ1k2LmNz9abc: from=<a@example.org>, size=1234, nrcpt=1 (queue active)
Nov 27 11:00:00 mx1 postfix/smtpd[206]: connect from unknown[192.0.2.99]
"""
WEEK = ("--from", "2026-11-20", "--to", "2026-11-27")


@pytest.fixture
def logged(nb):
    log = nb.tmp / "mail.log"
    log.write_text(LOG)
    nb.ok("ingest", "--format", "postfix", str(log))
    nb.at(datetime(2026, 11, 21, tzinfo=timezone.utc))
    nb.ok("add", "198.18.1.0/24", "--ttl", "2d")
    nb.at(NOW)
    return nb


def test_classes_on_a_fixed_log(logged):
    text = logged.ok("report", "classes", "--no-compare", *WEEK).splitlines()
    assert text[0] == "Connection-time rejections 2026-11-20 00:00 .. 2026-11-27 00:00 UTC"
    assert [line.split("  ")[0] for line in text[1:]] == [
        "total", "class bl-zen.spamhaus.org", "bad HELO", "bad or no reverse DNS", "dynamic IP",
        "class bl-bl.spamcop.net"]
    assert text[1].split()[-1] == "5" and text[2].split()[-1] == "2"
    assert text[-1].endswith("0  no hits — dead or useless?")
    rows = logged.report("classes", *WEEK)
    assert "previous" not in rows[0]
    assert [(r["class"], r["count"], r["dead"]) for r in rows] == [
        ("dnsbl:zen.spamhaus.org", 2, False), ("bad-helo", 1, False), ("no-rdns", 1, False),
        ("dynamic", 1, False), ("dnsbl:bl.spamcop.net", 0, True)]


def test_summary_on_a_fixed_log(logged):
    s = json.loads(logged.ok("report", "summary", "--json", *WEEK))
    assert {k: s[k] for k in ("connections", "client_ips", "rejections", "rejected_ips", "reached_banner",
                              "delivered_ips", "blocks_added", "blocks_expired", "packets", "bytes")} == {
        "connections": 6, "client_ips": 5, "rejections": 5, "rejected_ips": 4, "reached_banner": 6,
        "delivered_ips": 1, "blocks_added": 1, "blocks_expired": 1, "packets": 0, "bytes": 0}
    # 2 connections in the history before the window (since Oct 30 10:00): 6 this week is a storm
    weeks = (datetime(2026, 11, 20, tzinfo=timezone.utc) - datetime(2026, 10, 30, 10, tzinfo=timezone.utc)) / timedelta(weeks=1)
    assert s["storm"] is True and abs(s["weekly_average_connections"] - 2 / weeks) < 1e-9
    text = logged.ok("report", "summary", *WEEK)
    assert f"{'SMTP connections (sessions)':<38}{6:>9}" in text and "STORM: 6 connections" in text
    quiet = json.loads(logged.ok("report", "summary", "--json", "--from", "2026-11-26", "--to", "2026-11-27"))
    assert quiet["connections"] == 0 and quiet["storm"] is False


# ---------------------------------------------------------------- --plot and --html

def test_plot_and_html_are_written(logged, tmp_path):
    logged.count("198.18.1.0/24", 12)
    logged.sample(datetime(2026, 11, 22, tzinfo=timezone.utc))
    logged.at(NOW)
    svg, png, page = tmp_path / "top.svg", tmp_path / "top.png", tmp_path / "week.html"
    out = logged.ok("report", *WEEK, "--plot", str(svg), "--html", str(page))
    assert "198.18.1.0/24" in out
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    logged.ok("report", *WEEK, "--plot", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html
    assert "198.18.1.0/24" in html and "class bl-zen.spamhaus.org" in html and "no hits — dead or useless?" in html
    assert "Storm: 6 connections" in html
    # self-contained: nothing is fetched (xmlns names are identifiers, not requests)
    assert " src=" not in html and "<link" not in html and "<script" not in html and "url(http" not in html and "href=\"http" not in html


def test_plot_refusals(nb, monkeypatch, tmp_path):
    assert "must end in .png or .svg" in nb.refused("report", "--plot", str(tmp_path / "x.gif"))
    monkeypatch.setattr(plot, "available", lambda: False)
    rc, out, err = nb("report", "--plot", str(tmp_path / "x.png"))
    assert rc == 1 and out == "" and err.strip() == (
        f"netblock: --plot {tmp_path / 'x.png'}: matplotlib is not installed (pip install 'netblock[plot]')")
    assert not (tmp_path / "x.png").exists()
    nb.ok("report", "--html", str(tmp_path / "w.html"))  # the page without charts
    assert "<svg" not in (tmp_path / "w.html").read_text()


def test_thinning_resumes_where_it_stopped(nb):
    net = N("198.18.1.0/24")
    day = (NOW - timedelta(days=402)).replace(hour=0)
    with Store.open(nb.db) as store:
        for h in range(0, 96):  # four days, one sample an hour, the counter always growing
            store.add_changed_samples(day + timedelta(hours=h), {net: (h + 1, (h + 1) * 40)})
        midnight = NOW.replace(hour=0)
        assert sampling.thin_if_due(store, midnight, timedelta(days=400)) == 2 * 23  # the two days past retention
        assert sampling.thin_if_due(store, midnight + timedelta(days=1), timedelta(days=400)) == 23
        assert sampling.thin_if_due(store, midnight + timedelta(days=2), timedelta(days=400)) == 23
        assert len(store.samples()) == 4
        assert store.sample_drops(None, None)["198.18.1.0/24"][:2] == (96, 96 * 40)


def test_wrapup_writes_the_week_into_a_file(logged, tmp_path):
    logged.count("198.18.1.0/24", 12)
    logged.sample(datetime(2026, 11, 26, tzinfo=timezone.utc))
    logged.at(NOW)
    out = logged.ok("wrapup", "--dir", str(tmp_path / "reports"))
    written = (tmp_path / "reports" / "2026-W48.txt").read_text()
    assert written == out
    assert written.startswith("Host/Mask            Packets  Bytes  Before  Rank\n"
                              "198.18.1.0/24             12    480       -   new\n")
    plain = logged.ok("wrapup", "--dir", str(tmp_path / "reports"), "--no-compare")
    assert plain.startswith("Host/Mask            Packets  Bytes\n198.18.1.0/24             12    480\n")
    assert "Connection-time rejections" in written and "Summary" in written


def test_html_carries_the_asn_table_when_one_is_configured(logged, tmp_path):
    table = Path(__file__).resolve().parents[2] / "../shared/data/asn/pyasn/ipasn.fake"
    conf = tmp_path / "asn.toml"
    conf.write_text(f'lock_file = "{tmp_path}/lock"\nhost_id = "mx1"\n[report]\nasn_file = "{table}"\n')
    logged.config = config.load(conf, explicit=True)
    logged.ok("report", *WEEK, "--html", str(tmp_path / "week.html"))
    html = (tmp_path / "week.html").read_text()
    asn_text = logged.ok("report", "asn", *WEEK).rstrip("\n")
    assert "Rejected addresses by origin AS" in html and "not announced" in asn_text
    assert html_escape(asn_text) in html


# ---------------------------------------------------------------- blocks as decided, and the comparison

def test_one_row_per_decided_block_through_carve_outs_merges_and_expiry(nb):
    nb.ok("add", "198.19.0.0/16", "--force", "--reason", "widened: 70 offenders in 198.19.0.0/16")
    nb.ok("add", "198.18.0.0/24", "198.18.1.0/24", "--reason", "dense")  # adjacent: one /23 in the kernel
    nb.ok("add", "203.0.113.0/24", "--ttl", "1h", "--reason", "short")
    nb.ok("allow", "add", "198.19.44.44")  # a delivered sender carved out of the /16
    pieces = [n for n in nb.backend.elements if n in N("198.19.0.0/16")]
    assert len(pieces) == 16 and N("198.18.0.0/23") in nb.backend.elements
    nb.sample(minutes(0))
    for n, piece in enumerate(sorted(pieces, key=lambda p: p.first)):
        nb.count(str(piece), n + 1)  # 1 + 2 + ... + 16 = 136
    nb.count("198.18.0.0/23", 9)
    nb.count("203.0.113.0/24", 4)
    nb.sample(minutes(10))
    nb.at(minutes(61))
    nb.ok("expire")  # the /24's last drops were sampled by the sync that removed it
    nb.ok("allow", "del", "198.19.44.44")  # the carve-out ends: the /16 is one element again, counted from 0
    assert N("198.19.0.0/16") in nb.backend.elements
    nb.count("198.19.0.0/16", 14)
    nb.sample(minutes(70))
    nb.ok("allow", "add", "198.19.44.44")
    nb.at(minutes(80))
    rows = nb.report()
    assert [(r["netblock"], r["packets"], r["bytes"], r["reason"], r["except"]) for r in rows] == [
        ("198.19.0.0/16", 150, 6000, "widened: 70 offenders in 198.19.0.0/16", ["198.19.44.44/32"]),
        ("198.18.0.0/23", 9, 360, "dense", []),
        ("203.0.113.0/24", 4, 160, "short", [])]
    text = nb.ok("report", "--no-compare").splitlines()
    assert text[1].split() == ["198.19.0.0/16*", "150", "6000"]
    assert text[-1] == "* 198.19.0.0/16 except 198.19.44.44"
    table = list(csv.DictReader(io.StringIO(nb.ok("report", "--csv", "--no-compare"))))
    assert table[0]["except"] == "198.19.44.44/32" and table[1]["except"] == ""
    # the same grouping in export: one series per decided block, the pieces summed
    nb.count(str(sorted(pieces, key=lambda p: p.first)[0]), 5)
    nb.count(str(sorted(pieces, key=lambda p: p.first)[-1]), 6)
    text = nb.ok("export")
    series = [line for line in text.splitlines() if line.startswith("netblock_dropped_packets_total{")]
    assert [s for s in series if "198.19." in s] == [
        'netblock_dropped_packets_total{family="ipv4",host="mx1",netblock="198.19.0.0/16"} 11.0']


def test_each_row_beside_the_previous_window(nb):
    week = timedelta(days=7)
    nb.at(NOW - week - timedelta(days=1))
    nb.ok("add", "198.18.1.0/24", "198.18.3.0/24", "198.18.9.0/24", "203.0.113.7", "--reason", "storm",
          "--ttl", "30d")
    nb.sample(NOW - week - timedelta(days=1))
    nb.count("198.18.1.0/24", 10)
    nb.count("198.18.9.0/24", 30)
    nb.sample(NOW - week - timedelta(hours=1))  # the previous week: .9 first, .1 second
    nb.count("198.18.1.0/24", 60)
    nb.count("198.18.3.0/24", 20)
    nb.count("203.0.113.7/32", 5)
    nb.sample(NOW - timedelta(days=1))
    nb.at(NOW)
    rows = json.loads(nb.ok("report", "--json", "--top", "2"))
    assert [(r["netblock"], r["packets"], r["previous_rank"], r["previous_packets"], r["new"], r["dropped_out"])
            for r in rows] == [("198.18.1.0/24", 50, 2, 10, False, False),
                               ("198.18.3.0/24", 20, None, None, True, False),
                               ("198.18.9.0/24", 0, 1, 30, False, True)]
    assert nb.ok("report", "--top", "2").splitlines() == [
        "Host/Mask            Packets  Bytes  Before  Rank",
        "198.18.1.0/24             50   2000      10    #2",
        "198.18.3.0/24             20    800       -   new",
        "Dropped out: 198.18.9.0/24 (#1, 30 packets)"]
    assert "previous_rank" not in json.loads(nb.ok("report", "--json", "--no-compare"))[0]
    wrap = nb.ok("wrapup", "--dir", str(nb.tmp / "w"), "--top", "2")
    assert "Dropped out: 198.18.9.0/24 (#1, 30 packets)" in wrap


def test_classes_beside_the_previous_window(logged):
    text = logged.ok("report", "classes", *WEEK).splitlines()
    assert text[1].split() == ["count", "before", "change"]
    # the window before (Nov 13 .. 20) had no rejections: everything is new
    assert text[2].split() == ["total", "5", "0", "+5", "(new)"]
    rows = logged.report("classes", "--from", "2026-11-21", "--to", "2026-11-27")  # no comparison asked
    assert "previous" not in rows[0]
    rows = json.loads(logged.ok("report", "classes", "--json", "--from", "2026-11-22", "--to", "2026-11-23"))
    # Nov 21 .. 22 had one zen.spamhaus.org rejection, Nov 22 .. 23 one no-rdns rejection
    got = {r["class"]: (r["count"], r["previous"], r["change"]) for r in rows}
    assert got["no-rdns"] == (1, 0, 1) and got["dnsbl:zen.spamhaus.org"] == (0, 1, -1)


ASN_TABLE = """\
; IP-ASN32-DAT file
198.18.0.0/16\t64500
198.19.0.0/16\t64501
203.0.113.0/24\t64502
"""


def test_report_asn_by_packets_sums_the_decided_blocks_per_origin(nb, tmp_path):
    (tmp_path / "ipasn.dat").write_text(ASN_TABLE)
    conf = tmp_path / "asn.toml"
    conf.write_text(f'lock_file = "{tmp_path}/lock"\nhost_id = "mx1"\n[report]\nasn_file = "{tmp_path}/ipasn.dat"\n')
    nb.config = config.load(conf, explicit=True)
    nb.ok("add", "198.18.1.0/24", "198.18.3.0/24", "203.0.113.7", "--reason", "storm")
    nb.ok("add", "198.19.0.0/16", "--force")
    nb.ok("allow", "add", "198.19.44.44")
    nb.sample(minutes(0))
    nb.count("198.18.1.0/24", 7, 700)
    nb.count("198.18.3.0/24", 5, 500)
    nb.count("203.0.113.7/32", 3, 300)
    nb.count("198.19.128.0/17", 4, 400)
    nb.count("198.19.0.0/19", 4, 400)
    nb.sample(minutes(1))
    nb.at(minutes(2))
    rows = json.loads(nb.ok("report", "asn", "--by", "packets", "--json"))
    assert [(r["asn"], r["packets"], r["bytes"], r["blocks"]) for r in rows] == [
        (64500, 12, 1200, ["198.18.1.0/24", "198.18.3.0/24"]), (64501, 8, 800, ["198.19.0.0/16"]),
        (64502, 3, 300, ["203.0.113.7/32"])]
    assert [r["asn"] for r in json.loads(nb.ok("report", "asn", "--by", "bytes", "--json", "--top", "1"))] == [64500]
    text = nb.ok("report", "asn", "--by", "packets").splitlines()
    assert text[0] == "Packets |  Bytes | Blocks | ASN   | (owner)"
    assert text[1].split("|")[:4] == ["     12 ", "   1200 ", "      2 ", " 64500 "]


POSTSCREEN_LOG = """\
Nov 26 10:00:00 mx1 postfix/postscreen[10]: CONNECT from [198.51.100.7]:40001 to [192.0.2.1]:25
Nov 26 10:00:00 mx1 postfix/postscreen[10]: PASS OLD [198.51.100.7]:40001
Nov 26 10:00:00 mx1 postfix/smtpd[20]: connect from unknown[198.51.100.7]
Nov 26 10:00:01 mx1 postfix/smtpd[20]: NOQUEUE: reject: RCPT from unknown[198.51.100.7]: 550 5.7.25 Client host rejected: cannot find your hostname, [198.51.100.7]; from=<a@example.org> to=<b@example.net> proto=ESMTP helo=<x>
Nov 26 10:01:00 mx1 postfix/postscreen[10]: CONNECT from [198.51.100.8]:40002 to [192.0.2.1]:25
Nov 26 10:01:00 mx1 postfix/postscreen[10]: PREGREET 11 after 0.1 from [198.51.100.8]:40002: EHLO x\\r\\n
Nov 26 10:02:00 mx1 postfix/postscreen[10]: CONNECT from [198.51.100.9]:40003 to [192.0.2.1]:25
Nov 26 10:02:00 mx1 postfix/postscreen[10]: CONNECT from [198.51.100.9]:40004 to [192.0.2.1]:25
Nov 26 10:02:02 mx1 postfix/postscreen[10]: PASS NEW [198.51.100.9]:40003
Nov 26 10:02:02 mx1 postfix/smtpd[21]: connect from unknown[198.51.100.9]
Nov 26 10:02:03 mx1 postfix/postscreen[10]: PASS OLD [198.51.100.9]:40004
Nov 26 10:02:03 mx1 postfix/smtpd[22]: connect from unknown[198.51.100.9]
Nov 26 11:00:00 mx1 postfix/smtpd[23]: connect from unknown[198.51.100.9]
"""


def test_a_session_behind_postscreen_counts_once(nb):
    """Five sessions: one passed, one turned away by postscreen, two parallel ones passed, and one
    straight to smtpd (submission) an hour later: seven connect lines."""
    log = nb.tmp / "mail.log"
    log.write_text(POSTSCREEN_LOG)
    nb.ok("ingest", "--format", "postfix", str(log))
    s = json.loads(nb.ok("report", "summary", "--json", "--from", "2026-11-26", "--to", "2026-11-27"))
    assert (s["connections"], s["client_ips"], s["rejections"], s["reached_banner"]) == (5, 3, 2, 4)
# ---------------------------------------------------------------- control characters (issue #15)

HOSTILE = "spam\x1b]0;pwned\x07\x1b[2J\rFAKE\x00 \u202e1.0.81.891\u2028x\nline"
SHOWN = "spam\\x1b]0;pwned\\x07\\x1b[2J\\rFAKE\\x00 \\u202e1.0.81.891\\u2028x\\nline"


def _raw(text: str) -> bool:
    return any(c in text for c in "\x1b\x07\r\x00\u202e\u2028")


def _hostile_store(nb) -> None:
    from netaddr import IPAddress

    from netblock.model import Observation

    nb.ok("add", "198.18.1.0/24", "--reason", HOSTILE)
    with Store.open(nb.db) as store:  # a class and a source path as a peer's row could hold them
        store.add_observations([Observation(NOW - timedelta(minutes=m), IPAddress("198.18.1.9"), f"dnsbl:{HOSTILE}",
                                            "postfix", f"/var/log/{HOSTILE}", 7) for m in (1, 2)])
    nb.sample(minutes(0))
    nb.count("198.18.1.0/24", 5, 200)
    nb.sample(minutes(10))
    nb.at(minutes(20))


def test_control_characters_from_the_store_are_escaped_in_every_human_readable_output(nb):
    _hostile_store(nb)
    listed = nb.ok("list")
    assert SHOWN in listed and not _raw(listed) and len(listed.splitlines()) == 2
    why = nb.ok("why", "198.18.1.9")
    assert SHOWN in why and not _raw(why)
    assert all(not line.startswith("line") for line in why.splitlines())  # no forged line
    classes = nb.ok("report", "classes", "--since", "1h")
    assert f"class bl-{SHOWN}" in classes and not _raw(classes)
    for kind in ("top", "classes"):
        text = nb.ok("report", kind, "--csv", "--since", "1h")
        assert not _raw(text.replace("\r\n", "\n")), kind  # the CSV writer's own line ends are fine
    page = nb.tmp / "week.html"
    nb.ok("report", "--html", str(page), "--since", "1h")
    html = page.read_text()
    assert SHOWN in html and not _raw(html)
    wrap = nb.ok("wrapup", "--dir", str(nb.tmp / "reports"), "--since", "1h")
    assert not _raw(wrap)


def test_json_output_stays_exact(nb):
    _hostile_store(nb)
    assert json.loads(nb.ok("list", "--json"))[0]["reason"] == HOSTILE
    assert nb.report("--since", "1h")[0]["reason"] == HOSTILE
    assert f"dnsbl:{HOSTILE}" in {r["class"] for r in nb.report("classes", "--since", "1h")}
    why = json.loads(nb.ok("why", "198.18.1.9", "--json"))
    assert why["observations"][0]["source"] == f"/var/log/{HOSTILE}"


def test_status_escapes_what_it_prints(nb, tmp_path):
    nb.db = tmp_path / "nb\x1b[2J\u202e.db"  # a store path is text from outside too
    nb.ok("add", "198.18.1.0/24")
    text = nb.ok("status")
    assert "nb\\x1b[2J\\u202e.db" in text and not _raw(text)
    assert json.loads(nb.ok("status", "--json"))["store"].endswith("nb\x1b[2J\u202e.db")
