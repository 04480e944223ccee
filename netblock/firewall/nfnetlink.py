"""A minimal nf_tables netlink client: just what the nftables backend needs.

Why not libnftables for everything: nft 1.0.6 loads the whole ruleset,
including every set element, before each command, so with 100k elements even
a one-element change costs seconds. Talking to the kernel directly, a change
is one small batch and a counter read is one dump of the set, nothing else.

Only set elements (add/delete/dump), the ruleset generation and a few
lookups (table, set, chain, rules of a chain) are spoken here; the skeleton itself is created from the
readable ruleset in rules/netblock.nft through libnftables.
"""

from __future__ import annotations

import errno
import math
import operator
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Iterator

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_CAP_ACK = 10
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_NETNS_COOKIE = 71

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFPROTO_INET = 1

NFT_MSG_GETTABLE = 1
NFT_MSG_DELTABLE = 2
NFT_MSG_GETCHAIN = 4
NFT_MSG_GETRULE = 7
NFT_MSG_GETSET = 10
NFT_MSG_NEWSETELEM = 12
NFT_MSG_GETSETELEM = 13
NFT_MSG_DELSETELEM = 14
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NFNL_BATCH_GENID = 1
ERESTART = 85

NFTA_TABLE_NAME = 1
NFTA_TABLE_USERDATA = 6
NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_NAME = 3
NFTA_CHAIN_USERDATA = 12
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_SET_TABLE = 1
NFTA_SET_NAME = 2
NFTA_SET_FLAGS = 3
NFTA_SET_KEY_LEN = 5
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_FLAGS = 3
NFTA_SET_ELEM_TIMEOUT = 4
NFTA_SET_ELEM_EXPIRATION = 5
NFTA_SET_ELEM_EXPR = 7
NFTA_SET_ELEM_EXPRESSIONS = 10
NFTA_DATA_VALUE = 1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2

NFT_SET_INTERVAL = 0x4
NFT_SET_TIMEOUT = 0x10
NFT_SET_ELEM_INTERVAL_END = 0x1

# libnftnl's userdata TLV type for a table's or chain's comment.
UDATA_COMMENT = 0

DUMP_ATTEMPTS = 3
# Set dumps taken by this process: the tests' proof that a change path read no whole set back.
DUMPS = 0

# An element list attribute has a 16-bit length: stay well below it per message.
_MAX_ELEMENTS_BYTES = 60000

_HDR = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")
_ATTR = struct.Struct("=HH")


class NetlinkError(OSError):
    """The kernel answered a request with an error (errno in .errno)."""


def _pad(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _ATTR.pack(n, kind) + payload + b"\0" * (_pad(n) - n)


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
        length, kind = _ATTR.unpack_from(buf, pos)
        if length < 4:
            break
        out[kind & 0x3FFF] = bytes(buf[pos + 4:pos + length])
        pos += _pad(length)
    return out


def parse_udata_comment(udata: bytes) -> str | None:
    """The comment libnftnl stores in a table's or chain's userdata TLVs."""
    pos = 0
    while pos + 2 <= len(udata):
        kind, length = udata[pos], udata[pos + 1]
        if kind == UDATA_COMMENT:
            return udata[pos + 2:pos + 2 + length].rstrip(b"\0").decode(errors="replace")
        pos += 2 + length
    return None


@dataclass
class Element:
    """One kernel set element as dumped: an interval start or an interval end."""

    key: bytes
    end: bool
    timeout_ms: int | None = None
    expires_ms: int | None = None
    packets: int = 0
    bytes: int = 0
    seen: float = 0.0  # time.time() when the kernel's reply carrying it arrived (expires_ms counts from it)


@dataclass(slots=True)
class ElemSpec:
    """One element to send: its key, whether it closes an interval, when it expires.

    ``expires`` is absolute (time.time() seconds; 0 = never, stated explicitly,
    which turns a timed element permanent in place). The kernel wants a
    relative timeout, so it is computed when the batch is encoded, as late
    as possible: a 100k batch takes seconds to build.
    """

    key: bytes
    end: bool = False
    expires: float | None = None
    udata: bytes = b""  # an encoded NFTA_SET_ELEM_USERDATA attribute, as nft writes it

    def encode(self, now: float) -> bytes:
        expires, key = self.expires, self.key
        timed = expires is not None
        if not self.udata and len(key) % 4 == 0:
            # Everything but the key and the timeout value is fixed: splice them into a prepared frame.
            head, tail = _FRAMES.get((len(key), self.end, timed)) or _frame(len(key), self.end, timed)
            if not timed:
                return head + key + tail
            ms = 0 if expires == 0 else max(1, math.ceil((expires - now) * 1000))
            return head + key + tail + ms.to_bytes(8, "big")
        return self._encode_generic(now)

    def _encode_generic(self, now: float) -> bytes:
        body = nest(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, self.key))
        if self.end:
            body += attr(NFTA_SET_ELEM_FLAGS, struct.pack("!I", NFT_SET_ELEM_INTERVAL_END))
        if self.expires is not None:
            ms = 0 if self.expires == 0 else max(1, math.ceil((self.expires - now) * 1000))
            body += attr(NFTA_SET_ELEM_TIMEOUT, struct.pack("!Q", ms))
        return nest(NFTA_LIST_ELEM, body + self.udata) if self.udata else nest(NFTA_LIST_ELEM, body)


_FRAMES: dict[tuple[int, bool, bool], tuple[bytes, bytes]] = {}


def _frame(keylen: int, end: bool, timed: bool) -> tuple[bytes, bytes]:
    """The encoding of an element around its key (and before its 8-byte timeout value)."""
    frame = _FRAMES.get((keylen, end, timed))
    if frame is None:
        marker_key = b"\xa5" * keylen
        sample = ElemSpec(marker_key, end, 1.0 if timed else None)._encode_generic(now=0.0)
        if timed:
            sample = sample[:-8]
        cut = sample.index(marker_key)
        frame = _FRAMES[(keylen, end, timed)] = (sample[:cut], sample[cut + keylen:])
    return frame


@dataclass
class SetOp:
    """Add or delete a group of elements of one set, inside a batch."""

    set: str
    delete: bool
    elements: list[ElemSpec] = field(default_factory=list)
    exclusive: bool = True  # adds: refuse an element that already exists


class Nfnl:
    """One NETLINK_NETFILTER socket in the current network namespace."""

    def __init__(self, table: str, family: int = NFPROTO_INET) -> None:
        self.table = table
        self.family = family
        self.seq = 0
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise NetlinkError(exc.errno, f"netlink socket: {exc.strerror}") from None
        self.sock.bind((0, 0))
        for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
            try:
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:
                pass
        self._bufsize(socket.SO_RCVBUF, SO_RCVBUFFORCE, 8 << 20)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Nfnl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _bufsize(self, opt: int, force: int, size: int) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, opt, size)

    def _msg(self, msg: int, flags: int, body: bytes, family: int | None = None,
             subsys: int = NFNL_SUBSYS_NFTABLES, res_id: int = 0) -> tuple[int, bytes]:
        self.seq += 1
        payload = _NFGEN.pack(self.family if family is None else family, 0, socket.htons(res_id)) + body
        kind = (subsys << 8) | msg if subsys is not None else msg
        return self.seq, _HDR.pack(16 + len(payload), kind, flags, self.seq, 0) + payload

    # ------------------------------------------------------------ receiving

    def _messages(self, data: bytes):
        pos = 0
        while pos + 16 <= len(data):
            length, kind, flags, seq, _pid = _HDR.unpack_from(data, pos)
            if length < 16:
                break
            yield kind, seq, data, pos + 16, pos + length
            pos += _pad(length)

    @staticmethod
    def _error_of(data: bytes, start: int) -> int:
        return -struct.unpack_from("=i", data, start)[0]

    def _recv(self, flags: int = 0) -> bytes:
        try:
            return self.sock.recv(1 << 20, flags)
        except BlockingIOError:
            raise
        except OSError as exc:
            raise NetlinkError(exc.errno, f"netlink receive: {exc.strerror}") from None

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise NetlinkError(exc.errno, f"netlink send: {exc.strerror}") from None

    def request(self, msg: int, body: bytes, dump: bool = False) -> list[tuple[bytes, int, int]]:
        """One get request; returns each reply as (buffer, body start, body end).

        A missing object raises NetlinkError(ENOENT); the body starts after
        the nfgenmsg header.
        """
        seq, data = self._msg(msg, NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK), body)
        self._send(data)
        return [(buf, start + 4, end) for kind, buf, start, end, _seen in self._replies(seq) if kind != NLMSG_DONE]

    def _replies(self, seq: int) -> Iterator[tuple[int, bytes, int, int, float]]:
        """(kind, buffer, body start, body end, time received) of each reply to ``seq``, NLMSG_DONE
        included; ends at the ACK or DONE, raises NetlinkError when the kernel answered with an error."""
        while True:
            chunk = self._recv()
            seen = time.time()
            for kind, mseq, buf, start, end in self._messages(chunk):
                if mseq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    err = self._error_of(buf, start)
                    if err:
                        raise NetlinkError(err, os.strerror(err))
                    return
                yield kind, buf, start, end, seen
                if kind == NLMSG_DONE:
                    return

    # ------------------------------------------------------------ lookups

    def get_genid(self) -> int:
        """The ruleset generation: every committed transaction, by anyone, moves it on by one."""
        (buf, s, e), = self.request(NFT_MSG_GETGEN, b"")
        return struct.unpack("!I", parse_attrs(buf, s, e)[NFTA_GEN_ID][:4])[0]

    def netns_cookie(self) -> int:
        """A number naming this network namespace, never reused until reboot."""
        return struct.unpack("=Q", self.sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]

    def get_table(self) -> dict[int, bytes]:
        (buf, s, e), = self.request(NFT_MSG_GETTABLE, strz(NFTA_TABLE_NAME, self.table))
        return parse_attrs(buf, s, e)

    def get_set(self, name: str) -> dict[int, bytes]:
        (buf, s, e), = self.request(NFT_MSG_GETSET, strz(NFTA_SET_TABLE, self.table) + strz(NFTA_SET_NAME, name))
        return parse_attrs(buf, s, e)

    def get_chain(self, name: str) -> dict[int, bytes]:
        (buf, s, e), = self.request(NFT_MSG_GETCHAIN, strz(NFTA_CHAIN_TABLE, self.table) + strz(NFTA_CHAIN_NAME, name))
        return parse_attrs(buf, s, e)

    def count_rules(self, chain: str) -> int:
        replies = self.request(NFT_MSG_GETRULE, strz(NFTA_RULE_TABLE, self.table) + strz(NFTA_RULE_CHAIN, chain),
                               dump=True)
        return sum(1 for buf, s, e in replies if parse_attrs(buf, s, e).get(NFTA_RULE_CHAIN, b"").rstrip(b"\0")
                   == chain.encode())

    def dump_elements(self, set_name: str) -> list[Element]:
        """Every element of a set, with its timeout, remaining life and counter.

        A dump spans many replies; if the ruleset changed in between, the
        kernel flags the replies as inconsistent and the dump is taken again.
        """
        global DUMPS
        for _attempt in range(DUMP_ATTEMPTS):
            DUMPS += 1
            out, consistent = self._dump_elements_once(set_name)
            if consistent:
                return out
        raise NetlinkError(errno.EAGAIN, f"set {set_name} kept changing while being read")

    def get_elements(self, set_name: str, keys: list[bytes]) -> list[Element]:
        """The named interval starts of a set, with their counters, without dumping the set.

        One GETSETELEM request naming the keys; the kernel answers each with
        its element. A key the set does not hold raises NetlinkError(ENOENT).
        """
        out: list[Element] = []
        for i in range(0, len(keys), 1024):
            body = (strz(NFTA_SET_ELEM_LIST_TABLE, self.table) + strz(NFTA_SET_ELEM_LIST_SET, set_name)
                    + nest(NFTA_SET_ELEM_LIST_ELEMENTS, *_key_elements(keys[i:i + 1024])))
            seen = time.time()
            for buf, start, end in self.request(NFT_MSG_GETSETELEM, body):
                _parse_elements(buf, start, end, out, seen)
        return out

    def _dump_elements_once(self, set_name: str) -> tuple[list[Element], bool]:
        body = strz(NFTA_SET_ELEM_LIST_TABLE, self.table) + strz(NFTA_SET_ELEM_LIST_SET, set_name)
        seq, data = self._msg(NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, body)
        self._send(data)
        out: list[Element] = []
        consistent = True
        for kind, buf, start, end, seen in self._replies(seq):
            if _HDR.unpack_from(buf, start - 16)[2] & NLM_F_DUMP_INTR:
                consistent = False
            if kind != NLMSG_DONE:
                _parse_elements(buf, start + 4, end, out, seen)
        return out, consistent

    # ------------------------------------------------------------ batches

    def batch(self, ops: list[SetOp], delete_table: bool = False, genid: int | None = None) -> None:
        """Send set-element changes (and/or a table deletion) as ONE transaction.

        The kernel handles the whole batch inside sendmsg(), so every
        error is already queued on the socket when send returns; any error
        means the kernel applied none of it. With ``genid`` the kernel
        refuses the batch (ERESTART) if anyone committed since that
        generation was read.
        """
        parts: list[bytes] = []
        guard = attr(NFNL_BATCH_GENID, struct.pack("!I", genid)) if genid is not None else b""
        _, begin = self._msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, guard, family=0, subsys=0,
                             res_id=NFNL_SUBSYS_NFTABLES)
        parts.append(begin)
        head = strz(NFTA_SET_ELEM_LIST_TABLE, self.table)
        for op in ops:
            if op.delete:
                msg, flags = NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK
            else:
                msg = NFT_MSG_NEWSETELEM
                flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | (NLM_F_EXCL if op.exclusive else 0)
            prefix = head + strz(NFTA_SET_ELEM_LIST_SET, op.set)
            chunk: list[bytes] = []
            size = 0
            for elem in op.elements:
                enc = elem.encode(time.time())
                if size + len(enc) > _MAX_ELEMENTS_BYTES:
                    parts.append(self._msg(msg, flags, prefix + nest(NFTA_SET_ELEM_LIST_ELEMENTS, *chunk))[1])
                    chunk, size = [], 0
                chunk.append(enc)
                size += len(enc)
            if chunk:
                parts.append(self._msg(msg, flags, prefix + nest(NFTA_SET_ELEM_LIST_ELEMENTS, *chunk))[1])
        if delete_table:
            parts.append(self._msg(NFT_MSG_DELTABLE, NLM_F_REQUEST | NLM_F_ACK, strz(NFTA_TABLE_NAME, self.table))[1])
        if len(parts) == 1:
            return
        _, end = self._msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, b"", family=0, subsys=0, res_id=NFNL_SUBSYS_NFTABLES)
        parts.append(end)
        data = b"".join(parts)
        self._bufsize(socket.SO_SNDBUF, SO_SNDBUFFORCE, len(data) + (1 << 16))
        self._send(data)
        errors = []
        while True:
            try:
                reply = self._recv(socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            for kind, _seq, buf, start, _end in self._messages(reply):
                if kind == NLMSG_ERROR:
                    err = self._error_of(buf, start)
                    if err:
                        errors.append(err)
        if errors:
            # EPERM first: it is the one a user can fix by themselves.
            err = errno.EPERM if errno.EPERM in errors else errors[0]
            raise NetlinkError(err, os.strerror(err))


def _key_elements(keys: list[bytes]) -> list[bytes]:
    """NFTA_LIST_ELEM nests naming only a key each: a daemon's counter read asks for 100k of them.

    Keys of one length that needs no padding (IPv4, IPv6) share a prebuilt
    header; any other goes through attr() and nest().
    """
    size = len(keys[0]) if keys else 0
    if size % 4 or any(len(k) != size for k in keys):
        return [nest(NFTA_LIST_ELEM, nest(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, k))) for k in keys]
    head = (_ATTR.pack(12 + size, NFTA_LIST_ELEM | NLA_F_NESTED) + _ATTR.pack(8 + size, NFTA_SET_ELEM_KEY | NLA_F_NESTED)
            + _ATTR.pack(4 + size, NFTA_DATA_VALUE))
    return [head + k for k in keys]


def _parse_elements(buf: bytes, start: int, end: int, out: list[Element], seen: float) -> None:
    """Decode NFTA_SET_ELEM_LIST_ELEMENTS of one dump message into ``out``.

    Written flat with struct offsets because it runs once per element of a
    100k-element set and dominates the cost of a counter read.
    """
    unpack = _ATTR.unpack_from
    pos = start
    while pos + 4 <= end:
        length, kind = unpack(buf, pos)
        if length < 4:
            return
        if kind & 0x3FFF == NFTA_SET_ELEM_LIST_ELEMENTS:
            lpos, lend = pos + 4, pos + length
            while lpos + 4 <= lend:
                elen = unpack(buf, lpos)[0]
                if elen < 4:
                    break
                layout = _LAYOUTS.get(elen)
                fields = layout[0].unpack_from(buf, lpos) if layout else None
                if fields and layout[1](fields) == layout[2]:
                    out.append(layout[3](fields, seen))
                else:
                    el = _parse_element(buf, lpos + 4, lpos + elen)
                    el.seen = seen
                    out.append(el)
                lpos += (elen + 3) & ~3
        pos += (length + 3) & ~3


def _fast_layouts() -> dict:
    """Exact byte layouts of the elements this kernel dumps for netblock's sets.

    {element length: (Struct, header getter, expected headers, builder)}.
    An element whose headers differ (another kernel, another set) goes
    through the generic parser instead, so the fast path can only be fast,
    never wrong.
    """
    big = int.from_bytes
    layouts: dict[int, tuple] = {}
    for kl in (4, 16):
        key_part = f"2H2H{kl}s"
        key_hdr = (8 + kl, NFTA_SET_ELEM_KEY, 4 + kl, NFTA_DATA_VALUE)
        end_len = 4 + 8 + kl + 8
        layouts[end_len] = (
            struct.Struct("=2H" + key_part + "2H4s"), operator.itemgetter(0, 1, 2, 3, 4, 5, 7, 8, 9),
            (end_len, NFTA_LIST_ELEM) + key_hdr + (8, NFTA_SET_ELEM_FLAGS, b"\0\0\0\1"),
            lambda f, seen: Element(f[6], True, None, None, 0, 0, seen))
        counter = "2H2H8s2H2H8s2H8s"
        counter_hdr = (44, NFTA_SET_ELEM_EXPR, 12, NFTA_EXPR_NAME, b"counter\0", 28, NFTA_EXPR_DATA,
                       12, NFTA_COUNTER_BYTES, 12, NFTA_COUNTER_PACKETS)
        start_len = 4 + 8 + kl + 44
        layouts[start_len] = (
            struct.Struct("=2H" + key_part + counter), operator.itemgetter(0, 1, 2, 3, 4, 5, *range(7, 16), 17, 18),
            (start_len, NFTA_LIST_ELEM) + key_hdr + counter_hdr,
            lambda f, seen: Element(f[6], False, None, None, big(f[19], "big"), big(f[16], "big"), seen))
        layouts[start_len + 24] = (
            struct.Struct("=2H" + key_part + counter + "2H8s2H8s"),
            operator.itemgetter(0, 1, 2, 3, 4, 5, *range(7, 16), 17, 18, 20, 21, 23, 24),
            (start_len + 24, NFTA_LIST_ELEM) + key_hdr + counter_hdr
            + (12, NFTA_SET_ELEM_TIMEOUT, 12, NFTA_SET_ELEM_EXPIRATION),
            lambda f, seen: Element(f[6], False, big(f[22], "big"), big(f[25], "big"), big(f[19], "big"),
                                    big(f[16], "big"), seen))
    return layouts


_LAYOUTS = _fast_layouts()
_BE32 = struct.Struct("!I").unpack_from
_BE64 = struct.Struct("!Q").unpack_from
_COUNTER_AT = struct.Struct("=HH8sHHHHQHHQ")  # name attr, data nest, bytes attr, packets attr
_COUNTER_HEAD = (12, NFTA_EXPR_NAME, b"counter\0")


def _parse_element(buf: bytes, pos: int, end: int) -> Element:
    unpack = _ATTR.unpack_from
    el = Element(b"", False)
    while pos + 4 <= end:
        length, kind = unpack(buf, pos)
        if length < 4:
            break
        kind &= 0x3FFF
        if kind == NFTA_SET_ELEM_KEY:
            el.key = buf[pos + 8:pos + 4 + unpack(buf, pos + 4)[0]]
        elif kind == NFTA_SET_ELEM_FLAGS:
            el.end = bool(_BE32(buf, pos + 4)[0] & NFT_SET_ELEM_INTERVAL_END)
        elif kind == NFTA_SET_ELEM_TIMEOUT:
            el.timeout_ms = _BE64(buf, pos + 4)[0]
        elif kind == NFTA_SET_ELEM_EXPIRATION:
            el.expires_ms = _BE64(buf, pos + 4)[0]
        elif kind == NFTA_SET_ELEM_EXPR:
            _parse_counter(buf, pos + 4, pos + length, el)
        elif kind == NFTA_SET_ELEM_EXPRESSIONS:
            epos, eend = pos + 4, pos + length
            while epos + 4 <= eend:
                xlen = unpack(buf, epos)[0]
                if xlen < 4:
                    break
                _parse_counter(buf, epos + 4, epos + xlen, el)
                epos += (xlen + 3) & ~3
        pos += (length + 3) & ~3
    return el


def _parse_counter(buf: bytes, pos: int, end: int, el: Element) -> None:
    """A counter expression: the kernel's fixed layout first, any layout second."""
    if end - pos >= _COUNTER_AT.size:
        nlen, ntype, name, _dl, _dt, blen, btype, nbytes, plen, ptype, npackets = _COUNTER_AT.unpack_from(buf, pos)
        if (nlen, ntype & 0x3FFF, name) == _COUNTER_HEAD and btype & 0x3FFF == NFTA_COUNTER_BYTES \
                and ptype & 0x3FFF == NFTA_COUNTER_PACKETS:
            el.bytes = int.from_bytes(nbytes.to_bytes(8, "little"), "big")
            el.packets = int.from_bytes(npackets.to_bytes(8, "little"), "big")
            return
    attrs = parse_attrs(buf, pos, end)
    if attrs.get(NFTA_EXPR_NAME, b"").rstrip(b"\0") != b"counter":
        return
    data = parse_attrs(attrs.get(NFTA_EXPR_DATA, b""))
    if NFTA_COUNTER_PACKETS in data:
        el.packets = struct.unpack("!Q", data[NFTA_COUNTER_PACKETS][:8])[0]
    if NFTA_COUNTER_BYTES in data:
        el.bytes = struct.unpack("!Q", data[NFTA_COUNTER_BYTES][:8])[0]


def next_genid(genid: int) -> int:
    """The generation after one commit (the kernel's counter skips 0 when it wraps)."""
    return (genid + 1) & 0xFFFFFFFF or 1
