"""ipset's netlink protocol: its messages and attributes, and the requests the ipset backend makes.

Members are added, deleted and listed in bulk (``IPSET_ATTR_ADT`` batches, as
``ipset restore`` does), set headers are read, and single members tested,
over the netlink core beside this module. pyroute2 builds and parses one
Python message per member, which takes seconds at 100k members where
``ipset restore`` takes half a second (and its header decoding drops the
create options ensure() checks).

A listing of a large set can be received by a helper thread (Listing) while
the caller diffs what has arrived: the kernel builds each next dump message
inside the call that takes the last one.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Iterator, Sequence

from netblock.errors import KernelFeatureMissing, PermissionDenied
from netblock.firewall.netlink import core
from netblock.firewall.netlink.core import (  # re-exported: the backend names them as ipset protocol constants
    NLA_F_NESTED as NLA_F_NESTED,
    NLA_F_NET_BYTEORDER as NLA_F_NET_BYTEORDER,
    NLM_F_ACK as NLM_F_ACK,
    NLM_F_DUMP as NLM_F_DUMP,
    NLM_F_EXCL as NLM_F_EXCL,
    NLM_F_REQUEST as NLM_F_REQUEST,
    NLMSG_DONE as NLMSG_DONE,
    NetlinkError as NetlinkError,
    attr as attr,
    walk as walk,
)

MSG_WAITFORONE = 0x10000
DATAGRAM = 64 << 10  # receive room per dump message: twice the 32 KiB the kernel makes them
LIST_BATCH = 16  # dump messages (about 9k members) per recvmmsg() call of a Listing
BATCH = 1024  # members per netlink message (about 64 KiB)
NFNL_SUBSYS_IPSET = 6
CMD_PROTOCOL, CMD_LIST, CMD_ADD, CMD_DEL, CMD_TEST = 1, 7, 9, 10, 11
LIST_HEADER = 1 << 2
A_PROTOCOL, A_SETNAME, A_TYPENAME, A_FAMILY, A_FLAGS, A_DATA, A_ADT, A_LINENO = 1, 2, 3, 5, 6, 7, 8, 9
# Inside IPSET_ATTR_DATA:
D_IP, D_CIDR, D_TIMEOUT, D_CADT_FLAGS, D_LINENO, D_MAXELEM = 1, 3, 6, 8, 9, 19
D_INITVAL, D_HASHSIZE = 17, 18
D_BYTES, D_PACKETS = 24, 25  # of a member
D_ELEMENTS, D_MEMSIZE = 24, 26  # of a set header: live members, kernel memory
IPADDR_V4, IPADDR_V6 = 1, 2
FLAG_WITH_COUNTERS = 1 << 3
ERR_EXIST = 4103  # with NLM_F_EXCL: an ADD of a present member, a DEL or TEST of an absent one

IPSET_ERRORS = {
    4097: "ipset protocol error", 4098: "set type not supported by the kernel",
    4099: "too many sets", 4100: "set is in use by a kernel component",
    4103: "element already added", 4104: "invalid CIDR prefix length",
    4106: "family not supported by the set type", 4107: "set has no timeout support",
    4108: "set is referenced", 4109: "an IPv4 address was expected", 4110: "an IPv6 address was expected",
    4111: "set has no counter support", 4353: "hash is full (maxelem reached)",
    4354: "null-valued element cannot be stored in a hash set",
}

# Whole-set listings taken by this process: the tests' proof that a change path read no set back.
LISTINGS = 0

_ATTR = core.ATTR


def error_text(code: int) -> str:
    return IPSET_ERRORS.get(code) or os.strerror(code)


@dataclass
class Header:
    """What the kernel says about a set named like ours.

    ``elements`` (members not expired), ``memsize``, ``initval`` (the hash's
    seed, new with every create) and ``hashsize`` are what the one-change
    path compares with what netblock last left: ipset has no generation.
    """

    typename: str
    family: int
    counters: bool
    timeout: bool
    maxelem: int
    elements: int = 0
    memsize: int = 0
    initval: int = 0
    hashsize: int = 0

    def facts(self) -> tuple[int, int, int, int]:
        return self.elements, self.memsize, self.initval, self.hashsize


class Netlink(core.Socket):
    """A netfilter netlink socket speaking only ipset's ADD/DEL/TEST/LIST in bulk."""

    def __init__(self) -> None:
        try:
            super().__init__(copy=False, seq=int(time.time()) & 0xFFFF)
        except NetlinkError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise PermissionDenied("ipset: cannot open a netfilter netlink socket (needs CAP_NET_ADMIN)") from exc
            raise KernelFeatureMissing(f"ipset: no netfilter netlink in this kernel ({exc.strerror})") from exc
        self.protocol = 7
        try:
            self.protocol = self._protocol_version()
        except BaseException:
            self.sock.close()
            raise

    def _message(self, cmd: int, flags: int, attrs: bytes) -> tuple[int, bytes]:
        return self.message(NFNL_SUBSYS_IPSET, cmd, flags, attrs, socket.AF_INET)

    def _head(self, name: str | None = None) -> bytes:
        out = attr(A_PROTOCOL, bytes([self.protocol]))
        if name is not None:
            out += attr(A_SETNAME, name.encode() + b"\0")
        return out

    def _protocol_version(self) -> int:
        seq, msg = self._message(CMD_PROTOCOL, NLM_F_REQUEST, attr(A_PROTOCOL, bytes([7])))
        for payload in self._replies(msg, seq):
            attrs = walk(payload, 4, len(payload))
            if A_PROTOCOL in attrs:
                return payload[attrs[A_PROTOCOL][0]]
        return 7

    def _replies(self, msg: bytes, seq: int) -> Iterator[memoryview]:
        """Send one request; yield the payload of every reply (nfgenmsg on) until it is complete.

        A payload is a view of the receive buffer, valid only until the next
        one is asked for: copying each 32 KiB dump message once more would
        cost a 100k-member listing a millisecond.
        """
        self.send(msg)
        try:
            for kind, _flags, buf, start, end in self.replies(seq, ack=False):
                if kind != NLMSG_DONE:
                    yield buf[start:end]  # type: ignore[misc]
        except NetlinkError as exc:
            exc.lineno = error_lineno(exc.reply)
            raise

    def parse(self, datagram, seq: int) -> tuple[list, bool]:
        """(payloads of the replies to ``seq`` in one datagram, whether the answer is complete): for Listing."""
        try:
            found, done = core.take(datagram, seq, ack=False)
        except NetlinkError as exc:
            exc.lineno = error_lineno(exc.reply)
            raise
        return [buf[start:end] for kind, _f, buf, start, end in found if kind != NLMSG_DONE], done

    def receive_many(self, buf) -> list[memoryview]:
        """Datagrams, at least one (waited for), taken into ``buf`` by one recvmmsg() call.

        For a dump received in a helper thread (see Listing): the kernel
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

    def header(self, name: str) -> "Header | None":
        """The set's type, family and create options; None when no set has that name."""
        flags = attr(A_FLAGS | NLA_F_NET_BYTEORDER, struct.pack(">I", LIST_HEADER))
        seq, msg = self._message(CMD_LIST, NLM_F_REQUEST | NLM_F_DUMP, self._head(name) + flags)
        try:
            replies = [bytes(p) for p in self._replies(msg, seq)]
        except NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        if not replies:
            return None
        payload = replies[0]
        attrs = walk(payload, 4, len(payload))
        typename = bytes(payload[slice(*attrs[A_TYPENAME])]).rstrip(b"\0").decode() if A_TYPENAME in attrs else ""
        family = payload[attrs[A_FAMILY][0]] if A_FAMILY in attrs else 0
        data = walk(payload, *attrs[A_DATA]) if A_DATA in attrs else {}
        cadt_flags = int.from_bytes(payload[slice(*data[D_CADT_FLAGS])], "big") if D_CADT_FLAGS in data else 0
        maxelem = int.from_bytes(payload[slice(*data[D_MAXELEM])], "big") if D_MAXELEM in data else 0
        number = {k: int.from_bytes(payload[slice(*data[k])], "big") if k in data else 0
                  for k in (D_ELEMENTS, D_MEMSIZE, D_INITVAL, D_HASHSIZE)}
        return Header(typename, family, bool(cadt_flags & FLAG_WITH_COUNTERS), D_TIMEOUT in data, maxelem,
                      number[D_ELEMENTS], number[D_MEMSIZE], number[D_INITVAL], number[D_HASHSIZE])

    def list(self, name: str):
        """(header DATA payloads, all member nests in one buffer) of set ``name``; NetlinkError ENOENT if absent."""
        global LISTINGS
        LISTINGS += 1
        seq, msg = self._message(CMD_LIST, NLM_F_REQUEST | NLM_F_DUMP, self._head(name))
        return listed(self._replies(msg, seq))

    def adt(self, cmd: int, name: str, elements: Sequence[bytes], exclusive: bool = False) -> int:
        """Send ADD/DEL of pre-encoded members in batches; return how many were done.

        Without NLM_F_EXCL, as ``ipset -exist``: adding a present member only
        re-times it (its counters stay), deleting an absent one is no error.
        On a refusal raises NetlinkError whose ``lineno`` is the 1-based index
        (into ``elements``) of the member refused: all before it were done.
        ``exclusive`` (NLM_F_EXCL): adding a present member, or deleting an
        absent one, is refused with ERR_EXIST.
        """
        flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_EXCL if exclusive else 0)
        head = self._head(name) + attr(A_LINENO, struct.pack("=I", 0))
        for start in range(0, len(elements), BATCH):
            chunk = b"".join(elements[start:start + BATCH])
            seq, msg = self._message(cmd, flags, head + _ATTR.pack(4 + len(chunk), A_ADT | NLA_F_NESTED) + chunk)
            for _ in self._replies(msg, seq):
                pass
        return len(elements)

    def test(self, name: str, element: bytes) -> bool:
        """Whether the set holds the member ``element`` (an encode_member() nest, sent as the request's DATA).

        A network is tested as that exact member; a single address (a full
        prefix length) matches any member holding it: that is how the
        kernel's hash:net answers a TEST.
        """
        seq, msg = self._message(CMD_TEST, NLM_F_REQUEST | NLM_F_ACK, self._head(name) + element)
        try:
            for _ in self._replies(msg, seq):
                pass
        except NetlinkError as exc:
            if exc.errno == ERR_EXIST:
                return False
            raise
        return True


def error_lineno(reply: bytes) -> int:
    """The failing member's line number, when the kernel echoed our message back with it."""
    if len(reply) < 16 + 4:
        return 0
    (olen,) = struct.unpack_from("=I", reply, 0)
    end = min(len(reply), olen)
    attrs = walk(reply, 16 + 4, end)
    if A_LINENO in attrs:
        return struct.unpack_from("=I", reply, attrs[A_LINENO][0])[0]
    return 0


def listed(payloads) -> tuple[list[bytes], bytearray]:
    """(header DATA payloads, member nests appended in one buffer) of the replies to a LIST.

    The member nests are appended straight to one buffer: at 100k members
    one copy of 5.6 MB instead of three.
    """
    headers, members = [], bytearray()
    for payload in payloads:
        attrs = walk(payload, 4, len(payload))
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


class Listing:
    """A set's LIST dump received by a helper thread and handed over in batches as it arrives.

    The kernel builds the dump (40 ms at 100k members) inside the receiving
    calls, with the GIL released: meanwhile the main thread can compute and
    diff against what has arrived, instead of starting only once all of it
    has. Iterating yields, per batch of up to LIST_BATCH messages, the
    payloads of the replies (as Netlink.parse makes them), and raises the
    receiving thread's error, a NetlinkError ENOENT for a missing set
    included. Used as a context manager: leaving it waits for the thread,
    which ends when the dump does, so the thread never outlives its caller's
    use of the socket.
    """

    def __init__(self, nl: Netlink, name: str):
        self._nl = nl
        self._batches: SimpleQueue = SimpleQueue()
        self._spare: SimpleQueue = SimpleQueue()
        global LISTINGS
        LISTINGS += 1
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
            self._nl.send(msg)
            while True:
                try:
                    buf = self._spare.get_nowait()
                except Empty:
                    buf = np.empty(LIST_BATCH * DATAGRAM, np.uint8)
                datagrams = self._nl.receive_many(buf)
                self._batches.put((buf, datagrams))
                if self._nl.parse(datagrams[-1], self._seq)[1]:
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
                payloads += self._nl.parse(datagram, self._seq)[0]
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
