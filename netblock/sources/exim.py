"""Exim: what the mainlog/rejectlog (or exim's syslog lines) say about SMTP clients.

Exim names a client as "NAME (HELO) [IP]:PORT" -- every part but the address
optional -- behind "H=" or behind fixed text ("authenticator failed for",
"SMTP call from").  The HELO in parentheses is the client's own words, and so
are the quoted command of a protocol error, F=<sender>, RCPT <address> and
input="...": patterns run through Exim's fixed text up to the host field, and a
HELO may hold no blank or parenthesis (Exim refuses such a HELO unless told to
accept junk), so it cannot fake a second "[address]".  Where attacker text
comes *before* the host field, the line is only read when it is unambiguous
(see `match`).
"""

from __future__ import annotations

import re

from netaddr import IPAddress

from .fields import IP, client_ip, dnsbl_zone

MTA = "exim"

PROGRAM = re.compile(r"^exim\d?$")

_NAME = r"[^\s()\[\]]{1,255}"
HOST = rf"(?:{_NAME} )?(?:\([^\s()]{{0,255}}\) )?\[(?P<ip>{IP})\](?::\d{{1,5}})?"
# Exim's own key=value fields that may sit between the host and the verb.
_FIELDS = r"(?: (?:I|Ci|CV|SNI|DN|X|F|P|S|U|A|TFO|K|L|R)=\S{0,1024}){0,16}"

# Mainlog prefix: the optional "[pid] " (log_selector +pid) and message id.  A
# leading timestamp is Exim's own when journald or syslog carry a mainlog-style
# line (log_file_path = syslog with a timestamp).
_PREFIX = re.compile(
    r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,9})?(?: [+-]\d{4})? )?(?:\[\d{1,10}\] )?"
    r"(?:[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4} )?"
)

PATTERNS: dict[str, re.Pattern[str]] = {
    "exim-h-rejected": re.compile(
        rf"^(?:F=\S{{0,1024}} )?H={HOST}{_FIELDS} (?P<verb>rejected|sender verify fail|dropped by) "),
    "exim-auth": re.compile(rf"^[\w-]{{1,64}} authenticator failed for {HOST}(?=[: ]|$)"),
    # Matched at the last '" H=' of a line starting 'SMTP protocol error in "'
    # or 'SMTP syntax error in "': the quoted command before it is the client's,
    # Exim's own error text after it is not.
    "exim-protocol-error": re.compile(rf'^" H={HOST}(?= |$)'),
    "exim-sync-connection": re.compile(
        rf"^SMTP protocol synchronization error \([^()]{{1,100}}\): rejected connection from H={HOST}(?= |$)"),
    "exim-sync-command": re.compile(
        rf'^SMTP protocol synchronization error \([^()]{{1,100}}\): rejected "[^\n]{{0,8192}}" H={HOST}(?= |$)'),
    "exim-call-dropped": re.compile(
        rf"^SMTP call from {HOST}(?: (?:I|Ci|D)=\S{{0,100}}){{0,3}} dropped: too many "),
    "exim-no-mail": re.compile(rf"^no MAIL in SMTP connection from {HOST}(?= |$)"),
    "exim-drop-acl": re.compile(rf"^SMTP connection from {HOST}(?: (?:I|Ci)=\S{{0,100}}){{0,2}} closed by DROP in ACL"),
    "exim-connect": re.compile(
        rf"^SMTP connection from {HOST}(?: (?:I|Ci)=\S{{0,100}}){{0,2}}"
        r"(?: \(TCP/IP connection count = \d{1,10}\))?$"),
    "exim-too-many": re.compile(
        rf"^Connection from {HOST}(?: I=\S{{0,100}})? refused: too many connections from that IP address"),
    "exim-accept": re.compile(rf"^<= \S{{1,1024}}(?: R=\S{{1,64}})? H={HOST}(?= |$)"),
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
}

_UNKNOWN_USER = ("unrouteable address", "unknown user", "no such user", "user unknown",
                 "unknown local-part", "mailbox unavailable", "no mailbox")


def reject_class(verb: str, rest: str) -> str:
    """The class of what follows "rejected"/"sender verify fail"/"dropped by"."""
    if rest.startswith("RCPT ") or rest.startswith("MAIL "):
        end = rest.find(">: ") if rest[5:6] == "<" else -1
        if end >= 0:
            reason = rest[end + 3:]
        else:
            end = rest.find(": ")
            reason = rest[end + 2:] if end >= 0 else ""
    else:
        reason = rest
    zone = dnsbl_zone(reason)
    if zone:
        return "dnsbl:" + zone
    if verb == "rejected":
        if rest.startswith("EHLO or HELO"):
            return "bad-helo"
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
    if verb == "sender verify fail":
        return "sender-rejected"
    return "rejected"


def _name_for(msg: str) -> tuple[str, int] | None:
    """The one pattern a message can match, and where to match it."""
    c = msg[:2]
    if c == "H=" or c == "F=":
        return "exim-h-rejected", 0
    if c == "<=":
        return "exim-accept", 0
    if msg.startswith("SMTP "):
        if msg.startswith("SMTP connection from "):
            return ("exim-drop-acl" if " closed by DROP in ACL" in msg else "exim-connect"), 0
        if msg.startswith("SMTP call from "):
            return "exim-call-dropped", 0
        if msg.startswith('SMTP protocol error in "') or msg.startswith('SMTP syntax error in "'):
            return "exim-protocol-error", msg.rfind('" H=')
        if msg.startswith("SMTP protocol synchronization error ("):
            if " rejected connection from H=" in msg:
                return "exim-sync-connection", 0
            # The command before the host and the input after it are both the
            # client's: with a second " H=" in the line, either could be ours.
            if msg.count(" H=") == 1:
                return "exim-sync-command", 0
        return None
    if msg.startswith("no MAIL in SMTP connection from "):
        return "exim-no-mail", 0
    if msg.startswith("Connection from "):
        return "exim-too-many", 0
    if " authenticator failed for " in msg:
        return "exim-auth", 0
    return None


def match(msg: str) -> tuple[str, IPAddress, str] | None:
    """(pattern name, client address, class) of an Exim log message, or None."""
    p = _PREFIX.match(msg)
    if p.end():
        msg = msg[p.end():]
    found = _name_for(msg)
    if found is None:
        return None
    name, at = found
    if at < 0:
        return None
    m = PATTERNS[name].match(msg[at:] if at else msg)
    if m is None:
        return None
    ip = client_ip(m.group("ip"))
    if ip is None:
        return None
    cls = _FIXED_CLASS.get(name)
    if cls is None:
        cls = reject_class(m.group("verb"), msg[m.end():])
    return name, ip, cls
