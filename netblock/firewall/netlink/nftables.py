"""A minimal nf_tables netlink client: just what the nftables backend needs.

Why not libnftables for everything: nft 1.0.6 loads the whole ruleset,
including every set element, before each command, so with 100k elements even
a one-element change costs seconds. Talking to the kernel directly, a change
is one small batch and a counter read is one dump of the set, nothing else.

Only set elements (add/delete/dump), the ruleset generation and a few
lookups (table, set, chain, rules of a chain) are spoken here; the skeleton itself is created from the
readable ruleset in rules/netblock.nft through libnftables. The socket,
framing and reply loop are the netlink core's (core.py).
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
from typing import Any

from netblock.firewall.netlink import core
from netblock.firewall.netlink.core import (  # re-exported: the backend and the tests name them as nl.X
    NETLINK_NETFILTER as NETLINK_NETFILTER,
    NLA_F_NESTED as NLA_F_NESTED,
    NLM_F_ACK as NLM_F_ACK,
    NLM_F_CREATE as NLM_F_CREATE,
    NLM_F_DUMP as NLM_F_DUMP,
    NLM_F_DUMP_INTR as NLM_F_DUMP_INTR,
    NLM_F_EXCL as NLM_F_EXCL,
    NLM_F_REPLACE as NLM_F_REPLACE,
    NLM_F_REQUEST as NLM_F_REQUEST,
    NLMSG_DONE as NLMSG_DONE,
    NLMSG_ERROR as NLMSG_ERROR,
    SO_RCVBUFFORCE as SO_RCVBUFFORCE,
    SO_SNDBUFFORCE as SO_SNDBUFFORCE,
    NetlinkError as NetlinkError,
    attr as attr,
    nest as nest,
    parse_attrs as parse_attrs,
    strz as strz,
)
from netblock.lazynp import np

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

_ATTR = core.ATTR


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
            if expires is None:
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
class Intervals:
    """IPv4 CIDRs to add as interval pairs, sorted, in columns: encoded all at once when the batch is built.

    A bulk load of 100k CIDRs would otherwise build and encode 200k ElemSpecs
    one by one. Every CIDR here has an end element (none reaches the top of
    the address space) and all share one kind of lifetime: timed (``expiry``,
    epoch seconds, as ElemSpec.expires) or all permanent (``expiry`` None).
    The bytes are exactly what the ElemSpecs of each pair, start then end,
    would encode to.
    """

    firsts: np.ndarray  # uint64: each CIDR's first address
    afters: np.ndarray  # uint64: the first address after each CIDR (the end element's key)
    expiry: np.ndarray | None = None  # float64 epoch seconds, or None: permanent

    def __len__(self) -> int:
        return len(self.firsts)

    def records(self, now: float) -> tuple[bytes, int]:
        """(the encoded pairs back to back, the length of one pair), timeouts counted from ``now``."""
        timed = self.expiry is not None
        s_head, s_tail = _frame(4, False, timed)
        e_head, e_tail = _frame(4, True, False)
        n = len(self.firsts)
        columns: list[tuple[bytes, Any]] = [(s_head, self.firsts.astype(">u4"))]
        if self.expiry is not None:
            # What ElemSpec.encode() computes, element by element (0: never, stated explicitly).
            ms = np.where(self.expiry == 0, 0, np.maximum(np.ceil((self.expiry - now) * 1000), 1))
            columns.append((s_tail, ms.astype(">u8")))
            columns.append((e_head, self.afters.astype(">u4")))
        else:
            columns.append((s_tail + e_head, self.afters.astype(">u4")))
        size = sum(len(fixed) + col.itemsize for fixed, col in columns) + len(e_tail)
        out = np.empty((n, size), dtype=np.uint8)
        at = 0
        for fixed, col in columns:
            out[:, at:at + len(fixed)] = np.frombuffer(fixed, dtype=np.uint8)
            at += len(fixed)
            out[:, at:at + col.itemsize] = col.view(np.uint8).reshape(n, col.itemsize)
            at += col.itemsize
        out[:, at:] = np.frombuffer(e_tail, dtype=np.uint8)
        return out.tobytes(), size


@dataclass
class SetOp:
    """Add or delete a group of elements of one set, inside a batch."""

    set: str
    delete: bool
    elements: list[ElemSpec] = field(default_factory=list)
    exclusive: bool = True  # adds: refuse an element that already exists
    intervals: Intervals | None = None  # adds: sent before ``elements``


class Nfnl(core.Socket):
    """One NETLINK_NETFILTER socket in the current network namespace, speaking nf_tables."""

    def __init__(self, table: str, family: int = NFPROTO_INET) -> None:
        super().__init__(copy=True)
        self.table = table
        self.family = family

    def _bufsize(self, opt: int, force: int, size: int) -> None:
        self.bufsize(opt, force, size)

    def _send(self, data: bytes) -> None:
        self.send(data)

    def _msg(self, msg: int, flags: int, body: bytes, family: int | None = None,
             subsys: int = NFNL_SUBSYS_NFTABLES, res_id: int = 0) -> tuple[int, bytes]:
        return self.message(subsys, msg, flags, body, self.family if family is None else family, res_id)

    def request(self, msg: int, body: bytes, dump: bool = False) -> list[tuple[bytes, int, int]]:
        """One get request; returns each reply as (buffer, body start, body end).

        A missing object raises NetlinkError(ENOENT); the body starts after
        the nfgenmsg header.
        """
        replies = self.ask(NFNL_SUBSYS_NFTABLES, msg, NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK), body,
                           self.family)
        return [(buf, start + 4, end) for _kind, _flags, buf, start, end in replies]  # type: ignore[misc]

    # ------------------------------------------------------------ lookups

    def get_genid(self) -> int:
        """The ruleset generation: every committed transaction, by anyone, moves it on by one."""
        (buf, s, e), = self.request(NFT_MSG_GETGEN, b"")
        return struct.unpack("!I", parse_attrs(buf, s, e)[NFTA_GEN_ID][:4])[0]

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
        for kind, flags, buf, start, end in self.replies(seq, ack=False):
            if flags & NLM_F_DUMP_INTR:
                consistent = False
            if kind != NLMSG_DONE:
                _parse_elements(buf, start + 4, end, out, self.seen)  # type: ignore[arg-type]
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
            if op.intervals is not None and len(op.intervals):
                records, size = op.intervals.records(time.time())
                step = _MAX_ELEMENTS_BYTES // size * size
                for at in range(0, len(records), step):
                    parts.append(self._msg(msg, flags, prefix + nest(NFTA_SET_ELEM_LIST_ELEMENTS,
                                                                     records[at:at + step]))[1])
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
        errors = self.drain_errors()
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
                fields = layout[0].unpack_from(buf, lpos) if layout is not None else None
                if layout is not None and fields and layout[1](fields) == layout[2]:
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
