"""The iptables backend's one change at the cost of the change: the four calls of netblock/run/delta.py.

libiptc has no generation either, and every change it commits is linear in
the table (it reads the whole table and replaces it). What this module adds
on top grows with the change only, and it never imports python-iptables:

* The snapshot: what netblock last wrote, per family the chain's keys in
  chain order, the same keys sorted with their wanted expiries, the
  chain's byte count and a digest. One file per network namespace under
  /run/netblock/iptables/.
* The proof: the filter table as the kernel holds it (IPT_SO_GET_ENTRIES,
  one getsockopt into one bytes object), in which the NETBLOCK chain is
  found by its head entry. Its rules, with counters and the kernel's
  ``comefrom`` marks zeroed by strided slice assignment, hash to the
  snapshot's digest; the chain's tail follows them at once, and the jump
  from INPUT is the one netblock wrote. After a full sync the digest is
  taken from the chain read back and checked then, column by column,
  against the snapshot's keys; after a change it is computed from the
  proven chain with the change applied (the next view compares the kernel
  with it). So an equal digest proves every rule: the view is exact.
* The write: libiptc through ctypes (libip4tc/libip6tc), deleting by
  position and appending, one commit per family.

Rule order: the full sync (IptablesBackend.apply) keeps surviving rules in
place and appends new ones sorted; apply_region() deletes and appends the
same way, so the chain after a change is the chain the full sync would
leave, and the digest (which depends on order) stays valid for both.

Why this module is long: the kernel's table layout, the proof, the
snapshot file and the libiptc write are one format, read and written here
without python-iptables.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import math
import socket
import struct
import sys
from array import array
from dataclasses import dataclass, field

from netblock import firewall
from netblock.firewall.columns import spliced
from netblock.firewall.names import IPT_CHAIN, IPT_COMMENT
from netblock.firewall.snapshot import SnapshotFile

SNAPSHOT = SnapshotFile("iptables", 1)
SO_NETNS_COOKIE = 71
TABLE = b"filter"
LOCAL_IN = 1  # NF_INET_LOCAL_IN: INPUT's hook
XT_RETURN = -5  # -NF_REPEAT - 1
TARGET_HEADER = 32  # sizeof(struct xt_entry_target)


@dataclass(frozen=True)
class _Layout:
    """struct ipt_entry / ip6t_entry as the kernel lays them out."""

    version: int
    level: int  # SOL_IP / SOL_IPV6
    sock_family: int
    addr: int  # address length
    head: int  # sizeof(entry)
    target_offset: int
    next_offset: int
    comefrom: int
    counters: int
    nfcache: int  # the end of the ip part
    lib: str
    prefix: str

    @property
    def src(self) -> int:
        return 0

    @property
    def smsk(self) -> int:
        return 2 * self.addr


LAYOUT = {
    4: _Layout(4, socket.SOL_IP, socket.AF_INET, 4, 112, 88, 90, 92, 96, 84, "ip4tc", "iptc_"),
    6: _Layout(6, 41, socket.AF_INET6, 16, 168, 140, 142, 144, 152, 136, "ip6tc", "ip6tc_"),
}
_FAMILY = {4: "ipv4", 6: "ipv6"}
_VERSION = {"ipv4": 4, "ipv6": 6}
GET_INFO, GET_ENTRIES = 64, 65  # IPT_SO_GET_INFO / IP6T_SO_GET_INFO and the entries alike

_ERROR_TARGET = struct.pack("=H", 64) + b"ERROR".ljust(29, b"\0") + b"\0"
_CHAIN_HEAD = _ERROR_TARGET + IPT_CHAIN.encode().ljust(32, b"\0")
_COMMENT = b"comment".ljust(29, b"\0") + b"\0" + IPT_COMMENT.encode().ljust(256, b"\0")


@dataclass
class RegionView(firewall.RegionView):
    """The chain as netblock last wrote it, proven by its digest: {version: (sorted keys, expiries)}.

    ``facts`` holds per family what apply_region() needs: the chain-order
    keys, the snapshot's digest, the rule template.
    """

    facts: dict = field(default_factory=dict)


# ---------------------------------------------------------------- the table as bytes

_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


@dataclass
class Table:
    """One family's filter table as IPT_SO_GET_ENTRIES gives it."""

    layout: _Layout
    hook_entry: tuple
    underflow: tuple
    data: bytes
    cookie: int


def table_exists(version: int) -> bool:
    """Whether the namespace has a legacy filter table: reading one that is not there would create it."""
    path = "/proc/net/ip_tables_names" if version == 4 else "/proc/net/ip6_tables_names"
    try:
        with open(path) as f:
            return TABLE.decode() in f.read().split()
    except OSError:
        return False


def read_table(version: int) -> Table | None:
    """The filter table of this family, or None (no table, no permission, a kernel that refuses)."""
    if not table_exists(version):
        return None
    lay = LAYOUT[version]
    try:
        sock = socket.socket(lay.sock_family, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except OSError:
        return None
    with sock:
        libc = _libc()
        info = ctypes.create_string_buffer(TABLE, 84)
        size = ctypes.c_uint(84)
        if libc.getsockopt(sock.fileno(), lay.level, GET_INFO, info, ctypes.byref(size)) != 0:
            return None
        fields = struct.unpack_from("=I5I5III", info.raw, 32)
        hooks, under, total = fields[1:6], fields[6:11], fields[12]
        for _attempt in range(3):
            buf = ctypes.create_string_buffer(40 + total)
            buf.raw = TABLE.ljust(32, b"\0") + struct.pack("=I", total)
            size = ctypes.c_uint(40 + total)
            if libc.getsockopt(sock.fileno(), lay.level, GET_ENTRIES, buf, ctypes.byref(size)) == 0:
                break
            if ctypes.get_errno() != 11:  # EAGAIN: the table changed size between the two calls
                return None
            if libc.getsockopt(sock.fileno(), lay.level, GET_INFO, info, ctypes.byref(ctypes.c_uint(84))) != 0:
                return None
            fields = struct.unpack_from("=I5I5III", info.raw, 32)
            hooks, under, total = fields[1:6], fields[6:11], fields[12]
        else:
            return None
        try:
            cookie = struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
        except OSError:
            return None  # a kernel before 5.14 names no namespace: no snapshot can be matched to it
        return Table(lay, tuple(hooks), tuple(under), buf.raw[40:40 + total], cookie)


def netns_cookie() -> int | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            return struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
    except OSError:
        return None


def _u16(data: bytes, at: int) -> int:
    return struct.unpack_from("=H", data, at)[0]


def chain_start(table: Table) -> int | None:
    """The offset of the NETBLOCK chain's first rule (its tail when empty), or None."""
    lay, data = table.layout, table.data
    pos = data.find(_CHAIN_HEAD)
    if pos < 0 or data.find(_CHAIN_HEAD, pos + 1) >= 0:
        return None
    head = pos - lay.head
    if head < 0 or _u16(data, head + lay.target_offset) != lay.head or _u16(data, head + lay.next_offset) != lay.head + 64:
        return None
    return head + lay.head + 64


def _normalized(region: bytes, lay: _Layout, stride: int, count: int, blank_source: bool = False) -> bytearray:
    """The rules with counters and comefrom zeroed (and the source address and mask, if asked)."""
    ba = bytearray(region)
    zero = bytes(count)
    fields = [(lay.counters, 16), (lay.comefrom, 4)]
    if blank_source:
        fields += [(lay.src, lay.addr), (lay.smsk, lay.addr)]
    for at, width in fields:
        for j in range(width):
            ba[at + j::stride] = zero
    return ba


def _tail_ok(data: bytes, at: int, lay: _Layout) -> bool:
    """A user chain's tail (standard RETURN, nothing matched) at ``at``, followed by a chain head."""
    size = lay.head + 40
    if at + size > len(data) or _u16(data, at + lay.target_offset) != lay.head or _u16(data, at + lay.next_offset) != size:
        return False
    if any(data[at:at + lay.nfcache]):
        return False
    target = data[at + lay.head:at + size]
    if target[2:TARGET_HEADER] != bytes(30) or struct.unpack_from("=i", target, TARGET_HEADER)[0] != XT_RETURN:
        return False
    nxt = at + size
    return data[nxt + lay.head:nxt + lay.head + len(_ERROR_TARGET)] == _ERROR_TARGET


def chain_digest(table: Table, start: int, count: int, stride: int) -> bytes | None:
    """The digest of ``count`` rules of ``stride`` bytes from ``start``, if the chain's tail follows them."""
    lay = table.layout
    end = start + count * stride
    if not _tail_ok(table.data, end, lay):
        return None
    region = table.data[start:end]
    return hashlib.sha256(_normalized(region, lay, stride, count) if count else b"").digest()


def jump_facts(table: Table, start: int) -> bytes | None:
    """netblock's one jump from INPUT, counters, comefrom and verdict blanked; None when it is not plainly there."""
    lay, data = table.layout, table.data
    pos = data.find(_COMMENT)
    if pos < 0 or data.find(_COMMENT, pos + 1) >= 0:
        return None
    at, end = table.hook_entry[LOCAL_IN], table.underflow[LOCAL_IN]
    while at < end:
        size = _u16(data, at + lay.next_offset)
        if size < lay.head:
            return None
        if at <= pos < at + size:
            t_off = _u16(data, at + lay.target_offset)
            if size - t_off != 40 or struct.unpack_from("=i", data, at + t_off + TARGET_HEADER)[0] != start:
                return None
            entry = bytearray(data[at:at + size])
            entry[lay.counters:lay.counters + 16] = bytes(16)
            entry[lay.comefrom:lay.comefrom + 4] = bytes(4)
            entry[t_off + TARGET_HEADER:t_off + TARGET_HEADER + 4] = bytes(4)
            return bytes(entry)
        at += size
    return None


def _masks(j: int, bits: int) -> bytes:
    """A bytes.translate table: prefix length -> byte ``j`` of its mask."""
    out = bytearray(256)
    for plen in range(min(bits, 255) + 1):
        out[plen] = ((((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)) >> (bits - 8 * (j + 1))) & 0xFF
    return bytes(out)


_MASK4 = [_masks(j, 32) for j in range(4)]


def _source_columns(order, version: int) -> list[tuple[int, bytes]]:
    """(offset in the entry, that byte of every rule) for the source address and mask of the chain-order keys."""
    lay = LAYOUT[version]
    if version == 4 and isinstance(order, array) and sys.byteorder == "little":
        raw = order.tobytes()  # key = first << 8 | plen: byte 0 the prefix length, bytes 4..1 the address
        plen = raw[0::8]
        return ([(lay.src + j, raw[4 - j::8]) for j in range(4)]
                + [(lay.smsk + j, plen.translate(_MASK4[j])) for j in range(4)])
    bits = 8 * lay.addr
    addrs = b"".join((k >> 8).to_bytes(lay.addr, "big") for k in order)
    masks = b"".join((((1 << bits) - 1) ^ ((1 << (bits - (k & 255))) - 1)).to_bytes(lay.addr, "big") for k in order)
    return ([(lay.src + j, addrs[j::lay.addr]) for j in range(lay.addr)]
            + [(lay.smsk + j, masks[j::lay.addr]) for j in range(lay.addr)])


def record(table: Table, order, template: bytes) -> dict | None:
    """The snapshot facts of one family right after netblock's write, checked against ``order``; None if they disagree.

    Checked: the chain holds exactly len(order) rules, all alike but for
    their source, each with the source of its key in ``order``.
    """
    lay = table.layout
    start = chain_start(table)
    if start is None:
        return None
    count = len(order)
    stride = _u16(table.data, start + lay.next_offset) if count else 0
    digest = chain_digest(table, start, count, stride) if stride or not count else None
    jump = jump_facts(table, start)
    if digest is None or jump is None:
        return None
    if count:
        region = table.data[start:start + count * stride]
        blank = _normalized(region, lay, stride, count, blank_source=True)
        if blank != blank[:stride] * count:
            return None
        if any(region[at::stride] != column for at, column in _source_columns(order, lay.version)):
            return None
    return {"order": order.tobytes() if isinstance(order, array) else list(order), "digest": digest,
            "count": count, "stride": stride, "jump": jump, "template": bytes(template)}


def proven(table: Table, facts: dict) -> int | None:
    """The chain's start if the kernel's chain and jump are the ones ``facts`` recorded; else None."""
    start = chain_start(table)
    if start is None:
        return None
    if chain_digest(table, start, facts["count"], facts["stride"]) != facts["digest"]:
        return None
    if jump_facts(table, start) != facts["jump"]:
        return None
    return start


# ---------------------------------------------------------------- the snapshot file

def read(cookie: int) -> dict | None:
    return SNAPSHOT.read(cookie)


def write(cookie: int, settings: tuple, families: dict) -> None:
    """``families`` {family: record() facts plus "keys" and "expiry"}."""
    SNAPSHOT.write(cookie, {"settings": settings, "families": families})


def forget(cookie: int | None) -> None:
    if cookie is not None:
        SNAPSHOT.forget(cookie)


def columns(pairs, version: int, now: float) -> tuple:
    """(sorted keys, expiries) in file form from [(key, expiry or None)] of one family: v4 keys as array bytes."""
    pairs = sorted(pairs)
    keys = [k for k, _ in pairs]
    expiry = array("d", (math.nan if e is None else e for _, e in pairs)).tobytes()
    return (array("Q", keys).tobytes() if version == 4 else keys), expiry


# ---------------------------------------------------------------- the four calls

def snapshot_view(settings: tuple, families, tables_read: dict | None = None) -> tuple[RegionView, dict] | None:
    """(the view, {version: Table}) when every family's chain and jump are what the snapshot recorded.

    ``tables_read``: tables read a moment ago (by ensure()), taken instead of reading them again.
    """
    cookie = netns_cookie()
    data = None if cookie is None else read(cookie)
    if cookie is None or data is None or data["settings"] != settings:
        return None
    sets, facts, tables = {}, {}, {}
    try:
        for family in families:
            version = _VERSION[family]
            rec = data["families"][family]
            table = (tables_read or {}).get(version) or read_table(version)
            if table is None or table.cookie != cookie:
                return None
            start = proven(table, rec)
            if start is None:
                return None
            keys = memoryview(rec["keys"]).cast("Q") if version == 4 else list(rec["keys"])
            expiry = memoryview(rec["expiry"]).cast("d")
            if len(keys) != len(expiry) or len(keys) != rec["count"]:
                return None
            sets[version] = (keys, expiry)
            facts[version] = rec
            tables[version] = table
    except (LookupError, TypeError, ValueError):
        return None
    return RegionView(0, cookie, sets, exact=True, timed=False, facts=facts), tables


def _order(rec: dict, version: int):
    return array("Q", rec["order"]) if version == 4 else list(rec["order"])


def counters_of(view: RegionView, keys: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[int, int]] | None:
    """{(version, key): (packets, bytes)} of the rules ``keys``, read from their raw entries; None if the chain moved."""
    out = {}
    for version in sorted({v for v, _ in keys}):
        rec = view.facts.get(version)
        table = read_table(version)
        if rec is None or table is None:
            return None
        start = proven(table, rec)
        if start is None:
            return None
        order = _order(rec, version)
        lay = table.layout
        for v, k in keys:
            if v != version:
                continue
            try:
                at = start + order.index(k) * rec["stride"]
            except ValueError:
                return None
            if int.from_bytes(table.data[at + lay.src:at + lay.src + lay.addr], "big") != k >> 8:
                return None
            out[(v, k)] = struct.unpack_from("=QQ", table.data, at + lay.counters)
    return out


class _Libiptc:
    """libip4tc / libip6tc through ctypes: the few calls a change needs."""

    _libs: dict = {}

    def __init__(self, version: int):
        lay = LAYOUT[version]
        lib = self._libs.get(version)
        if lib is None:
            name = ctypes.util.find_library(lay.lib) or f"lib{lay.lib}.so.2"
            lib = ctypes.CDLL(name, use_errno=True)
            p = lay.prefix
            getattr(lib, p + "init").restype = ctypes.c_void_p
            getattr(lib, p + "init").argtypes = [ctypes.c_char_p]
            for fn, args in (("delete_num_entry", [ctypes.c_char_p, ctypes.c_uint, ctypes.c_void_p]),
                             ("append_entry", [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]),
                             ("set_policy", [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p]),
                             ("commit", [ctypes.c_void_p]), ("builtin", [ctypes.c_char_p, ctypes.c_void_p])):
                getattr(lib, p + fn).argtypes = args
                getattr(lib, p + fn).restype = ctypes.c_int
            getattr(lib, p + "get_policy").argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p]
            getattr(lib, p + "get_policy").restype = ctypes.c_char_p
            getattr(lib, p + "free").argtypes = [ctypes.c_void_p]
            getattr(lib, p + "free").restype = None
            self._libs[version] = lib
        self.lib, self.p = lib, lay.prefix

    def __getattr__(self, name: str):
        return getattr(self.lib, self.p + name)


def _policies_pinned(ipt: _Libiptc, handle) -> None:
    """Set the built-in chains' policy counters to what this handle read: libiptc would zero them
    (see IptablesBackend's _FamilyTable.commit)."""
    for chain in (b"INPUT", b"FORWARD", b"OUTPUT"):
        counters = (ctypes.c_uint64 * 2)()
        policy = ipt.get_policy(chain, counters, handle)
        if policy:
            ipt.set_policy(chain, policy, counters, handle)


def apply_region(settings: tuple, families, view: RegionView, removed: list[tuple[int, int]],
                 added: list[tuple[int, int, float | None]], updated: list[tuple[int, int, float | None]]) -> bool:
    """Delete and append the given rules, one libiptc commit per family; False (the full sync follows) on any doubt.

    The caller holds the xtables lock. Each family's chain is proven again
    right before libiptc reads it; ``updated`` only re-times the snapshot
    (the kernel holds no expiry here).
    """
    cookie = netns_cookie()
    if cookie != view.cookie:
        return False
    touched = {v for v, _ in removed} | {v for v, _k, _e in added}
    if any(_FAMILY[v] not in families or v not in view.facts for v in touched | {u[0] for u in updated}):
        return False
    recs = dict(view.facts)
    unrecorded = False
    for version in sorted(touched):
        rec = view.facts[version]
        table = read_table(version)
        start = None if table is None or table.cookie != cookie else proven(table, rec)
        if table is None or start is None:
            forget(cookie)
            return False
        order = _order(rec, version)
        doomed = []
        for v, k in removed:
            if v == version:
                try:
                    doomed.append(order.index(k))
                except ValueError:
                    forget(cookie)
                    return False
        fresh = sorted(k for v, k, _e in added if v == version)
        if any(k in order for k in fresh):
            forget(cookie)
            return False
        lay = LAYOUT[version]
        ipt = _Libiptc(version)
        handle = ipt.init(TABLE)
        if not handle:
            forget(cookie)
            return False
        chain = IPT_CHAIN.encode()
        try:
            ok = True
            for i in sorted(doomed, reverse=True):
                ok = ok and ipt.delete_num_entry(chain, i, handle) == 1
                del order[i]
            bits = 8 * lay.addr
            for k in fresh:
                buf = bytearray(rec["template"])
                buf[lay.src:lay.src + lay.addr] = (k >> 8).to_bytes(lay.addr, "big")
                mask = ((1 << bits) - 1) ^ ((1 << (bits - (k & 255))) - 1)
                buf[lay.smsk:lay.smsk + lay.addr] = mask.to_bytes(lay.addr, "big")
                ok = ok and ipt.append_entry(chain, bytes(buf), handle) == 1
                order.append(k)
            if not ok:
                forget(cookie)
                return False
            _policies_pinned(ipt, handle)
            if ipt.commit(handle) != 1:
                forget(cookie)
                return False
        finally:
            ipt.free(handle)
        facts = _expected(table, start, rec, sorted(doomed), fresh)
        if facts is None:  # no rule to take the kernel's form from: read what the commit left
            after = read_table(version)
            facts = None if after is None else record(after, order, rec["template"])
        else:
            facts["order"] = order.tobytes() if isinstance(order, array) else list(order)
        if facts is None:
            unrecorded = True
            continue
        recs[version] = {**rec, **facts}
    if unrecorded:
        forget(cookie)
        return True  # written: the next change or tick takes the full sync, which reads the chain
    out = {}
    for version, rec in recs.items():
        keys, expiry = view.sets[version]
        k2, e2 = spliced(keys, expiry, version, removed, added, updated)
        out[_FAMILY[version]] = {**rec, "keys": k2, "expiry": e2}
    write(cookie, settings, out)
    return True


def _expected(table: Table, start: int, rec: dict, doomed: list[int], fresh: list[int]) -> dict | None:
    """The digest the chain will have after deleting the rules at ``doomed`` and appending ``fresh``.

    Computed from the proven chain rather than read back: every rule of
    ours has the same bytes but for its source (record() checked that when
    the digest was taken), so a new rule is an old one with another source.
    The next view compares the kernel with it: a commit that left anything
    else makes that view fail, and the full sync follows.
    """
    lay, stride, count = table.layout, rec["stride"], rec["count"]
    if not count:
        return None
    rules = _normalized(table.data[start:start + count * stride], lay, stride, count)
    model = bytes(rules[:stride])
    for i in reversed(doomed):
        del rules[i * stride:(i + 1) * stride]
    bits = 8 * lay.addr
    for k in fresh:
        entry = bytearray(model)
        entry[lay.src:lay.src + lay.addr] = (k >> 8).to_bytes(lay.addr, "big")
        mask = ((1 << bits) - 1) ^ ((1 << (bits - (k & 255))) - 1)
        entry[lay.smsk:lay.smsk + lay.addr] = mask.to_bytes(lay.addr, "big")
        rules += entry
    left = count - len(doomed) + len(fresh)
    return {"digest": hashlib.sha256(rules if left else b"").digest(), "count": left, "stride": stride if left else 0}
