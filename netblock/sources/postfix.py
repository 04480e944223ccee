"""Postfix: what smtpd and postscreen log about their SMTP clients.

Every pattern is anchored at the start of the message and runs through
Postfix's fixed text up to the client field -- "from NAME[IP]" for smtpd
(Postfix only logs a verified, syntactically valid name there, or "unknown"),
"from [IP]:PORT" for postscreen.  Everything a client says (HELO, MAIL FROM,
RCPT TO, the rejected command) comes after that field, so it can never supply
the address.  Other Postfix daemons are ignored on purpose: cleanup's header
and body rejects print the client after the attacker's header text, and
dnsblog/anvil repeat what smtpd or postscreen already logged.
"""

from __future__ import annotations

import re

from netaddr import IPAddress

from .fields import IP, NAME, client_ip, looks_dynamic

MTA = "postfix"

# postfix/smtpd, postfix/submission/smtpd, postfix-in/smtps/smtpd (multi-instance
# syslog_name), postfix/postscreen.  The kind is the last component.
PROGRAM = re.compile(r"^postfix[\w.-]{0,64}(?:/[\w.-]{1,64}){0,4}/(smtpd|postscreen)$")

_CLIENT = rf"from (?P<name>{NAME})\[(?P<ip>{IP})\](?::\d{{1,5}})?"
_PS_CLIENT = rf"from \[(?P<ip>{IP})\]:\d{{1,5}}"

PATTERNS: dict[str, re.Pattern[str]] = {
    # Ordered by how often each kind of line occurs in a busy log: fused() tries
    # them in this order.
    "smtpd-reject": re.compile(
        rf"^(?:NOQUEUE|[0-9A-Za-z]{{5,20}}): (?:milter-)?reject: [A-Z][A-Z-]{{0,20}} {_CLIENT}: "),
    "smtpd-connect": re.compile(rf"^connect {_CLIENT}$"),
    "smtpd-client": re.compile(
        rf"^[0-9A-Za-z]{{5,20}}: client=(?P<name>{NAME})\[(?P<ip>{IP})\](?::\d{{1,5}})?(?:,|$)"),
    "smtpd-lost": re.compile(
        rf"^(?:NOQUEUE: )?lost connection after (?:CONNECT|EHLO|HELO|AUTH|STARTTLS|UNKNOWN) {_CLIENT}$"),
    "smtpd-sasl": re.compile(
        rf"^warning: (?P<name>{NAME})\[(?P<ip>{IP})\](?::\d{{1,5}})?: SASL [\w-]{{1,32}} authentication failed"),
    "postscreen-connect": re.compile(rf"^CONNECT {_PS_CLIENT} to \["),
    "postscreen-dnsbl": re.compile(rf"^DNSBL rank \d{{1,5}} for \[(?P<ip>{IP})\]:\d{{1,5}}"),
    "postscreen-pregreet": re.compile(rf"^PREGREET \d{{1,10}} after [\d.]{{1,12}} {_PS_CLIENT}"),
    "postscreen-hangup": re.compile(rf"^HANGUP after [\d.]{{1,12}} {_PS_CLIENT}"),
    "postscreen-protocol": re.compile(
        rf"^(?:BARE NEWLINE|COMMAND PIPELINING|NON-SMTP COMMAND|COMMAND (?:TIME|COUNT|LENGTH) LIMIT) {_PS_CLIENT}"),
    "postscreen-reject": re.compile(rf"^NOQUEUE: reject: [A-Z]{{1,12}} {_PS_CLIENT}: "),
    "smtpd-non-smtp": re.compile(rf"^warning: non-SMTP command {_CLIENT}(?:: |$)"),
    "smtpd-pipelining": re.compile(rf"^improper command pipelining after [A-Z-]{{1,20}} {_CLIENT}(?::|$)"),
    "smtpd-too-many-errors": re.compile(
        rf"^too many errors after [A-Z-]{{1,20}}(?: \(\d{{1,12}} bytes\))? {_CLIENT}$"),
    "smtpd-rate-limit": re.compile(
        rf"^warning: [A-Za-z ]{{1,60}} limit exceeded: \d{{1,10}} {_CLIENT} for service "),
}

FIXED_CLASS = {
    "smtpd-sasl": "auth-failed",
    "smtpd-non-smtp": "protocol",
    "smtpd-rate-limit": "rejected",
    "smtpd-lost": "lost-connection",
    "smtpd-pipelining": "protocol",
    "smtpd-too-many-errors": "protocol",
    "smtpd-connect": "connect",
    # Postfix logs "QUEUEID: client=" once it has accepted a message transaction
    # from the client (a queue file exists): evidence of real mail, which keeps
    # the sender out of blocks.
    "smtpd-client": "delivered",
    "postscreen-dnsbl": "dnsbl:postscreen",
    "postscreen-pregreet": "pregreet",
    "postscreen-hangup": "hangup",
    "postscreen-protocol": "protocol",
    # Its observation names the mta "postscreen" (sources._mta, batch.scan): smtpd's
    # "connect from" continues the same session when postscreen hands the client over, and
    # report.sessions counts it once.
    "postscreen-connect": "connect",
}

# The zone right after "blocked using " (matched at that position).
_ZONE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}(?:\.[A-Za-z0-9_-]{1,63}){1,10}")


def reject_class(reason: str, client: str = "") -> str | None:
    """The class of a Postfix reject reply ("554 5.7.1 <x>: Relay access denied; from=<...").

    Only the restriction's own words count (see reply_words): the reply code,
    the echoed target "<...>: " in front and the "; from=<...> to=<...>
    helo=<...>" tail the client wrote are cut off first, and the client's own
    address (`client`, as the line spells it) is masked wherever the reply
    repeats it, so the address is never read as words.  None for what is no
    verdict on the client: greylisting (a lawful sender retries) and
    postscreen's "all server ports busy".
    """
    return words_class(reply_words(mask_client(reason, client)))


def mask_client(reason: str, client: str) -> str:
    """`reason` with every copy of the client's address text replaced by a NUL.

    DNSBL and reverse-DNS replies quote the address ("Client host [IP] blocked
    using ...; https://.../query/ip/IP"): masked, a storm's replies reduce to a
    handful of texts, which is what lets sources.batch remember their classes.
    A NUL is part of no word the classes look for.
    """
    return reason.replace(client, "\0") if client else reason


def reply_words(reason: str) -> str:
    """The restriction's own words of a reject reply: without code, echoed target and client tail."""
    pos = words_start(reason)
    tail = reason.find("; from=<", pos)
    return reason[pos:] if tail < 0 else reason[pos:tail]


def words_start(reason: str) -> int:
    """Where the restriction's words begin: after "NNN N.N.N " and an echoed "<target>: "."""
    pos = 0
    if reason[3:4] == " " and reason[:3].isdigit():
        pos = 4
        if reason[4:5].isdigit() and reason[5:6] == ".":
            blank = reason.find(" ", 4)
            if blank >= 0:
                pos = blank + 1
    if reason.startswith("<", pos):
        end = reason.find(">: ", pos)
        if end >= 0:
            pos = end + 3
    return pos


def words_class(reason: str) -> str | None:
    """reject_class() of what reply_words() kept."""
    if "reylist" in reason or "all server ports busy" in reason:
        return None
    at = reason.find("blocked using ")
    if at >= 0:
        m = _ZONE.match(reason, at + 14)
        if m is not None:
            return "dnsbl:" + m.group().lower().rstrip(".")
    if "cannot find your reverse hostname" in reason or "cannot find your hostname" in reason:
        return "no-rdns"
    if "Helo command rejected" in reason:
        return "bad-helo"
    if "Sender address rejected" in reason:
        return "sender-rejected"
    if "User unknown" in reason or "Recipient address rejected: undeliverable address" in reason:
        return "unknown-user"
    if "Relay access denied" in reason:
        return "relay-denied"
    if "Client host rejected" in reason and looks_dynamic(reason):
        return "dynamic"
    return "rejected"


def match(kind: str, msg: str) -> tuple[str, IPAddress, str] | None:
    """(pattern name, client address, class) of a smtpd/postscreen message, or None.

    Fixed substrings pick at most one candidate pattern before any regex runs:
    most lines of a busy log (TLS chatter, disconnects, qmgr) cost a few
    startswith() calls.
    """
    name = _candidate(kind, msg)
    if name is None:
        return None
    m = PATTERNS[name].match(msg)
    if m is None:
        return None
    return finish(name, m.group("ip"), msg, m.end())


def _candidate(kind: str, msg: str) -> str | None:
    if kind == "smtpd":
        # "NOQUEUE: " or "QUEUEID: " first: the text after it picks the pattern.
        q = msg.find(": ", 0, 22) + 2
        after = msg[q:q + 15] if q > 1 else ""
        if after.startswith("reject: ") or after.startswith("milter-reject: "):
            name = "smtpd-reject"
        elif msg.startswith("connect from "):
            name = "smtpd-connect"
        elif msg.startswith("warning: "):
            if "SASL" in msg:
                name = "smtpd-sasl"
            elif msg.startswith("warning: non-SMTP command "):
                name = "smtpd-non-smtp"
            elif "limit exceeded" in msg:
                name = "smtpd-rate-limit"
            else:
                return None
        elif msg.startswith("lost connection after ") or msg.startswith("NOQUEUE: lost connection after "):
            name = "smtpd-lost"
        elif msg.startswith("improper command pipelining "):
            name = "smtpd-pipelining"
        elif msg.startswith("too many errors "):
            name = "smtpd-too-many-errors"
        elif after.startswith("client="):
            name = "smtpd-client"
        else:
            return None
    elif kind == "postscreen":
        c = msg[:4]
        if c == "CONN":
            name = "postscreen-connect"
        elif c == "NOQU":
            name = "postscreen-reject"
        elif c == "DNSB":
            name = "postscreen-dnsbl"
        elif c == "PREG":
            name = "postscreen-pregreet"
        elif c == "HANG":
            name = "postscreen-hangup"
        elif c in ("BARE", "COMM", "NON-"):
            name = "postscreen-protocol"
        else:
            return None
    else:
        return None
    return name


def finish(name: str, ip_text: str, msg: str, end: int) -> tuple[str, IPAddress, str] | None:
    """The result of pattern `name` having matched `msg` up to `end`."""
    ip = client_ip(ip_text)
    if ip is None:
        return None
    cls = FIXED_CLASS.get(name)
    if cls is None:
        cls = reject_class(msg[end:], ip_text)
        if cls is None:
            return None
    elif name == "smtpd-sasl" and "Connection lost to authentication server" in msg:
        return None  # the auth server failed, not the client
    return name, ip, cls


KINDS = {name: name.split("-", 1)[0] for name in PATTERNS}  # pattern -> "smtpd" | "postscreen"


def fused(header: str) -> tuple[re.Pattern[str], dict[str, tuple[str, str, str]]]:
    """One regex: `header` (ending at the message) followed by any of PATTERNS, or nothing.

    A busy Postfix log is mostly lines of these patterns; matching header and
    message in one call of the regex engine is several times cheaper than
    splitting the line first.  The returned map takes the match's lastgroup
    ("p_N", set when pattern N matched) to (pattern name, daemon, name of the
    group holding its address).  The caller still checks that the line's
    program is that daemon.
    """
    branches, groups = [], {}
    for i, (name, pattern) in enumerate(PATTERNS.items()):
        body = pattern.pattern[1:]  # every pattern starts with "^"
        body = body.replace("(?P<ip>", f"(?P<ip_{i}>").replace("(?P<name>", "(?:")
        branches.append(f"(?P<p_{i}>{body})")
        groups[f"p_{i}"] = (name, KINDS[name], f"ip_{i}")
    return re.compile(header + "(?:" + "|".join(branches) + ")?"), groups
