"""The ipset backend: ``hash:net`` sets with counters and timeouts, one iptables rule.

Kernel objects (rendered from rules/ipset.rules, names from names.py): per
family a set ``netblock4`` (inet) / ``netblock6`` (inet6) of type hash:net with
``counters``, ``timeout 0`` (members carry their own lifetime) and ``maxelem``
from Settings; a chain ``NETBLOCK`` holding one ``-m set --match-set`` rule, and
a jump to it at the top of INPUT for the configured tcp ports.

How a change is applied, given that ipset has no transactions: as a diff with
rollback, not by building a scratch set and swapping it in. A swap has to
re-add every member (and carry its counters over) on each change, which costs
about half a second at 100k members, where a diff touches only what changed.
So apply() deletes what is gone, then adds what is new and re-times what
changed (an in-place ``-exist`` add keeps the member's counters). Every
member carries a line number, so when the kernel refuses one, apply() knows
exactly which operations were done, undoes them (deleted members come back
with their old lifetime and counters) and raises KernelError: nothing is left
half-applied. Before touching anything it also checks the final size against
the set's maxelem, the failure most often hit in practice.

ipset has no generation counter, so apply() reads the set back from the kernel
on every call: an in-memory copy could not tell that someone ran ``ipset del``
by hand. At 100k members the kernel takes about 40 ms to list the set; for a
large IPv4 set apply() therefore receives the listing in a helper thread and
computes its wanted keys, then diffs each batch of members, while the rest is
still being listed (see _Listing and _StreamDiff).

Sets are created and destroyed through pyroute2.IPSet. Members are added,
deleted and listed in bulk over raw nfnetlink (``IPSET_ATTR_ADT`` batches, as
``ipset restore`` does), and set headers are read the same way: pyroute2
builds and parses one Python message per member, which takes seconds at 100k
members where ``ipset restore`` takes half a second (and its header decoding
drops the create options ensure() checks).

The scratch sets of names.py serve one case only: a set whose maxelem
differs from Settings (ipset cannot change it in place) is rebuilt by
ensure() in the scratch set, members, timeouts and counters included, and
swapped in.

ipset's longest timeout is 2147483 s (24.8 days). A block that lives longer is
installed without kernel timeout; netblock's own sync removes it on time, and
a later apply() gives it a kernel timeout once its expiry is within reach.

Where the iptables rules go: wherever the host's own ``iptables`` looks.
If ``iptables -V`` says "(nf_tables)" (Debian 12's default), they are loaded
with that iptables's ``iptables-restore --noflush``; if it says "(legacy)",
they are placed through python-iptables (libiptc), which drives only
xtables-legacy. Rules placed the other way would be invisible to the host's
``iptables -L``.

Why this module is long: it still does five jobs (the ipset netlink codec, set
management, iptables rule placement, counters, restore text); splitting it
along them is open work of issue 16.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from importlib import resources
from itertools import repeat
from operator import attrgetter, countOf
from queue import Empty, SimpleQueue
from typing import Sequence

from netaddr import IPNetwork

from netblock.errors import (
    KernelError,
    KernelFeatureMissing,
    NameClash,
    NetblockError,
    PermissionDenied,
    ToolMissing,
)
from netblock.firewall import VERDICTS, BackendBase, Change, Desired, Settings
from netblock.firewall.names import IPSET_SCRATCH, IPSET_SET, IPT_CHAIN, IPT_COMMENT, IPT_PARENT
from netblock.firewall.xtables import ports_match

MAX_TIMEOUT = 2147483  # seconds; ipset refuses (clamps) longer member timeouts
TOLERANCE = 2.0  # seconds of expiry difference that do not count as a change
SET_TYPE = "hash:net"
FAMILIES = {"ipv4": (socket.AF_INET, "inet", "iptables"), "ipv6": (socket.AF_INET6, "inet6", "ip6tables")}
BATCH = 1024  # members per netlink message (about 64 KiB)
NUMPY_FROM = 5000  # below this many members, importing numpy costs more than it saves
CONVERT_SLICE = 4096  # networks converted per C loop, which holds the GIL: see _convert_v4()
SWITCH_INTERVAL = 1e-4  # seconds; the GIL's switch interval while a _Listing runs: see _quick_gil_handover()


# ------------------------------------------------------------------ rules/ text

def _template() -> dict[str, str]:
    """The two sections of rules/ipset.rules, comments dropped."""
    text = resources.files("netblock.rules").joinpath("ipset.rules").read_text()
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped in ("# [ipset]", "# [iptables]"):
            current = sections.setdefault(stripped[3:-1], [])
        elif current is not None and stripped and not stripped.startswith("#"):
            current.append(stripped)
    return {k: "\n".join(v) + "\n" for k, v in sections.items()}


def target(verdict: str) -> str:
    return {"drop": "DROP", "count": "RETURN"}.get(verdict, "REJECT --reject-with tcp-reset")


def render(settings: Settings, family: str) -> tuple[str, str]:
    """(ipset restore text, iptables-restore text) for one family, as installed."""
    fields = dict(set=IPSET_SET[family], family=FAMILIES[family][1], maxelem=settings.maxelem,
                  chain=IPT_CHAIN, parent=IPT_PARENT, comment=IPT_COMMENT,
                  target=target(settings.verdict),
                  ports=ports_match(settings.ports, syn_only=settings.verdict == "count"))
    sections = _template()
    return sections["ipset"].format(**fields), sections["iptables"].format(**fields)


def _rule_lines(iptables_text: str) -> tuple[str, str]:
    """The chain's match rule and the parent's jump rule (``-I parent 1`` as written)."""
    rules = [line for line in iptables_text.splitlines() if line.startswith(("-A ", "-I "))]
    chain_rule = next(r for r in rules if r.startswith(f"-A {IPT_CHAIN} "))
    jump = next(r for r in rules if r.startswith(f"-I {IPT_PARENT} "))
    return chain_rule, jump


def _appended(jump: str) -> str:
    """The jump rule as iptables-save lists it (``-A parent``), from its ``-I parent 1`` form."""
    return "-A " + jump[3:].replace(f"{IPT_PARENT} 1 ", f"{IPT_PARENT} ", 1)


# ------------------------------------------------------------------ raw nfnetlink

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = 33
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
MSG_WAITFORONE = 0x10000
DATAGRAM = 64 << 10  # receive room per dump message: twice the 32 KiB the kernel makes them
LIST_BATCH = 16  # dump messages (about 9k members) per recvmmsg() call of a _Listing
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
NFNL_SUBSYS_IPSET = 6
CMD_PROTOCOL, CMD_LIST, CMD_ADD, CMD_DEL = 1, 7, 9, 10
LIST_HEADER = 1 << 2
A_PROTOCOL, A_SETNAME, A_TYPENAME, A_FAMILY, A_FLAGS, A_DATA, A_ADT, A_LINENO = 1, 2, 3, 5, 6, 7, 8, 9
# Inside IPSET_ATTR_DATA:
D_IP, D_CIDR, D_TIMEOUT, D_CADT_FLAGS, D_LINENO, D_MAXELEM = 1, 3, 6, 8, 9, 19
D_BYTES, D_PACKETS = 24, 25
IPADDR_V4, IPADDR_V6 = 1, 2
FLAG_WITH_COUNTERS = 1 << 3

IPSET_ERRORS = {
    4097: "ipset protocol error", 4098: "set type not supported by the kernel",
    4099: "too many sets", 4100: "set is in use by a kernel component",
    4103: "element already added", 4104: "invalid CIDR prefix length",
    4106: "family not supported by the set type", 4107: "set has no timeout support",
    4108: "set is referenced", 4109: "an IPv4 address was expected", 4110: "an IPv6 address was expected",
    4111: "set has no counter support", 4353: "hash is full (maxelem reached)",
    4354: "null-valued element cannot be stored in a hash set",
}

_HDR = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")


def _attr(atype: int, payload: bytes) -> bytes:
    pad = -len(payload) % 4
    return _ATTR.pack(4 + len(payload), atype) + payload + b"\0" * pad


def _walk(buf, start: int, end: int) -> dict[int, tuple[int, int]]:
    """{attribute type: (payload start, payload end)} of the attributes in buf[start:end]."""
    out = {}
    while start + 4 <= end:
        length, atype = _ATTR.unpack_from(buf, start)
        if length < 4:
            break
        out[atype & 0x3FFF] = (start + 4, start + length)
        start += (length + 3) & ~3
    return out


@dataclass
class Header:
    """What the kernel says about a set named like ours."""

    typename: str
    family: int
    counters: bool
    timeout: bool
    maxelem: int


class NetlinkError(Exception):
    def __init__(self, code: int, lineno: int = 0):
        super().__init__(code)
        self.code, self.lineno = code, lineno

    def text(self) -> str:
        return IPSET_ERRORS.get(self.code) or os.strerror(self.code)


class Netlink:
    """A netfilter netlink socket speaking only ipset's ADD/DEL/LIST in bulk."""

    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except PermissionError as exc:
            raise PermissionDenied("ipset: cannot open a netfilter netlink socket (needs CAP_NET_ADMIN)") from exc
        except OSError as exc:
            raise KernelFeatureMissing(f"ipset: no netfilter netlink in this kernel ({exc.strerror})") from exc
        # Acks without a copy of each (64 KiB) request; room for a whole dump burst.
        for level, opt, value in ((SOL_NETLINK, NETLINK_CAP_ACK, 1), (socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)):
            try:
                self.sock.setsockopt(level, opt, value)
            except OSError:
                pass
        self.buffer = bytearray(1 << 20)
        self.seq = int(time.time()) & 0xFFFF
        self.protocol = 7
        try:
            self.sock.bind((0, 0))
            self.protocol = self._protocol_version()
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _message(self, cmd: int, flags: int, attrs: bytes) -> tuple[int, bytes]:
        self.seq += 1
        body = struct.pack("=BBH", socket.AF_INET, 0, 0) + attrs
        return self.seq, _HDR.pack(16 + len(body), NFNL_SUBSYS_IPSET << 8 | cmd, flags, self.seq, 0) + body

    def _head(self, name: str | None = None) -> bytes:
        out = _attr(A_PROTOCOL, bytes([self.protocol]))
        if name is not None:
            out += _attr(A_SETNAME, name.encode() + b"\0")
        return out

    def _protocol_version(self) -> int:
        seq, msg = self._message(CMD_PROTOCOL, NLM_F_REQUEST, _attr(A_PROTOCOL, bytes([7])))
        for payload in self._replies(msg, seq):
            attrs = _walk(payload, 4, len(payload))
            if A_PROTOCOL in attrs:
                return payload[attrs[A_PROTOCOL][0]]
        return 7

    def _send(self, msg: bytes) -> None:
        try:
            self.sock.send(msg)
        except PermissionError as exc:
            raise NetlinkError(errno.EPERM) from exc

    def _replies(self, msg: bytes, seq: int):
        """Send one request; yield the payload of every reply until DONE, the ACK or an error.

        A payload is a view of the receive buffer, valid only until the next
        one is asked for: copying each 32 KiB dump message once more would
        cost a 100k-member listing a millisecond.
        """
        self._send(msg)
        while True:
            size = self.sock.recv_into(self.buffer)
            payloads, done = self._parse(memoryview(self.buffer)[:size], seq)
            yield from payloads
            if done:
                return

    def _parse(self, data: memoryview, seq: int) -> tuple[list, bool]:
        """(payloads of the replies to ``seq`` in one datagram, whether the reply is complete).

        Raises NetlinkError when the kernel answered with an error.
        """
        payloads: list[bytes | memoryview] = []
        offset, size = 0, len(data)
        while offset + 16 <= size:
            length, mtype, flags, rseq, _ = _HDR.unpack_from(data, offset)
            if length < 16:
                return payloads, True
            payload = data[offset + 16:offset + length]
            offset += (length + 3) & ~3
            if rseq != seq:
                continue
            if mtype == NLMSG_DONE:
                return payloads, True
            if mtype == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", payload, 0)
                if code == 0:
                    return payloads, True
                raise NetlinkError(-code, self._error_lineno(payload))
            payloads.append(payload)
            if not flags & NLM_F_MULTI:
                return payloads, True
        return payloads, False

    def receive_many(self, buf) -> list[memoryview]:
        """Datagrams, at least one (waited for), taken into ``buf`` by one recvmmsg() call.

        For a dump received in a helper thread (see _Listing): the kernel
        builds each next dump message inside the call that takes the last
        one, so a single call fills ``buf`` (a numpy uint8 array with room
        for len(buf) // DATAGRAM messages) without the GIL, where recv()
        would want the GIL back between every two. The call's structures
        are numpy records, filled in a few vector operations: this runs
        while the kernel waits for the next call. The views returned are
        valid while ``buf`` is not reused.
        """
        import ctypes

        import numpy as np

        recvmmsg, iovec, mmsghdr = _recvmmsg()
        count = len(buf) // DATAGRAM
        vecs, heads = np.zeros(count, iovec), np.zeros(count, mmsghdr)
        vecs["base"] = buf.ctypes.data + np.arange(count, dtype=np.uint64) * DATAGRAM
        vecs["len"] = DATAGRAM
        heads["hdr"]["iov"] = vecs.ctypes.data + np.arange(count, dtype=np.uint64) * iovec.itemsize
        heads["hdr"]["iovlen"] = 1
        while (got := recvmmsg(self.sock.fileno(), heads.ctypes.data, count, MSG_WAITFORONE, None)) < 0:
            code = ctypes.get_errno()
            if code != errno.EINTR:
                raise OSError(code, os.strerror(code))
        if (heads["hdr"]["flags"][:got] & socket.MSG_TRUNC).any():
            raise NetlinkError(errno.EMSGSIZE)
        view = memoryview(buf)
        return [view[i * DATAGRAM:i * DATAGRAM + size] for i, size in enumerate(heads["len"][:got].tolist())]

    @staticmethod
    def _error_lineno(payload) -> int:
        """The failing member's line number, when the kernel echoed our message back with it."""
        if len(payload) < 4 + 16 + 4:
            return 0
        (olen,) = struct.unpack_from("=I", payload, 4)
        end = min(len(payload), 4 + olen)
        attrs = _walk(payload, 4 + 16 + 4, end)
        if A_LINENO in attrs:
            return struct.unpack_from("=I", payload, attrs[A_LINENO][0])[0]
        return 0

    def header(self, name: str) -> "Header | None":
        """The set's type, family and create options; None when no set has that name."""
        flags = _attr(A_FLAGS | NLA_F_NET_BYTEORDER, struct.pack(">I", LIST_HEADER))
        seq, msg = self._message(CMD_LIST, NLM_F_REQUEST | NLM_F_DUMP, self._head(name) + flags)
        try:
            replies = [bytes(p) for p in self._replies(msg, seq)]
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:
                return None
            raise
        if not replies:
            return None
        payload = replies[0]
        attrs = _walk(payload, 4, len(payload))
        typename = bytes(payload[slice(*attrs[A_TYPENAME])]).rstrip(b"\0").decode() if A_TYPENAME in attrs else ""
        family = payload[attrs[A_FAMILY][0]] if A_FAMILY in attrs else 0
        data = _walk(payload, *attrs[A_DATA]) if A_DATA in attrs else {}
        cadt_flags = int.from_bytes(payload[slice(*data[D_CADT_FLAGS])], "big") if D_CADT_FLAGS in data else 0
        maxelem = int.from_bytes(payload[slice(*data[D_MAXELEM])], "big") if D_MAXELEM in data else 0
        return Header(typename, family, bool(cadt_flags & FLAG_WITH_COUNTERS), D_TIMEOUT in data, maxelem)

    def list(self, name: str):
        """(header DATA payloads, all member nests in one buffer) of set ``name``; NetlinkError ENOENT if absent."""
        seq, msg = self._message(CMD_LIST, NLM_F_REQUEST | NLM_F_DUMP, self._head(name))
        return _listed(self._replies(msg, seq))

    def adt(self, cmd: int, name: str, elements: Sequence[bytes]) -> int:
        """Send ADD/DEL of pre-encoded members in batches; return how many were done.

        Without NLM_F_EXCL, as ``ipset -exist``: adding a present member only
        re-times it (its counters stay), deleting an absent one is no error.
        On a refusal raises NetlinkError whose ``lineno`` is the 1-based index
        (into ``elements``) of the member refused: all before it were done.
        """
        flags = NLM_F_REQUEST | NLM_F_ACK
        head = self._head(name) + _attr(A_LINENO, struct.pack("=I", 0))
        for start in range(0, len(elements), BATCH):
            chunk = b"".join(elements[start:start + BATCH])
            seq, msg = self._message(cmd, flags, head + _ATTR.pack(4 + len(chunk), A_ADT | NLA_F_NESTED) + chunk)
            for _ in self._replies(msg, seq):
                pass
        return len(elements)


def _listed(payloads) -> tuple[list[bytes], bytearray]:
    """(header DATA payloads, member nests appended in one buffer) of the replies to a LIST.

    The member nests are appended straight to one buffer: at 100k members
    one copy of 5.6 MB instead of three.
    """
    headers, members = [], bytearray()
    for payload in payloads:
        attrs = _walk(payload, 4, len(payload))
        if A_DATA in attrs:
            s, e = attrs[A_DATA]
            headers.append(bytes(payload[s:e]))
        if A_ADT in attrs:
            s, e = attrs[A_ADT]
            members += payload[s:e]
    return headers, members


@functools.cache
def _recvmmsg():
    """(libc's recvmmsg through ctypes, which drops the GIL during the call, and numpy record types
    laid out as C's struct iovec and struct mmsghdr)."""
    import ctypes

    import numpy as np

    recvmmsg = ctypes.CDLL(None, use_errno=True).recvmmsg
    recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    recvmmsg.restype = ctypes.c_int
    iovec = np.dtype([("base", np.uintp), ("len", np.uintp)], align=True)
    msghdr = np.dtype([("name", np.uintp), ("namelen", np.uint32), ("iov", np.uintp), ("iovlen", np.uintp),
                       ("control", np.uintp), ("controllen", np.uintp), ("flags", np.intc)], align=True)
    return recvmmsg, iovec, np.dtype([("hdr", msghdr), ("len", np.uintc)], align=True)


class _Listing:
    """A set's LIST dump received by a helper thread and handed over in batches as it arrives.

    The kernel builds the dump (40 ms at 100k members) inside the receiving
    calls, with the GIL released: meanwhile the main thread can compute and
    diff against what has arrived, instead of starting only once all of it
    has. Iterating yields, per batch of up to LIST_BATCH messages, the
    payloads of the replies (as Netlink._replies would), and raises the
    receiving thread's error, a NetlinkError ENOENT for a missing set
    included. Used as a context manager: leaving it waits for the thread,
    which ends when the dump does, so the thread never outlives its caller's
    use of the socket.
    """

    def __init__(self, nl: Netlink, name: str):
        self._nl = nl
        self._batches: SimpleQueue = SimpleQueue()
        self._spare: SimpleQueue = SimpleQueue()
        self._seq, msg = nl._message(CMD_LIST, NLM_F_REQUEST | NLM_F_DUMP, nl._head(name))
        self._thread = threading.Thread(target=self._receive, args=(msg,), name=f"ipset-list-{name}", daemon=True)
        self._thread.start()

    def _receive(self, msg: bytes) -> None:
        """The thread: send the request (the kernel builds the first message then), take the replies.

        It does as little as it can while holding the GIL (the main thread
        parses): the kernel builds nothing until the next call. Receive
        buffers come back from the main thread once parsed (see __iter__):
        pages the kernel has written before cost no page fault, which fresh
        ones, 256 a batch, would. The dump's end comes last in a batch, as
        nothing follows it.
        """
        import numpy as np

        try:
            self._nl._send(msg)
            while True:
                try:
                    buf = self._spare.get_nowait()
                except Empty:
                    buf = np.empty(LIST_BATCH * DATAGRAM, np.uint8)
                datagrams = self._nl.receive_many(buf)
                self._batches.put((buf, datagrams))
                if self._nl._parse(datagrams[-1], self._seq)[1]:
                    break
            self._batches.put(None)
        except BaseException as exc:  # noqa: BLE001 - raised again in the main thread by __iter__
            self._batches.put(exc)

    def __iter__(self):
        """Per batch, the payloads of its replies: views valid until the next batch is asked for."""
        while (batch := self._batches.get()) is not None:
            if isinstance(batch, BaseException):
                raise batch
            buf, datagrams = batch
            payloads = []
            for datagram in datagrams:
                payloads += self._nl._parse(datagram, self._seq)[0]
            yield payloads
            self._spare.put(buf)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._thread.join()


def encode_member(value: int, prefixlen: int, v6: bool, lineno: int, timeout: int | None = None,
                  counters: tuple[int, int] | None = None) -> bytes:
    """One IPSET_ATTR_DATA nest for ADD/DEL: address, prefix, line number, optional timeout/counters."""
    if v6:
        ip = _ATTR.pack(24, D_IP | NLA_F_NESTED) + _ATTR.pack(20, IPADDR_V6 | NLA_F_NET_BYTEORDER) \
            + value.to_bytes(16, "big")
    else:
        ip = _ATTR.pack(12, D_IP | NLA_F_NESTED) + _ATTR.pack(8, IPADDR_V4 | NLA_F_NET_BYTEORDER) \
            + value.to_bytes(4, "big")
    body = ip + _CIDR_LINENO.pack(5, D_CIDR, prefixlen, 8, D_LINENO, lineno)
    if timeout is not None:
        body += _TIMEOUT_HDR + timeout.to_bytes(4, "big")
    if counters is not None:
        body += _BYTES_HDR + counters[1].to_bytes(8, "big") + _PACKETS_HDR + counters[0].to_bytes(8, "big")
    return _ATTR.pack(4 + len(body), A_DATA | NLA_F_NESTED) + body


_CIDR_LINENO = struct.Struct("=HHB3xHHI")
_TIMEOUT_HDR = _ATTR.pack(8, D_TIMEOUT | NLA_F_NET_BYTEORDER)
_BYTES_HDR = _ATTR.pack(12, D_BYTES | NLA_F_NET_BYTEORDER)
_PACKETS_HDR = _ATTR.pack(12, D_PACKETS | NLA_F_NET_BYTEORDER)


class _Network(IPNetwork):
    """An IPNetwork that carries its hash: counters() returns dicts of 100k of them.

    IPNetwork hashes in Python, through three properties, which made hashing
    the keys of counters() cost more than the kernel's listing itself. The
    hash stored here is the one IPNetwork would compute, so these compare
    and look up exactly like IPNetworks; it is checked at import below.
    """

    __slots__ = ("_hash",)

    def __hash__(self):
        try:
            return self._hash
        except AttributeError:  # made some other way than _network()
            return IPNetwork.__hash__(self)

    def __reduce__(self):
        return IPNetwork, ((self._value, self._prefixlen),), (self._value, self._prefixlen, self._module.version)


_Network.__name__ = _Network.__qualname__ = "IPNetwork"  # its repr reads back as the network it stands for
_new_network = IPNetwork.__new__


def _network(value: int, prefixlen: int, module, hashed: int | None = None) -> IPNetwork:
    """An IPNetwork without parsing; ``value`` is its first address."""
    net = _new_network(_Network)
    net._value, net._prefixlen, net._module = value, prefixlen, module
    net._hash = hash((module.version, value, value | ((1 << (module.width - prefixlen)) - 1))) \
        if hashed is None else hashed
    return net


def _networks(keys: list[int], v6: bool) -> list[IPNetwork]:
    """_network() of many keys, their hashes computed in one pass."""
    module = _V6 if v6 else _V4
    width = module.width
    values = [k >> 8 for k in keys]
    lasts = [v | ((1 << (width - (k & 255))) - 1) for v, k in zip(values, keys)]
    hashes = map(hash, zip(repeat(module.version), values, lasts))
    return [_network(v, k & 255, module, h) for v, k, h in zip(values, keys, hashes)]


_V4 = IPNetwork("0.0.0.0/0")._module
_V6 = IPNetwork("::/0")._module
for _text in ("198.51.100.0/24", "203.0.113.7/32", "0.0.0.0/0", "2001:db8::/32", "::/0", "2001:db8::1/128"):
    _plain = IPNetwork(_text)
    for _made in (_network(_plain.first, _plain.prefixlen, _plain._module),
                  _networks([_plain.first << 8 | _plain.prefixlen], _plain.version == 6)[0]):
        assert _made == _plain and hash(_made) == hash(_plain) and str(_made) == _text and {_plain: 1}[_made] == 1
del _text, _plain, _made


@dataclass
class Members:
    """A set's members as the kernel lists them, in parallel lists (100k objects would cost more).

    A key is ``address << 8 | prefix length``; a timeout of 0 means permanent.
    """

    keys: list[int] = field(default_factory=list)
    timeouts: list[int] = field(default_factory=list)
    packets: list[int] = field(default_factory=list)
    bytes: list[int] = field(default_factory=list)
    # (keys as uint64, timeouts as int64, packets, bytes) when decoded through numpy: diff_v4() starts
    # from them. Decoded with lists=False, only these are filled: apply() then never makes 4 x 100k ints.
    arrays: tuple | None = field(default=None, repr=False, compare=False)

    def networks(self, v6: bool) -> list[IPNetwork]:
        return _networks(self.keys, v6)

    def __len__(self) -> int:
        return len(self.arrays[0]) if self.arrays is not None else len(self.keys)

    def row(self, i: int) -> tuple[int, int, int, int]:
        """(key, timeout, packets, bytes) of member ``i``, as Python ints whichever way it was decoded."""
        if self.keys or self.arrays is None:
            return self.keys[i], self.timeouts[i], self.packets[i], self.bytes[i]
        key, timeout, packets, nbytes = (int(column[i]) for column in self.arrays)
        return key, timeout, packets, nbytes


def _fast_members(blob: bytes, v6: bool, lists: bool = True) -> Members | None:
    """Decode members when every one has the kernel's usual layout (ip, cidr, timeout, bytes, packets).

    Returns None when the layout differs, so the caller falls back to the generic walk.
    """
    iplen = 16 if v6 else 4
    size = 4 + (8 + iplen) + 8 + 8 + 12 + 12
    if len(blob) % size:
        return None
    import numpy as np  # only here: its import costs more than decoding a small set

    dtype = np.dtype([("h", "<u2", (2,)), ("iph", "<u2", (4,)), ("ip", "u1", (iplen,)), ("ch", "<u2", (2,)),
                      ("cidr", "u1"), ("pad", "u1", (3,)), ("th", "<u2", (2,)), ("timeout", ">u4"),
                      ("bh", "<u2", (2,)), ("bytes", ">u8"), ("ph", "<u2", (2,)), ("packets", ">u8")])
    rec = np.frombuffer(blob, dtype=dtype)
    words = np.frombuffer(blob, dtype="<u4").reshape(len(rec), size // 4)
    ipaddr = IPADDR_V6 if v6 else IPADDR_V4
    # (length, type) of every attribute header; the kernel sets the byte-order flag on some, not all.
    expect = {"h": (size, A_DATA), "iph": (8 + iplen, D_IP, 4 + iplen, ipaddr), "ch": (5, D_CIDR),
              "th": (8, D_TIMEOUT), "bh": (12, D_BYTES), "ph": (12, D_PACKETS)}
    for name, values in expect.items():
        offset = dtype.fields[name][1] // 4
        for i in range(0, len(values), 2):
            column = words[:, offset + i // 2] & 0x3FFFFFFF
            if not (column == (values[i] | values[i + 1] << 16)).all():
                return None
    if v6:
        halves = np.ascontiguousarray(rec["ip"]).view(">u8").reshape(-1, 2).tolist()
        keys = [(hi << 64 | lo) << 8 | c for (hi, lo), c in zip(halves, rec["cidr"].tolist())]
        return Members(keys, rec["timeout"].tolist(), rec["packets"].tolist(), rec["bytes"].tolist())
    keys = (rec["ip"].view(">u4").ravel().astype(np.uint64) << np.uint64(8)) | rec["cidr"]
    timeouts = rec["timeout"].astype(np.int64)
    arrays = (keys, timeouts, rec["packets"], rec["bytes"])
    if not lists:
        return Members(arrays=arrays)
    return Members(keys.tolist(), timeouts.tolist(), rec["packets"].tolist(), rec["bytes"].tolist(), arrays=arrays)


def _slow_members(blob: bytes) -> Members:
    """Generic decode of member nests, for layouts the fast path does not know."""
    out = Members()
    offset = 0
    while offset + 4 <= len(blob):
        length, _ = _ATTR.unpack_from(blob, offset)
        attrs = _walk(blob, offset + 4, offset + length)
        offset += (length + 3) & ~3
        inner = _walk(blob, *attrs[D_IP])
        a, b = inner.get(IPADDR_V4) or inner[IPADDR_V6]
        cidr = blob[attrs[D_CIDR][0]] if D_CIDR in attrs else (32 if b - a == 4 else 128)
        out.keys.append(int.from_bytes(blob[a:b], "big") << 8 | cidr)
        for attr, column in ((D_TIMEOUT, out.timeouts), (D_PACKETS, out.packets), (D_BYTES, out.bytes)):
            column.append(int.from_bytes(blob[slice(*attrs[attr])], "big") if attr in attrs else 0)
    return out


def _decode(blob, v6: bool, lists: bool = True) -> Members:
    if not blob:
        return Members()
    return _fast_members(blob, v6, lists) or _slow_members(blob)


# ------------------------------------------------------------------ iptables placement

@dataclass
class Iptables:
    """The host's iptables for one family: which binary, and which kernel API it drives."""

    tool: str  # "iptables" or "ip6tables"
    path: str
    mode: str  # "nf_tables" or "legacy"

    @classmethod
    def detect(cls, tool: str) -> "Iptables":
        path = shutil.which(tool)
        if path is None:
            raise ToolMissing(f"{tool}: not found on PATH (install the iptables package)")
        try:
            out = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=30).stdout
        except OSError as exc:
            raise ToolMissing(f"{path}: cannot run ({exc.strerror})") from exc
        mode = "legacy" if "(legacy)" in out else "nf_tables" if "nf_tables" in out else None
        if mode is None:
            raise ToolMissing(f"{path}: unrecognised version output {out.strip()!r}")
        if mode == "nf_tables":
            for helper in (f"{tool}-restore", f"{tool}-save"):
                if shutil.which(helper) is None:
                    raise ToolMissing(f"{helper}: not found on PATH next to {path}")
        return cls(tool, path, mode)

    def describe(self) -> str:
        via = f"{self.tool}-restore --noflush" if self.mode == "nf_tables" else "python-iptables"
        return f"{self.path} ({self.mode}) via {via}"

    # The state of our rules, as the host's iptables-save shows them.
    def read(self) -> tuple[bool, list[str], list[str]]:
        """(chain exists, rules of our chain, parent rules that jump to our chain)."""
        if self.mode == "legacy":
            return _LegacyRules(self.tool).read()
        out = self._run(f"{self.tool}-save", "-t", "filter")
        lines = out.splitlines()
        exists = any(line.startswith(f":{IPT_CHAIN} ") for line in lines)
        rules = [line for line in lines if line.startswith(f"-A {IPT_CHAIN} ")]
        jumps = [line for line in lines
                 if line.startswith(f"-A {IPT_PARENT} ") and line.endswith(f" -j {IPT_CHAIN}")]
        return exists, rules, jumps

    def write(self, chain_rule: str | None, jump: str | None, old_jumps: list[str], drop_chain: bool) -> None:
        """Replace our chain's contents and our jump in one restore (chain_rule None: remove)."""
        if self.mode == "legacy":
            return _LegacyRules(self.tool).write(chain_rule, jump, old_jumps, drop_chain)
        lines = ["*filter"]
        if chain_rule is not None:
            lines += [f":{IPT_CHAIN} - [0:0]", f"-F {IPT_CHAIN}", chain_rule]
        lines += ["-D" + old[2:] for old in old_jumps]
        if jump is not None:
            lines.append(jump)
        if drop_chain:
            lines += [f"-F {IPT_CHAIN}", f"-X {IPT_CHAIN}"]
        lines.append("COMMIT")
        self._run(f"{self.tool}-restore", "--noflush", input="\n".join(lines) + "\n")

    def _run(self, prog: str, *args: str, input: str | None = None) -> str:
        path = shutil.which(prog)
        if path is None:
            raise ToolMissing(f"{prog}: not found on PATH")
        try:
            r = subprocess.run([path, *args], input=input, capture_output=True, text=True, timeout=120)
        except OSError as exc:
            raise ToolMissing(f"{path}: cannot run ({exc.strerror})") from exc
        if r.returncode != 0:
            err = " ".join(r.stderr.split()) or f"exit status {r.returncode}"
            if "Permission denied" in err or "you must be root" in err or "Operation not permitted" in err:
                raise PermissionDenied(f"{prog}: permission denied (needs CAP_NET_ADMIN)")
            if "No chain/target/match by that name" in err or "Couldn't load" in err:
                raise KernelFeatureMissing(f"{prog}: kernel lacks a needed match or target: {err}")
            raise KernelError(f"{prog} refused the netblock rules: {err}")
        return r.stdout


class _LegacyRules:
    """Our two rules through python-iptables (libiptc), for hosts whose iptables is xtables-legacy."""

    def __init__(self, tool: str):
        try:
            import iptc
        except Exception as exc:  # noqa: BLE001 - the binding fails in several ways when libxtables is absent
            raise ToolMissing(f"python-iptables: cannot load ({exc})") from exc
        self.iptc = iptc
        self.v6 = tool == "ip6tables"

    def _table(self):
        iptc = self.iptc
        try:
            table = (iptc.Table6 if self.v6 else iptc.Table)("filter")
            table.autocommit = False
            table.refresh()
            return table
        except iptc.IPTCError as exc:
            raise _legacy_error(exc) from exc

    def read(self):
        table = self._table()
        chain = next((c for c in table.chains if c.name == IPT_CHAIN), None)
        rules = [_legacy_text(IPT_CHAIN, r) for r in chain.rules] if chain else []
        parent = self.iptc.Chain(table, IPT_PARENT)
        jumps = [_legacy_text(IPT_PARENT, r) for r in parent.rules if r.target.name == IPT_CHAIN]
        return chain is not None, rules, jumps

    def write(self, chain_rule, jump, old_jumps, drop_chain):
        iptc = self.iptc
        table = self._table()
        try:
            parent = iptc.Chain(table, IPT_PARENT)
            for rule in list(parent.rules):
                if rule.target.name == IPT_CHAIN and _legacy_text(IPT_PARENT, rule) in old_jumps:
                    parent.delete_rule(rule)
            if chain_rule is not None:
                chain = iptc.Chain(table, IPT_CHAIN)
                if not table.is_chain(IPT_CHAIN):
                    table.create_chain(IPT_CHAIN)
                chain.flush()
                chain.append_rule(_legacy_rule(iptc, chain_rule, self.v6))
            if jump is not None:
                parent.insert_rule(_legacy_rule(iptc, jump, self.v6))
            if drop_chain and table.is_chain(IPT_CHAIN):
                chain = iptc.Chain(table, IPT_CHAIN)
                chain.flush()
                table.delete_chain(IPT_CHAIN)
            table.commit()
        except (iptc.IPTCError, ValueError) as exc:
            raise _legacy_error(exc) from exc
        finally:
            table.autocommit = True


def _legacy_error(exc: Exception) -> NetblockError:
    text = " ".join(str(exc).split())
    if "Permission denied" in text or "must be root" in text:
        return PermissionDenied(f"python-iptables: permission denied (needs CAP_NET_ADMIN and CAP_NET_RAW): {text}")
    return KernelError(f"python-iptables refused the netblock rules: {text}")


def _legacy_rule(iptc, line: str, v6: bool):
    """Build a python-iptables Rule from one of our own rendered rule lines."""
    words = line.split()[2:]
    if words[0] == "1":
        words = words[1:]
    rule = iptc.Rule6() if v6 else iptc.Rule()
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-p":
            rule.protocol = words[i + 1]
            i += 2
        elif word == "-m":
            match = rule.create_match(words[i + 1])
            i += 2
            while i < len(words) and words[i].startswith("--"):
                opt = words[i][2:].replace("-", "_")
                args = []
                i += 1
                while i < len(words) and not words[i].startswith("-"):
                    args.append(words[i])
                    i += 1
                setattr(match, opt, args if len(args) > 1 else args[0] if args else "")
        elif word == "-j":
            tgt = rule.create_target(words[i + 1])
            i += 2
            while i < len(words) and words[i].startswith("--"):
                setattr(tgt, words[i][2:].replace("-", "_"), words[i + 1])
                i += 2
        else:
            raise ValueError(f"unexpected word {word!r} in {line!r}")
    return rule


def _legacy_text(chain: str, rule) -> str:
    """One rule in iptables-save syntax, from python-iptables' view of it."""
    parts = [f"-A {chain}"]
    if rule.protocol and rule.protocol not in ("ip", "all"):
        parts.append(f"-p {rule.protocol}")
    for match in rule.matches:
        parts.append(f"-m {match.name}")
        for key, value in match.get_all_parameters().items():
            parts.append(f"--{key} {' '.join(value)}".rstrip())
    parts.append(f"-j {rule.target.name}")
    for key, value in rule.target.get_all_parameters().items():
        parts.append(f"--{key} {' '.join(value)}".rstrip())
    return " ".join(parts)


# ------------------------------------------------------------------ the backend

def _pyroute2():
    try:
        from pyroute2 import IPSet
        from pyroute2.netlink.exceptions import NetlinkError as PyrouteError
    except Exception as exc:  # noqa: BLE001
        raise ToolMissing(f"pyroute2: cannot import ({exc}); install pyroute2") from exc
    return IPSet, PyrouteError


def _kernel_error(exc: NetlinkError | Exception, what: str) -> NetblockError:
    code = getattr(exc, "code", 0)
    if code in (errno.EPERM, errno.EACCES):
        return PermissionDenied(f"ipset: {what}: operation not permitted (needs CAP_NET_ADMIN)")
    if code in (errno.EPROTONOSUPPORT, errno.EOPNOTSUPP, 4098):
        return KernelFeatureMissing(f"ipset: {what}: the kernel lacks ip_set / {SET_TYPE} support")
    text = exc.text() if isinstance(exc, NetlinkError) else IPSET_ERRORS.get(code) or str(exc)
    return KernelError(f"ipset: {what}: {text}")


@dataclass
class IpsetBackend(BackendBase):
    settings: Settings
    name: str = "ipset"
    _tables: dict = field(default_factory=dict, repr=False)
    # Per family, the keys and networks counters()/installed() last returned: (keys, [IPNetwork]).
    _named: dict = field(default_factory=dict, repr=False, compare=False)
    # The IPv4 keys apply() last computed, by network: see _wanted().
    _converted: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def description(self) -> str:
        sets = "/".join(IPSET_SET[f] for f in self.settings.families)
        try:
            where = "; ".join(self._iptables(f).describe() for f in self.settings.families)
        except NetblockError as exc:
            where = str(exc)
        return f"ipset {SET_TYPE} {sets} via pyroute2 netlink; chain {IPT_CHAIN} by {where}"

    def _iptables(self, family: str) -> Iptables:
        if family not in self._tables:
            self._tables[family] = Iptables.detect(FAMILIES[family][2])
        return self._tables[family]

    def _families(self):
        return [f for f in ("ipv4", "ipv6") if f in self.settings.families]

    # -------------------------------------------------------------- sets

    def _header(self, name: str) -> Header | None:
        with self._netlink() as nl:
            try:
                return nl.header(name)
            except NetlinkError as exc:
                raise _kernel_error(exc, f"reading set {name}") from None

    @staticmethod
    def _ours(header: Header, family: str) -> bool:
        return (header.typename == SET_TYPE and header.family == FAMILIES[family][0]
                and header.counters and header.timeout)

    def _open_ipset(self):
        IPSet, PyrouteError = _pyroute2()
        try:
            return IPSet()
        except PyrouteError as exc:
            raise _kernel_error(exc, "opening netlink") from exc
        except PermissionError as exc:
            raise PermissionDenied("ipset: cannot open netlink (needs CAP_NET_ADMIN)") from exc
        except OSError as exc:
            raise KernelFeatureMissing(f"ipset: netlink unavailable ({exc.strerror or exc})") from exc

    # -------------------------------------------------------------- the five calls

    def ensure(self) -> None:
        """Create the sets, then the chain rule and jump; a second call changes nothing."""
        families = self._families()
        tables = {f: self._iptables(f) for f in families}  # ToolMissing before anything is created
        _, PyrouteError = _pyroute2()
        created: list[str] = []
        ipset = self._open_ipset()
        try:
            for family in families:
                name = IPSET_SET[family]
                header = self._header(name)
                if header is not None:
                    if not self._ours(header, family):
                        raise NameClash(f"ipset set {name!r} exists as {header.typename} "
                                        f"(family {header.family}, counters={header.counters}, "
                                        f"timeout={header.timeout}) and is not netblock's")
                    if header.maxelem != self.settings.maxelem:
                        self._resize(ipset, family)
                    continue
                try:
                    ipset.create(name, stype=SET_TYPE, family=FAMILIES[family][0], counters=True, timeout=0,
                                 maxelem=self.settings.maxelem)
                except PyrouteError as exc:
                    raise _kernel_error(exc, f"creating set {name}") from exc
                created.append(name)
            for family in families:
                self._ensure_rules(family, tables[family])
        except BaseException:
            for name in created:  # nothing half-made is left behind
                try:
                    ipset.destroy(name)
                except PyrouteError:
                    pass
            raise
        finally:
            ipset.close()

    def _resize(self, ipset, family: str) -> None:
        """Give an existing set the configured maxelem, which ipset cannot change in place.

        The members are copied, with their timeouts and counters, into the
        scratch set created with the new maxelem, which is then swapped in
        (the iptables rule follows the name); the scratch set, now holding the
        old contents, is destroyed. Packets counted during the copy are lost.
        """
        _, PyrouteError = _pyroute2()
        name, scratch, v6 = IPSET_SET[family], IPSET_SCRATCH[family], family == "ipv6"
        try:
            if self._header(scratch) is not None:  # left over from an interrupted resize
                ipset.destroy(scratch)
            ipset.create(scratch, stype=SET_TYPE, family=FAMILIES[family][0], counters=True, timeout=0,
                         maxelem=self.settings.maxelem)
        except PyrouteError as exc:
            raise _kernel_error(exc, f"creating set {scratch}") from exc
        try:
            with self._netlink() as nl:
                m, _ = self._read(nl, name, v6)
                nl.adt(CMD_ADD, scratch, [encode_member(k >> 8, k & 255, v6, n, t, (p, b)) for n, (k, t, p, b)
                                          in enumerate(zip(m.keys, m.timeouts, m.packets, m.bytes), 1)])
            ipset.swap(name, scratch)
        except NetlinkError as exc:
            raise _kernel_error(exc, f"set {name}: raising maxelem to {self.settings.maxelem}") from None
        except PyrouteError as exc:
            raise _kernel_error(exc, f"swapping {scratch} into {name}") from exc
        finally:
            try:
                ipset.destroy(scratch)
            except PyrouteError:
                pass

    def _ensure_rules(self, family: str, table: Iptables) -> None:
        chain_rule, jump = _rule_lines(render(self.settings, family)[1])
        exists, rules, jumps = table.read()
        if exists and not any(f"--comment {IPT_COMMENT}" in r for r in rules):
            raise NameClash(f"{table.tool} chain {IPT_CHAIN!r} exists without netblock's comment "
                            f"'{IPT_COMMENT}' and is not netblock's")
        ours = [j for j in jumps if f"--comment {IPT_COMMENT}" in j]
        if rules == [chain_rule] and ours == [_appended(jump)]:
            return
        table.write(chain_rule, jump, ours, drop_chain=False)

    def add(self, additions: Desired) -> Change | None:
        """No cheap path for plain additions here: None, so the caller runs a full sync."""
        return None

    def verdict(self) -> str | None:
        """The verdict of the rules in the kernel: the one whose rendering they equal (None: none does)."""
        found = set()
        for family in self._families():
            exists, rules, jumps = self._iptables(family).read()
            ours = [j for j in jumps if f"--comment {IPT_COMMENT}" in j]
            for v in VERDICTS:
                chain_rule, jump = _rule_lines(render(replace(self.settings, verdict=v), family)[1])
                if exists and rules == [chain_rule] and ours == [_appended(jump)]:
                    found.add(v)
                    break
            else:
                return None
        return found.pop() if len(found) == 1 else None

    def apply(self, desired: Desired) -> Change:
        now = time.time()
        # (networks, expiries) as lists, made once, and for a large IPv4 set only once its listing has
        # started: at 100k they take 1.5 ms, which the kernel's listing then covers.
        columns = functools.cache(lambda: (list(desired), list(desired.values())))
        with self._netlink() as nl:
            plans = []
            for family in self._families():
                v6 = family == "ipv6"
                name = IPSET_SET[family]
                if not v6 and len(desired) >= NUMPY_FROM:
                    members, maxelem, diffed = self._read_and_diff_v4(nl, name, columns, now)
                else:
                    members, maxelem = self._read(nl, name, v6, lists=False)
                    keys, timeouts = _wanted(*columns(), 6 if v6 else 4, now, self._converted)
                    big = not v6 and (not isinstance(keys, list) or members.arrays is not None
                                      or len(keys) + len(members) > NUMPY_FROM)
                    diffed = (diff_v4 if big else diff)(members, keys, timeouts)
                plan = _Plan(name, v6, members, *diffed)
                final = len(members) - len(plan.delete) + len(plan.add)
                if final > maxelem:
                    raise KernelError(f"ipset: set {name} would hold {final} members, above its maxelem "
                                      f"{maxelem}: raise maxelem")
                plans.append(plan)
            done: list[_Plan] = []
            for plan in plans:
                try:
                    plan.run(nl)
                except NetlinkError as exc:
                    for undone in [plan, *reversed(done)]:
                        undone.undo(nl)
                    raise _kernel_error(exc, f"set {plan.name}: {plan.failed}") from None
                done.append(plan)
        change = Change()
        for plan in plans:
            module = _V6 if plan.v6 else _V4
            change.added += [_network(k >> 8, k & 255, module) for k, _ in plan.add]
            gone = [plan.members.row(i)[0] for i in plan.delete]
            change.removed += [_network(k >> 8, k & 255, module) for k in gone]
            change.updated += [_network(k >> 8, k & 255, module) for k, _, _ in plan.update]
        return change

    def counters(self) -> dict[IPNetwork, tuple[int, int]]:
        """Per-member counters; a missing set (before ensure(), after a reboot) has none."""
        out: dict[IPNetwork, tuple[int, int]] = {}
        with self._netlink() as nl:
            for family in self._families():
                members, _ = self._read(nl, IPSET_SET[family], family == "ipv6", missing_ok=True)
                out.update(zip(self._networks(family, members.keys), zip(members.packets, members.bytes)))
        return out

    def installed(self) -> dict[IPNetwork, datetime | None]:
        """Members with the expiry their kernel timeout implies (None: no timeout); a missing set has none."""
        now = datetime.now(timezone.utc).replace(microsecond=0)
        out: dict[IPNetwork, datetime | None] = {}
        with self._netlink() as nl:
            for family in self._families():
                members, _ = self._read(nl, IPSET_SET[family], family == "ipv6", missing_ok=True)
                out.update(zip(self._networks(family, members.keys),
                               (None if t == 0 else now + timedelta(seconds=t) for t in members.timeouts)))
        return out

    def remove(self) -> None:
        """Delete our jump and chain, then our sets; strangers' objects are left alone."""
        families = self._families()
        for family in families:
            table = self._iptables(family)
            exists, rules, jumps = table.read()
            mine = exists and any(f"--comment {IPT_COMMENT}" in r for r in rules)
            ours = [j for j in jumps if f"--comment {IPT_COMMENT}" in j]
            if mine or ours:
                table.write(None, None, ours, drop_chain=mine)
        _, PyrouteError = _pyroute2()
        ipset = self._open_ipset()
        try:
            for family in families:
                name = IPSET_SET[family]
                header = self._header(name)
                if header is None or not self._ours(header, family):
                    continue
                try:
                    ipset.destroy(name)
                except PyrouteError as exc:
                    if exc.code != errno.ENOENT:
                        raise _kernel_error(exc, f"destroying set {name}") from exc
        finally:
            ipset.close()

    # -------------------------------------------------------------- helpers

    def _networks(self, family: str, keys: list[int]) -> list[IPNetwork]:
        """The networks of ``keys``, reusing those of the last call: counters() is polled, the set rarely changes.

        Making 100k IPNetworks costs more than listing them from the kernel.
        """
        last_keys, last_nets = self._named.get(family, ([], []))
        if keys == last_keys:
            return last_nets
        known = dict(zip(last_keys, last_nets))
        missing = [k for k in keys if k not in known]
        known.update(zip(missing, _networks(missing, family == "ipv6")))
        nets = list(map(known.__getitem__, keys))
        self._named[family] = (keys, nets)
        return nets

    def _netlink(self) -> Netlink:
        try:
            return Netlink()
        except NetlinkError as exc:
            raise _kernel_error(exc, "opening netlink") from None

    def _list_error(self, exc: NetlinkError, name: str) -> NetblockError:
        if exc.code == errno.ENOENT:
            return NetblockError(f"ipset: set {name} does not exist: run ensure() first (netblock sync)")
        return _kernel_error(exc, f"listing set {name}")

    def _read(self, nl: Netlink, name: str, v6: bool, missing_ok: bool = False,
              lists: bool = True) -> tuple[Members, int]:
        """The set's members and its maxelem; with lists=False possibly only as arrays (see Members)."""
        try:
            headers, blob = nl.list(name)
        except NetlinkError as exc:
            if missing_ok and exc.code == errno.ENOENT:
                return Members(), 0
            raise self._list_error(exc, name) from None
        return _decode(blob, v6, lists), self._maxelem(headers)

    def _maxelem(self, headers: list[bytes]) -> int:
        """The set's maxelem, from the header DATA payloads of its listing."""
        maxelem = self.settings.maxelem
        for h in headers:
            attrs = _walk(h, 0, len(h))
            if D_MAXELEM in attrs:
                maxelem = int.from_bytes(h[slice(*attrs[D_MAXELEM])], "big")
        return maxelem

    def _read_and_diff_v4(self, nl: Netlink, name: str, columns,
                          now: float) -> tuple[Members, int, tuple[list, list, list]]:
        """(members, maxelem, diff) of the IPv4 set, the diff made while the kernel lists the set.

        The listing is received by a _Listing thread; meanwhile this thread
        makes ``columns()`` (networks, expiries), computes the wanted keys
        and sorts them, then diffs each batch of members as it arrives (see
        _StreamDiff), so that after the last message only the combining of
        the batches is left. Members of an unusual layout are decoded and
        diffed the ordinary way at the end.
        """
        fast = True
        headers, blobs = [], []
        try:
            with _quick_gil_handover(), _Listing(nl, name) as listing:
                nets, expiries = columns()
                stream = _StreamDiff(*_sorted_wanted(nets, expiries, now, self._converted))
                for payloads in listing:
                    batch_headers, blob = _listed(payloads)
                    headers += batch_headers
                    blobs.append(blob)
                    fast = fast and stream.feed(blob)
        except NetlinkError as exc:
            raise self._list_error(exc, name) from None
        if fast:
            members, diffed = stream.result()
        else:
            members = _decode(b"".join(blobs), False, lists=False)
            diffed = diff_v4(members, *_wanted(nets, expiries, 4, now, self._converted))
        return members, self._maxelem(headers), diffed


def _wanted(nets: list, expiries: list, version: int, now: float,
            cache: dict | None = None) -> tuple[list[int], list[int]]:
    """(keys, timeouts) of the desired networks of one IP version that have not expired.

    A key is the canonical ``first address << 8 | prefix length``; a
    timeout of 0 means permanent (also for lives beyond MAX_TIMEOUT).
    IPv4 at scale goes through numpy: a Python pass per member would cost
    more than the whole one-member change it serves.
    """
    module = _V6 if version == 6 else _V4
    if version == 6 or len(nets) < NUMPY_FROM:
        keys, timeouts = [], []
        for net, expiry in zip(nets, expiries):
            if net._module is not module:
                continue
            if expiry is None:
                timeout = 0
            else:
                left = expiry.timestamp() - now
                if left < 1:
                    continue  # already expired: not installed
                timeout = 0 if left > MAX_TIMEOUT else int(left + 0.5)
            host = module.width - net._prefixlen
            keys.append(net._value >> host << host << 8 | net._prefixlen)
            timeouts.append(timeout)
        return keys, timeouts
    keys, timeout, keep = _wanted_v4(nets, expiries, now, cache)
    if keep.all():
        return keys, timeout
    return keys[keep], timeout[keep]


def _wanted_v4(nets: list, expiries: list, now: float, cache: dict | None):
    """(key, timeout, mask of those to install) per network, as numpy arrays: _wanted() before its filtering."""
    import numpy as np

    from netblock.firewall.columns import timestamps

    keys, mine = _v4_keys(nets, cache)
    left = timestamps(expiries) - now
    permanent = np.isnan(left)
    keep = permanent | (left >= 1)
    if mine is not None:
        keep &= mine
    with np.errstate(invalid="ignore"):
        timeout = np.where(permanent | (left > MAX_TIMEOUT), 0, np.floor(left + 0.5)).astype(np.int64)
    return keys, timeout, keep


def _sorted_wanted(nets: list, expiries: list, now: float, cache: dict):
    """(keys, timeouts, index into ``nets``) of the IPv4 networks to install, in key order.

    For _StreamDiff, which looks each arriving kernel member up among
    them. The sort order is kept in ``cache`` with the keys it sorted: an
    unchanged mapping is not sorted again.
    """
    keys, timeout, keep = _wanted_v4(nets, expiries, now, cache)
    if cache.get("sorted") is not keys:
        cache.update(sorted=keys, order=_sorted(keys)[1])
    order = cache["order"]
    if not keep.all():
        order = order[keep[order]]
    return keys[order], timeout[order], order


def _v4_keys(nets: list, cache: dict | None):
    """(canonical key per network, mask of the IPv4 ones or None when all are) as numpy arrays.

    Reading 100k attributes costs more than the rest of a 1-member change,
    so ``cache`` keeps the last conversion: when ``nets`` starts with the
    very networks converted last time (as when a caller keeps its mapping
    and adds to it), only the new tail is read. Identity is probed first so
    that equal-but-new objects never cost 100k Python comparisons.
    """
    import numpy as np

    last = cache.get("nets") if cache else None
    start = 0
    if last and len(last) <= len(nets) and _same_start(nets, last):
        start = len(last)
        if start == len(nets):
            return cache["keys"], cache["mine"]
    keys, mine = _convert_v4(nets[start:] if start else nets)
    if start:
        old_keys, old_mine = cache["keys"], cache["mine"]
        keys = np.concatenate((old_keys, keys))
        if mine is not None or old_mine is not None:
            mine = np.concatenate((np.ones(len(old_keys), bool) if old_mine is None else old_mine,
                                   np.ones(len(keys) - len(old_keys), bool) if mine is None else mine))
    if cache is not None:
        cache.update(nets=nets, keys=keys, mine=mine)
    return keys, mine


def _same_start(nets: list, last: list) -> bool:
    n = len(last)
    if any(nets[i] is not last[i] for i in (0, n // 2, n - 1)):
        return False
    return nets[:n] == last  # C-speed while the objects are the same ones


def _convert_v4(nets: list):
    """_convert_v4_slice() over slices of CONVERT_SLICE networks.

    Reading attributes in a C loop holds the GIL throughout: converting
    100k networks in one go would keep a _Listing thread that has a dump
    message ready waiting for 10 ms, and the kernel would idle meanwhile.
    """
    import numpy as np

    if len(nets) <= CONVERT_SLICE:
        return _convert_v4_slice(nets)
    parts = [_convert_v4_slice(nets[i:i + CONVERT_SLICE]) for i in range(0, len(nets), CONVERT_SLICE)]
    keys = np.concatenate([k for k, _ in parts])
    if all(m is None for _, m in parts):
        return keys, None
    return keys, np.concatenate([np.ones(len(k), bool) if m is None else m for k, m in parts])


def _convert_v4_slice(nets: list):
    import numpy as np

    n = len(nets)
    plens = np.fromiter(map(_PREFIXLEN, nets), dtype=np.int64, count=n).view(np.uint64)
    if countOf(map(_MODULE, nets), _V4) == n:
        mine = None
        # int64 converts faster than uint64; IPv4 values fit either way.
        values = np.fromiter(map(_VALUE, nets), dtype=np.int64, count=n).view(np.uint64)
    else:
        mine = np.fromiter(map(id, map(_MODULE, nets)), dtype=np.uint64, count=n) == id(_V4)
        idx = np.flatnonzero(mine)
        values = np.zeros(n, dtype=np.uint64)
        values[idx] = np.array([nets[i]._value for i in idx.tolist()], dtype=np.uint64)
        plens = np.where(mine, plens, np.uint64(32))
    host = np.uint64(32) - plens
    return (values >> host << host) << np.uint64(8) | plens, mine


_VALUE, _PREFIXLEN, _MODULE = attrgetter("_value"), attrgetter("_prefixlen"), attrgetter("_module")


def diff(members: Members, keys: list[int], timeouts: list[int]) -> tuple[list, list, list]:
    """(indexes of members to delete, [(key, timeout)] to add, [(key, timeout, member index)] to re-time)."""
    index = dict(zip(members.keys, range(len(members.keys))))
    kernel = members.timeouts
    add, update = [], []
    for key, timeout in zip(keys, timeouts):
        i = index.pop(key, None)
        if i is None:
            add.append((key, timeout))
        elif _differs(kernel[i], timeout):
            update.append((key, timeout, i))
    return list(index.values()), add, update


def diff_v4(members: Members, keys, timeouts) -> tuple[list, list, list]:
    """diff() in numpy, for IPv4 keys (they fit in 64 bits): a 1-member change at 100k is then cheap.

    The kernel's keys are sorted once and the wanted ones looked up in them;
    the wanted keys need no sort, so a caller's order costs nothing.
    """
    import numpy as np

    if members.arrays is not None:
        have, have_t = members.arrays[:2]
    else:
        have = np.array(members.keys, dtype=np.uint64)
        have_t = np.array(members.timeouts, dtype=np.int64)
    want = np.asarray(keys, dtype=np.uint64)
    want_t = np.asarray(timeouts, dtype=np.int64)
    if not len(have) or not len(want):
        return list(range(len(have))), list(zip(want.tolist(), want_t.tolist())), []
    # Wanted keys mostly come in order, and binary searches made in order are several times cheaper
    # than the same searches made in the kernel's hash order.
    sorted_have, order = _sorted(have)
    pos = np.minimum(np.searchsorted(sorted_have, want), len(have) - 1)
    found = sorted_have[pos] == want  # per wanted key: the kernel has it
    at = np.where(found, order[pos], -1)  # per wanted key: its index among the members
    kept = np.zeros(len(have), dtype=bool)  # per kernel member: still wanted
    kept[at[found]] = True
    kernel_t = np.where(found, have_t[np.maximum(at, 0)], 0)
    permanent = (kernel_t == 0) | (want_t == 0)
    changed = found & np.where(permanent, kernel_t != want_t, np.abs(kernel_t - want_t) > TOLERANCE)
    new = ~found
    add = list(zip(want[new].tolist(), want_t[new].tolist()))
    update = list(zip(want[changed].tolist(), want_t[changed].tolist(), at[changed].tolist()))
    return np.flatnonzero(~kept).tolist(), add, update


def _sorted(keys):
    """(IPv4 keys sorted, their indexes), by a radix sort: prefix length, then the address's low and
    high 16 bits, each pass a stable argsort that numpy does by counting. Half the time of a
    comparison sort at 100k members, the largest single cost of apply() after the kernel's listing.
    """
    import numpy as np

    address = (keys >> np.uint64(8)).astype(np.uint32)
    order = np.argsort((keys & np.uint64(255)).astype(np.uint8), kind="stable")
    low = (address & 0xFFFF).astype(np.uint16)
    order = order[np.argsort(low[order], kind="stable")]
    high = (address >> 16).astype(np.uint16)
    order = order[np.argsort(high[order], kind="stable")]
    return keys[order], order


class _StreamDiff:
    """diff_v4(), made batch by batch while the kernel's listing arrives.

    Given the wanted keys in key order (see _sorted_wanted), each batch of
    kernel members is decoded, looked up among them and compared as it
    comes, and its columns are appended to arrays allocated up front: at
    100k members all of that is done by the time the listing is, and
    result() has only the few changed members to gather. (Concatenating
    the batches at the end would cost 2 ms, mostly first touches of fresh
    memory.) result() returns what diff_v4() would, in the same order:
    deletions in the kernel's order, additions and re-timings in the
    caller's.
    """

    def __init__(self, keys, timeouts, rank):
        import numpy as np

        self.keys, self.timeouts, self.rank = keys, timeouts, rank  # rank: index into the caller's networks
        self.hit = np.zeros(len(keys), dtype=bool)  # per wanted key: the kernel has it
        self.size = 0  # members fed so far
        room = len(keys) + LIST_BATCH * 1024  # as many members as wanted, and a batch more
        self.columns = (np.empty(room, np.uint64), np.empty(room, np.int64), np.empty(room, np.uint64),
                        np.empty(room, np.uint64))  # as Members.arrays
        self.deleted: list = []  # per batch, indexes of the members not wanted
        self.changed: list = []  # per batch, (member indexes, their wanted keys' positions) to re-time

    def feed(self, blob) -> bool:
        """Take one batch of member nests; False (nothing taken) when they need the generic decode."""
        import numpy as np

        if not blob:
            return True
        members = _fast_members(blob, False, lists=False)
        if members is None:
            return False
        have = members.arrays[0]
        first = self.size
        self._store(members.arrays)
        if not len(self.keys):
            self.deleted.append(np.arange(first, self.size))
            return True
        # Binary searches made in key order are several times cheaper than in the kernel's hash order.
        order = _sorted(have)[1]
        at = np.empty(len(have), np.intp)
        at[order] = np.searchsorted(self.keys, have[order])
        np.minimum(at, len(self.keys) - 1, out=at)
        found = self.keys[at] == have
        self.deleted.append(np.flatnonzero(~found) + first)
        index, at = np.flatnonzero(found), at[found]
        self.hit[at] = True
        kernel_t, want_t = members.arrays[1][index], self.timeouts[at]
        permanent = (kernel_t == 0) | (want_t == 0)
        changed = np.where(permanent, kernel_t != want_t, np.abs(kernel_t - want_t) > TOLERANCE)
        self.changed.append((index[changed] + first, at[changed]))
        return True

    def _store(self, arrays) -> None:
        import numpy as np

        end = self.size + len(arrays[0])
        if end > len(self.columns[0]):  # more members than wanted and a batch: make room for twice as many
            room = max(end, 2 * len(self.columns[0]))
            self.columns = tuple(np.concatenate((c[:self.size], np.empty(room - self.size, c.dtype)))
                                 for c in self.columns)
        for column, values in zip(self.columns, arrays):
            column[self.size:end] = values
        self.size = end

    def result(self) -> tuple[Members, tuple[list, list, list]]:
        """(the members listed, (indexes of members to delete, [(key, timeout)] to add,
        [(key, timeout, member index)] to re-time)), as diff_v4() makes them."""
        import numpy as np

        members = Members(arrays=tuple(c[:self.size] for c in self.columns))
        new = np.flatnonzero(~self.hit)
        new = new[np.argsort(self.rank[new], kind="stable")]
        add = list(zip(self.keys[new].tolist(), self.timeouts[new].tolist()))
        deleted = np.concatenate(self.deleted).tolist() if self.deleted else []
        update = []
        if self.changed:
            index = np.concatenate([i for i, _ in self.changed])
            at = np.concatenate([a for _, a in self.changed])
            by_caller = np.argsort(self.rank[at], kind="stable")
            index, at = index[by_caller], at[by_caller]
            update = list(zip(self.keys[at].tolist(), self.timeouts[at].tolist(), index.tolist()))
        return members, (deleted, add, update)


@contextmanager
def _quick_gil_handover():
    """Lower the GIL's switch interval for the block, for a _Listing thread's sake.

    When that thread has a batch of dump messages, it needs the GIL briefly
    before it can ask the kernel for the next batch; the kernel builds no
    message meanwhile. A thread waiting for the GIL asks its holder to let
    go only after the switch interval, 5 ms by default: at that rate the
    ten or so handovers of a 100k-member listing would add more than the
    diffing the main thread does meanwhile.
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _differs(kernel: int, wanted: int) -> bool:
    if kernel == 0 or wanted == 0:
        return kernel != wanted
    return abs(kernel - wanted) > TOLERANCE


@dataclass
class _Plan:
    """The diff for one set, and enough of the old state to undo it."""

    name: str
    v6: bool
    members: Members  # the set before the change
    delete: list  # indexes into members
    add: list  # (key, timeout)
    update: list  # (key, timeout, index into members)
    deleted: int = 0
    written: int = 0
    failed: str = ""

    def _text(self, key: int) -> str:
        return str(_network(key >> 8, key & 255, _V6 if self.v6 else _V4))

    def run(self, nl: Netlink) -> None:
        v6, row = self.v6, self.members.row
        gone = [row(i)[0] for i in self.delete]
        dels = [encode_member(k >> 8, k & 255, v6, n) for n, k in enumerate(gone, 1)]
        try:
            self.deleted = nl.adt(CMD_DEL, self.name, dels)
        except NetlinkError as exc:
            # Unknown progress: re-add every member, harmless for those never deleted.
            self.deleted = exc.lineno - 1 if exc.lineno else len(self.delete)
            self.failed = self._text(gone[self.deleted]) if exc.lineno else "delete"
            raise
        writes = self.add + [(k, t) for k, t, _ in self.update]
        elems = [encode_member(k >> 8, k & 255, v6, n, t) for n, (k, t) in enumerate(writes, 1)]
        try:
            self.written = nl.adt(CMD_ADD, self.name, elems)
        except NetlinkError as exc:
            # Unknown progress: undo every write, harmless where none happened.
            self.written = exc.lineno - 1 if exc.lineno else len(writes)
            self.failed = self._text(writes[self.written][0]) if exc.lineno else "add"
            raise

    def undo(self, nl: Netlink) -> None:
        """Put back what run() changed: added members go, re-timed ones get their old timeout,
        deleted ones come back with their old timeout and counters."""
        v6, row = self.v6, self.members.row
        added = [k for k, _ in self.add][:self.written]
        updated = [row(i) for _, _, i in self.update][:max(self.written - len(self.add), 0)]
        deleted = [row(i) for i in self.delete[:self.deleted]]
        try:
            nl.adt(CMD_DEL, self.name, [encode_member(k >> 8, k & 255, v6, n) for n, k in enumerate(added, 1)])
            nl.adt(CMD_ADD, self.name, [encode_member(k >> 8, k & 255, v6, n, t)
                                        for n, (k, t, _, _) in enumerate(updated, 1)])
            nl.adt(CMD_ADD, self.name, [encode_member(k >> 8, k & 255, v6, n, t, (p, b))
                                        for n, (k, t, p, b) in enumerate(deleted, 1)])
        except NetlinkError:
            pass
        self.deleted = self.written = 0


def create(settings: Settings) -> IpsetBackend:
    return IpsetBackend(settings)
