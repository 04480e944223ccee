"""Sendmail: rulesets' rejections and session events, by the client's relay field.

Sendmail names the client "NAME [IP]" (NAME is the reverse name, absent when
there is none; "(may be forged)" follows when forward and reverse disagree,
"IPv6:" prefixes IPv6 literals).  Where the relay comes first in the message
the pattern is anchored through it.  Where it comes after client-written text
(arg1=<address>, user=, from=<...>, msgid=<...>) a line is only read when it is
unambiguous: exactly one "relay=" in the line, or relay= as the final field,
which sendmail always writes last.
"""

from __future__ import annotations

import re

from netaddr import IPAddress

from .fields import ACCEPTED, AMBIGUOUS, CLIENT, IP, NAME, address_end, client_ip, dnsbl_zone

MTA = "sendmail"

# sendmail renames its process title, and some syslogs tag lines with it
# ("sm-acceptingconnections").  sm-msp-queue is the local submission queue:
# it never talks to remote clients.
PROGRAM = re.compile(r"^(?:sendmail|sm-mta|sm-acceptingconnections)$")

# The name is bracketed too ("[NAME] [IP]") when sendmail has only an address
# literal for it; the client's address is always the last bracket.
HOST = rf"(?:{NAME} |\[[^\s\[\]]{{1,255}}\] )?\[(?:IPv6:)?(?P<ip>{IP})\](?: \(may be forged\))?"
_QID = re.compile(r"^([0-9A-Za-z]{8,20}): ")

PATTERNS: dict[str, re.Pattern[str]] = {
    # At the only "relay=" of a "ruleset=... arg1=..." line.
    "sendmail-ruleset": re.compile(rf"^relay={HOST}, reject="),
    "sendmail-no-mail": re.compile(rf"^{HOST} did not issue MAIL/EXPN/VRFY/ETRN during connection to "),
    "sendmail-lost": re.compile(rf"^lost input channel from {HOST} to \S{{1,64}} after "),
    "sendmail-pregreet": re.compile(
        rf"^rejecting commands from (?:{NAME})? \[(?:IPv6:)?(?P<ip>{IP})\] due to pre-greeting traffic"),
    "sendmail-expn": re.compile(rf"^{HOST}: (?i:expn|vrfy) [^\n]{{0,1024}}\[rejected\]$"),
    "sendmail-attack": re.compile(
        rf"^{HOST}: possible SMTP attack: command=(?P<cmd>[A-Za-z]{{1,16}}), count=\d{{1,10}}"),
    # At the last "relay=" of an "AUTH failure (...)" line; it must end the line.
    "sendmail-auth": re.compile(rf"^relay={HOST}$"),
    # At the last ", proto=" of a "from=<...>" line (logsender(): the relay is
    # its last field, the msgid before it the client's): a transaction.
    "sendmail-from": re.compile(rf"^, proto=E?SMTPS?A?, daemon=[\w.-]{{1,32}}, relay={HOST}$"),
    # At the first ", stat=" after the recipients of a "to=" line
    # (logdelivery()): a delivery attempt of a queued message.
    "sendmail-accepted": re.compile(r"^, stat=(?:Sent(?: |$)|queued$|Deferred(?::|$))"),
}

_FIXED_CLASS = {
    "sendmail-no-mail": "protocol",
    "sendmail-lost": "lost-connection",
    "sendmail-pregreet": "pregreet",
    "sendmail-expn": "rejected",
    "sendmail-auth": "auth-failed",
    "sendmail-from": CLIENT,
    "sendmail-accepted": ACCEPTED,
}

# logsender()'s fixed fields after the sender (which is the client's text).
_NRCPTS = re.compile(r", size=\d{1,20}, class=-?\d{1,10}, nrcpts=(\d{1,6})(?:,|$)")


def reject_class(ruleset: str, reject: str) -> str:
    """The class of a ruleset's reject= text ("550 5.7.1 <x>... Relaying denied").

    The echoed "<address>... " in front is the client's: it is skipped
    quote-aware, and only the ruleset's words after it count.
    """
    pos = 0
    if reject[3:4] == " " and reject[:3].isdigit():
        pos = reject.find(" ", 4) + 1 if reject[4:5].isdigit() else 4
    if reject.startswith("<", pos):
        end = address_end(reject, pos)
        if end < 0 or not reject.startswith("... ", end):
            return "rejected"
        reject = reject[end + 4:]
    if reject.startswith("Domain of sender address"):
        return "sender-rejected"
    zone = dnsbl_zone(reject)
    if zone:
        return "dnsbl:" + zone
    if "Relaying denied" in reject or "Relaying temporarily denied" in reject:
        return "relay-denied"
    if "User unknown" in reject:
        return "unknown-user"
    if ruleset == "check_mail" or "Domain of sender address" in reject:
        return "sender-rejected"
    if "reverse DNS" in reject or "PTR record" in reject or "name lookup failed" in reject:
        return "no-rdns"
    return "rejected"


def _recipients_end(msg: str, pos: int) -> int:
    """Index after the recipient list of a "to=" field at msg[pos] ("<a>,<b>" or "a,b"), or -1."""
    while True:
        if msg.startswith("<", pos):
            pos = address_end(msg, pos)
            if pos < 0:
                return -1
        else:
            end = len(msg)
            for stop in (",", " "):
                i = msg.find(stop, pos)
                if 0 <= i < end:
                    end = i
            if msg[pos:end].count('"'):
                return -1
            pos = end
        if msg.startswith(",<", pos) or (msg.startswith(",", pos) and not msg.startswith(", ", pos)):
            pos += 1
            continue
        return pos


def match(msg: str) -> tuple[str, IPAddress | None, str] | None:
    """(pattern name, client address, class) of a sendmail message, or None.

    A transaction's "from=" line and a delivery's "to=" line give marker
    classes with their queue ID (see sources.join); the "to=" line has no
    client address.
    """
    q = _QID.match(msg)
    qid = None
    if q is not None:
        qid = q.group(1)
        msg = msg[q.end():]
    at = 0
    if msg.startswith("ruleset="):
        if msg.count("relay=") != 1:
            return ("sendmail-ruleset", None, AMBIGUOUS) if ", relay=" in msg else None
        name = "sendmail-ruleset"
        at = msg.find("relay=")
    elif msg.startswith("AUTH failure ("):
        name = "sendmail-auth"
        at = msg.rfind(", relay=") + 2
        if at < 2:
            return None
    elif msg.startswith("from="):
        if qid is None:
            return None
        n = _NRCPTS.match(msg, msg.find(", size="))
        if n is None or n.group(1) == "0":
            return None  # no recipient accepted: no mail was delivered
        name = "sendmail-from"
        at = msg.rfind(", proto=")
        if at < 0:
            return None
    elif msg.startswith("to="):
        if qid is None:
            return None
        end = _recipients_end(msg, 3)
        if end < 0:
            return None
        at = msg.find(", stat=", end)
        if at < 0 or PATTERNS["sendmail-accepted"].match(msg[at:at + 20]) is None:
            return None
        return "sendmail-accepted", None, ACCEPTED + qid
    elif msg.startswith("lost input channel from "):
        name = "sendmail-lost"
    elif msg.startswith("rejecting commands from "):
        name = "sendmail-pregreet"
    elif msg.endswith(" [rejected]"):
        name = "sendmail-expn"
    elif ": possible SMTP attack: " in msg:
        name = "sendmail-attack"
    elif " did not issue MAIL/EXPN/VRFY/ETRN " in msg:
        name = "sendmail-no-mail"
    else:
        return None
    m = PATTERNS[name].match(msg[at:] if at else msg)
    if m is None:
        return None
    ip = client_ip(m.group("ip"))
    if ip is None:
        return None
    cls = _FIXED_CLASS.get(name)
    if cls is None:
        if name == "sendmail-attack":
            cls = "auth-failed" if m.group("cmd").upper() == "AUTH" else "protocol"
        else:
            ruleset = msg[8:msg.find(",")]
            cls = reject_class(ruleset, msg[at + m.end():])
    elif name == "sendmail-from":
        assert qid is not None  # the from= branch above returned without one
        cls += qid
    return name, ip, cls
