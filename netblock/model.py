"""The domain's records, shared by store, policy, sources and reports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from netaddr import IPAddress, IPNetwork

SOURCES = ("cli", "list", "policy")
MANUAL_SOURCES = ("cli", "list")  # blocks a person made: `add`, or a list loaded with `add -`
NOT_OFFENCES = ("connect", "delivered")  # observation classes that record normal traffic, not abuse


def host_mask(net: IPNetwork) -> str:
    """A single host bare (198.18.9.7), anything wider as CIDR: how every table and message shows a netblock."""
    return str(net.ip) if net.size == 1 else str(net.cidr)


@dataclass(frozen=True)
class Block:
    """A netblock the store wants dropped (before aggregation)."""

    netblock: IPNetwork
    reason: str
    source: str  # one of SOURCES
    created: datetime
    expires: datetime | None  # None: permanent
    reblocks: int = 0  # times re-blocked after expiring or while active


@dataclass(frozen=True)
class AllowEntry:
    netblock: IPNetwork
    comment: str
    created: datetime


@dataclass(frozen=True)
class Observation:
    """One thing an MTA logged about a client: a rejection, a connect, a delivery."""

    time: datetime
    ip: IPAddress
    cls: str  # e.g. "dnsbl:zen.spamhaus.org", "no-rdns", "connect", "delivered"
    mta: str  # "postfix" | "exim" | "sendmail" | "cli" | "postscreen" (its CONNECT only)
    source: str = ""  # file path or "journal"
    position: int = 0  # byte offset (file) or line number of the raw line


@dataclass(frozen=True)
class Sample:
    time: datetime
    netblock: IPNetwork
    packets: int
    bytes: int
