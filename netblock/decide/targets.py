"""Strict parsing of the IPs, netblocks and durations a root user types.

A typo in ``netblock add`` becomes a kernel drop rule, so the text is checked
here before any library sees it: netaddr and inet_aton accept forms whose
meaning is a guess (``10.1``, ``0x7f.1``, ``010.1.2.3`` read as octal,
``2130706433``), and those are refused rather than guessed.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from datetime import timedelta

from netaddr import IPNetwork

from netblock import durations
from netblock.errors import BadInput, LimitExceeded
from netblock.limits import width_refusal

# Narrower than this needs --force: a /7 or a /31 of IPv6 is a continent, not a spammer.
MAX_WIDTH = {4: 8, 6: 32}

_V4 = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
_V6 = re.compile(r"[0-9A-Fa-f:.]+")
_PREFIXLEN = re.compile(r"0|[1-9][0-9]{0,2}")
_MAPPED_FIRST = 0xFFFF_0000_0000
_MAPPED_LAST = 0xFFFF_FFFF_FFFF


@dataclass(frozen=True)
class Target:
    """A netblock the user named, canonical; warning says what was changed to get there."""

    netblock: IPNetwork
    warning: str | None = None


def _refuse(text: str, why: str) -> BadInput:
    return BadInput(f"{text!r} is not a usable IP address or netblock: {why}")


def _v4_value(text: str, addr: str) -> int:
    m = _V4.fullmatch(addr)
    if not m:
        raise _refuse(text, "IPv4 needs four decimal fields a.b.c.d")
    value = 0
    for field in m.groups():
        if len(field) > 1 and field[0] == "0":
            raise _refuse(text, f"leading zero in {field!r} (octal or decimal?)")
        if int(field) > 255:
            raise _refuse(text, f"{field} is out of range 0-255")
        value = (value << 8) | int(field)
    return value


def _v6_value(text: str, addr: str) -> int:
    if not _V6.fullmatch(addr):
        raise _refuse(text, "unexpected characters in IPv6 address")
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET6, addr), "big")
    except OSError:
        raise _refuse(text, "malformed IPv6 address") from None


def parse_target(text: str, *, force: bool = False, any_width: bool = False) -> Target:
    """One IP or CIDR, as ``netblock add/del/allow`` take it; BadInput names the text.

    Host bits are cleared with a warning; IPv4-mapped IPv6 becomes IPv4;
    prefixes wider than /8 (IPv4) or /32 (IPv6) need ``force``, and nothing
    wider than netblock's floor (/4, /16: netblock/limits.py) is accepted at all
    as a block. ``any_width`` lifts both for what only names existing space
    (``del`` of an old row, ``allow``, ``why``).

    >>> parse_target("198.18.1.7/24")
    Target(netblock=IPNetwork('198.18.1.0/24'), warning='198.18.1.7/24 has host bits set; using 198.18.1.0/24')
    >>> parse_target("::ffff:198.18.1.1").netblock
    IPNetwork('198.18.1.1/32')
    """
    if not isinstance(text, str) or not text:
        raise _refuse(str(text), "empty")
    if not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        raise _refuse(text, "contains whitespace or control characters")
    addr, slash, plen_text = text.partition("/")
    if ":" in addr:
        family, bits = 6, 128
        value = _v6_value(text, addr)
    else:
        family, bits = 4, 32
        value = _v4_value(text, addr)
    if slash:
        if not _PREFIXLEN.fullmatch(plen_text):
            raise _refuse(text, f"prefix length {plen_text!r} is not a plain decimal number")
        plen = int(plen_text)
        if plen > bits:
            raise _refuse(text, f"prefix length /{plen} is beyond /{bits}")
    else:
        plen = bits

    if family == 6 and plen >= 96 and _MAPPED_FIRST <= value <= _MAPPED_LAST:
        family, bits, value, plen = 4, 32, value - _MAPPED_FIRST, plen - 96

    host = (1 << (bits - plen)) - 1
    network = IPNetwork((value & ~host, plen), version=family)
    warning = None
    if value & host:
        warning = f"{text} has host bits set; using {network}"
    if plen == 0:
        raise _refuse(text, "a /0 would block every sender")
    floor = None if any_width else width_refusal(network)
    if floor:
        raise LimitExceeded(f"{text!r} is not a usable IP address or netblock: {floor}")
    if plen < MAX_WIDTH[family] and not (force or any_width):
        raise _refuse(text, f"/{plen} is wider than /{MAX_WIDTH[family]}; use --force if you mean it")
    return Target(network, warning)


def parse_duration(text: str) -> timedelta:
    """``90s``, ``45m``, ``12h``, ``7d``, ``2w`` or combinations largest first (``1d12h``).

    A bare number is refused: seconds or days is exactly the guess this module avoids.

    >>> parse_duration("1d12h")
    datetime.timedelta(days=1, seconds=43200)
    """
    try:
        result = durations.parse(text)
    except OverflowError:
        raise BadInput(f"{text!r} is too long a duration") from None
    if result is None:
        raise BadInput(f"{text!r} is not a duration like 90s, 45m, 12h, 7d, 2w or 1d12h")
    if not result:
        raise BadInput(f"{text!r} is zero; a block needs a positive duration")
    return result
