"""This host's own addresses, read from the kernel at every sync.

Blocking port 25 from our own address would cut the host off from itself (and
from any local relay); addresses come and go (DHCP, failover IPs), so they are
read fresh each time instead of being configured.

Read with one RTM_GETADDR dump over a raw rtnetlink socket: importing
pyroute2 for it would cost a one-block `netblock add` a quarter of a second.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

from netaddr import IPNetwork

from netblock.errors import KernelError

RTM_GETADDR = 22
RTM_NEWADDR = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFA_ADDRESS, IFA_LOCAL = 1, 2
_HDR = struct.Struct("=IHHII")
_IFADDR = struct.Struct("=BBBBI")
_RTA = struct.Struct("=HH")


def own_addresses() -> list[IPNetwork]:
    """Every address on every interface of the current network namespace, as /32 or /128."""
    try:
        raw = _dump_addresses()
    except OSError as exc:
        raise KernelError(f"cannot read this host's addresses over netlink: {exc.strerror or exc}") from None
    found = {IPNetwork(str(ipaddress.ip_address(a))) for a in raw}  # no prefix given: a host route
    return sorted(found, key=lambda n: (n.version, n.first))


def _dump_addresses() -> list[bytes]:
    """The IFA_LOCAL (else IFA_ADDRESS) of every RTM_NEWADDR the kernel dumps, as packed bytes."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        body = _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        sock.sendall(_HDR.pack(_HDR.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
        out: list = []
        while True:
            data = sock.recv(1 << 16)
            pos = 0
            while pos + _HDR.size <= len(data):
                length, kind, _flags, seq, _pid = _HDR.unpack_from(data, pos)
                if length < _HDR.size:
                    return out
                if seq == 1:
                    if kind == NLMSG_DONE:
                        return out
                    if kind == NLMSG_ERROR:
                        err = -struct.unpack_from("=i", data, pos + _HDR.size)[0]
                        if err:
                            raise OSError(err, os.strerror(err))
                        return out
                    if kind == RTM_NEWADDR:
                        addr = _address(data, pos + _HDR.size, pos + length)
                        if addr:
                            out.append(addr)
                pos += (length + 3) & ~3


def _address(data: bytes, start: int, end: int) -> bytes | None:
    family = data[start]
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    attrs = {}
    pos = start + _IFADDR.size
    while pos + _RTA.size <= end:
        length, kind = _RTA.unpack_from(data, pos)
        if length < _RTA.size:
            break
        attrs[kind] = data[pos + _RTA.size:pos + length]
        pos += (length + 3) & ~3
    value = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    return value if value and len(value) in (4, 16) else None
