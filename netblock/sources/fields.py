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

_CACHE: dict[str, IPAddress | None] = {}
_CACHE_MAX = 200_000


def client_ip(text: str) -> IPAddress | None:
    """The address in an MTA's client field, or None when it is no address.

    Parsed strictly (no inet_aton shorthand such as "1.2.3"), IPv4-mapped IPv6
    folded to IPv4 so one sender has one identity.  Cached: a mail log names
    the same few thousand clients over and over.
    """
    try:
        return _CACHE[text]
    except KeyError:
        pass
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
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[text] = result
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
    return IPAddress(int.from_bytes(inet_aton(text), "big"), 4)


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
