"""The mail-log parsers against the sample corpus in tests/samples.

Each sample line follows a `# expect: {...}` line (as in fail2ban's corpus):
{"match": true, "ip": ..., "class": ..., "desc": ...} or {"match": false, ...}.
A class starting with "~" is a marker (sources.fields): half of a message's
acceptance ("~client:QUEUEID" with the client, "~accepted:QUEUEID" without an
address), which sources.join pairs; {"match": false, "ambiguous": true} is a
line with more than one reading, which yields nothing and is counted.
Hostile samples say "hostile" in their desc.
Besides the samples: every pattern has a sample and is anchored, the address
never comes from attacker-written fields, no name is ever resolved, and no
pattern needs more than linear time on a hostile 64 KiB line.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from netaddr import IPAddress

from netblock import sources
from netblock.errors import BadInput
from netblock.model import Observation
from netblock.sources import exim, postfix, sendmail, syslog
from netblock.sources.fields import ACCEPTED, AMBIGUOUS, CLIENT, MARK

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
MODULES = {"postfix": postfix, "exim": exim, "sendmail": sendmail}


def load_samples():
    out = []
    for mta in MODULES:
        path = SAMPLES / f"{mta}.log"
        expect = None
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("# expect:"):
                expect = json.loads(line[len("# expect:"):])
                continue
            if not line or line.startswith("#"):
                continue
            assert expect is not None, f"{path.name}:{lineno}: sample without # expect"
            out.append((mta, lineno, expect, line))
            expect = None
    return out


SAMPLE_LIST = load_samples()


def test_corpus_is_substantial():
    per_mta = {m: sum(1 for s in SAMPLE_LIST if s[0] == m) for m in MODULES}
    assert all(n >= 20 for n in per_mta.values()), per_mta
    assert sum(1 for s in SAMPLE_LIST if not s[2]["match"]) >= 30


@pytest.mark.parametrize("mta,lineno,expect,line", SAMPLE_LIST,
                         ids=[f"{s[0]}:{s[1]}" for s in SAMPLE_LIST])
def test_sample(mta, lineno, expect, line):
    obs = sources.parse_line(line, source=f"{mta}.log", position=lineno, year=2026, marks=True)
    plain = sources.parse_line(line, source=f"{mta}.log", position=lineno, year=2026)
    if not expect["match"]:
        assert plain is None, f"{expect['desc']}: matched {plain}"
        if expect.get("ambiguous"):
            assert obs is not None and obs.cls == AMBIGUOUS, f"{expect['desc']}: {obs}"
        else:
            assert obs is None, f"{expect['desc']}: matched {obs}"
        return
    assert obs is not None, expect["desc"]
    if expect["class"].startswith(MARK):
        assert plain is None, expect["desc"]
    else:
        assert plain == obs, expect["desc"]
    assert obs.ip == (IPAddress(expect["ip"]) if "ip" in expect else None), expect["desc"]
    assert obs.cls == expect["class"], expect["desc"]
    assert obs.mta == ("postscreen" if (mta, obs.cls) == ("postfix", "connect") and "postscreen" in line else mta)
    assert (obs.source, obs.position) == (f"{mta}.log", lineno)
    assert obs.time.tzinfo is not None and obs.time.utcoffset().total_seconds() == 0
    if "time" in expect:
        assert obs.time == datetime.fromisoformat(expect["time"])
    assert sources.detect_format(line) == mta


def _explained(line):
    head = syslog.split(line)
    return None if head is None else sources.explain(head[2] or "exim", head[3])


def test_every_pattern_has_a_matching_sample():
    used = {mta: set() for mta in MODULES}
    for mta, _lineno, expect, line in SAMPLE_LIST:
        hit = _explained(line)
        if hit is not None:
            assert expect["match"] or (expect.get("ambiguous") and hit[2] == AMBIGUOUS), line
            if not expect["match"]:
                continue
            used[hit[3]].add(hit[0])
    for mta, module in MODULES.items():
        missing = set(module.PATTERNS) - used[mta]
        assert not missing, f"{mta}: patterns without a sample: {sorted(missing)}"


def test_every_pattern_is_anchored():
    for module in MODULES.values():
        for name, pattern in module.PATTERNS.items():
            assert pattern.pattern.startswith("^"), name
            assert not pattern.pattern.startswith("^.*"), name


def test_every_class_has_a_sample():
    seen = {s[2]["class"] for s in SAMPLE_LIST if s[2]["match"]}
    for cls in sources.CLASSES:
        if cls == "dnsbl:ZONE":
            assert any(c.startswith("dnsbl:") for c in seen)
        elif cls == "delivered":  # only ever from a pair of lines (test_sources_join)
            for mta in ("postfix", "sendmail"):
                assert any(s[2].get("class", "").startswith(CLIENT) for s in SAMPLE_LIST if s[0] == mta), mta
                assert any(s[2].get("class", "").startswith(ACCEPTED) for s in SAMPLE_LIST if s[0] == mta), mta
            assert any(s[2].get("class") == "delivered" for s in SAMPLE_LIST if s[0] == "exim")
        else:
            assert cls in seen, cls
    assert seen <= set(sources.CLASSES) | {c for c in seen if c.startswith(("dnsbl:", MARK))}


def test_every_hole_has_hostile_samples():
    """Issue #15: each MTA's corpus holds hostile samples that must not yield the victim (198.51.100.x)."""
    for mta in MODULES:
        hostile = [s for s in SAMPLE_LIST if s[0] == mta and "hostile" in s[2]["desc"]]
        assert len(hostile) >= 4, mta
        for _m, _n, expect, line in hostile:
            obs = sources.parse_line(line, year=2026, marks=True)
            if obs is not None and obs.ip is not None and obs.cls != AMBIGUOUS:
                assert expect["match"] and obs.ip == IPAddress(expect["ip"]), line
                assert not str(obs.ip).startswith("198.51.100."), line


def test_names_are_never_resolved(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"DNS lookup attempted: {args}")

    for fn in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
        monkeypatch.setattr(socket, fn, refuse)
    hits = [sources.parse_line(s[3], year=2026) for s in SAMPLE_LIST]
    assert any(hits)


# --- parse_message: the journald reader's entry point ---------------------------

# A pinned instant, not today: in this file it meets only fakes, the store and pure functions,
# never the kernel's or the real clock (scripts/test-clock.sh runs the suite 400 days ahead).
T0 = datetime(2026, 11, 27, 1, 2, 3, tzinfo=timezone.utc)


@pytest.mark.parametrize("program,message,ip,cls,mta", [
    ("postfix/smtpd", "NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 554 5.7.1 Service unavailable; "
     "Client host [192.0.2.1] blocked using Zen.Spamhaus.ORG; from=<a@example.org> to=<b@example.net> "
     "proto=ESMTP helo=<x>", "192.0.2.1", "dnsbl:zen.spamhaus.org", "postfix"),
    ("postfix/postscreen", "PREGREET 11 after 0.1 from [2001:db8::7]:1234: EHLO x\\r\\n", "2001:db8::7", "pregreet",
     "postfix"),
    ("exim", "H=(x) [192.0.2.2]:25 F=<a@example.org> rejected RCPT <b@example.net>: relay not permitted",
     "192.0.2.2", "relay-denied", "exim"),
    ("exim", "2026-11-27 01:02:03 plain_server authenticator failed for ([192.0.2.17]) [192.0.2.27]: 535 "
     "Incorrect authentication data", "192.0.2.27", "auth-failed", "exim"),
    ("sm-mta", "5AR0AAAA040000: [192.0.2.3] did not issue MAIL/EXPN/VRFY/ETRN during connection to MTA",
     "192.0.2.3", "protocol", "sendmail"),
])
def test_parse_message(program, message, ip, cls, mta):
    obs = sources.parse_message(program, message, T0)
    assert obs is not None
    assert (obs.time, obs.ip, obs.cls, obs.mta) == (T0, IPAddress(ip), cls, mta)


def test_parse_message_needs_the_mta_program():
    msg = "NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 454 4.7.1 <x@example.com>: Relay access denied"
    assert sources.parse_message("postfix/smtpd", msg, T0) is not None
    for program in ("", "logger", "postfix", "postfix/smtp", "postfix/cleanup", "xpostfix/smtpd", "smtpd"):
        assert sources.parse_message(program, msg, T0) is None, program


def test_format_restricts_parsers():
    line = ("Nov 27 01:17:56 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 454 4.7.1 "
            "<x@example.com>: Relay access denied; from=<a@example.org> to=<x@example.com> proto=ESMTP helo=<x>")
    assert sources.parse_line(line, fmt="postfix", year=2026) is not None
    assert sources.parse_line(line, fmt="exim", year=2026) is None
    assert sources.parse_line(line, fmt="sendmail", year=2026) is None
    with pytest.raises(BadInput, match="qmail"):
        sources.parse_line(line, fmt="qmail")


def test_detect_format():
    assert sources.detect_format("2026-11-27 01:17:56 H=[192.0.2.1] rejected connection in \"connect\" ACL") == "exim"
    assert sources.detect_format("Nov 27 01:17:56 mx sm-acceptingconnections[1]: x") == "sendmail"
    assert sources.detect_format("Nov 27 01:17:56 mx postfix/submission/smtpd[1]: x") == "postfix"
    assert sources.detect_format("Nov 27 01:17:56 mx sshd[1]: x") is None
    assert sources.detect_format("garbage") is None


# --- time of classic syslog lines ------------------------------------------------

LINE = "{} mx postfix/smtpd[1]: connect from unknown[192.0.2.1]"


def test_classic_year_from_now():
    now = datetime(2027, 1, 1, 0, 5, tzinfo=timezone.utc)
    assert sources.parse_line(LINE.format("Dec 31 23:59:00"), now=now).time.year == 2026
    assert sources.parse_line(LINE.format("Jan  1 00:04:00"), now=now).time.year == 2027
    # a few seconds ahead (clock skew between hosts) stays in this year
    assert sources.parse_line(LINE.format("Jan  1 00:05:30"), now=now).time.year == 2027


def test_classic_year_given():
    obs = sources.parse_line(LINE.format("Feb 29 12:00:00"), year=2028)
    assert obs.time.year == 2028
    assert sources.parse_line(LINE.format("Feb 29 12:00:00"), year=2026) is None


def test_rfc3339_zulu_and_exim_timezone():
    z = sources.parse_line("2026-11-27T01:17:56Z mx postfix/smtpd[1]: connect from unknown[192.0.2.1]")
    assert z.time == datetime(2026, 11, 27, 1, 17, 56, tzinfo=timezone.utc)
    e = sources.parse_line("2026-11-27 01:17:56.250 -0500 SMTP connection from [192.0.2.1]:1 I=[192.0.2.9]:25")
    assert e.time == datetime(2026, 11, 27, 6, 17, 56, 250000, tzinfo=timezone.utc)


def test_trailing_newline_is_ignored():
    obs = sources.parse_line(LINE.format("Nov 27 01:17:56") + "\r\n", year=2026)
    assert obs is not None and obs.ip == IPAddress("192.0.2.1")


# --- long lines and hostile input -----------------------------------------------


def test_long_lines_are_truncated_before_matching():
    head = "Nov 27 01:17:56 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 554 5.7.1 "
    ok = head + "x" * 20000
    assert sources.parse_line(ok, year=2026).ip == IPAddress("192.0.2.1")
    late = "Nov 27 01:17:56 mx postfix/smtpd[1]: warning: non-SMTP command from " + "a" * (sources.MAX_LINE) + \
           "[192.0.2.2]: x"
    assert sources.parse_line(late, year=2026) is None
    assert sources.parse_message("postfix/smtpd", late.split(": ", 1)[1], T0) is None


_PATHOLOGICAL = r'''
import sys, time
from datetime import datetime, timezone
from netblock import sources
from netblock.sources import exim, fields, postfix, sendmail, syslog
N = 65536
junk = ["[" * N, "from " * (N // 5), "H=" * (N // 2), "H=(a) [1" * (N // 8), "relay=" * (N // 6),
        ", relay=[1.2.3.4]" * (N // 17), "a" * N, " " * N, "(" * N, "[1.2.3.4" * (N // 8),
        '" H=' * (N // 4), "listed in a." * (N // 12), "H=a (b) [1.2.3.4]:1 I=" * (N // 24),
        ">: " * (N // 3), '"' * N, '" H=[1.2.3.4] ' * (N // 15)]
heads = ["", "NOQUEUE: reject: RCPT from ", "warning: ", "connect from ", "lost connection after AUTH from ",
         "H=", "F=x H=", "H=a ", "SMTP call from ", 'SMTP protocol error in "', "<= a H=",
         "SMTP protocol synchronization error (x): rejected \"", "relay=", "relay=a ", ", proto=ESMTP, daemon=x, relay=",
         "NOQUEUE: reject: RCPT from x[1.2.3.4]: 550 5.1.1 <", "H=[1.2.3.4] F=<", '<= "', "ABCDEFGH12: to=<"]
inputs = [h + j for h in heads for j in junk]
for module in (postfix, exim, sendmail):
    for pattern in module.PATTERNS.values():
        for s in inputs:
            pattern.match(s)
for s in inputs:
    fields.dnsbl_zone(s)
    postfix.reject_class(s)
    exim.reject_class("rejected", s)
    sendmail.reject_class("check_rcpt", s)
    postfix.match("smtpd", s)
    postfix.match("postscreen", s)
    exim.match(s)
    sendmail.match(s)
    syslog.split(s)
    for tag in ("postfix/smtpd", "postfix/qmgr", "exim", "sm-mta"):
        sources.parse_line("Nov 27 01:17:56 mx " + tag + "[1]: " + s, year=2026)
print("done", len(inputs))
'''


def test_patterns_are_linear_on_hostile_64k_lines():
    """A catastrophic (super-linear) pattern would take minutes on these; all of them take well under a second."""
    proc = subprocess.run([sys.executable, "-c", _PATHOLOGICAL], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("done")


# --- the fused fast path agrees with the general one ------------------------------


def _general(line):
    head = syslog.split(line)
    if head is None:
        return None
    kind, stamp, program, message = head
    obs = sources.parse_message(program or "exim", message, T0, marks=True)
    if obs is None:
        return None
    return (syslog.timestamp(kind, stamp, 2026), obs.ip, obs.cls, obs.mta)


def _variants():
    """Samples, plus every matching sample with other tags/daemons and with CRLF endings."""
    for _mta, _lineno, _expect, line in SAMPLE_LIST:
        yield line
        yield line + "\r\n"
        for a, b in (("postfix/smtpd[", "postfix/postscreen["), ("postfix/postscreen[", "postfix/smtpd["),
                     ("postfix/smtpd[", "exim["), ("postfix/smtpd[", "postfix/smtp["),
                     ("postfix/smtpd[", "sm-mta["), ("exim[", "postfix/smtpd[")):
            if a in line:
                yield line.replace(a, b, 1)


def test_fast_path_agrees_with_general_path():
    n = 0
    for line in _variants():
        obs = sources.parse_line(line, year=2026, marks=True)
        got = None if obs is None else (obs.time, obs.ip, obs.cls, obs.mta)
        assert got == _general(line.rstrip("\r\n")), line
        n += obs is not None
    assert n > 100


def test_observation_is_a_real_observation():
    obs = sources.parse_line(LINE.format("Nov 27 01:17:56"), year=2026, source="s", position=7)
    same = Observation(obs.time, IPAddress("192.0.2.1"), "connect", "postfix", "s", 7)
    assert obs == same and hash(obs) == hash(same)
    with pytest.raises(dataclasses.FrozenInstanceError):
        obs.cls = "delivered"
