"""This host's own addresses, read from the kernel at every sync.

Blocking port 25 from our own address would cut the host off from itself (and
from any local relay); addresses come and go (DHCP, failover IPs), so they are
read fresh each time instead of being configured.
"""

from __future__ import annotations

from netaddr import IPNetwork

from netblock.errors import KernelError


def own_addresses() -> list[IPNetwork]:
    """Every address on every interface of the current network namespace, as /32 or /128."""
    from pyroute2 import IPRoute

    try:
        with IPRoute() as ipr:
            messages = ipr.get_addr()
    except OSError as exc:
        raise KernelError(f"cannot read this host's addresses over netlink: {exc.strerror or exc}") from None
    found = []
    for msg in messages:
        addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if not addr:
            continue
        addr = addr.split("%", 1)[0]
        found.append(IPNetwork(addr))  # no prefix given: a host route (/32, /128)
    return sorted(set(found), key=lambda n: (n.version, n.first))
