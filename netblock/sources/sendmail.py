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

from .fields import IP, NAME, client_ip, dnsbl_zone

MTA = "sendmail"

# sendmail renames its process title, and some syslogs tag lines with it
# ("sm-acceptingconnections").  sm-msp-queue is the local submission queue:
# it never talks to remote clients.
PROGRAM = re.compile(r"^(?:sendmail|sm-mta|sm-acceptingconnections)$")

HOST = rf"(?:{NAME} )?\[(?:IPv6:)?(?P<ip>{IP})\](?: \(may be forged\))?"
_QID = re.compile(r"^[0-9A-Za-z]{8,20}: ")

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
    # At the only ", proto=" of a "from=<...>" line: the accepted envelope.
    "sendmail-from": re.compile(rf"^, proto=E?SMTPS?A?, daemon=[\w.-]{{1,32}}, relay={HOST}$"),
}

_FIXED_CLASS = {
    "sendmail-no-mail": "protocol",
    "sendmail-lost": "lost-connection",
    "sendmail-pregreet": "pregreet",
    "sendmail-expn": "rejected",
    "sendmail-auth": "auth-failed",
    "sendmail-from": "delivered",
}

_NRCPTS = re.compile(r", nrcpts=(\d{1,6}), ")


def reject_class(ruleset: str, reject: str) -> str:
    """The class of a ruleset's reject= text ("550 5.7.1 <x>... Relaying denied")."""
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


def match(msg: str) -> tuple[str, IPAddress, str] | None:
    """(pattern name, client address, class) of a sendmail message, or None."""
    q = _QID.match(msg)
    if q is not None:
        msg = msg[q.end():]
    at = 0
    if msg.startswith("ruleset="):
        if msg.count("relay=") != 1:
            return None
        name = "sendmail-ruleset"
        at = msg.find("relay=")
    elif msg.startswith("AUTH failure ("):
        name = "sendmail-auth"
        at = msg.rfind(", relay=") + 2
        if at < 2:
            return None
    elif msg.startswith("from="):
        if msg.count("relay=") != 1 or msg.count("proto=") != 1 or msg.count("nrcpts=") != 1:
            return None
        n = _NRCPTS.search(msg)
        if n is None or n.group(1) == "0":
            return None  # no recipient accepted: no mail was delivered
        name = "sendmail-from"
        at = msg.find(", proto=")
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
    return name, ip, cls
