"""Exim: what the mainlog/rejectlog (or exim's syslog lines) say about SMTP clients.

Exim names a client as "NAME (HELO) [IP]:PORT" -- every part but the address
optional -- behind "H=" or behind fixed text ("authenticator failed for",
"SMTP call from").  The HELO in parentheses is the client's own words, and so
are the quoted command of a protocol error, F=<sender>, RCPT <address> and
input="...": patterns run through Exim's fixed text up to the host field, and a
HELO may hold no blank or parenthesis (Exim refuses such a HELO unless told to
accept junk; a line with a junk HELO is not read), so it cannot fake a second
"[address]".  The sender of "<=" and F=<...> and the address of "RCPT <...>"
are read quote-aware ('"a H=[x] b"@y' is one address).  Where the client's
text comes *before* the host field (the quoted command of a protocol error),
the host is the one place that can be it; a line with two is AMBIGUOUS.
"""

from __future__ import annotations

import re

from netaddr import IPAddress

from .fields import AMBIGUOUS, IP, address_end, client_ip, dnsbl_zone, word_end

MTA = "exim"

PROGRAM = re.compile(r"^exim\d?$")

_NAME = r"[^\s()\[\]]{1,255}"
HOST = rf"(?:{_NAME} )?(?:\([^\s()]{{0,255}}\) )?\[(?P<ip>{IP})\](?::\d{{1,5}})?"

# Mainlog prefix: the optional "[pid] " (log_selector +pid) and message id.  A
# leading timestamp is Exim's own when journald or syslog carry a mainlog-style
# line (log_file_path = syslog with a timestamp).
_PREFIX = re.compile(
    r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,9})?(?: [+-]\d{4})? )?(?:\[\d{1,10}\] )?"
    r"(?:[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4} )?"
)

PATTERNS: dict[str, re.Pattern[str]] = {
    # Matched at the "H=" of a line starting with it (or after the sender of
    # "F=<...> H=..."): the fields after the host are walked by _h_line.
    "exim-h-rejected": re.compile(rf"^H={HOST}(?= |$)"),
    "exim-auth": re.compile(rf"^[\w-]{{1,64}} authenticator failed for {HOST}(?=[: ]|$)"),
    # Matched at the '" H=' that ends the quoted command of 'SMTP protocol
    # error in "' / 'SMTP syntax error in "' when it is the line's only one.
    "exim-protocol-error": re.compile(rf'^" H={HOST}(?= |$)'),
    "exim-sync-connection": re.compile(
        rf"^SMTP protocol synchronization error \([^()]{{1,100}}\): rejected connection from H={HOST}(?= |$)"),
    # Matched at the line's only '" H=', after the quoted input.
    "exim-sync-command": re.compile(rf'^" H={HOST}(?= |$)'),
    "exim-call-dropped": re.compile(
        rf"^SMTP call from {HOST}(?: (?:I|Ci|D)=\S{{0,100}}){{0,3}} dropped: too many "),
    "exim-no-mail": re.compile(rf"^no MAIL in SMTP connection from {HOST}(?= |$)"),
    "exim-drop-acl": re.compile(rf"^SMTP connection from {HOST}(?: (?:I|Ci)=\S{{0,100}}){{0,2}} closed by DROP in ACL"),
    "exim-connect": re.compile(
        rf"^SMTP connection from {HOST}(?: (?:I|Ci)=\S{{0,100}}){{0,2}}"
        r"(?: \(TCP/IP connection count = \d{1,10}\))?$"),
    "exim-too-many": re.compile(
        rf"^Connection from {HOST}(?: I=\S{{0,100}})? refused: too many connections from that IP address"),
    # Matched after the sender of "<= SENDER [R=ID]" (read quote-aware).
    "exim-accept": re.compile(rf"^ H={HOST}(?= |$)"),
    # host.c: host_lookup_failed (log_selector default): the client's address has no name.
    "exim-no-rdns": re.compile(rf"^no host name found for IP address (?P<ip>{IP})$"),
    # host.c: the client's reverse name does not resolve back (during the connection).
    "exim-no-forward": re.compile(
        rf"^no IP address found for host {_NAME} \(during SMTP connection from {HOST}"
        r"(?: (?:I|Ci)=[^\s()]{1,100}){0,2}\)$"),
    # smtp_in.c: check_helo() refused the argument (host_and_ident(FALSE): no "H=").
    "exim-helo-invalid": re.compile(
        rf"^rejected (?:EHLO|HELO) from {HOST}(?: (?:I|U|Ci)=[^\s:]{{1,100}}){{0,3}}: syntactically invalid argument"),
}

_FIXED_CLASS = {
    "exim-auth": "auth-failed",
    "exim-protocol-error": "protocol",
    "exim-sync-connection": "protocol",
    "exim-sync-command": "protocol",
    "exim-call-dropped": "protocol",
    "exim-no-mail": "protocol",
    "exim-drop-acl": "rejected",
    "exim-connect": "connect",
    "exim-too-many": "rejected",
    "exim-accept": "delivered",
    "exim-no-rdns": "no-rdns",
    "exim-no-forward": "no-rdns",
    "exim-helo-invalid": "bad-helo",
}

_UNKNOWN_USER = ("unrouteable address", "unknown user", "no such user", "user unknown",
                 "unknown local-part", "mailbox unavailable", "no mailbox")

# The key=value fields Exim writes between the host and the verb of a
# rejection (host_and_ident, TLS, sender, SPF, DMARC info).  F= is the
# client's sender and is read quote-aware; the others hold no blank.
_FIELD = re.compile(r" (I|U|Ci|DS|X|CV|SNI|DN|F|P|S|A|TFO|K|L|R|spf|dmarc)=")


def reject_class(verb: str, rest: str) -> str:
    """The class of what follows "rejected "/"sender verify fail "/"dropped by ".

    The reason is Exim's (or the ACL's) text after the echoed "RCPT <addr>: "
    or "MAIL <addr>: ", the address read quote-aware; the HELO of "EHLO or
    HELO" is the client's, so that class is fixed.
    """
    if verb != "rejected":
        return "sender-rejected" if verb == "sender verify fail" else "rejected"
    if rest.startswith("EHLO or HELO"):
        return "bad-helo"
    if rest.startswith("RCPT ") or rest.startswith("MAIL "):
        end = address_end(rest, 5) if rest[5:6] == "<" else word_end(rest, 5)
        if end < 0 or not rest.startswith(": ", end):
            return "rejected"
        reason = rest[end + 2:]
    else:
        reason = rest
    zone = dnsbl_zone(reason)
    if zone:
        return "dnsbl:" + zone
    low = reason.lower()
    if low.startswith("host lookup failed"):  # Exim's words for a client without reverse DNS
        return "no-rdns"
    if "relay not permitted" in low:
        return "relay-denied"
    if "sender verify failed" in low:
        return "sender-rejected"
    if rest.startswith("RCPT ") and any(w in low for w in _UNKNOWN_USER):
        return "unknown-user"
    if rest.startswith("MAIL "):
        return "sender-rejected"
    return "rejected"


def _h_line(msg: str, at: int) -> tuple[str, IPAddress, str] | None:
    """A rejection line whose host field starts at msg[at] ("H=..."): walk its fields to the verb."""
    m = PATTERNS["exim-h-rejected"].match(msg[at:] if at else msg)
    if m is None:
        return None
    ip = client_ip(m.group("ip"))
    if ip is None:
        return None
    pos = at + m.end()
    for _ in range(24):
        f = _FIELD.match(msg, pos)
        if f is None:
            break
        value = f.end()
        if f.group(1) == "F":
            end = address_end(msg, value) if msg[value:value + 1] == "<" else word_end(msg, value)
        else:
            end = msg.find(" ", value)
        if end < 0:
            return None
        pos = end
    for verb in ("rejected", "sender verify fail", "dropped by"):
        if msg.startswith(verb, pos + 1) and msg[pos:pos + 1] == " ":
            rest = msg[pos + 2 + len(verb):]
            return "exim-h-rejected", ip, reject_class(verb, rest)
    return None


def _only(msg: str, marker: str, start: int, name: str):
    """The one place after `start` where `marker` starts a host field of pattern `name`.

    -1 when there is none; AMBIGUOUS when more than one could be the host
    (the client's command or error text around the field can imitate it).
    """
    found = -1
    i = msg.find(marker, start)
    pattern = PATTERNS[name]
    while i >= 0:
        if pattern.match(msg[i:]):
            if found >= 0:
                return AMBIGUOUS
            found = i
        i = msg.find(marker, i + 1)
    return found


def match(msg: str) -> tuple[str, IPAddress, str] | None:
    """(pattern name, client address, class) of an Exim log message, or None."""
    p = _PREFIX.match(msg)
    assert p is not None  # every part of _PREFIX is optional: it matches any text
    if p.end():
        msg = msg[p.end():]
    c = msg[:2]
    if c == "H=":
        return _h_line(msg, 0)
    if c == "F=":
        # "F=<sender> H=..." (local_scan): the sender comes first, read quote-aware.
        end = address_end(msg, 2) if msg[2:3] == "<" else word_end(msg, 2)
        if end < 0 or not msg.startswith(" H=", end):
            return None
        return _h_line(msg, end + 1)
    if c == "<=":
        # "<= SENDER [R=ID] H=HOST ...": the sender may be '"a H=[x] b"@y'.
        end = word_end(msg, 3)
        if end < 0:
            return None
        if msg.startswith(" R=", end):
            end = msg.find(" ", end + 1)
            if end < 0:
                return None
        return _finish("exim-accept", msg, end)
    if msg.startswith("SMTP "):
        if msg.startswith("SMTP connection from "):
            return _finish("exim-drop-acl" if " closed by DROP in ACL" in msg else "exim-connect", msg, 0)
        if msg.startswith("SMTP call from "):
            return _finish("exim-call-dropped", msg, 0)
        if msg.startswith('SMTP protocol error in "') or msg.startswith('SMTP syntax error in "'):
            return _finish("exim-protocol-error", msg, _only(msg, '" H=', 20, "exim-protocol-error"))
        if msg.startswith("SMTP protocol synchronization error ("):
            if " rejected connection from H=" in msg:
                return _finish("exim-sync-connection", msg, 0)
            at = msg.find(': rejected "')
            if at >= 0:
                return _finish("exim-sync-command", msg, _only(msg, '" H=', at + 12, "exim-sync-command"))
        return None
    if msg.startswith("no MAIL in SMTP connection from "):
        return _finish("exim-no-mail", msg, 0)
    if msg.startswith("Connection from "):
        return _finish("exim-too-many", msg, 0)
    if msg.startswith("no host name found for IP address "):
        return _finish("exim-no-rdns", msg, 0)
    if msg.startswith("no IP address found for host "):
        return _finish("exim-no-forward", msg, 0)
    if msg.startswith("rejected EHLO from ") or msg.startswith("rejected HELO from "):
        return _finish("exim-helo-invalid", msg, 0)
    if " authenticator failed for " in msg:
        return _finish("exim-auth", msg, 0)
    return None


def _finish(name: str, msg: str, at) -> tuple[str, IPAddress | None, str] | None:
    if at is AMBIGUOUS:
        return name, None, AMBIGUOUS
    if at < 0:
        return None
    m = PATTERNS[name].match(msg[at:] if at else msg)
    if m is None:
        return None
    ip = client_ip(m.group("ip"))
    if ip is None:
        return None
    return name, ip, _FIXED_CLASS[name]
