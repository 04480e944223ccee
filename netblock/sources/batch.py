"""Whole-chunk parsing: one regex search over many lines instead of one call per line.

`parse_line` costs a Python call, a regex match and a route lookup per line,
whatever the line says.  Here one compiled search runs over a chunk of
complete lines and stops only on lines that can yield an observation, so the
TLS chatter, disconnects and queue lines of a busy log cost no Python at all.

The result must be exactly what `parse_line` gives line by line (a test
compares both on the sample corpus, the real-world corpus and a generated
log), so the chunk regex is built from the same pieces and keeps the same
anchors:

* every match starts right after a newline and runs through the classic
  syslog header, with the program field spelled out (Postfix's smtpd or
  postscreen); the message patterns are postfix.PATTERNS themselves, with
  their end-of-line anchors turned into "before this line's newline";
* a line the fast patterns cannot settle -- another MTA's program field, or a
  header that is not classic syslog (it starts with a digit: RFC 3339 or
  Exim's own log) -- is handed whole to `parse_line`;
* any other line cannot match `parse_line`'s patterns either, and is skipped.

Over-long lines never reach this module: the reader (follow.read_blocks)
passes them one by one to `parse_line`, which caps them.  A pure-ASCII block
stays bytes and is searched by the same regex compiled for bytes, so most of a
log is never decoded.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from . import check_format, parse_line, postfix, syslog
from .fields import CACHE as _TEXT_IPS, MARK, parse_client_ip

# Tag part of postfix.PROGRAM up to the daemon.  Lazy: the common "postfix/smtpd"
# is found without backtracking; the tag is matched whole either way, because
# the daemon must be followed by the pid or ": ".
_POSTFIX_TAG = r"postfix[\w.-]{0,64}(?:/[\w.-]{1,64}){0,4}?/"
_PID = r"(?:\[\d{1,10}\])?: "
_OTHER_TAGS = r"(?:exim\d?|sendmail|sm-mta|sm-acceptingconnections)"  # exim.PROGRAM, sendmail.PROGRAM


def _header() -> str:
    """syslog.CLASSIC_HEADER up to the tag, which the caller spells out."""
    head = syslog.CLASSIC_HEADER
    cut = head.index("(?P<tag>")
    assert head.startswith("^(?P<stamp>") and head[cut:].startswith(r"(?P<tag>[^\s\[\]:]{1,128})(?:\[\d{1,10}\])?: ")
    return head[1:cut]


# The tag's own bounds (no blank, bracket or colon, at most 128 characters),
# checked ahead of a tag spelled out more loosely.
_TAG_BOUND = r"(?=[^\s\[\]:]{1,128}" + _PID + ")"
# The tags of almost every line, "postfix/smtpd" and "postfix/postscreen", are
# within those bounds and skip the check.  The general pattern is closed to
# them, so that a line whose message fails to match is not tried again
# through it (it would split such a tag the same way).
_FAST_TAGS = r"postfix/(?:smtpd|postscreen)(?:\[|: )"
_POSTFIX_TAGS = (r"(?:postfix/(?=" + _FAST_TAGS[8:] + ")|(?!" + _FAST_TAGS + ")" + _TAG_BOUND + _POSTFIX_TAG + ")")


def _body(pattern: re.Pattern[str], marker: str, ip: str) -> str:
    """A postfix pattern as one branch: "$" means the end of this line, not of the chunk."""
    body = pattern.pattern
    assert body.startswith("^") and "\\$" not in body, body
    body = body[1:].replace("$", r"(?=\r?\n)")
    body = body.replace("(?P<ip>", f"(?P<{ip}>").replace("(?P<name>", "(?:").replace("(?P<qid>", f"(?P<q{ip}>")
    # The empty marker group closes last, so lastindex names the branch; the
    # branch itself starts with fixed text, which lets the engine skip it at once.
    return f"{body}(?P<{marker}>)"


_GENERAL_ROUTE = ("general",)  # the whole line goes to parse_line


def _source(with_postfix: bool) -> tuple[str, dict[str, tuple]]:
    head = _header()
    branches: dict[str, list[str]] = {"smtpd": [], "postscreen": [], "qmgr": []}
    names: dict[str, tuple] = {}
    if with_postfix:
        for i, (name, pattern) in enumerate(postfix.PATTERNS.items()):
            marker, ip = f"p_{i}", f"ip_{i}"
            branches[postfix.KINDS[name]].append(_body(pattern, marker, ip))
            fixed = postfix.FIXED_CLASS.get(name)
            names[marker] = (name, ip if "(?P<ip>" in pattern.pattern else None,
                             None if name == "smtpd-sasl" else fixed, "q" + ip if "(?P<qid>" in pattern.pattern else None)
    alternatives = [f"{_TAG_BOUND}{_OTHER_TAGS}{_PID}(?P<other>)"]
    if with_postfix:
        alternatives.insert(0, _POSTFIX_TAGS + "(?:" + "|".join(
            f"{kind}{_PID}(?:{'|'.join(bodies)})" for kind, bodies in branches.items()) + ")")
    # One leading "\n" outside any alternation: the engine then jumps from
    # newline to newline instead of trying every character.
    # A line that starts with a digit (RFC 3339, Exim's own log) or with
    # journald's "HOST exim[PID]: " before Exim's stamp goes to parse_line.
    return (r"\n(?:" + head + "(?:" + "|".join(alternatives) + r")"
            r"|(?P<digit>(?=\d|[^\s\[\]]{1,255} exim\d?(?:\[\d{1,10}\])?: \d)))"), names


def _ascii_source(source: str) -> bytes:
    r"""The same regex for ASCII bytes.

    On ASCII text a str pattern's \d and \w mean what a bytes pattern's do;
    \s does not: Unicode counts the separators \x1c-\x1f as blanks.
    """
    assert r"\S" not in source and source.count(r"\s") == source.count(r"[^\s")
    return source.replace(r"[^\s", r"[^\s\x1c-\x1f").encode("ascii")


_COMPILED: dict[tuple[bool, bool], tuple[re.Pattern, dict[int, tuple]]] = {}


def _compiled(with_postfix: bool, ascii: bool) -> tuple[re.Pattern, dict[int, tuple]]:
    """The chunk regex and, per branch's marker group, (pattern name, address group, class)."""
    try:
        return _COMPILED[with_postfix, ascii]
    except KeyError:
        pass
    source, names = _source(with_postfix)
    rx = re.compile(_ascii_source(source) if ascii else source)
    assert rx.groupindex["stamp"] == _STAMP
    routes: dict[int, tuple] = {}
    for group, index in rx.groupindex.items():
        if group in ("other", "digit"):
            routes[index] = _GENERAL_ROUTE
        elif group in names:
            name, ip, cls, qid = names[group]
            routes[index] = (name, ip and rx.groupindex[ip], cls, qid and rx.groupindex[qid])
    _COMPILED[with_postfix, ascii] = rx, routes
    return rx, routes


_STAMP = 1  # group of the classic stamp
_SASL_LOST = "Connection lost to authentication server"
_MISSING = object()

# Addresses and reject classes by their text as found in a line (str, or bytes
# from an ASCII block).  Bounded: cleared when full.
_IPS: dict = {}
_REASONS: dict = {}
_CACHE_MAX = 200_000
_REASONS_MAX = 20_000


def scan(text: Any, *, fmt: str = "auto", year: int | None = None,
         now: datetime | None = None, marks: bool = False) -> list[tuple]:
    """Observations in `text` (complete lines, each ending in "\\n") as cheap tuples.

    Each is (time, ip, cls, mta, start) with `start` the index of the line's
    first character in `text`; the line ends at the next "\\n" (less one "\\r").
    With `marks`, marker tuples too (see parse_line), for sources.join.
    `text` may be bytes when it is pure ASCII (then indexes are byte offsets
    and no decoding is needed); anything else must be decoded first.
    """
    check_format(fmt)
    binary = isinstance(text, bytes)
    rx, routes = _compiled(fmt == "auto" or fmt == "postfix", binary)
    nl: Any  # these six are bytes or str, as the text is
    cr: Any
    sasl_lost: Any
    from_tail: Any
    nul: Any
    target_end: Any
    if binary:
        nl, cr, sasl_lost, from_tail, nul, target_end = b"\n", 13, _SASL_LOST.encode(), b"; from=<", b"\0", b">: "
    else:
        nl, cr, sasl_lost, from_tail, nul, target_end = "\n", "\r", _SASL_LOST, "; from=<", "\0", ">: "
    text = nl + text if text.endswith(nl) else nl + text + nl
    out: list[tuple] = []
    append = out.append
    times: dict = {}
    # Text keys share client_ip()'s cache; bytes keys have their own.
    ips, reasons = (_IPS if binary else _TEXT_IPS), _REASONS
    find = text.find
    for m in rx.finditer(text):
        # m starts at the newline before the line: m.start() is the line's
        # index in the caller's text, m.start() + 1 in this one.
        route = routes[m.lastindex]
        if route is _GENERAL_ROUTE:
            obs = parse_line(line_at(text, m.start() + 1), fmt=fmt, year=year, now=now, marks=marks)
            if obs is not None:
                append((obs.time, obs.ip, obs.cls, obs.mta, m.start()))
            continue
        name, ip_group, cls, qid_group = route
        if qid_group is not None:
            if not marks:
                continue
            cls += m.group(qid_group).decode("ascii") if binary else m.group(qid_group)
            if ip_group is None:
                stamp = m.group(_STAMP)
                time = times.get(stamp, _MISSING)
                if time is _MISSING:
                    time = times[stamp] = syslog.timestamp(
                        syslog.BSD, stamp.decode("ascii") if binary else stamp, year, now)
                if time is not None:
                    append((time, None, cls, "postfix", m.start()))
                continue
        stamp, ip_text = m.group(_STAMP, ip_group)
        ip = ips.get(ip_text, _MISSING)
        if ip is _MISSING:
            if len(ips) >= _CACHE_MAX:
                ips.clear()
            ip = ips[ip_text] = parse_client_ip(ip_text.decode("ascii") if binary else ip_text)
        if ip is None:
            continue
        if cls is None:
            begin = m.end()
            end = find(nl, begin)
            if name != "smtpd-sasl":
                # A remembered reply (see _reject_class), looked up here: most hits end at it.
                # A remembered reply fits only a line with no target end (">: ") past the head.
                tail = find(from_tail, begin, end)
                cls = (reasons.get(text[begin:tail].replace(ip_text, nul), _MISSING)
                       if tail >= 0 and find(target_end, tail, end) < 0 else _MISSING)
                if cls is _MISSING:
                    if text[end - 1] == cr:
                        end -= 1
                    cls = _reject_class(text, begin, end, ip_text, reasons, binary)
                if cls is None or (not marks and cls[0] == MARK):
                    continue
            else:
                if text[end - 1] == cr:
                    end -= 1
                if sasl_lost in text[m.start() + 1:end]:
                    continue
                cls = "auth-failed"
        time = times.get(stamp, _MISSING)
        if time is _MISSING:
            time = times[stamp] = syslog.timestamp(
                syslog.BSD, stamp.decode("ascii") if binary else stamp, year, now)
        if time is None:
            continue
        append((time, ip, cls, "postscreen" if name == "postscreen-connect" else "postfix", m.start()))
    return out


def _reject_class(text, begin: int, end: int, ip_text, cache: dict, binary: bool) -> str | None:
    """postfix.reject_class of the reply text[begin:end], remembered by the reply's head.

    A storm repeats a handful of replies ("User unknown in local recipient
    table", "Client host [IP] blocked using zen.spamhaus.org"), each followed
    by different client-written "; from=<...> to=<...>".  The head before that
    tail, with the client's address masked as reject_class masks it, is the
    key when it alone decides the class: when the reply holds at most one
    ">: " and that one is in the head (then the echoed target, if any, ends
    there, and the words end at the first tail field, which is in the head or
    starts it).  A reply with more
    needs the whole line (postfix.reply_split) and is never remembered.  The
    address cannot straddle the tail's "; from=<" (it holds no ";" and is
    longer than "f"), so masking the head alone masks the same copies as
    masking the whole reply.
    """
    b = binary
    tail = text.find(b"; from=<" if b else "; from=<", begin, end)
    ends = text.count(b">: " if b else ">: ", begin, end)
    simple = ends <= 1 and (tail < 0 or text.count(b">: " if b else ">: ", begin, tail) == ends)
    if tail >= 0 and simple:
        key = text[begin:tail].replace(ip_text, b"\0" if b else "\0")
        cls = cache.get(key, _MISSING)
        if cls is not _MISSING:
            return cls
    reason = text[begin:end]
    if binary:
        reason = reason.decode("ascii")
        ip_text = ip_text.decode("ascii")
    line_start = text.rfind(b"\n" if b else "\n", 0, begin) + 1
    head = text[line_start:begin]
    name = postfix.client_name(head.decode("ascii") if b else head, begin - line_start)
    cls = postfix.reject_class(reason, ip_text, name)
    if tail >= 0 and simple and postfix.code_end(reason) <= tail - begin:
        if len(cache) >= _REASONS_MAX:
            cache.clear()
        cache[key] = cls
    return cls


def forget() -> None:
    """Empty the address and reply caches (client_ip()'s too).

    They hold an address object per distinct client: after a one-off read of
    a storm's log that is 100k objects the policy step would carry as dead
    weight.  Only speed depends on them, so a reader that is done drops them.
    """
    _IPS.clear()
    _TEXT_IPS.clear()
    _REASONS.clear()


def line_at(text: str | bytes, start: int) -> str:
    """The line of `text` starting at `start`, as parse_line sees it (no newline, one "\\r" less)."""
    if isinstance(text, bytes):
        end = text.find(b"\n", start)
        if end < 0:
            end = len(text)
        if end > start and text[end - 1] == 13:
            end -= 1
        return text[start:end].decode("ascii")
    end = text.find("\n", start)
    if end < 0:
        end = len(text)
    if end > start and text[end - 1] == "\r":
        end -= 1
    return text[start:end]


def byte_offsets(text: str, starts: list[int]) -> list[int]:
    """Byte offsets (UTF-8) of ascending character indexes of `text`."""
    out = []
    done_chars = done_bytes = 0
    for s in starts:
        done_bytes += len(text[done_chars:s].encode("utf-8", "surrogatepass"))
        done_chars = s
        out.append(done_bytes)
    return out
