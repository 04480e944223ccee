"""Pieces shared by the MTA parsers: the client address and the reason text.

The parsers find the client field by the MTA's own fixed text; this module only
turns the text inside the brackets into an address and names a rejection
reason.  Nothing here ever looks a name up in DNS: a log line is evidence about
an address, and a name in it is attacker-controlled.
"""

from __future__ import annotations

import ipaddress
import re
from socket import inet_aton

from netaddr import IPAddress

# Characters an address literal can be made of.  The brackets around it are the
# MTA's; the bounded length keeps every pattern that embeds it linear.
IP = r"[0-9A-Fa-f:.]{2,45}"

# A reverse or HELO name as the MTAs print it: no blanks and no brackets, so a
# name can never contain a "[address]" of its own.  Bounded (DNS names are at
# most 253 characters) so that a failed attempt costs a constant.
NAME = r"[^\s\[\]]{1,255}"

CACHE: dict[str, IPAddress | None] = {}
_CACHE_MAX = 200_000


def client_ip(text: str) -> IPAddress | None:
    """The address in an MTA's client field, or None when it is no address.

    Parsed strictly (no inet_aton shorthand such as "1.2.3"), IPv4-mapped IPv6
    folded to IPv4 so one sender has one identity.  Cached: a mail log names
    the same few thousand clients over and over.
    """
    try:
        return CACHE[text]
    except KeyError:
        pass
    result = parse_client_ip(text)
    if len(CACHE) >= _CACHE_MAX:
        CACHE.clear()
    CACHE[text] = result
    return result


def parse_client_ip(text: str) -> IPAddress | None:
    """client_ip() without its cache, for callers that keep their own."""
    raw = text[5:] if text[:5] in ("IPv6:", "ipv6:") else text
    if ":" not in raw:
        result = _ipv4(raw)
    else:
        try:
            addr = ipaddress.IPv6Address(raw)
        except ValueError:
            result = None
        else:
            if addr.ipv4_mapped is not None:
                result = IPAddress(int(addr.ipv4_mapped), 4)
            else:
                result = IPAddress(int(addr), 6)
    return result


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def _ipv4(text: str) -> IPAddress | None:
    """Strict dotted quad: four decimal octets, no leading zeros, nothing else.

    Once the text is known to be exactly that, inet_aton (which alone would
    also take "1.2.3" or "0x7f.1") converts it.
    """
    if _DOTTED_QUAD.fullmatch(text) is None:
        return None
    return _ipv4_from_int(int.from_bytes(inet_aton(text), "big"))


def _ipv4_checked(value: int) -> IPAddress:
    return IPAddress(value, 4)


_IPV4_MODULE = IPAddress(0, 4)._module


def _ipv4_fast(value: int) -> IPAddress:
    """IPAddress(value, 4) without the constructor's argument checks.

    A log with 100,000 distinct senders spends most of its address handling in
    netaddr's general-purpose constructor; the value is already a checked
    32-bit integer here.  Used only while netaddr's IPAddress is the slotted
    (_value, _module) object this builds (checked below).
    """
    ip = _new_ip(IPAddress)
    ip._value = value
    ip._module = _IPV4_MODULE
    return ip


_new_ip = object.__new__
try:
    _probe = _ipv4_fast(0xC0000201)
    _usable = (_probe == IPAddress("192.0.2.1") and str(_probe) == "192.0.2.1" and _probe.version == 4
               and hash(_probe) == hash(IPAddress("192.0.2.1")) and "__dict__" not in dir(_probe))
except Exception:  # any other netaddr: its own constructor
    _usable = False
_ipv4_from_int = _ipv4_fast if _usable else _ipv4_checked


# The phrases MTAs and DNSBL ACLs use to name the list that matched.  Each is
# fixed text directly followed by the zone; the zone itself is bounded.
_ZONE = re.compile(
    r"(?:blocked using|listed (?:at|in|by)|black ?list at|found in dnsbl|in dnsbl)"
    r" (?:the )?([A-Za-z0-9][A-Za-z0-9_-]{0,62}(?:\.[A-Za-z0-9_-]{1,63}){1,10})",
    re.IGNORECASE,
)


def dnsbl_zone(reason: str) -> str | None:
    """The DNSBL zone a reason names ("zen.spamhaus.org"), lowercased, or None."""
    m = _ZONE.search(reason)
    if m is None:
        return None
    return m.group(1).lower().rstrip(".")


_DYNAMIC = ("dynamic", "dialup", "dial-up", "residential", "dsl", "cable modem", "dhcp", "ppp")


def looks_dynamic(reason: str) -> bool:
    """Whether a client rejection names a dynamic/consumer address range."""
    low = reason.lower()
    return any(word in low for word in _DYNAMIC)


# Marker classes: what a parser says about a line that is no observation by
# itself.  They start with "~", which no real class does, and never reach the
# store: sources.join.Join turns them into observations or counts them.
MARK = "~"
AMBIGUOUS = "~ambiguous"  # more than one reading of the client field or of the reply
CLIENT = "~client:"  # + queue id: this client opened a message transaction (not yet accepted)
ACCEPTED = "~accepted:"  # + queue id: the MTA accepted that message


def _unquoted(text: str, i: int, end: int, stops: str) -> tuple[int, bool]:
    """(index of the first character of ``stops`` in text[i:end] outside a quoted string, or an
    index >= end when there is none; whether the scan ended inside quotes). A backslash escapes
    the next character inside quotes, as in an RFC 5321 quoted local part."""
    quoted = False
    while i < end:
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c in stops:
            return i, False
        i += 1
    return i, quoted


def address_end(text: str, start: int, limit: int = 2048) -> int:
    """Index just after the envelope address "<...>" that starts at text[start], or -1.

    Quote-aware: inside a quoted local part ('"a>: b"@x', backslash escapes
    allowed) a ">" does not end the address.  -1 when text[start] is not "<",
    or the address is unterminated or longer than `limit`.
    """
    if text[start:start + 1] != "<":
        return -1
    end = min(len(text), start + limit)
    i, _ = _unquoted(text, start + 1, end, "<>")
    return i + 1 if i < end and text[i] == ">" else -1


def word_end(text: str, start: int, limit: int = 2048) -> int:
    """Index of the first blank at or after `start` outside a quoted string, or -1 if unterminated.

    Exim writes a sender or recipient bare when it has no angle brackets
    ("<= a@b" and "<= \\"x y\\"@b"): a quoted local part may hold blanks.
    """
    end = min(len(text), start + limit)
    i, quoted = _unquoted(text, start, end, " ")
    if i < end:
        return i
    if quoted or i < len(text):
        return -1
    return i
