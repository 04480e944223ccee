"""Validation on receipt: every row read from the store is checked where it is used.

In fleet mode any row of the shared PostgreSQL may come from a compromised
peer (or an older netblock), and SQLite files can be edited by hand; so no
row is trusted because it is in the store. A row that cannot be parsed, or
that breaks the width floors or the total-coverage cap, is skipped: the rest
is installed, the tick goes on, and the skipped row is remembered in
``store.rejected`` ({(table, key): why}) for `status`, `/metrics` and one
log line per key.

The floors are netblock/limits.py's (nothing wider than /4 IPv4 or /16 IPv6,
at most 2^28 IPv4 addresses blocked in total). Text is kept as written (JSON
shows it exactly); keys and messages built from it are escaped for display
by netblock/printable.py, like every human-readable output.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable

from netaddr import IPAddress, IPNetwork

from netblock.limits import MAX_V4_ADDRESSES as _MAX_V4_ADDRESSES, MIN_PREFIXLEN as _MIN_PREFIX
from netblock.model import SOURCES, Block
from netblock.printable import printable

MAX_PEER_ADDRESSES = 64  # a host publishing more than this is not a mail server's interface list

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z
_MAPPED_FIRST = 0xFFFF_0000_0000
_MAPPED_LAST = 0xFFFF_FFFF_FFFF


class BadRow(ValueError):
    """A store row that cannot be what it claims; the message says why."""


def rejected(store) -> dict[tuple[str, str], str]:
    """The store's record of skipped rows (every store keeps one: the Store protocol's ``rejected``)."""
    return store.rejected


def forget(store, table: str) -> None:
    """A full read of ``table`` starts over: a row deleted since is no longer counted."""
    record = rejected(store)
    for key in [k for k in record if k[0] == table]:
        del record[key]


def _time(value, what: str) -> datetime:
    if type(value) is not int or not 0 <= value <= _MAX_EPOCH:
        raise BadRow(f"{what} {value!r} is not a time")
    return _EPOCH + timedelta(seconds=value)


def net_from_columns(family, first, prefixlen) -> IPNetwork:
    """The netblock of (family, 16-byte first address, prefix length), or BadRow."""
    if family not in (4, 6):
        raise BadRow(f"family {family!r}")
    width = 32 if family == 4 else 128
    if type(prefixlen) is not int or not 0 <= prefixlen <= width:
        raise BadRow(f"prefix length {prefixlen!r} for IPv{family}")
    if not isinstance(first, (bytes, bytearray, memoryview)) or len(first) != 16:
        raise BadRow("first address is not 16 bytes")
    value = int.from_bytes(first, "big")
    if value >> width:
        raise BadRow(f"address out of range for IPv{family}")
    if value & ((1 << (width - prefixlen)) - 1):
        raise BadRow("host bits set")
    if family == 6 and _MAPPED_FIRST <= value <= _MAPPED_LAST:
        raise BadRow("IPv4-mapped IPv6 (the store keeps those as IPv4)")
    return IPNetwork((value, prefixlen), family)


def block(row: tuple) -> Block:
    """A blocks row (store._BLOCK_COLS) as a Block, or BadRow."""
    family, first, prefixlen, reason, source, created, expires, reblocks = row[:8]
    net = net_from_columns(family, first, prefixlen)
    if source not in SOURCES:
        raise BadRow(f"unknown source {printable(source)!r}")
    if type(reblocks) is not int or reblocks < 0:
        raise BadRow(f"reblocks {reblocks!r}")
    if not isinstance(reason, str):
        raise BadRow("reason is not text")
    return Block(net, reason, source, _time(created, "created"),
                 None if expires is None else _time(expires, "expires"), reblocks)


def _key(row: tuple) -> str:
    """The row's primary key (the netblock text, last column of _BLOCK_COLS), printable."""
    return printable(row[-1]) if len(row) > 8 else printable(row[:3])


def blocks(store, rows: Iterable[tuple], *, full: bool = True) -> list[Block]:
    """The parseable rows as Blocks; the others recorded in ``store.rejected``."""
    if full:
        forget(store, "blocks")
    out = []
    for row in rows:
        try:
            out.append(block(row))
        except (BadRow, ValueError, TypeError, OverflowError) as exc:
            rejected(store)[("blocks", _key(row))] = f"unparseable: {exc}"
    return out


def block_keys(store, rows: Iterable[tuple]) -> list[tuple[int, int, int, int | None, tuple]]:
    """The parseable rows as (family, first, prefixlen, expires seconds or None, row), no object per row.

    The same checks as block() (a failing row goes through block() for its
    message and is recorded in ``store.rejected``): what sync's plan reads
    at 100k blocks without an IPNetwork and two datetimes per block.
    """
    forget(store, "blocks")
    out = []
    for row in rows:
        family, first, prefixlen, reason, source, created, expires, reblocks = row[:8]
        width = 32 if family == 4 else 128
        value = int.from_bytes(first, "big") if type(first) is bytes and len(first) == 16 else -1
        if (family in (4, 6) and type(prefixlen) is int and 0 <= prefixlen <= width and 0 <= value
                and not value >> width and not value & ((1 << (width - prefixlen)) - 1)
                and not (family == 6 and _MAPPED_FIRST <= value <= _MAPPED_LAST)
                and source in SOURCES and type(reblocks) is int and reblocks >= 0 and type(reason) is str
                and type(created) is int and 0 <= created <= _MAX_EPOCH
                and (expires is None or (type(expires) is int and 0 <= expires <= _MAX_EPOCH))):
            out.append((family, value, prefixlen, expires, row))
            continue
        try:
            b = block(row)
        except (BadRow, ValueError, TypeError, OverflowError) as exc:
            rejected(store)[("blocks", _key(row))] = f"unparseable: {exc}"
            continue
        n = b.netblock
        out.append((n.version, n.first, n.prefixlen, None if b.expires is None else int(b.expires.timestamp()), row))
    return out


def floor_keys(store, found: list[tuple]) -> list[tuple] | None:
    """within_floors() over block_keys(): the rows wider than the floor recorded and left out; None
    when the IPv4 cap is exceeded (the caller then takes within_floors' own path, which picks)."""
    record = rejected(store)
    kept = []
    v4_total = 0
    for k in found:
        family, value, prefixlen = k[0], k[1], k[2]
        if prefixlen < _MIN_PREFIX[family]:
            record[("blocks", str(IPNetwork((value, prefixlen), family)))] = \
                f"wider than /{_MIN_PREFIX[family]} (the floor for IPv{family})"
            continue
        kept.append(k)
        if family == 4:
            v4_total += 1 << (32 - prefixlen)
    return kept if v4_total <= _MAX_V4_ADDRESSES else None


def one_block(store, row: tuple | None) -> Block | None:
    if row is None:
        return None
    found = blocks(store, [row], full=False)
    return found[0] if found else None


def address(store, table: str, text) -> IPAddress | None:
    """An address column's value, or None (recorded) when it is not one."""
    try:
        if not isinstance(text, str):
            raise BadRow("not text")
        ip = IPAddress(text)
    except Exception as exc:
        rejected(store)[(table, printable(text))] = f"not an IP address: {exc}"
        return None
    return ip


def within_floors(store, found: list[Block]) -> list[Block]:
    """``found`` without what breaks the floors: wider than /4 (IPv4) or /16 (IPv6), or IPv4 beyond
    2^28 addresses in total. Under the cap's pressure the narrowest blocks are kept first, so one
    hostile wide row cannot push out a thousand real ones."""
    record = rejected(store)
    kept = []
    v4_total = 0
    for b in found:
        n = b.netblock
        if n.prefixlen < _MIN_PREFIX[n.version]:
            record[("blocks", str(n))] = f"wider than /{_MIN_PREFIX[n.version]} (the floor for IPv{n.version})"
            continue
        kept.append(b)
        if n.version == 4:
            v4_total += 1 << (32 - n.prefixlen)
    if v4_total <= _MAX_V4_ADDRESSES:
        return kept
    v4 = sorted((i for i, b in enumerate(kept) if b.netblock.version == 4),
                key=lambda i: (-kept[i].netblock.prefixlen, kept[i].netblock.first))
    total, over = 0, set()
    for i in v4:
        size = kept[i].netblock.size
        if total + size > _MAX_V4_ADDRESSES:
            over.add(i)
            record[("blocks", str(kept[i].netblock))] = "over the cap of 2^28 blocked IPv4 addresses in total"
        else:
            total += size
    return [b for i, b in enumerate(kept) if i not in over]


def peer_addresses(store, rows: Iterable[tuple[str, str]]) -> list[IPNetwork]:
    """The fleet's published host addresses, (host, address) rows: single addresses only, at most
    MAX_PEER_ADDRESSES per host (a host publishing a network would unblock it for everyone)."""
    forget(store, "host_addresses")
    record = rejected(store)
    per_host: dict[str, int] = {}
    out = []
    for host, text in rows:
        ip = address(store, "host_addresses", text)
        if ip is None:
            continue
        n = per_host[host] = per_host.get(host, 0) + 1
        if n > MAX_PEER_ADDRESSES:
            record[("host_addresses", f"{printable(host)} {ip}")] = \
                f"host publishes more than {MAX_PEER_ADDRESSES} addresses"
            continue
        out.append(IPNetwork(ip.ipv4() if ip.version == 6 and ip.is_ipv4_mapped() else ip))
    return out


def log_new(store, seen: set, log) -> None:
    """One log line per rejected row key, the first time this process sees it."""
    for (table, key), why in sorted(rejected(store).items()):
        if (table, key) not in seen:
            seen.add((table, key))
            log(f"skipped a {table} row from the store ({key}): {why}")


def allow_entries(store, rows: Iterable[tuple]) -> list:
    """(family, first, prefixlen, comment, created) rows as AllowEntries; unparseable ones recorded."""
    from netblock.model import AllowEntry

    forget(store, "allowlist")
    out = []
    for row in rows:
        try:
            family, first, prefixlen, comment, created = row
            out.append(AllowEntry(net_from_columns(family, first, prefixlen), comment,
                                  _time(created, "created")))
        except (BadRow, ValueError, TypeError, OverflowError) as exc:
            rejected(store)[("allowlist", printable(row[:3]))] = f"unparseable: {exc}"
    return out


def rejected_by_table(store) -> dict[str, int]:
    out: dict[str, int] = {}
    for table, _key in rejected(store):
        out[table] = out.get(table, 0) + 1
    return out
