"""One spam storm against a real MTA, with the netblock daemon restarted in the middle.

The phases are ordered so that no client ever crosses a policy threshold while
a daemon is running: every packet a blocked address sends is then one the test
sent on purpose after the block was confirmed, and the kernel's counters can be
compared with the test's own count exactly.

1. The MTA starts; the legitimate senders deliver real mail; the scattered
   singles do all their sessions (each crosses its class threshold); the
   zombies do a first round that stays below every threshold.
2. `netblock daemon` starts and reads the log: exactly the singles are blocked.
   Raw SYNs from the singles are dropped and counted.
3. SIGTERM. While no daemon runs, the kernel keeps dropping the singles (real
   connects time out, nothing reaches the MTA); the zombies do their second
   round, which crosses their thresholds -- half before the MTA's log is
   rotated, half after.
4. The daemon starts again: it finishes the rotated log and reads the new one;
   the dense /24s and the sparse /16 are installed as single netblocks, the
   legitimate sender's address carved out of its /24. Live: the legitimate
   sender delivers again, a one-off offender stays below its threshold, every
   blocked zombie's connect times out (no new connect line), raw SYNs follow.
5. The store's classes and summary equal the test's own count of the MTA's log
   lines (nothing lost, nothing twice; one connection per SMTP session, behind
   postscreen too), and `report --json` shows per block as decided (the pieces
   around a carve-out summed) exactly the SYNs sent after the blocks.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mta import (
    BELOW,
    DENSE_A_NET,
    DENSE_B,
    DENSE_B_NET,
    DOMAIN,
    LEGIT,
    LEGIT2,
    SINGLES,
    SPARSE_NET,
    WAIT_S,
    ZOMBIES,
    MailScene,
    Sender,
    covering,
)
from netaddr import IPNetwork, IPSet
from netns import wait_for

RCPT = f"alice@{DOMAIN}"
SYNS_PER_PHASE = 3  # raw SYNs per blocked address in each counted phase


def _dict(n: int) -> list[str]:
    return [f"user{i}@{DOMAIN}" for i in range(n)]


def zombie_role(s: Sender, mta: str) -> str:
    """Behind postscreen the no-rDNS /24 talks before the greeting instead: postscreen's own test."""
    return "pregreet" if mta == "postscreen" and s in DENSE_B else s.role


def zombie_round(s: Sender, mta: str, second: bool) -> list[tuple]:
    """SMTP sessions (src, helo, rcpts, data, pregreet) of one zombie in round 1 or 2.

    Round 1 stays below the class threshold, round 2 reaches it (dnsbl 3,
    no-rdns 5, pregreet 2 observations; behind postscreen one DNSBL session
    is two observations, "DNSBL rank" and the reject).
    """
    role = zombie_role(s, mta)
    if role == "pregreet":
        return [(s.ip, "bot.example", [RCPT], False, True)]
    if role == "dnsbl":
        n = (2 if second else 1) if mta == "postscreen" else (1 if second else 2)
        return [(s.ip, "bot.example", [RCPT], False, False)] * n
    assert role == "no-rdns"
    return [(s.ip, "bot.example", _dict(3 if second else 2), False, False)]


def single_sessions(s: Sender) -> list[tuple]:
    """All sessions of a scattered single: each crosses its class's threshold."""
    if s.role == "bad-helo":
        return [(s.ip, h, [RCPT], False, False) for h in ("localhost", f"[{s.ip}]", "localhost")]
    if s.role == "dnsbl":
        return [(s.ip, "bot.example", [RCPT], False, False)] * 3
    if s.role == "no-rdns":
        return [(s.ip, "bot.example", _dict(3), False, False), (s.ip, "bot.example", _dict(2), False, False)]
    assert s.role == "dictionary"
    return [(s.ip, s.name, _dict(5), False, False), (s.ip, s.name, [f"x{i}@{DOMAIN}" for i in range(5)], False, False)]


# ------------------------------------------------------------------ the test's own reading of the MTA log

_IP = r"(\d+\.\d+\.\d+\.\d+)"
POSTFIX_LINES = [  # (class, pattern with the client address as group 1)
    ("connect", re.compile(rf"postfix/smtpd\[\d+\]: connect from \S*\[{_IP}\]$")),
    ("connect", re.compile(rf"postfix/postscreen\[\d+\]: CONNECT from \[{_IP}\]:\d+ to ")),
    ("delivered", re.compile(rf"postfix/smtpd\[\d+\]: [0-9A-F]+: client=\S*\[{_IP}\]$")),
    ("dnsbl:bl.e2e.test",
     re.compile(rf"NOQUEUE: reject: RCPT from \S*\[{_IP}\](?::\d+)?: .* blocked using bl\.e2e\.test;")),
    ("dnsbl:postscreen", re.compile(rf"postfix/postscreen\[\d+\]: DNSBL rank \d+ for \[{_IP}\]")),
    ("pregreet", re.compile(rf"postfix/postscreen\[\d+\]: PREGREET \d+ after \S+ from \[{_IP}\]")),
    ("hangup", re.compile(rf"postfix/postscreen\[\d+\]: HANGUP after \S+ from \[{_IP}\]")),
    ("bad-helo", re.compile(rf"NOQUEUE: reject: RCPT from \S*\[{_IP}\]: 554 5\.7\.1 <[^>]*>: Helo command rejected")),
    ("no-rdns",
     re.compile(rf"NOQUEUE: reject: RCPT from \S*\[{_IP}\]: 550 5\.7\.25 Client host rejected: cannot find")),
    ("unknown-user", re.compile(rf"NOQUEUE: reject: RCPT from \S*\[{_IP}\]: 550 5\.1\.1 .*User unknown")),
]
EXIM_LINES = [
    ("connect", re.compile(rf"^\S+ \S+ SMTP connection from \[{_IP}\] \(TCP/IP connection count = \d+\)$")),
    ("delivered", re.compile(rf"^\S+ \S+ \S+ <= \S+ H=.*\[{_IP}\] P=")),
    ("dnsbl:bl.e2e.test",
     re.compile(rf"H=.*\[{_IP}\] F=<[^>]*> rejected RCPT <[^>]*>: .* in a black list at bl\.e2e\.test$")),
    ("bad-helo", re.compile(rf"H=.*\[{_IP}\] rejected EHLO or HELO ")),
    # Exim's words for a missing PTR: the ACL's rejection, and host.c's note at the connection.
    ("no-rdns", re.compile(rf"H=.*\[{_IP}\] F=<[^>]*> rejected RCPT <[^>]*>: host lookup failed")),
    ("no-rdns", re.compile(rf"^\S+ \S+ no host name found for IP address {_IP}$")),
    ("unknown-user", re.compile(rf"H=.*\[{_IP}\] F=<[^>]*> rejected RCPT <[^>]*>: Unrouteable address$")),
]


def read_log(text: str, mta: str) -> list[tuple[str, str]]:
    """(class, ip) of every line that is about a client; a rejection the table does not know fails.

    Behind postscreen a session starts with postscreen's CONNECT; smtpd's "connect from" is its
    handover to smtpd, not another session.
    """
    table = EXIM_LINES if mta == "exim" else POSTFIX_LINES
    out = []
    for line in text.splitlines():
        for cls, pattern in table:
            m = pattern.search(line)
            if m:
                if mta == "postscreen" and cls == "connect" and "postfix/smtpd[" in line:
                    cls = "handover"
                out.append((cls, m.group(1)))
                break
        else:
            assert not re.search(r"reject|PREGREET|DNSBL|HANGUP", line), f"unexpected MTA line: {line}"
    return out


# ------------------------------------------------------------------ the run

@dataclass
class Outcome:
    scene: MailScene
    before_restart: set = field(default_factory=set)
    final: set = field(default_factory=set)
    expected_final: set = field(default_factory=set)
    drops: Counter = field(default_factory=Counter)  # src ip -> SYNs sent while blocked
    log_events: list = field(default_factory=list)
    classes: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    top: list = field(default_factory=list)
    tables: str = ""
    why_legit: str = ""
    why_zombie: str = ""
    sessions: dict = field(default_factory=dict)  # phase -> [(spec, codes)]
    gap_connects: dict = field(default_factory=dict)
    blocked_connects: dict = field(default_factory=dict)
    new_connect_lines: list = field(default_factory=list)
    legit_deliveries: list = field(default_factory=list)
    daemon_exit: list = field(default_factory=list)
    split: tuple = (0, 0)  # client lines in the rotated log and in the new one
    mailbox: int = 0


def decided_blocks() -> set[IPNetwork]:
    """What the policy decided (the rows of `report`): singles as /32s, each zombie network whole."""
    return {IPNetwork(f"{s.ip}/32") for s in SINGLES} | {DENSE_B_NET, SPARSE_NET, DENSE_A_NET}


def expected_blocks() -> set[IPNetwork]:
    """Singles as /32s, each zombie network whole, the legitimate sender carved out of its /24."""
    space = IPSet([f"{s.ip}/32" for s in SINGLES] + [DENSE_B_NET, SPARSE_NET, DENSE_A_NET]) - IPSet([LEGIT.ip])
    return set(space.iter_cidrs())


def store_counts(sc: MailScene) -> tuple[dict, dict]:
    classes = {r["class"]: r["count"] for r in json.loads(sc.netblock("report", "classes", "--json")) if r["count"]}
    return classes, json.loads(sc.netblock("report", "summary", "--json"))


def log_counts(events: list[tuple[str, str]]) -> dict:
    return dict(Counter(cls for cls, _ip in events if cls not in NOT_REJECTIONS))


NOT_REJECTIONS = ("connect", "handover", "delivered")


def wait_caught_up(sc: MailScene) -> list[tuple[str, str]]:
    """Until the store holds exactly the rejections and connections of the whole log (rotated part too)."""
    def done():
        events = read_log(sc.log_text(), sc.mta)
        classes, summary = store_counts(sc)
        connects = sum(1 for cls, _ in events if cls == "connect")
        return events if classes == log_counts(events) and summary["connections"] == connects else None
    events = wait_for(done, timeout=WAIT_S, interval=0.5)
    assert events, (store_counts(sc), log_counts(read_log(sc.log_text(), sc.mta)), sc.daemon_errors())
    return events


def wait_installed(sc: MailScene, want: set[IPNetwork]) -> set[IPNetwork]:
    got = wait_for(lambda: sc.installed() == want, timeout=WAIT_S, interval=0.2)
    assert got, (sorted(map(str, sc.installed())), sorted(map(str, want)), sc.daemon_errors())
    return sc.installed()


def send_syns(sc: MailScene, out: Outcome, senders: list[Sender]) -> None:
    for s in senders:
        out.drops[s.ip] += sc.syn(s.ip, SYNS_PER_PHASE)


def connect_lines(sc: MailScene) -> list[tuple[str, str]]:
    return [(c, ip) for c, ip in read_log(sc.log_text(), sc.mta) if c in ("connect", "handover")]


def run(sc: MailScene) -> Outcome:
    out = Outcome(sc)
    mta = sc.mta

    # 1. mail before any daemon runs
    out.legit_deliveries.append(sc.deliver(LEGIT))
    out.legit_deliveries.append(sc.deliver(LEGIT2))
    specs = [spec for s in SINGLES for spec in single_sessions(s)]
    specs += [spec for z in ZOMBIES for spec in zombie_round(z, mta, second=False)]
    out.sessions["round1"] = list(zip(specs, sc.sessions(specs, workers=16)))

    # 2. first daemon: exactly the singles are blocked
    sc.start_daemon()
    out.before_restart = wait_installed(sc, {IPNetwork(f"{s.ip}/32") for s in SINGLES})
    wait_caught_up(sc)
    send_syns(sc, out, SINGLES)

    # 3. restart gap: rules stay, the log is rotated, the zombies cross their thresholds
    out.daemon_exit.append(sc.stop_daemon())
    seen = len(connect_lines(sc))
    out.gap_connects = sc.connect_attempts([s.ip for s in SINGLES])
    for s in SINGLES:
        out.drops[s.ip] += 1  # one SYN per timed-out connect
    send_syns(sc, out, SINGLES)
    half = len(ZOMBIES) // 2
    first = [spec for z in ZOMBIES[:half] for spec in zombie_round(z, mta, second=True)]
    out.sessions["round2a"] = list(zip(first, sc.sessions(first, workers=16)))
    sc.rotate_log()
    second = [spec for z in ZOMBIES[half:] for spec in zombie_round(z, mta, second=True)]
    out.sessions["round2b"] = list(zip(second, sc.sessions(second, workers=16)))
    out.new_connect_lines += [e for e in connect_lines(sc)[seen:] if e[1] in {s.ip for s in SINGLES}]
    rotated = Path(str(sc.log) + ".1")
    out.split = (len(read_log(rotated.read_text(), mta)), len(read_log(sc.log.read_text(), mta)))

    # 4. second daemon: widened blocks; live traffic
    sc.start_daemon()
    out.expected_final = expected_blocks()
    out.final = wait_installed(sc, out.expected_final)
    wait_caught_up(sc)
    seen = len(connect_lines(sc))
    out.legit_deliveries.append(sc.deliver(LEGIT))
    out.sessions["below"] = [(spec, sc.sessions([spec])[0]) for spec in [(BELOW.ip, "localhost", [RCPT], False, False)]]
    out.blocked_connects = sc.connect_attempts([z.ip for z in ZOMBIES])
    for z in ZOMBIES:
        out.drops[z.ip] += 1
    send_syns(sc, out, ZOMBIES + SINGLES)
    out.log_events = wait_caught_up(sc)
    blocked = {z.ip for z in ZOMBIES} | {s.ip for s in SINGLES}
    out.new_connect_lines += [e for e in connect_lines(sc)[seen:] if e[1] in blocked]
    out.why_legit = sc.netblock("why", LEGIT.ip)
    out.why_zombie = sc.netblock("why", DENSE_B[0].ip)
    assert sc.installed() == out.final  # the one-off offender and the live delivery changed nothing

    out.mailbox = wait_for(lambda: sc.mailbox() if sc.mailbox() >= 3 else 0, timeout=WAIT_S, interval=0.2)

    # 5. reports
    sc.netblock("sample")
    out.top = json.loads(sc.netblock("report", "--json", "--top", "1000"))
    out.classes, out.summary = store_counts(sc)
    out.tables = "\n\n".join(sc.netblock("report", *args).rstrip() for args in
                             (("--top", "20", "--exact"), ("classes",), ("summary",)))
    out.daemon_exit.append(sc.stop_daemon())
    return out


def expected_drops(out: Outcome) -> dict[str, int]:
    """Per decided block: the SYNs the test sent from addresses inside it after it was blocked."""
    per_net: Counter = Counter()
    for ip, n in out.drops.items():
        net = covering(decided_blocks(), ip)
        assert net is not None, ip
        per_net[str(net.cidr)] += n
    return dict(per_net)


def check(out: Outcome) -> None:
    """Everything issue 7 asks for, on one finished run."""
    sc = out.scene
    # every session of a client that was not blocked yet was refused by the MTA, none timed out
    for phase, results in out.sessions.items():
        for spec, codes in results:
            assert codes and "timeout" not in codes, (phase, spec, codes)
            assert all(c == "pregreet" or c == "SMTPHeloError" or (isinstance(c, int) and c >= 500) for c in codes), \
                (phase, spec, codes)
    # 2. the legitimate senders delivered, before and after the widening, and why says why
    assert out.legit_deliveries == [[250, 250]] * 3, out.legit_deliveries
    assert out.mailbox == 3  # and the mail really landed in the mailbox
    assert all(covering(out.final, s.ip) is None for s in (LEGIT, LEGIT2, BELOW))
    assert out.why_legit.startswith(f"{LEGIT.ip}: protected (delivered)"), out.why_legit
    assert f"block: {DENSE_A_NET}" in out.why_legit, out.why_legit  # the block it is carved out of
    # 1. thresholds and density widening, read back from the kernel itself
    assert out.before_restart == {IPNetwork(f"{s.ip}/32") for s in SINGLES}
    assert out.final == out.expected_final
    assert DENSE_B_NET in out.final and SPARSE_NET in out.final  # each one netblock
    a_pieces = {n for n in out.final if n in DENSE_A_NET}
    assert IPSet(a_pieces) == IPSet([DENSE_A_NET]) - IPSet([LEGIT.ip])  # the /24 less the carve-out
    assert all(covering(out.final, z.ip) for z in ZOMBIES)
    assert out.why_zombie.startswith(f"{DENSE_B[0].ip}: blocked: {DENSE_B_NET}"), out.why_zombie
    # 3. blocked clients never reach the MTA, during the restart gap or after it
    assert set(out.gap_connects.values()) == {"timeout"}, out.gap_connects
    assert set(out.blocked_connects.values()) == {"timeout"}, out.blocked_connects
    assert out.new_connect_lines == []
    # 4. the kernel's counters, as reported, equal the SYNs the test sent after the blocks
    shown = [r for r in out.top if not r.get("dropped_out")]
    reported = {r["netblock"]: r["packets"] for r in shown if r["packets"]}
    assert reported == expected_drops(out), (reported, expected_drops(out))
    # one row per decided block: the /24 the legitimate sender is carved out of names it
    carved = {r["netblock"]: r["except"] for r in shown if r["except"]}
    assert carved == {str(DENSE_A_NET): [f"{LEGIT.ip}/32"]}, carved
    assert f"{DENSE_A_NET}*" in out.tables and f"* {DENSE_A_NET} except {LEGIT.ip}" in out.tables
    # 4+5. the store's classes and summary equal the test's own count of the log (rotated part
    # included): nothing lost, nothing counted twice across the restart
    events = out.log_events
    assert all(out.split), out.split  # the storm really straddled the rotation
    assert out.classes == log_counts(events), (out.classes, log_counts(events))
    assert out.summary["connections"] == sum(1 for c, _ in events if c == "connect")
    # one connection per SMTP session the test opened (behind postscreen: not per connect line)
    opened = len(out.legit_deliveries) + sum(len(results) for results in out.sessions.values())
    assert out.summary["connections"] == opened, (out.summary["connections"], opened)
    assert out.summary["delivered_ips"] == len({ip for c, ip in events if c == "delivered"}) == 2
    assert out.summary["rejections"] == sum(log_counts(events).values())
    assert out.summary["rejected_ips"] == len({ip for c, ip in events if c not in NOT_REJECTIONS})
    assert out.summary["packets"] == sum(out.drops.values())
    assert out.daemon_exit == [0, 0]
    assert "Traceback" not in sc.daemon_errors(), sc.daemon_errors()
