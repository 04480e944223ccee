"""The header layer: split a log line into its time, program and message.

Three framings reach netblock: classic (RFC 3164) syslog files, RFC 3339 syslog
files (rsyslog's high-precision format, syslog-ng's ISO dates) and Exim's own
mainlog/rejectlog.  The program field matters for security: it is the part of
the line a remote client cannot write, so the MTA parsers dispatch on it and
never look for an MTA's text anywhere else in the line.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

# The timestamp, then for syslog framings an optional "<facility.priority>"
# (BSD syslogd's print_priority), the host and "tag[pid]: ".  Some writers
# glue the host to a fractional RFC 3339 stamp ("...27.633279localhost").  The host cannot
# hold brackets, so "evil[9]: postfix/smtpd[1]: ..." reads as program "evil"
# even on a line without a host field.
_HEADER = re.compile(
    r"^(?:"
    r"(?P<bsd>[A-Z][a-z]{2} {1,2}\d{1,2} \d\d:\d\d:\d\d) "
    r"|(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?)(?: |(?=[A-Za-z]))"
    r"|(?P<exim>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,9})?(?: [+-]\d{4})?) "
    r")(?:<[a-z0-9.]{1,32}> )?"
    r"(?:(?P<host>[^\s\[\]]{1,255}) (?P<tag>[^\s\[\]:]{1,128})(?:\[\d{1,10}\])?: )?"
)

BSD, ISO, EXIM = "bsd", "iso", "exim"

_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


# The classic framing alone, tried first: it is most of what a mail server
# writes.  Also the head of the sources package's fused Postfix fast path.
CLASSIC_HEADER = (
    r"^(?P<stamp>[A-Z][a-z]{2} {1,2}\d{1,2} \d\d:\d\d:\d\d) (?:<[a-z0-9.]{1,32}> )?"
    r"[^\s\[\]]{1,255} (?P<tag>[^\s\[\]:]{1,128})(?:\[\d{1,10}\])?: (?P<msg>)"
)
_CLASSIC = re.compile(CLASSIC_HEADER)


def split(line: str) -> tuple[str, str, str, str] | None:
    """(stamp kind, stamp text, program, message) of a line, or None.

    The program is the tag without its pid, "" for a line of Exim's own log
    (which has no tag).  A syslog line without a tag is no line of ours.
    """
    m = _CLASSIC.match(line)
    if m is not None:
        stamp, tag, _ = m.groups()
        return BSD, stamp, tag, line[m.end():]
    m = _HEADER.match(line)
    if m is None:
        return _bare_exim(line)
    bsd, iso, exim, tag = m.group("bsd", "iso", "exim", "tag")
    rest = line[m.end():]
    if bsd is not None:
        if tag is None:
            return None
        return BSD, bsd, tag, rest
    if iso is not None:
        if tag is None:
            return None
        return ISO, iso, tag, rest
    # Exim's own log has no host or tag, and an Exim message never starts
    # with a host name and an Exim tag; anything else that looks like one is
    # the message's (a junk HELO: "H=(a postfix/smtpd[1]: NOQUEUE: reject: ...").
    if tag is not None and _EXIM_TAG.match(tag) and _HOSTNAME.match(m.group("host")):
        return EXIM, exim, tag, rest
    return EXIM, exim, "", line[len(exim) + 1:]


_EXIM_TAG = re.compile(r"exim\d?$")
_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,254}$")


# journald's "HOST exim[PID]: " without a syslog stamp, before Exim's own
# stamp (log_file_path = syslog keeps it; fail2ban's journal lines look so).
_BARE_EXIM = re.compile(
    r"^[^\s\[\]]{1,255} (?P<tag>exim\d?)(?:\[\d{1,10}\])?: "
    r"(?P<exim>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,9})?(?: [+-]\d{4})?) "
)


def _bare_exim(line: str) -> tuple[str, str, str, str] | None:
    m = _BARE_EXIM.match(line)
    if m is None:
        return None
    return EXIM, m.group("exim"), m.group("tag"), line[m.end():]


_BSD_CACHE: dict[tuple[str, int], datetime | None] = {}
# Local time's UTC offset per hour: asking the C library for every new second
# would cost more than parsing the line (DST changes on hour boundaries).
_OFFSETS: dict[tuple[int, int, int, int], timedelta] = {}
# Consecutive lines mostly share their stamp: remember the last answer.
_last_stamp: str | None = None
_last_year: int | None = None
_last_now: datetime | None = None
_last_time: datetime | None = None
_LOCAL_ALLOWANCE = timedelta(days=1)


def timestamp(kind: str, stamp: str, year: int | None = None, now: datetime | None = None) -> datetime | None:
    """The aware UTC time of a header stamp, or None if it names no real time.

    Stamps without an offset are local time, as syslogd writes them.  Classic
    stamps lack the year: `year` if given, else the year that does not put the
    line in the future relative to `now` -- with a day's allowance for clock
    skew between the hosts writing one log, so a stamp a few seconds ahead is
    not thrown back a whole year.
    """
    global _last_stamp, _last_year, _last_now, _last_time
    if kind == BSD:
        if stamp == _last_stamp and now is _last_now and year == _last_year:
            return _last_time
        now_arg = now
        if year is None:
            if now is None:
                now = datetime.now(timezone.utc)
            elif now.tzinfo is None:
                now = now.astimezone(timezone.utc)
            t = _bsd(stamp, now.year)
            if t is not None and t > now + _LOCAL_ALLOWANCE:
                t = _bsd(stamp, now.year - 1)
        else:
            t = _bsd(stamp, year)
        _last_stamp, _last_year, _last_now, _last_time = stamp, year, now_arg, t
        return t
    if kind == ISO and stamp[-1:] == "Z":
        stamp = stamp[:-1] + "+00:00"
    elif kind == EXIM and len(stamp) > 19 and stamp[-6] == " ":
        stamp = stamp[:-6] + stamp[-5:]  # "... 01:17:56 +0100" (log_timezone)
    try:
        t = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.astimezone()
    return t.astimezone(timezone.utc)


_MINUTES: dict[tuple[str, int], datetime | None] = {}
_SECONDS = [timedelta(seconds=s) for s in range(60)]


def _bsd(stamp: str, year: int) -> datetime | None:
    key = (stamp, year)
    try:
        return _BSD_CACHE[key]
    except KeyError:
        pass
    # A log of one day holds 86,400 stamps but only 1,440 minutes: the start of
    # the minute is computed once, its seconds added (the offset to UTC is the
    # hour's).  A second beyond 59 takes the general path, which refuses it.
    ss = stamp[-2:]
    base = None
    if "0" <= ss[0] <= "5" and "0" <= ss[1] <= "9":
        minute = (stamp[:-3], year)
        try:
            base = _MINUTES[minute]
        except KeyError:
            base = _MINUTES[minute] = _bsd_exact(stamp[:-3] + ":00", year)
    t: datetime | None
    if base is not None:
        t = base + _SECONDS[int(ss)]
    else:
        t = _bsd_exact(stamp, year)
    if len(_BSD_CACHE) > 100_000:
        _BSD_CACHE.clear()
        _MINUTES.clear()
        _OFFSETS.clear()
    _BSD_CACHE[key] = t
    return t


def _bsd_exact(stamp: str, year: int) -> datetime | None:
    month = _MONTHS.get(stamp[:3])
    day, clock = stamp[4:].split()
    hh, mm, ss = clock.split(":")
    if month is None:
        return None
    try:
        hour = (year, month, int(day), int(hh))
        offset = _OFFSETS.get(hour)
        if offset is None:
            local = datetime(*hour).astimezone().utcoffset()
            assert local is not None  # astimezone() gives an aware datetime, which has an offset
            offset = _OFFSETS[hour] = local
        return datetime(*hour, int(mm), int(ss), tzinfo=timezone.utc) - offset
    except (ValueError, TypeError):  # Feb 29 of a year without one, 25:00:00, "Foo 1", ...
        return None
