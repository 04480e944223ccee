"""Mail-log sources: turn one log line or journal entry into an Observation.

The address always comes from the MTA's own client field, found by anchoring
on the MTA's fixed text and on the syslog program field (see postfix.py,
exim.py, sendmail.py); a line where that field cannot be found is ignored, not
guessed.  Names in a log are never resolved.

`explain()` tells which named pattern matched, so the test corpus can prove
that every pattern has a sample.  With `marks=True` the readers also return
marker classes (fields.MARK): an ambiguous line, or one half of a message's
acceptance; sources.join settles them into observations.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from netaddr import IPAddress

from ..errors import BadInput
from ..model import Observation
from . import exim, postfix, sendmail, syslog
from .fields import MARK, client_ip

CLASSES: tuple[str, ...] = (
    "dnsbl:ZONE",  # the one parametrised class: "dnsbl:" + the list's zone, lowercased
    "no-rdns",
    "dynamic",
    "bad-helo",
    "unknown-user",
    "relay-denied",
    "sender-rejected",
    "auth-failed",
    "lost-connection",
    "protocol",
    "pregreet",
    "hangup",
    "rejected",
    "connect",  # not abuse: a new SMTP connection
    "delivered",  # not abuse: the MTA accepted mail from this client
)

FORMATS = ("auto", "postfix", "exim", "sendmail")

# Longer lines are cut here before any matching (the caller counts them): no
# MTA writes a client field that far in, and it bounds every pattern's work.
MAX_LINE = 8192


# A frozen dataclass's __init__ sets each field through object.__setattr__,
# which costs more than parsing a Postfix line.  While Observation is the plain
# (non-slots) dataclass with exactly these fields, the hot path fills the
# instance dict directly: the object is equal and just as immutable.  Any other
# shape of Observation falls back to its constructor.
_new = object.__new__


def _observation_fast(time, ip, cls, mta, source, position) -> Observation:
    obs = _new(Observation)
    d = obs.__dict__
    d["time"] = time
    d["ip"] = ip
    d["cls"] = cls
    d["mta"] = mta
    d["source"] = source
    d["position"] = position
    return obs


_observation = (
    _observation_fast
    if tuple(f.name for f in dataclasses.fields(Observation)) == ("time", "ip", "cls", "mta", "source", "position")
    and not hasattr(Observation, "__slots__") and not hasattr(Observation, "__post_init__")
    else Observation
)

# For callers that build observations in bulk (ingest, from sources.batch tuples).
make_observation = _observation

# Classic syslog header and every Postfix pattern in one regex: see postfix.fused().
_FAST, _FAST_GROUPS = postfix.fused(syslog.CLASSIC_HEADER)

_PROGRAMS: dict[str, tuple[str, str] | None] = {}

# What a _FAST match means, by (program, matched group): a Postfix pattern to
# finish (name, address group, class or None when finish() must decide,
# queue ID group or None), _NOTHING, or _GENERAL (another MTA's line: take
# the general path).
_ROUTES: dict[tuple[str, str | None], tuple[str, str | None, str | None, str | None] | str] = {}
_NOTHING, _GENERAL = "nothing", "general"
_POSTFIX_FORMATS = ("auto", "postfix")


def _route(program: str, group: str | None) -> tuple[str, str | None, str | None, str | None] | str:
    found = _program(program)
    route: tuple[str, str | None, str | None, str | None] | str
    if found is None:
        route = _NOTHING
    elif found[0] != "postfix":
        route = _GENERAL
    else:
        # _FAST holds every Postfix pattern: none matched means none would.
        branch = None if group is None else _FAST_GROUPS.get(group)
        if branch is None or branch[1] != found[1]:
            route = _NOTHING
        else:
            name, _daemon, ip_group, qid_group = branch
            fixed = postfix.FIXED_CLASS.get(name)
            route = (name, ip_group, None if name == "smtpd-sasl" else fixed, qid_group)
    if len(_ROUTES) > 10_000:
        _ROUTES.clear()
    _ROUTES[(program, group)] = route
    return route


def _program(program: str) -> tuple[str, str] | None:
    """(mta, kind) of a syslog tag, or None for any other program.  Cached."""
    try:
        return _PROGRAMS[program]
    except KeyError:
        pass
    found: tuple[str, str] | None
    if exim.PROGRAM.match(program):
        found = ("exim", "exim")
    elif sendmail.PROGRAM.match(program):
        found = ("sendmail", "sendmail")
    else:
        m = postfix.PROGRAM.match(program)
        found = ("postfix", m.group(1)) if m else None
    if len(_PROGRAMS) > 10_000:
        _PROGRAMS.clear()
    _PROGRAMS[program] = found
    return found


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise BadInput(f"unknown log format {fmt!r} (expected one of: {', '.join(FORMATS)})")


def explain(program: str, message: str, *, fmt: str = "auto") -> tuple[str, IPAddress | None, str, str] | None:
    """(pattern name, address, class, mta) for a message, or None if nothing matches.

    The class may be a marker (fields.MARK...): an ambiguous line, or one half
    of a message's acceptance that sources.join pairs with the other.
    """
    check_format(fmt)
    return _match(program, message, fmt)


def _match(program: str, message: str, fmt: str) -> tuple[str, IPAddress, str, str] | None:
    found = _program(program)
    if found is None:
        return None
    mta, kind = found
    if fmt != "auto" and fmt != mta:
        return None
    if len(message) > MAX_LINE:
        message = message[:MAX_LINE]
    if mta == "postfix":
        hit = postfix.match(kind, message)
    elif mta == "exim":
        hit = exim.match(message)
    else:
        hit = sendmail.match(message)
    if hit is None:
        return None
    return hit[0], hit[1], hit[2], mta


def parse_message(program: str, message: str, time: datetime, *, fmt: str = "auto",
                  marks: bool = False) -> Observation | None:
    """The observation in one message of `program` (a syslog tag without pid), or None.

    The journald reader calls this with SYSLOG_IDENTIFIER and MESSAGE.  With
    `marks`, marker observations too (class starting with fields.MARK, the
    address None for some): the caller then runs them through sources.join.
    """
    hit = explain(program, message, fmt=fmt)
    if hit is None or (not marks and hit[2][0] == MARK):
        return None
    return _observation(time, hit[1], hit[2], _mta(hit), "", 0)


def parse_line(
    line: str,
    *,
    fmt: str = "auto",
    source: str = "",
    position: int = 0,
    year: int | None = None,
    now: datetime | None = None,
    marks: bool = False,
) -> Observation | None:
    """The observation in one whole log line (any of the framings syslog.py reads), or None.

    `marks` as for parse_message.
    """
    if fmt not in FORMATS:
        check_format(fmt)
    if len(line) > MAX_LINE:
        line = line[:MAX_LINE]
    elif line[-1:] == "\n":
        line = line.rstrip("\r\n")
    m = _FAST.match(line)
    if m is not None:
        program = m.group(2)
        route = _ROUTES.get((program, m.lastgroup))
        if route is None:
            route = _route(program, m.lastgroup)
        if route is not _GENERAL:
            if isinstance(route, str) or fmt not in _POSTFIX_FORMATS:  # _NOTHING (not _GENERAL, above)
                return None
            name, ip_group, cls, qid_group = route
            if qid_group is not None:
                if not marks:
                    return None
                hit = postfix.finish(name, ip_group and m.group(ip_group), line, m.end(), m.group(qid_group))
                if hit is None:
                    return None
                ip, cls = hit[1], hit[2]
            else:
                assert ip_group is not None  # only a queue-ID pattern (qmgr's) has no address
                if cls is None:
                    hit = postfix.finish(name, m.group(ip_group), line, m.end())
                    if hit is None or (not marks and hit[2][0] == MARK):
                        return None
                    ip, cls = hit[1], hit[2]
                else:
                    ip = client_ip(m.group(ip_group))
                    if ip is None:
                        return None
            time = syslog.timestamp(syslog.BSD, m.group(1), year, now)
            if time is None:
                return None
            return _observation(time, ip, cls, "postscreen" if name == "postscreen-connect" else "postfix",
                                source, position)
        kind, stamp = syslog.BSD, m.group(1)
        message = line[m.start(3):]
    else:
        head = syslog.split(line)
        if head is None:
            return None
        kind, stamp, program, message = head
    matched = _match(program or "exim", message, fmt)
    if matched is None or (not marks and matched[2][0] == MARK):
        return None
    time = syslog.timestamp(kind, stamp, year, now)
    if time is None:
        return None
    return _observation(time, matched[1], matched[2], _mta(matched), source, position)


def _mta(hit: tuple) -> str:
    """The observation's mta: "postscreen" for postscreen's CONNECT (see postfix.FIXED_CLASS)."""
    return "postscreen" if hit[0] == "postscreen-connect" else hit[3]


def detect_format(line: str) -> str | None:
    """"postfix", "exim" or "sendmail" by the line's program field (Exim's own log has none)."""
    head = syslog.split(line[:MAX_LINE])
    if head is None:
        return None
    found = _program(head[2] or "exim")
    return None if found is None else found[0]
