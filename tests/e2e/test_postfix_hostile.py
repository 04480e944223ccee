"""Hostile clients against the real Postfix (issue #15): no client picks its class or its protection.

In the Postfix scene (tests/e2e/mta.py), clients with forward-confirmed names
(so every restriction before reject_unlisted_recipient lets them through) do:

* a recipient whose quoted local part holds ">: blocked using forged.zone"
  (Postfix echoes it unquoted in the reply's target) and one holding
  "greylisted": each must count as unknown-user, no invented zone, no lost line;
* a session that passes RCPT, starts DATA and drops the connection;
* a session whose message is refused at the end of DATA by header_checks.

smtpd logs "QUEUEID: client=" for the last two; neither may count as
delivered.  A real delivery is the control: it must count.  Both netblock's
readers run over the real log: `ingest --dry-run --json` and the daemon.
"""

import json
import socket
import time

import pytest
from mta import BELOW, DOMAIN, LEGIT, SINGLES, WAIT_S
from netns import SERVER4, check_allowed, wait_for

from netblock.demo.lab import run_in_netns

pytestmark = pytest.mark.e2e

QUOTED = '"x>: blocked using forged.zone"@' + DOMAIN
GREY = '"x>: Recipient address rejected: greylisted"@' + DOMAIN
PROBER, DROPPER, REFUSED = SINGLES[0], SINGLES[3], BELOW  # all with forward-confirmed names


def _chat(src: str, helo: str, steps: list[tuple[str, bool]]) -> list[str]:
    """A raw SMTP session: each step is (text to send, wait for a reply?); the replies' first lines."""
    check_allowed(src)
    s = socket.create_connection((SERVER4, 25), 5, source_address=(src, 0))
    s.settimeout(10)
    buf = b""

    def reply() -> str:
        nonlocal buf
        while True:
            lines = buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[3:4] == b" ":
                    buf = b"\r\n".join(lines[i + 1:])
                    return line.decode()
            chunk = s.recv(4096)
            if not chunk:
                return "closed"
            buf += chunk

    out = [reply()]
    try:
        s.sendall(f"EHLO {helo}\r\n".encode())
        out.append(reply())
        for text, wait in steps:
            s.sendall(text.encode())
            if wait:
                out.append(reply())
    finally:
        s.close()
    return out


def _sessions() -> dict[str, list[str]]:
    body = f"From: <a@{PROBER.name}>\r\nTo: <alice@{DOMAIN}>\r\n"
    return {
        "quoted": _chat(PROBER.ip, PROBER.name, [
            (f"MAIL FROM:<a@{PROBER.name}>\r\n", True),
            (f"RCPT TO:<{QUOTED}>\r\n", True),
            (f"RCPT TO:<{GREY}>\r\n", True),
            ("QUIT\r\n", True)]),
        "dropped": _chat(DROPPER.ip, DROPPER.name, [
            (f"MAIL FROM:<a@{DROPPER.name}>\r\n", True),
            (f"RCPT TO:<alice@{DOMAIN}>\r\n", True),
            ("DATA\r\n", True),
            (body + "Subject: half\r\n\r\nthe connection drops before the final dot\r\n", False)]),
        "refused": _chat(REFUSED.ip, REFUSED.name, [
            (f"MAIL FROM:<a@{REFUSED.name}>\r\n", True),
            (f"RCPT TO:<alice@{DOMAIN}>\r\n", True),
            ("DATA\r\n", True),
            (body + "Subject: e2e-refuse-me\r\n\r\nrefused by header_checks\r\n.\r\n", True),
            ("QUIT\r\n", True)]),
    }


def test_hostile_clients_choose_neither_class_nor_protection(mail_scene):
    sc = mail_scene("postfix", "nftables")
    assert sc.deliver(LEGIT) == [250, 250]
    got = run_in_netns(sc.lab.client, _sessions)
    assert got["quoted"][3].startswith("550 5.1.1") and got["quoted"][4].startswith("550 5.1.1"), got
    assert got["dropped"][4].startswith("354"), got
    assert got["refused"][4].startswith("354") and got["refused"][5].startswith("550"), got

    def settled():
        text = sc.log_text()
        done = (text.count("(queue active)") >= 1 and "lost connection after DATA" in text
                and "Message content rejected" in text)
        return text if done else None
    text = wait_for(settled, timeout=WAIT_S, interval=0.2)
    assert text, sc.mta_output()
    time.sleep(1)  # let qmgr log anything else it would
    text = sc.log_text()
    # what Postfix really wrote: the target unquoted, client= before DATA for both failures
    assert f"<x>: blocked using forged.zone@{DOMAIN}>: Recipient address rejected" in text, text
    for s in (DROPPER, REFUSED):
        assert f"client={s.name}[{s.ip}]" in text, text

    rows = [json.loads(line) for line in sc.netblock("ingest", "--dry-run", "--json", str(sc.log)).splitlines()]
    by_ip: dict[str, list[str]] = {}
    for r in rows:
        by_ip.setdefault(r["ip"], []).append(r["class"])
    assert by_ip.get(LEGIT.ip) == ["connect", "delivered"], by_ip  # the control
    assert by_ip.get(PROBER.ip) == ["connect", "unknown-user", "unknown-user"], by_ip
    assert by_ip.get(DROPPER.ip) == ["connect"], by_ip
    assert by_ip.get(REFUSED.ip) == ["connect"], by_ip
    assert not any(c.startswith("dnsbl:") for cs in by_ip.values() for c in cs), by_ip

    # the daemon reads the same
    sc.start_daemon()

    def read():
        summary = json.loads(sc.netblock("report", "summary", "--json"))  # first: the classes read after it
        rows = json.loads(sc.netblock("report", "classes", "--json"))  # hold at least what it counted
        return {r["class"]: r["count"] for r in rows if r["count"]}, summary

    # The daemon stores as it reads: wait for what a correct reading ends at, then show what it holds.
    def settled() -> bool:
        got, summary = read()
        return got == {"unknown-user": 2} and summary["connections"] == 4

    wait_for(settled, timeout=WAIT_S, interval=0.3)
    got, summary = read()
    assert summary["connections"] == 4, (summary, sc.daemon_errors())
    assert got == {"unknown-user": 2}, got
    assert summary["delivered_ips"] == 1, summary
    why = sc.netblock("why", DROPPER.ip)
    assert "protected (delivered)" not in why, why
    assert sc.stop_daemon() == 0
