"""The netlink core both of netblock's netfilter protocols stand on (nf_tables and ipset).

One NETLINK_NETFILTER socket, the message framing (nlmsghdr + nfgenmsg),
attribute packing and parsing, and ONE reply loop: it ends a dump at
NLMSG_DONE, a request at its ACK (or, when none was asked for, at its single
reply) and raises NetlinkError when the kernel answered with an error. A
batch's queued errors are drained by the same framing. The protocols
(nftables.py, ipset.py beside this) only build their requests and read
their attributes.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Iterator

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_CAP_ACK = 10
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_NETNS_COOKIE = 71

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = 0x3FFF

RECV_SIZE = 1 << 20  # receive room: the largest datagram the kernel sends a dump in is far smaller

HDR = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big-endian)
ATTR = struct.Struct("=HH")  # nlattr: length, type
_ERRNO = struct.Struct("=i")


class NetlinkError(OSError):
    """The kernel answered a request with an error (errno in .errno, also as .code).

    ``reply`` is the error message's body after the error number: the
    request as the kernel echoed it (ipset reads the failing member's line
    number from it). ``lineno`` is that number where a protocol found one.
    """

    def __init__(self, code: int, message: str | None = None, reply: bytes = b"", lineno: int = 0):
        super().__init__(code, message or os.strerror(code))
        self.reply, self.lineno = reply, lineno

    @property
    def code(self) -> int:
        assert self.errno is not None  # __init__ always passes OSError a code
        return self.errno

    def __reduce__(self):
        return type(self), (self.errno, self.strerror, self.reply, self.lineno)


def _from_os(exc: OSError, what: str) -> NetlinkError:
    """A socket call's OSError as a NetlinkError (the socket module raises them from errno, never without one)."""
    assert exc.errno is not None
    return NetlinkError(exc.errno, f"netlink {what}: {exc.strerror}")


def pad(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return ATTR.pack(n, kind) + payload + b"\0" * (pad(n) - n)


def nest(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def strz(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def parse_attrs(buf: bytes | memoryview, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    """Top-level attributes of one message body: {type (flags stripped): payload}."""
    out: dict[int, bytes] = {}
    end = len(buf) if end is None else end
    pos = start
    while pos + 4 <= end:
        length, kind = ATTR.unpack_from(buf, pos)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = bytes(buf[pos + 4:pos + length])
        pos += pad(length)
    return out


def walk(buf, start: int, end: int) -> dict[int, tuple[int, int]]:
    """{attribute type: (payload start, payload end)} of the attributes in buf[start:end], nothing copied."""
    out = {}
    while start + 4 <= end:
        length, atype = ATTR.unpack_from(buf, start)
        if length < 4:
            break
        out[atype & NLA_TYPE_MASK] = (start + 4, start + length)
        start += (length + 3) & ~3
    return out


# One reply: (message type, flags, buffer, body start after the nlmsghdr, body end).
Reply = tuple[int, int, "bytes | memoryview", int, int]


class Socket:
    """One NETLINK_NETFILTER socket in the current network namespace.

    ``copy``: replies are handed out as bytes of their own (the caller may
    keep them), else as views of one receive buffer, valid until the next
    datagram is asked for (a 100k-member ipset listing is then never copied
    once more).
    """

    def __init__(self, copy: bool = True, seq: int = 0) -> None:
        self.seq = seq
        self.seen = 0.0  # time.time() when the datagram holding the last reply arrived
        self._copy = copy
        self._buffer = bytearray(RECV_SIZE)
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise _from_os(exc, "socket") from None
        try:
            self.sock.bind((0, 0))
        except OSError as exc:
            self.sock.close()
            raise _from_os(exc, "bind") from None
        # Extended errors; acks without a copy of each (up to 64 KiB) request; room for a whole dump burst.
        for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
            try:
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:
                pass
        self.bufsize(socket.SO_RCVBUF, SO_RCVBUFFORCE, 8 << 20)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def bufsize(self, opt: int, force: int, size: int) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, size)
            except OSError:
                pass

    def netns_cookie(self) -> int:
        """A number naming this network namespace, never reused until reboot."""
        return struct.unpack("=Q", self.sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]

    # ------------------------------------------------------------ framing

    def message(self, subsys: int, msg: int, flags: int, body: bytes, family: int = 0,
                res_id: int = 0) -> tuple[int, bytes]:
        """(seq, one nfnetlink message): nlmsghdr, nfgenmsg, ``body``."""
        self.seq += 1
        payload = NFGEN.pack(family, 0, socket.htons(res_id)) + body
        return self.seq, HDR.pack(16 + len(payload), (subsys << 8) | msg, flags, self.seq, 0) + payload

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise _from_os(exc, "send") from None

    def receive(self, flags: int = 0) -> bytes | memoryview:
        """One datagram (BlockingIOError passes through, for a non-blocking drain)."""
        try:
            if self._copy:
                data: bytes | memoryview = self.sock.recv(RECV_SIZE, flags)
            else:
                data = memoryview(self._buffer)[:self.sock.recv_into(self._buffer, 0, flags)]
        except BlockingIOError:
            raise
        except OSError as exc:
            raise _from_os(exc, "receive") from None
        self.seen = time.time()
        return data

    # ------------------------------------------------------------ the reply loop

    def replies(self, seq: int, ack: bool = True) -> Iterator[Reply]:
        """Every reply to request ``seq``, until it is complete (see take()); a dump's NLMSG_DONE included."""
        while True:
            found, done = take(self.receive(), seq, ack)
            yield from found
            if done:
                return

    def ask(self, subsys: int, msg: int, flags: int, body: bytes, family: int = 0) -> list[Reply]:
        """Send one request and collect its replies (with ``copy``, they stay valid)."""
        seq, data = self.message(subsys, msg, flags, body, family)
        self.send(data)
        return [r for r in self.replies(seq, ack=bool(flags & NLM_F_ACK)) if r[0] != NLMSG_DONE]

    def drain_errors(self) -> list[int]:
        """The error numbers of every reply queued on the socket now, without waiting (a batch's answer).

        The kernel handles a whole nfnetlink batch inside sendmsg(), so every
        error is queued by the time send returns.
        """
        errors: list[int] = []
        while True:
            try:
                data = self.receive(socket.MSG_DONTWAIT)
            except BlockingIOError:
                return errors
            for kind, _flags, _seq, start, _end in messages(data):
                if kind == NLMSG_ERROR:
                    err = -_ERRNO.unpack_from(data, start)[0]
                    if err:
                        errors.append(err)


def messages(data) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, body start, body end) of each netlink message in one datagram."""
    pos, size = 0, len(data)
    while pos + 16 <= size:
        length, kind, flags, seq, _pid = HDR.unpack_from(data, pos)
        if length < 16:
            return
        yield kind, flags, seq, pos + 16, pos + length
        pos += (length + 3) & ~3


def take(data, seq: int, ack: bool = True) -> tuple[list[Reply], bool]:
    """(the replies to ``seq`` in one datagram, whether the answer is complete).

    Complete: at NLMSG_DONE (a dump's end, returned as the last reply: its
    flags tell whether the dump was interrupted), at the ACK, or (a request
    that asked for no ACK) at its one reply that is not part of a multipart
    answer. An error answer raises NetlinkError. Replies to other requests
    (late acks of an earlier one) are skipped.
    """
    found: list[Reply] = []
    for kind, flags, mseq, start, end in messages(data):
        if mseq != seq:
            continue
        if kind == NLMSG_DONE:
            found.append((kind, flags, data, start, end))
            return found, True
        if kind == NLMSG_ERROR:
            err = -_ERRNO.unpack_from(data, start)[0]
            if err:
                raise NetlinkError(err, reply=bytes(data[start + 4:end]))
            return found, True
        found.append((kind, flags, data, start, end))
        if not ack and not flags & NLM_F_MULTI:
            return found, True
    return found, False
