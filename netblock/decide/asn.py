"""The routing table: which announced prefix and origin AS an address belongs to.

One loader for everything that asks "whose network is this?": the routed
widening level (netblock/decide/routed.py), ``netblock why`` and ``netblock report
asn``. It reads offline files only, so a mail server never makes a network
lookup per spammer (nor leaks its logs to a lookup service):

* a prefix-to-origin-AS table in pyasn's ``ipasn_*.dat`` text format (plain
  or gzip): ``;`` comment lines, then ``prefix<TAB>asn`` per line, prefixes
  possibly nested (a /16 announced inside its provider's /13);
* optionally an AS-names file in pyasn's ``asnames.json`` format (plain or
  gzip): ``{"4134": "CHINANET-BACKBONE No.31,Jin-rong Street, CN", ...}``.

Loading a full table (600k prefixes) is parsed with numpy rather than line by
line, and the result is cached per (path, size, mtime), so the daemon pays for
it once and picks up a replaced file on its own.

Lookups are longest-prefix match. IPv4 keeps, per prefix length, a sorted
array of the networks' leading bits; a batch of addresses is matched length
by length, longest first, with one ``searchsorted`` per length (at most 25
lengths occur in practice), which is vectorised over the whole batch.
IPv6 tables are small (tens of thousands of prefixes) and IPv6 offenders
few, so they use a dict per prefix length.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from netaddr import AddrFormatError, IPAddress, IPNetwork

from netblock.errors import BadInput
from netblock.printable import printable

_NL, _TAB, _DOT, _SLASH = ord("\n"), ord("\t"), ord("."), ord("/")
_V4_LINE = (_DOT, _DOT, _DOT, _SLASH, _TAB, _NL)  # the separator after each of the six fields
_MAX_ASN = 2**32 - 1


@dataclass(frozen=True)
class Route:
    """One announcement: a prefix and the AS that originates it."""

    prefix: IPNetwork
    asn: int


@dataclass(frozen=True)
class OriginCount:
    """One row of ``netblock report asn``."""

    ips: int
    asn: int | None  # None: no announced prefix covers these addresses
    owner: str


@dataclass
class _V4:
    lengths: list[int] = field(default_factory=list)  # longest first
    keys: dict[int, np.ndarray] = field(default_factory=dict)  # prefix length -> sorted network >> (32 - len)
    asns: dict[int, np.ndarray] = field(default_factory=dict)


class Table:
    """A loaded routing table (and AS names); build it with :func:`load` or :func:`from_text`."""

    def __init__(self, v4: _V4, v6: dict[int, dict[int, int]], names: dict[int, str], source: str = ""):
        self._v4 = v4
        self._v6 = v6
        self._v6_lengths = sorted(v6, reverse=True)
        self._names = names
        self.source = source

    # -- size -------------------------------------------------------------------

    @property
    def prefixes(self) -> dict[int, int]:
        """Number of announced prefixes per family."""
        return {4: sum(int(k.size) for k in self._v4.keys.values()),
                6: sum(len(d) for d in self._v6.values())}

    # -- names ------------------------------------------------------------------

    def name(self, asn: int | None) -> str:
        """The AS's name as the names file has it ("NAME - description, CC"), or ""."""
        return "" if asn is None else self._names.get(int(asn), "")

    def handle(self, asn: int) -> str:
        """``AS4134 CHINANET-BACKBONE``: the number and the first word of its name, for one-line reasons."""
        name = self.name(asn)
        return f"AS{asn} {name.split()[0]}" if name.strip() else f"AS{asn}"

    # -- lookups ----------------------------------------------------------------

    def lookup_v4(self, addrs: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Longest-prefix match of IPv4 addresses given as integers.

        Returns (asn, prefixlen) arrays aligned with ``addrs``; -1 in both where
        no announced prefix covers the address.
        """
        given = np.asarray(addrs, dtype=np.int64)
        order = np.argsort(given, kind="stable")  # sorted queries keep searchsorted in cache
        ips = given[order]
        asn = np.full(ips.shape, -1, dtype=np.int64)
        plen = np.full(ips.shape, -1, dtype=np.int64)
        todo = np.arange(ips.size)
        for length in self._v4.lengths:
            if todo.size == 0:
                break
            keys = self._v4.keys[length]
            want = ips[todo] >> (32 - length)
            pos = np.searchsorted(keys, want)
            pos[pos == keys.size] = 0
            hit = keys[pos] == want
            found = todo[hit]
            asn[found] = self._v4.asns[length][pos[hit]]
            plen[found] = length
            todo = todo[~hit]
        out_asn, out_plen = np.empty_like(asn), np.empty_like(plen)
        out_asn[order], out_plen[order] = asn, plen
        return out_asn, out_plen

    def matches_v4(self, addrs: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Every announcement covering each of ``addrs`` (integers), by prefix length, widest first.

        One (length, indices into addrs, origin ASNs) per prefix length that
        covers any of them: what the routed level groups offenders by.
        """
        ips = np.asarray(addrs, dtype=np.int64)
        out = []
        for length in reversed(self._v4.lengths):
            keys = self._v4.keys[length]
            want = ips >> (32 - length)
            pos = np.searchsorted(keys, want)
            pos[pos == keys.size] = 0
            hit = np.flatnonzero(keys[pos] == want)
            if hit.size:
                out.append((length, hit, self._v4.asns[length][pos[hit]]))
        return out

    def lookup(self, ip: IPAddress | str) -> Route | None:
        """The most specific announcement covering ``ip`` (IPv4-mapped IPv6 is looked up as IPv4)."""
        routes = self.routes(ip)
        return routes[-1] if routes else None

    def origin(self, ip: IPAddress | str) -> int | None:
        route = self.lookup(ip)
        return None if route is None else route.asn

    def routes(self, ip: IPAddress | str) -> list[Route]:
        """Every announcement covering ``ip``, widest first (the last one is the longest match)."""
        addr = address(ip)
        out = []
        if addr.version == 4:
            value = int(addr)
            for length in reversed(self._v4.lengths):
                keys = self._v4.keys[length]
                key = value >> (32 - length)
                pos = int(np.searchsorted(keys, key))
                if pos < keys.size and int(keys[pos]) == key:
                    out.append(Route(IPNetwork((key << (32 - length), length), 4),
                                     int(self._v4.asns[length][pos])))
        else:
            value = int(addr)
            for length in reversed(self._v6_lengths):
                key = value >> (128 - length)
                asn = self._v6[length].get(key)
                if asn is not None:
                    out.append(Route(IPNetwork((key << (128 - length), length), 6), asn))
        return out

    def within(self, net: IPNetwork, asns: Iterable[int] | None = None) -> list[Route]:
        """Announcements inside ``net`` (itself included), optionally only those of ``asns``."""
        wanted = None if asns is None else {int(a) for a in asns}
        out = []
        if net.version == 4:
            for length in self._v4.lengths:
                if length < net.prefixlen:
                    continue
                keys, owners = self._v4.keys[length], self._v4.asns[length]
                shift = 32 - length
                lo = int(np.searchsorted(keys, net.first >> shift))
                hi = int(np.searchsorted(keys, net.last >> shift, side="right"))
                keys, owners = keys[lo:hi], owners[lo:hi]
                if wanted is not None:
                    mine = np.isin(owners, list(wanted))
                    keys, owners = keys[mine], owners[mine]
                out += [Route(IPNetwork((key << shift, length), 4), asn)
                        for key, asn in zip(keys.tolist(), owners.tolist())]
        else:
            for length in self._v6_lengths:
                if length < net.prefixlen:
                    continue
                shift = 128 - length
                for key, asn in self._v6[length].items():
                    if net.first >> shift <= key <= net.last >> shift and (wanted is None or asn in wanted):
                        out.append(Route(IPNetwork((key << shift, length), 6), asn))
        out.sort(key=lambda r: (r.prefix.first, r.prefix.prefixlen))
        return out

    def origins(self, ips: Iterable[IPAddress | str]) -> dict[IPAddress, int | None]:
        """Origin AS of each address (None: not announced), IPv4 in one vectorised pass."""
        v4: list[IPAddress] = []
        out: dict[IPAddress, int | None] = {}
        for ip in ips:
            addr = address(ip)
            if addr.version == 4:
                v4.append(addr)
            else:
                out[addr] = self.origin(addr)
        if v4:
            asn, _ = self.lookup_v4([int(a) for a in v4])
            for addr, a in zip(v4, asn.tolist()):
                out[addr] = None if a < 0 else a
        return out


def address(ip: IPAddress | str) -> IPAddress:
    """An address as the table keys it: IPv4-mapped IPv6 folded to IPv4, as aggregation does."""
    addr = ip if isinstance(ip, IPAddress) else IPAddress(str(ip))
    if addr.version == 6 and addr.is_ipv4_mapped():
        addr = addr.ipv4()
    return addr


# -- reading files ------------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                with gzip.open(f) as g:
                    return g.read()
            return f.read()
    except FileNotFoundError:
        raise BadInput(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{what} {path}: is a directory") from None
    except PermissionError:
        raise BadInput(f"{what} {path}: not readable") from None
    except (OSError, EOFError) as e:
        raise BadInput(f"{what} {path}: cannot read: {getattr(e, 'strerror', None) or e}") from None


def _split(data: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(the IPv4 data lines, [(line number, line)] of the others) without a Python step per IPv4 line.

    Comments and IPv6 lines are few and clustered (a header; the IPv6 block of
    a mixed table), so the IPv4 lines are cut out as a few runs of whole lines.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == _NL)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    keep = buf[starts] != ord(";")
    keep &= buf[starts] != _NL
    colon = np.flatnonzero(buf == ord(":"))
    other = []
    if colon.size:
        has_colon = np.zeros(ends.size, dtype=bool)
        has_colon[np.searchsorted(ends, colon)] = True
        other = [(i + 1, data[int(starts[i]):int(ends[i])]) for i in np.flatnonzero(keep & has_colon).tolist()]
        keep &= ~has_colon
    edges = np.flatnonzero(np.diff(np.concatenate(([0], keep.view(np.int8), [0]))))
    runs = edges.reshape(-1, 2)
    parts = [data[int(starts[a]):int(ends[b - 1]) + 1] for a, b in runs.tolist()]
    return b"".join(parts), other


_V4_BYTES = b"0123456789./\t\n"


def _parse_v4(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Networks, prefix lengths and ASNs of ``a.b.c.d/len<TAB>asn`` lines, or None if any line is odd."""
    if not data:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    if data.translate(None, _V4_BYTES):
        return None
    buf = np.frombuffer(data, dtype=np.uint8)
    sep_at = np.flatnonzero(buf < ord("0"))  # . / tab newline: everything but digits
    if sep_at.size % 6 or not (buf[sep_at].reshape(-1, 6) == np.array(_V4_LINE, dtype=np.uint8)).all():
        return None
    width = np.diff(sep_at, prepend=-1) - 1
    if width.min() < 1 or width.reshape(-1, 6)[:, :5].max() > 3:
        return None
    # Every field read as if it had up to three digits (octets and the length do); a
    # position before the field's first digit is masked out by its width.
    value = buf[sep_at - 1].astype(np.int32) - ord("0")
    value += np.where(width > 1, buf[sep_at - 2].astype(np.int32) - ord("0"), 0) * 10
    value += np.where(width > 2, buf[sep_at - 3].astype(np.int32) - ord("0"), 0) * 100
    fields = value.reshape(-1, 6)[:, :5].astype(np.int64)
    at, asn_width = sep_at[5::6], width[5::6]
    if asn_width.max() > 10:
        return None
    origin = np.zeros(at.size, np.int64)
    for j in range(int(asn_width.max())):
        origin += np.where(asn_width > j, buf[at - 1 - j].astype(np.int64) - ord("0"), 0) * 10**j
    if (fields[:, :4] > 255).any() or (fields[:, 4] > 32).any() or (origin > _MAX_ASN).any():
        return None
    addr = (fields[:, 0] << 24) | (fields[:, 1] << 16) | (fields[:, 2] << 8) | fields[:, 3]
    plen = fields[:, 4]
    mask = ((np.int64(1) << 32) - 1) ^ ((np.int64(1) << (32 - plen)) - 1)
    return addr & mask, plen, origin


def _parse_line(text: str, path: str, lineno: int) -> tuple[IPNetwork, int]:
    parts = text.split("\t")
    try:
        if len(parts) != 2:
            raise ValueError
        net = IPNetwork(parts[0].strip())
        if "/" not in parts[0]:
            raise ValueError
        asn = int(parts[1].strip())
        if not 0 <= asn <= _MAX_ASN:
            raise ValueError
    except (AddrFormatError, ValueError, TypeError):
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise BadInput(f"asn_file {path}:{lineno}: expected 'PREFIX<TAB>ASN', got {shown!r}") from None
    return net.cidr, asn


def _ascii(raw: bytes, path: str, lineno: int) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadInput(f"asn_file {path}:{lineno}: not ASCII text") from None


def _slow_lines(data: bytes, path: str):
    """(network, asn) of every data line, line by line; names the first malformed line."""
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if raw.strip() and not raw.startswith(b";"):
            yield _parse_line(_ascii(raw, path, lineno), path, lineno)


def from_text(data: bytes | str, *, names: dict[int, str] | None = None, path: str = "<text>") -> Table:
    """A table from the contents of an ipasn file (what :func:`load` does after reading it)."""
    if isinstance(data, str):
        data = data.encode()
    if b"\r" in data:
        data = data.replace(b"\r", b"")
    if not data.endswith(b"\n"):
        data += b"\n"
    v4_lines, other = _split(data)
    parsed = _parse_v4(v4_lines)
    v6: dict[int, dict[int, int]] = {}
    if parsed is None:  # something odd: the line-by-line parser names it
        nets, plens, asns = [], [], []
        for net, asn in _slow_lines(data, path):
            if net.version == 4:
                nets.append(net.first)
                plens.append(net.prefixlen)
                asns.append(asn)
            else:
                v6.setdefault(net.prefixlen, {})[net.first >> (128 - net.prefixlen)] = asn
        parsed = (np.array(nets, np.int64), np.array(plens, np.int64), np.array(asns, np.int64))
    else:
        for lineno, raw in other:
            net, asn = _parse_line(_ascii(raw, path, lineno), path, lineno)
            v6.setdefault(net.prefixlen, {})[net.first >> (128 - net.prefixlen)] = asn
    return Table(_index_v4(*parsed), v6, names or {}, path)


def _index_v4(nets: np.ndarray, plens: np.ndarray, asns: np.ndarray) -> _V4:
    out = _V4()
    if nets.size == 0:
        return out
    combined = (plens << 32) | nets  # one sort orders by length, then by network
    order = np.argsort(combined, kind="stable")
    combined = combined[order]
    first = np.ones(combined.size, dtype=bool)
    first[1:] = combined[1:] != combined[:-1]  # a prefix listed twice: the first line wins
    combined, owners = combined[first], asns[order][first]
    lengths = combined >> 32
    cuts = np.flatnonzero(np.diff(lengths)) + 1
    for lo, hi in zip(np.concatenate(([0], cuts)).tolist(), np.concatenate((cuts, [combined.size])).tolist()):
        length = int(lengths[lo])
        out.keys[length] = (combined[lo:hi] & 0xFFFFFFFF) >> (32 - length)
        out.asns[length] = owners[lo:hi]
    out.lengths = sorted(out.keys, reverse=True)
    return out


def read_names(path: str) -> dict[int, str]:
    """An AS-names file (pyasn's asnames.json, plain or gzip) as {asn: name}."""
    data = _read(path, "as_names_file")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadInput(f"as_names_file {path}: not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise BadInput(f"as_names_file {path}: expected a JSON object {{\"ASN\": \"NAME\"}}")
    out = {}
    for key, name in raw.items():
        try:
            asn = int(key)
        except ValueError:
            raise BadInput(f"as_names_file {path}: {key!r} is not an AS number") from None
        out[asn] = name if isinstance(name, str) else ""
    return out


_cache: dict[tuple, Table] = {}
_cache_lock = threading.Lock()


def _stamp(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def load(path: str, names_path: str | None = None) -> Table:
    """The table of ``path`` (and the names of ``names_path``), parsed once per file version."""
    if not path:
        raise BadInput("no routing table: set [report] asn_file to a pyasn ipasn_*.dat(.gz) file")
    key = (_stamp(path), _stamp(names_path) if names_path else None)
    with _cache_lock:
        table = _cache.get(key)
        if table is None:
            names = read_names(names_path) if names_path else {}
            table = from_text(_read(path, "asn_file"), names=names, path=path)
            for old in [k for k in _cache if k[0][0] == key[0][0]]:
                del _cache[old]  # an older version of the same file is garbage now
            _cache[key] = table
        return table


def from_config(config) -> Table:
    """The table ``[report] asn_file`` / ``as_names_file`` name."""
    return load(config.report.asn_file or "", config.report.as_names_file or None)


# -- netblock report asn -----------------------------------------------------------------


def count_by_origin(ips: Iterable[IPAddress | str], table: Table) -> list[OriginCount]:
    """Distinct addresses per origin AS, most first (ties by AS number; unannounced last)."""
    counts: dict[int | None, int] = {}
    for asn in table.origins(set(address(ip) for ip in ips)).values():
        counts[asn] = counts.get(asn, 0) + 1
    rows = [OriginCount(n, asn, table.name(asn) if asn is not None else "not announced")
            for asn, n in counts.items()]
    rows.sort(key=lambda r: (-r.ips, r.asn is None, r.asn or 0))
    return rows


def render_counts(rows: list[OriginCount]) -> str:
    """The ``# of different IPs | ASN | (owner)`` table."""
    head = "# of different IPs"
    asn_w = max([len("ASN")] + [len(str(r.asn)) for r in rows if r.asn is not None] + [1])
    lines = [f"{head} | {'ASN':<{asn_w}} | (owner)"]
    for r in rows:
        asn = "-" if r.asn is None else str(r.asn)
        lines.append(f"{r.ips:>{len(head)}} | {asn:<{asn_w}} | ({printable(r.owner)})")
    return "\n".join(lines)
