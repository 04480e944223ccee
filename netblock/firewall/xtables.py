"""What the ipset and iptables backends share of the xtables side: the jump's port match."""

from __future__ import annotations

from netblock.errors import BadInput

MULTIPORT_MAX = 15  # the kernel's XT_MULTI_PORTS
SYN_FLAGS = ["FIN,SYN,RST,ACK", "SYN"]  # --syn, as iptables-save prints it


def ports_match(ports: tuple[int, ...], syn_only: bool = False) -> str:
    """The match part of the jump rule, spelled as iptables-save prints it.

    ``syn_only`` (counting-only mode) adds the SYN match, so the chain sees only
    connection attempts: each rule then counts what DROP would have dropped.
    More than 15 ports are refused: one multiport match takes no more.
    """
    if len(ports) > MULTIPORT_MAX:
        raise BadInput(f"ports: {list(ports)!r} has more than {MULTIPORT_MAX} ports, "
                       "the most one iptables multiport match takes")
    syn = " --tcp-flags " + " ".join(SYN_FLAGS) if syn_only else ""
    if len(ports) == 1:
        return f"-m tcp --dport {ports[0]}{syn}"
    return "-m multiport --dports " + ",".join(str(p) for p in ports) + (f" -m tcp{syn}" if syn else "")
