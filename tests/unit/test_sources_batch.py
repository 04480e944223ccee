"""The whole-block path (sources.batch, follow.read_blocks) against the per-line path.

`netblock ingest` reads big blocks and runs one regex search over each; the
daemon and the journal reader go line by line through parse_line.  Both must
give the same observations for every line, so the security properties proven
for parse_line (the address only from the client field, the program field in
the anchor, capped lines) hold for ingest too.  Compared here on the sample
corpus, on every real-world log in ../shared/data/logs, and on a generated log
that mixes a storm with hostile and odd lines.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from fakes import FakeBackend  # noqa: E402

from netblock import cli, config, sources  # noqa: E402
from netblock.sources import batch, follow, postfix  # noqa: E402
from netblock.sources.join import Join  # noqa: E402
from netblock.store.sqlite import Store  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "samples"
LOGS = REPO / "../shared/data/logs"
# A pinned instant, not today: in this file it meets only fakes, the store and pure functions,
# never the kernel's or the real clock (scripts/test-clock.sh runs the suite 400 days ahead).
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def per_line(data: bytes, fmt: str = "auto", *, max_line: int = follow.DEFAULT_MAX_LINE) -> list[tuple]:
    """(time, ip, cls, mta, byte offset) the daemon's way: read_lines + parse_line (markers included)."""
    path = _write(data)
    try:
        out = []
        for line in follow.read_lines(str(path), max_line=max_line):
            obs = sources.parse_line(line.text, fmt=fmt, now=NOW, marks=True)
            if obs is not None:
                out.append((obs.time, obs.ip, obs.cls, obs.mta, line.position))
        return out
    finally:
        path.unlink()


def by_block(data: bytes, fmt: str = "auto", *, max_line: int = follow.DEFAULT_MAX_LINE,
             size: int = follow.BLOCK) -> list[tuple]:
    """The same, ingest's way: read_blocks + batch.scan (over-long lines through parse_line)."""
    path = _write(data)
    try:
        out = []
        for item in follow.read_blocks(str(path), max_line=max_line, block_line=sources.MAX_LINE, size=size):
            if isinstance(item, follow.Line):
                obs = sources.parse_line(item.text, fmt=fmt, now=NOW, marks=True)
                if obs is not None:
                    out.append((obs.time, obs.ip, obs.cls, obs.mta, item.position))
                continue
            hits = batch.scan(item.text, fmt=fmt, now=NOW, marks=True)
            starts = [h[4] for h in hits]
            offsets = starts if isinstance(item.text, bytes) else batch.byte_offsets(item.text, starts)
            out.extend((*h[:4], item.position + off) for h, off in zip(hits, offsets))
        return out
    finally:
        path.unlink()


def settled(hits: list[tuple]) -> list[tuple]:
    """Markers paired the way ingest pairs them (sources.join)."""
    return Join().tuples(hits)


_COUNTER = iter(range(10**9))


def _write(data: bytes) -> Path:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"nb-batch-{os.getpid()}-{next(_COUNTER)}.log"
    path.write_bytes(data)
    return path


def storm(n: int, seed: int) -> bytes:
    """A busy Postfix log with every pattern, other MTAs, other framings, and hostile lines."""
    rng = random.Random(seed)
    ips = [f"198.{18 + rng.randrange(2)}.{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(300)]
    ips += ["2001:db8::25", "::ffff:203.0.113.9", "IPv6:2001:db8::1", "999.1.2.3", "1.2.3", "203.0.113.07"]
    replies = [
        "554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org; https://x.example/?{ip}",
        "450 4.7.1 Client host rejected: cannot find your reverse hostname, [{ip}]",
        "550 5.1.1 <u{k}@example.com>: Recipient address rejected: User unknown in local recipient table",
        "454 4.7.1 <x{k}@example.net>: Relay access denied",
        "504 5.5.2 <WIN-{k}>: Helo command rejected: need fully-qualified hostname",
        "450 4.2.0 <u@example.com>: Recipient address rejected: Greylisted, see https://example.org",
        "550 5.7.1 Client host rejected: dynamic ip range, dsl pool",
        "553 5.7.1 <a; from=<x>: Relay access denied",  # the client tail's marker inside the echoed target
        "554 5.7.1; from=<evil@example.com>: blocked using evil.example",
        "554 5.7.1 <a>: Relay access denied; blocked using bl.example.org",
        "421 4.3.2 All server ports are busy",
        "550 5.7.1 <x>: Sender address rejected: Domain not found",
        # a target holding ">: " (issue #15): two readings, neither echoed in the tail
        "550 5.1.1 <x>: blocked using forged.zone@example.org>: Recipient address rejected: User unknown",
    ]
    stamps = ["Nov 28 10:00:{s:02d}", "Nov 28 11:{s:02d}:59", "Feb 29 12:00:00", "Nov 28 10:00:60", "Dec 31 23:59:{s:02d}"]
    out = []
    for i in range(n):
        ip = rng.choice(ips)
        k = rng.randrange(50)
        stamp = rng.choice(stamps).format(s=rng.randrange(60))
        name = rng.choice(["unknown", f"h{k}.example.net", "x" * 300])
        sd = f"{stamp} mx1 postfix/smtpd[{k}]: "
        ps = f"{stamp} mx1 postfix/postscreen[{k}]: "
        tail = f"; from=<u{k}@example.org> to=<r@example.com> proto=ESMTP helo=<{rng.choice(['[' + ip + ']', 'x'])}>"
        r = rng.randrange(40)
        if r < 8:
            line = f"{sd}NOQUEUE: reject: RCPT from {name}[{ip}]: {rng.choice(replies).format(ip=ip, k=k)}{tail}"
        elif r == 8:
            line = f"{sd}NOQUEUE: reject: RCPT from {name}[{ip}]: {rng.choice(replies).format(ip=ip, k=k)}"
        elif r == 9:
            line = f"{sd}connect from {name}[{ip}]" + rng.choice(["", "\r", "\r\r", " x", ":25"])
        elif r == 10:
            line = f"{sd}{k:05X}A: client={name}[{ip}]" + rng.choice(["", ", sasl_method=LOGIN", "x"])
            if rng.randrange(2):  # accepted: qmgr takes the message (sources.join pairs the two)
                line += f"\n{stamp} mx1 postfix/qmgr[9]: {k:05X}A: from=<a@example.org>, size=1, nrcpt=1 (queue active)"
        elif r == 11:
            line = f"{sd}warning: {name}[{ip}]: SASL LOGIN authentication failed: " + rng.choice(
                ["UGFzc3dvcmQ6", "Connection lost to authentication server"])
        elif r == 12:
            line = f"{sd}lost connection after {rng.choice(['CONNECT', 'AUTH', 'DATA'])} from {name}[{ip}]"
        elif r == 13:
            line = f"{sd}improper command pipelining after EHLO from {name}[{ip}]: QUIT"
        elif r == 14:
            line = f"{sd}too many errors after RCPT from {name}[{ip}]"
        elif r == 15:
            line = f"{sd}warning: non-SMTP command from {name}[{ip}]: GET / HTTP/1.1"
        elif r == 16:
            line = f"{sd}warning: Connection rate limit exceeded: 31 from {name}[{ip}] for service smtp"
        elif r == 17:
            line = f"{ps}" + rng.choice([
                f"CONNECT from [{ip}]:4312 to [192.0.2.25]:25", f"DNSBL rank 3 for [{ip}]:4312",
                f"PREGREET 11 after 0.1 from [{ip}]:4312: EHLO x", f"HANGUP after 0.8 from [{ip}]:4312 in tests",
                f"BARE NEWLINE from [{ip}]:4312 after DATA", f"NOQUEUE: reject: RCPT from [{ip}]:4312: 550 x{tail}",
                f"connect from {name}[{ip}]", f"NOQUEUE: reject: RCPT from {name}[{ip}]: 550 x"])
        elif r == 18:
            line = f"{stamp} mx1 postfix/qmgr[9]: {k:05X}A: from=<a@example.org>, size=1, nrcpt=1 (queue active)"
        elif r == 19:
            line = f"{sd}disconnect from {name}[{ip}] ehlo=1 quit=1 commands=2"
        elif r == 20:  # another program forging Postfix's text
            line = f"{stamp} mx1 evil[9]: postfix/smtpd[1]: connect from x[{ip}]"
        elif r == 21:
            line = f"{stamp} mx1 logger: {sd}NOQUEUE: reject: RCPT from x[{ip}]: 554 blocked using z.example"
        elif r == 22:  # an address in attacker-written fields only
            line = (f"{sd}NOQUEUE: reject: RCPT from unknown[{ip}]: 504 5.5.2 <[192.0.2.66]>: Helo command rejected"
                    f"; from=<x@[192.0.2.67]> to=<a@b> proto=SMTP helo=<[192.0.2.68]>")
        elif r == 23:
            line = f"{stamp} mx1 exim[3]: H=({name}) [{ip}]:1234 F=<a@b> rejected RCPT <c@d>: relay not permitted"
        elif r == 24:
            line = f"2026-11-28 10:00:0{k % 10} H=[{ip}] F=<a@b> rejected RCPT <c@d>: Unrouteable address"
        elif r == 25:
            line = f"2026-11-28T10:00:00.123456+01:00 mx1 postfix/smtpd[4]: connect from {name}[{ip}]"
        elif r == 26:
            line = f"{stamp} mx1 sm-mta[5]: x1A2B3C4D: ruleset=check_relay, arg1=[{ip}], relay=[{ip}], reject=550 5.7.1 Access denied"
        elif r == 27:
            line = f"{stamp} mx1 sendmail[5]: x1A2B3C4D: [{ip}] did not issue MAIL/EXPN/VRFY/ETRN during connection to MTA"
        elif r == 28:
            line = f"{stamp} <mail.info> mx1 postfix/submission/smtpd[7]: connect from {name}[{ip}]"
        elif r == 29:
            line = f"{stamp} mx1 postfix-in/{'x' * rng.choice([10, 70, 130])}/smtpd[7]: connect from {name}[{ip}]"
        elif r == 30:
            line = f"{stamp} mx1 postfix/smtpd: connect from {name}[{ip}]"
        elif r == 31:
            line = f"{sd}connect from h\x1cx[{ip}]"  # a separator Unicode counts as a blank
        elif r == 32:
            line = f"{sd}connect from h\u00e9.example[{ip}]"  # non-ASCII name
        elif r == 33:
            line = f"{sd}NOQUEUE: reject: RCPT from {name}[{ip}]: 550 5.7.1 \u00fcber blocked using z\u00e9.example{tail}"
        elif r == 34:
            line = f"Nov 28 1:00:00 mx1 {sd}connect from x[{ip}]"
        elif r == 35:
            line = f"{sd}connect from x[{ip}]\n{sd}connect from y[192.0.2.99]"  # two real lines
        elif r == 36:
            line = f"{sd}NOQUEUE: reject: RCPT from x[{ip}]: 554 " + "y" * rng.choice([8200, 9000]) + " blocked using z.example"
        elif r == 37:
            line = f"{sd}connect from x[{ip}]" + " " * 8300
        elif r == 38:
            line = ""
        else:
            line = f"\u0663{stamp} mx1 postfix/smtpd[1]: connect from x[{ip}]"
        out.append(line)
    text = "\n".join(out)
    if seed % 2:
        text += "\n"
    return text.encode("utf-8")


def _sample_files() -> list[Path]:
    return sorted(SAMPLES.glob("*.log"))


def _real_world_files() -> list[Path]:
    files = [p for p in sorted(LOGS.rglob("*")) if p.is_file() and p.suffix not in (".md", ".ini", ".txt")]
    assert len(files) > 50, "the real-world corpus is missing"
    return files


@pytest.mark.parametrize("path", _sample_files(), ids=lambda p: p.name)
@pytest.mark.parametrize("fmt", sources.FORMATS)
def test_samples_give_the_same_observations(path, fmt):
    data = path.read_bytes()
    want = per_line(data, fmt)
    assert by_block(data, fmt) == want
    if fmt in ("auto", path.stem):
        assert len(want) >= 15


def test_real_world_logs_give_the_same_observations():
    found = 0
    for path in _real_world_files():
        data = path.read_bytes()
        want = per_line(data)
        assert by_block(data) == want, path
        assert by_block(data, size=4096) == want, path
        found += len(want)
    assert found >= 250


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fmt", sources.FORMATS)
def test_a_generated_storm_gives_the_same_observations(seed, fmt):
    data = storm(3000, seed)
    want = per_line(data, fmt)
    assert len(want) > (500 if fmt in ("auto", "postfix") else 20)
    assert by_block(data, fmt) == want
    assert by_block(data, fmt, size=5000) == want


def test_small_max_line_gives_the_same_observations():
    data = storm(1000, 7)
    for max_line in (40, 90, 200):
        assert by_block(data, max_line=max_line, size=3000) == per_line(data, max_line=max_line)


def test_the_batch_regex_is_anchored_like_parse_line():
    """No observation from attacker-written fields, other programs or a fake second line."""
    hostile = (
        "Nov 28 10:00:00 mx1 evil[9]: postfix/smtpd[1]: connect from x[192.0.2.1]\n"
        "Nov 28 10:00:00 mx1 postfix/smtpd[1]: disconnect from x[192.0.2.2] helo=<connect from y[192.0.2.3]>\n"
        "Nov 28 10:00:00 mx1 postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[198.51.100.4]: 504 <[192.0.2.5]>: "
        "Helo command rejected; from=<a@[192.0.2.6]> to=<b@c> helo=<[192.0.2.7]>\n"
        "Nov 28 10:00:00 mx1 postfix/smtpd[1]: warning: non-SMTP command from x[198.51.100.8]: "
        "Nov 28 10:00:00 mx1 postfix/smtpd[1]: connect from y[192.0.2.9]\n"
    )
    hits = batch.scan(hostile, now=NOW)
    assert [(str(h[1]), h[2]) for h in hits] == [("198.51.100.4", "bad-helo"), ("198.51.100.8", "protocol")]
    assert batch.scan(hostile.encode(), now=NOW) == hits


def test_bytes_and_text_blocks_agree():
    data = storm(2000, 3).decode("utf-8").encode("ascii", errors="ignore")
    assert data.isascii()
    assert batch.scan(data, now=NOW) == batch.scan(data.decode("ascii"), now=NOW)


def test_reject_class_is_unchanged_by_the_reply_cache():
    """The cache keys on the reply's head, the client's address masked, only when that head alone decides."""
    client = "192.0.2.25"
    replies = [
        "553 5.7.1 <a; from=<x>: Relay access denied; from=<b> to=<c>",
        "553 5.7.1 <a; from=<x>: Greylisted; from=<b> to=<c>",
        "554 5.7.1; from=<e>: blocked using evil.example; from=<b>",
        "554 5.7.1; from=<e>: Relay access denied; from=<b>",
        "554 5.; from=<x> Relay access denied; from=<b>",
        "554 5.; from=<x> Greylisted; from=<b>",
        "554 <x>: Helo command rejected; from=<b>",
        "554 Helo command rejected",
        # The address is masked before the words are read: it names no zone and makes no keyword.
        f"554 5.7.1 Service unavailable; Client host [{client}] blocked using zen.example; from=<b>",
        f"554 5.7.1 Service unavailable; Client host [{client}] blocked using {client}.zen.example; from=<b>",
        f"450 4.7.1 Client host rejected: cannot find your reverse hostname, [{client}]; from=<b>",
        f"554 5.7.1 <{client}>: Relay access denied; from=<{client}>",
    ]
    want = ["relay-denied", None, "dnsbl:evil.example", "relay-denied", "relay-denied", None, "bad-helo",
            "bad-helo", "dnsbl:zen.example", "rejected", "no-rdns", "relay-denied"]
    assert [postfix.reject_class(r, client) for r in replies] == want
    cache: dict = {}
    for reply in replies * 2:
        for text in (reply, reply.encode()):
            binary = isinstance(text, bytes)
            ip = client.encode() if binary else client
            got = batch._reject_class(text, 0, len(text), ip, cache, binary)
            assert got == postfix.reject_class(reply, client), reply
    # Two replies that differ only in the client's address share one entry.
    cache.clear()
    for ip in ("192.0.2.1", "192.0.2.2", "198.51.100.77"):
        reply = f"554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.example; from=<b>"
        assert batch._reject_class(reply, 0, len(reply), ip, cache, False) == "dnsbl:zen.example"
    assert len(cache) == 1


def test_read_blocks_yields_the_lines_of_read_lines():
    rng = random.Random(11)
    for trial in range(200):
        max_line = rng.choice([5, 8, 16, 64])
        parts = [bytes(rng.choice(b"ab\r\xc3\xa9 ") for _ in range(rng.choice([0, 1, 4, max_line, max_line + 1, 40])))
                 for _ in range(rng.randrange(1, 12))]
        data = b"\n".join(parts) + rng.choice([b"", b"\n"])
        path = _write(data)
        try:
            want = [(ln.text, ln.position, ln.truncated) for ln in follow.read_lines(str(path), max_line=max_line)]
            got = []
            for item in follow.read_blocks(str(path), max_line=max_line, block_line=max_line - 2,
                                           size=rng.choice([1, 3, 7, 64])):
                if isinstance(item, follow.Line):
                    got.append((item.text, item.position, item.truncated))
                    continue
                text = item.text.decode("ascii") if isinstance(item.text, bytes) else item.text
                lines = text.split("\n")[:-1]
                raw = (data + b"\n")[item.position:].split(b"\n")[:item.lines]
                assert len(lines) == item.lines == len(raw)
                pos = item.position
                for ln, rl in zip(lines, raw):
                    got.append((ln[:-1] if ln.endswith("\r") else ln, pos, False))
                    pos += len(rl) + 1
            assert got == want, (data, max_line)
        finally:
            path.unlink()


def test_read_blocks_reads_gzip_and_bounds_an_endless_line(tmp_path):
    gz = tmp_path / "mail.log.gz"
    data = storm(500, 2)
    gz.write_bytes(gzip.compress(data))
    assert [ln.text for ln in follow.read_lines(str(gz))] == [
        ln.text for ln in follow.read_lines(str(_keep(tmp_path, data)))]
    assert by_block(data) == per_line(data)
    endless = tmp_path / "endless.log"
    endless.write_bytes(b"x" * 3_000_000)
    items = list(follow.read_blocks(str(endless), max_line=100, size=4096))
    assert len(items) == 1 and items[0].truncated and items[0].text == "x" * 100


def _keep(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "plain.log"
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ the ingest command


class Harness:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.db = tmp_path / "nb.db"
        conf = tmp_path / "netblock.toml"
        conf.write_text(f'lock_file = "{tmp_path}/lock"\nhost_id = "mx1"\n')
        self.config = config.load(conf, explicit=True)

    def __call__(self, *argv: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        args = cli.build_parser().parse_args(list(argv))
        ctx = cli.Context(args, stdout=out, stderr=err)
        ctx._config, ctx._backend, ctx._store = self.config, FakeBackend(), Store.open(self.db)
        try:
            assert args.handler(args, ctx) == 0, err.getvalue()
        finally:
            ctx.close()
        return out.getvalue()


@pytest.fixture
def nb(tmp_path, monkeypatch):
    monkeypatch.setenv("NETBLOCK_NOW", NOW.isoformat())
    from netblock.system import hostaddrs

    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: [])
    return Harness(tmp_path)


def test_ingest_dry_run_counts_per_class(nb, tmp_path):
    data = storm(2000, 5)
    log = tmp_path / "mail.log"
    log.write_bytes(data)
    join = Join()
    want = join.tuples(per_line(data))
    out = nb("ingest", "--dry-run", str(log)).splitlines()
    lines = len(data.split(b"\n")) - (1 if data.endswith(b"\n") else 0)
    assert out[0] == f"{lines} lines, {len(want)} observations (dry run: nothing stored)"
    counts = {}
    for h in want:
        counts[h[2]] = counts.get(h[2], 0) + 1
    assert counts["delivered"] > 0 and join.ambiguous > 0
    counts["ambiguous"] = join.ambiguous
    assert {ln.split()[1]: int(ln.split()[0]) for ln in out[1:]} == counts
    assert not Store.open(nb.db).observations()


def test_ingest_dry_run_json_shows_each_observation_with_its_line(nb, tmp_path):
    data = storm(1500, 6)
    log = tmp_path / "mail.log"
    log.write_bytes(data)
    rows = [json.loads(ln) for ln in nb("ingest", "--dry-run", "--json", str(log)).splitlines()]
    lines = {ln.position: ln.text for ln in follow.read_lines(str(log))}
    want = settled(per_line(data))
    assert [(r["ip"], r["class"], r["mta"], r["line"]) for r in rows] == [
        (str(h[1]), h[2], h[3], lines[h[4]]) for h in want]
    assert rows[0]["time"] == want[0][0].strftime("%Y-%m-%dT%H:%M:%SZ")


def test_ingest_stores_what_the_daemon_would(nb, tmp_path):
    data = storm(1500, 9)
    log = tmp_path / "mail.log"
    log.write_bytes(data)
    assert b"\xc3" in data  # byte offsets differ from character indexes
    nb("ingest", str(log))
    stored = Store.open(nb.db).observations()
    got = sorted((o.time, str(o.ip), o.cls, o.mta, o.position) for o in stored)
    # the store keeps whole seconds
    want = sorted((t[0].replace(microsecond=0), str(t[1]), t[2], t[3], t[4]) for t in settled(per_line(data)))
    assert got == want and len(got) > 300
    assert {o.source for o in stored} == {str(log)}


def test_a_parallel_dry_run_equals_the_serial_one(nb, tmp_path, monkeypatch):
    """Big plain files are cut into pieces on line starts and parsed by one worker per CPU."""
    from netblock.run import ingest

    data = storm(4000, 12)
    log = tmp_path / "mail.log"
    log.write_bytes(data)
    serial = nb("ingest", "--dry-run", str(log)), nb("ingest", "--dry-run", "--json", str(log))
    monkeypatch.setattr(ingest, "PARALLEL_MIN", 1)
    monkeypatch.setattr(ingest, "PIECE", 50_000)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    jobs = ingest.parallel_jobs(str(log), "auto", NOW, follow.DEFAULT_MAX_LINE, False)
    assert jobs is not None and len(jobs) >= 5
    assert (nb("ingest", "--dry-run", str(log)), nb("ingest", "--dry-run", "--json", str(log))) == serial
    gz = tmp_path / "mail.log.gz"
    gz.write_bytes(gzip.compress(data))
    assert ingest.parallel_jobs(str(gz), "auto", NOW, follow.DEFAULT_MAX_LINE, False) is None
    assert nb("ingest", "--dry-run", str(gz)) == serial[0]


def test_forgetting_the_caches_changes_no_result():
    """ingest drops the per-address caches once it has read; a later scan must not notice."""
    from netblock.sources import fields

    text = (b"Nov 27 10:00:01 mx1 postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[198.18.40.1]: 554 5.7.1 "
            b"Service unavailable; Client host [198.18.40.1] blocked using zen.example; from=<a@example.org> "
            b"to=<b@example.com> proto=ESMTP helo=<x>\n"
            b"Nov 27 10:00:02 mx1 postfix/smtpd[1]: warning: unknown[198.18.40.2]: SASL LOGIN authentication "
            b"failed: UGFzc3dvcmQ6\n")
    first = batch.scan(text, now=NOW) + batch.scan(text.decode(), now=NOW)
    fields.client_ip("198.18.40.3")
    assert batch._IPS and fields.CACHE
    batch.forget()
    assert not batch._IPS and not fields.CACHE and not batch._REASONS
    assert batch.scan(text, now=NOW) + batch.scan(text.decode(), now=NOW) == first
    assert [(str(h[1]), h[2]) for h in first[:2]] == [("198.18.40.1", "dnsbl:zen.example"),
                                                      ("198.18.40.2", "auth-failed")]
