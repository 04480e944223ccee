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

from .fields import ACCEPTED, AMBIGUOUS, CLIENT, IP, NAME, client_ip, looks_dynamic

MTA = "postfix"

# postfix/smtpd, postfix/submission/smtpd, postfix-in/smtps/smtpd (multi-instance
# syslog_name), postfix/postscreen.  The kind is the last component.
PROGRAM = re.compile(r"^postfix[\w.-]{0,64}(?:/[\w.-]{1,64}){0,4}/(smtpd|postscreen|qmgr)$")

_CLIENT = rf"from (?P<name>{NAME})\[(?P<ip>{IP})\](?::\d{{1,5}})?"
_PS_CLIENT = rf"from \[(?P<ip>{IP})\]:\d{{1,5}}"

PATTERNS: dict[str, re.Pattern[str]] = {
    # Ordered by how often each kind of line occurs in a busy log: fused() tries
    # them in this order.
    "smtpd-reject": re.compile(
        rf"^(?:NOQUEUE|[0-9A-Za-z]{{5,20}}): (?:milter-)?reject: [A-Z][A-Z-]{{0,20}} {_CLIENT}: "),
    "smtpd-connect": re.compile(rf"^connect {_CLIENT}$"),
    "smtpd-client": re.compile(
        rf"^(?P<qid>[0-9A-Za-z]{{5,20}}): client=(?P<name>{NAME})\[(?P<ip>{IP})\](?::\d{{1,5}})?(?:,|$)"),
    # qmgr moves a message into the active queue only once cleanup has
    # committed it, i.e. after smtpd answered "250 Ok: queued" at the end of
    # DATA.  The sender is the client's text, but the line's end is qmgr's.
    "qmgr-active": re.compile(
        r"^(?P<qid>[0-9A-Za-z]{5,20}): from=<[^\n]{0,4096}>, size=\d{1,15}, nrcpt=\d{1,9} \(queue active\)$"),
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
    # smtpd logs "QUEUEID: client=" at the first accepted RCPT, before DATA: no
    # proof of mail yet.  Only qmgr's "(queue active)" for the same queue ID
    # is (sources.join pairs the two; see README "How a block is decided").
    "smtpd-client": CLIENT,
    "qmgr-active": ACCEPTED,
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


def reject_class(reason: str, client: str = "", name: str = "") -> str | None:
    """The class of a Postfix reject reply ("554 5.7.1 <x>: Relay access denied; from=<...").

    smtpd's log_whatsup() writes "CODE DSN <target>: WORDS; from=<S> to=<R>
    proto=P helo=<H>": the target is the client's (a recipient or sender in
    Postfix's internal form, i.e. a quoted local part *without* its quotes,
    the HELO name or the client's name), the words are the restriction's and
    the tail is the client's again.  Only the words count (reply_split), and
    the client's own address (`client`, as the line spells it) is masked
    wherever the reply repeats it, so the address is never read as words.
    None for what is no verdict on the client: greylisting (a lawful sender
    retries) and postscreen's "all server ports busy".  AMBIGUOUS when the
    line can be read in more than one way with different classes.  `name` is
    the client's name in the client field ("unknown"), one of the targets.
    """
    reason = mask_client(reason, client)
    split = reply_split(reason, mask_client(name, client), "\0" if client else "")
    if split is None:
        return AMBIGUOUS
    return split if type(split) is not tuple else words_class(reason[split[0]:split[1]])


def mask_client(reason: str, client: str) -> str:
    """`reason` with every copy of the client's address text replaced by a NUL.

    DNSBL and reverse-DNS replies quote the address ("Client host [IP] blocked
    using ...; https://.../query/ip/IP"): masked, a storm's replies reduce to a
    handful of texts, which is what lets sources.batch remember their classes.
    A NUL is part of no word the classes look for.
    """
    return reason.replace(client, "\0") if client else reason


def reply_words(reason: str) -> str:
    """The restriction's own words of a reply that has one reading (tests, docs)."""
    split = reply_split(reason)
    return "" if type(split) is not tuple else reason[split[0]:split[1]]


_TAILS = ("; from=<", "; to=<", "; proto=", "; helo=<")
_MAX_READINGS = 16  # ">: " ends tried for one target; each costs a pass over the line


def tail_at(reason: str, pos: int) -> int:
    """Where log_whatsup()'s own tail begins at or after `pos` (the ";" before from=, to=, proto=, helo=)."""
    i = reason.find("; ", pos)
    while i >= 0:
        if reason.startswith(_TAILS, i):
            return i
        i = reason.find("; ", i + 2)
    return len(reason)


def code_end(reason: str) -> int:
    """Where a reply's text begins: after "NNN N.N.N " (or "NNN ")."""
    pos = 0
    if reason[3:4] == " " and reason[:3].isdigit():
        pos = 4
        if reason[4:5].isdigit() and reason[5:6] == ".":
            blank = reason.find(" ", 4)
            if blank >= 0:
                pos = blank + 1
    return pos


def reply_split(reason: str, name: str = "", addr: str = ""):
    """(start, end) of the restriction's words, a class when several readings agree, or None.

    Without an echoed target the words run from the code to the tail.  With
    one, the target ends at a ">: "; a target may itself hold ">: " (Postfix
    logs a quoted local part without its quotes), so when there is more than
    one, each end is tried, and a reading counts only if its target is one of
    the things Postfix echoes: the line's own sender or recipient (as the tail
    spells it, quotes removed), its HELO name, or the client's name or
    address.  The readings left must agree on the class; None if they do not.
    """
    pos = code_end(reason)
    if not reason.startswith("<", pos):
        return pos, tail_at(reason, pos)
    first = reason.find(">: ", pos)
    if first < 0:
        return pos, tail_at(reason, pos)
    if reason.find(">: ", first + 3) < 0:
        return first + 3, tail_at(reason, first + 3)
    found = set()
    end = first
    for _ in range(_MAX_READINGS):
        if end < 0:
            break
        target = reason[pos + 1:end]
        words = end + 3
        tail = tail_at(reason, words)
        if _echoed(target, reason, tail, name, addr):
            found.add(words_class(reason[words:tail]))
        end = reason.find(">: ", end + 1)
    if end >= 0 or len(found) != 1:
        return None  # readings disagree, or too many to try: no class is the client's to choose
    return found.pop()


def _echoed(target: str, reason: str, tail: int, name: str, addr: str) -> bool:
    """Whether `target` is what Postfix would echo, given the tail starting at reason[tail].

    The tail's from=<...> and to=<...> hold the address in the form
    info_log_address_format says (external: a local part that needs it is
    quoted; internal: as is); either form of `target` must fill the field
    exactly, up to the blank before the next field or the end of the line.
    """
    if target and target in (name, addr, f"{name}[{addr}]"):
        return True
    forms = (target, _external(target))
    i = tail + 2
    for field, following in (("from=<", " to=<"), ("to=<", " proto=")):
        if not reason.startswith(field, i):
            continue
        for form in forms:
            end = i + len(field) + len(form)
            if reason.startswith(form, i + len(field)) and reason.startswith(">", end) \
                    and (end + 1 == len(reason) or reason[end + 1] == " "):
                return True
        nxt = reason.find(following, i)
        if nxt < 0:
            break
        i = nxt + 1
    at = reason.find(" helo=<" + target + ">", tail)
    if at >= 0:
        end = at + len(target) + 8
        return end == len(reason) or reason.startswith(" sasl_", end)
    return False


_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]*")


def _external(address: str) -> str:
    """Postfix's external form of an internal address: a local part that is no dot-atom is quoted."""
    at = address.rfind("@")
    local, domain = (address, "") if at < 0 else (address[:at], address[at:])
    if _ATOM.fullmatch(local) and not local.startswith(".") and not local.endswith(".") and ".." not in local:
        return address
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"' + domain


def words_class(reason: str) -> str | None:
    """The class of a restriction's own words (what reply_split() located)."""
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
    groups = m.groupdict()
    return finish(name, groups.get("ip"), msg, m.end(), groups.get("qid"))


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
    elif kind == "qmgr":
        if msg.endswith(" (queue active)"):
            name = "qmgr-active"
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


def finish(name: str, ip_text: str | None, msg: str, end: int,
           qid: str | None = None) -> tuple[str, IPAddress | None, str] | None:
    """The result of pattern `name` having matched `msg` up to `end`.

    Queue lines give a marker class with their queue ID (fields.CLIENT,
    fields.ACCEPTED); qmgr's has no address.
    """
    if qid is not None:
        if ip_text is None:
            return name, None, FIXED_CLASS[name] + qid
        ip = client_ip(ip_text)
        return None if ip is None else (name, ip, FIXED_CLASS[name] + qid)
    assert ip_text is not None  # every pattern without a queue ID has a mandatory ip group
    ip = client_ip(ip_text)
    if ip is None:
        return None
    cls = FIXED_CLASS.get(name)
    if cls is None:
        cls = reject_class(msg[end:], ip_text, client_name(msg, end))
        if cls is None:
            return None
    elif name == "smtpd-sasl" and "Connection lost to authentication server" in msg:
        return None  # the auth server failed, not the client
    return name, ip, cls


def client_name(msg: str, end: int) -> str:
    """The name in the client field "from NAME[IP]" that ends before msg[end]."""
    at = msg.rfind(" from ", 0, end) + 6
    bracket = msg.find("[", at, end)
    return msg[at:bracket] if at >= 6 and bracket >= 0 else ""


KINDS = {name: name.split("-", 1)[0] for name in PATTERNS}  # pattern -> "smtpd" | "postscreen" | "qmgr"


def fused(header: str) -> tuple[re.Pattern[str], dict[str, tuple[str, str, str | None, str | None]]]:
    """One regex: `header` (ending at the message) followed by any of PATTERNS, or nothing.

    A busy Postfix log is mostly lines of these patterns; matching header and
    message in one call of the regex engine is several times cheaper than
    splitting the line first.  The returned map takes the match's lastgroup
    ("p_N", set when pattern N matched) to (pattern name, daemon, name of the
    group holding its address or None, name of the group holding its queue ID
    or None).  The caller still checks that the line's program is that daemon.
    """
    branches, groups = [], {}
    for i, (name, pattern) in enumerate(PATTERNS.items()):
        body = pattern.pattern[1:]  # every pattern starts with "^"
        body = body.replace("(?P<ip>", f"(?P<ip_{i}>").replace("(?P<name>", "(?:").replace("(?P<qid>", f"(?P<q_{i}>")
        branches.append(f"(?P<p_{i}>{body})")
        groups[f"p_{i}"] = (name, KINDS[name], f"ip_{i}" if "(?P<ip>" in pattern.pattern else None,
                            f"q_{i}" if "(?P<qid>" in pattern.pattern else None)
    return re.compile(header + "(?:" + "|".join(branches) + ")?"), groups
