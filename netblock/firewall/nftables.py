"""The nftables backend (the default): `table inet netblock` with one interval set per family.

The skeleton (table, sets, chain) is the readable ruleset in rules/netblock.nft,
loaded through libnftables. Set elements are not: nft 1.0.6 reads every
element of every set before each command, which makes a one-element change to
a 100k set cost seconds. Elements are therefore added, updated, deleted and
read over raw nf_tables netlink (netblock.firewall.netlink.nftables), one batch per
apply() — one kernel transaction.

Each netblock is an interval element carrying its remaining lifetime (the
kernel drops it on time even if netblock is not running) and its own counter,
cloned by the kernel from the set's `counter` expression. An expiry change is
an in-place timeout update, which keeps the counter.

Reading a 100k set back costs the kernel seconds, so apply() keeps a snapshot
of what it committed (in /run/netblock/nftables, per network namespace) and
trusts it only while the kernel's ruleset generation is still the one its own
commit produced (the object keeps the same state in memory, which spares the
daemon reading the file back); counters() and installed() always read the
kernel.

Beyond the five calls every backend has, add() serves the daemon's event
path: new single addresses go in as one small batch, checked against that
snapshot, at a cost that follows the burst rather than the set.

Why this module is long: one backend: ruleset text, set diff, counters and the
netlink fast path share the set's representation.
"""

from __future__ import annotations

import errno
import hashlib
import re
import string
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import resources
from operator import attrgetter, countOf
from pathlib import Path
from typing import Any, Sequence

from netaddr import IPAddress, IPNetwork, iprange_to_cidrs

from netblock.aggregate import key_network
from netblock.errors import KernelError, KernelFeatureMissing, NameClash, NetblockError, PermissionDenied, ToolMissing
from netblock.firewall import VERDICTS, Change, Desired, KeyedDesired, RegionView, Settings, names
from netblock.firewall.columns import np, spliced, timestamps
from netblock.firewall.netlink import nftables as nl
from netblock.firewall.snapshot import SnapshotFile

# Expiry differences below this are not worth a kernel update (no churn on repeated applies).
EXPIRY_TOLERANCE = 2.0  # seconds
MAX_EXPIRY_TOLERANCE = 60.0
APPLY_ATTEMPTS = 3

_FAMILY = {"ipv4": (4, 32), "ipv6": (6, 128)}
_VERSION_FAMILY = {4: "ipv4", 6: "ipv6"}
_OPEN_END_UDATA = nl.attr(6, bytes([1, 4, 1, 0, 0, 0]))  # libnftnl: element flag "interval open"

_TABLE_REF = f"{names.NFT_FAMILY} {names.NFT_TABLE}"


_VERDICT = {"drop": "drop", "reject": "reject with tcp reset", "count": "counter"}
_COUNT_MATCH = "tcp flags & (syn | ack) == syn"
_SPACES = re.compile(r"(?<=\S)  +")


def template() -> str:
    """The ruleset template exactly as shipped in rules/netblock.nft."""
    return resources.files("netblock.rules").joinpath("netblock.nft").read_text()


def render(settings: Settings) -> str:
    """The skeleton ruleset for ``settings``: what goes into the kernel, comments removed."""
    return _render(settings, chain_comment=_chain_comment(settings))


def _chain_comment(settings: Settings) -> str:
    """The chain's comment: a fingerprint of everything else rendered, so ensure() sees a changed setting."""
    text = _render(settings, chain_comment="")
    return f"netblock {hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _render(settings: Settings, chain_comment: str) -> str:
    ports = settings.ports
    values = {
        "table_comment": names.NFT_TABLE_COMMENT,
        "chain_comment": chain_comment,
        "hook": settings.hook,
        "priority": "raw" if settings.hook == "prerouting" else "filter",
        "ports": str(ports[0]) if len(ports) == 1 else "{ " + ", ".join(map(str, sorted(set(ports)))) + " }",
        "match": _COUNT_MATCH if settings.verdict == "count" else "",
        "verdict": _VERDICT[settings.verdict],
    }
    body = "\n".join(line for line in template().splitlines() if not line.lstrip().startswith("#"))
    disabled = [re.compile(rf"@{names.NFT_SET[fam]}\b") for fam in names.NFT_SET if fam not in settings.families]
    # An empty $match leaves two spaces: closed up, so the drop ruleset reads (and
    # fingerprints) exactly as it did before counting-only mode existed.
    lines = [_SPACES.sub(" ", line) for line in string.Template(body).substitute(values).splitlines()
             if not any(d.search(line) for d in disabled)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- conversions

def _network_elements(first: int, prefixlen: int, bits: int, expires: float | None) -> list[nl.ElemSpec]:
    """A CIDR as the kernel's interval pair: start key, and the first address after it."""
    width = bits // 8
    start = nl.ElemSpec(first.to_bytes(width, "big"), False, expires)
    after = first + (1 << (bits - prefixlen))
    if after >> bits:
        start.udata = _OPEN_END_UDATA  # reaches the top of the address space: no end element
        return [start]
    return [start, nl.ElemSpec(after.to_bytes(width, "big"), True)]


def _range_elements(first: int, last: int, has_end: bool, bits: int) -> list[nl.ElemSpec]:
    """The interval [first, last] as the kernel keys it, for deletion."""
    width = bits // 8
    start = nl.ElemSpec(first.to_bytes(width, "big"))
    if not has_end:
        return [start]
    return [start, nl.ElemSpec((last + 1).to_bytes(width, "big"), True)]


def _ranges(elements: list[nl.Element], bits: int) -> list[tuple[int, int, bool, nl.Element]]:
    """Pair dumped interval starts with the key that ends them: [(first, last, has end element, start)].

    An end element with no live start before it is the leftover of an
    expired interval (the kernel collects it later) and is skipped.
    """
    elements = sorted(elements, key=lambda e: (e.key, not e.end))  # an end sorts before a start at the same key
    top = (1 << bits) - 1
    out = []
    for i, el in enumerate(elements):
        if el.end:
            continue
        first = int.from_bytes(el.key, "big")
        nxt = elements[i + 1] if i + 1 < len(elements) else None
        last = int.from_bytes(nxt.key, "big") - 1 if nxt is not None else top
        out.append((first, last, nxt is not None and nxt.end, el))
    return out


def _cidrs(first: int, last: int, version: int, bits: int) -> list[tuple[int, int]]:
    """[(first, prefixlen)] covering [first, last]: one CIDR unless the range was made by hand."""
    size = last - first + 1
    if size & (size - 1) == 0 and first & (size - 1) == 0:
        return [(first, bits + 1 - size.bit_length())]
    return [(n.first, n.prefixlen) for n in iprange_to_cidrs(IPAddress(first, version), IPAddress(last, version))]


class NftablesBackend:
    """Keeps `table inet netblock` equal to the desired netblocks.

    The kernel holds the state; the only thing kept between calls is apply()'s
    snapshot, used only while the kernel's ruleset generation proves it true.
    """

    name = "nftables"

    def __init__(self, settings: Settings, nft) -> None:
        self.settings = settings
        self._nft = nft
        # The last committed state in memory too: (netns cookie, genid, sets), trusted like the file.
        self._memo: tuple[int, int, dict] | None = None
        self.description = (f"nftables table {_TABLE_REF} (sets "
                            + ", ".join(names.NFT_SET[f] for f in settings.families)
                            + f", hook {settings.hook}) via libnftables and nf_tables netlink")

    # ------------------------------------------------------------ plumbing

    def _netlink(self) -> nl.Nfnl:
        try:
            return nl.Nfnl(names.NFT_TABLE)
        except nl.NetlinkError as exc:
            raise _translate(exc, "open nf_tables netlink socket") from None

    def _run_nft(self, text: str, what: str) -> None:
        try:
            rc, _out, err = self._nft.cmd(text)
        except Exception as exc:  # noqa: BLE001 - a binding failure becomes one line
            raise KernelError(f"nftables: {what}: libnftables failed: {exc}") from None
        if rc != 0:
            first = next((line.strip() for line in err.splitlines() if line.strip()), f"exit status {rc}")
            if "Operation not permitted" in err:
                raise PermissionDenied(f"nftables: {what}: {first} (needs CAP_NET_ADMIN)")
            if "Protocol not supported" in err:
                raise KernelFeatureMissing(f"nftables: {what}: {first}")
            raise KernelError(f"nftables: {what}: {first}")

    def _table_state(self, sock: nl.Nfnl) -> str:
        """"missing", "ours" or "foreign" for the table named netblock."""
        try:
            attrs = sock.get_table()
        except nl.NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                return "missing"
            raise _translate(exc, f"read table {_TABLE_REF}") from None
        comment = nl.parse_udata_comment(attrs.get(nl.NFTA_TABLE_USERDATA, b""))
        return "ours" if comment == names.NFT_TABLE_COMMENT else "foreign"

    # ------------------------------------------------------------ the five calls

    def ensure(self) -> None:
        """Create what is missing; leave the sets (and their elements and counters) alone.

        The chain is rebuilt only when its fingerprint differs from the
        rendered Settings or a rule is missing: deleting the chain keeps the
        sets, so counters survive a change of ports, hook or verdict.
        """
        with self._netlink() as sock:
            state = self._table_state(sock)
            if state == "foreign":
                raise NameClash(f"nftables: table {_TABLE_REF} exists and was not created by netblock "
                                f"(its comment is not {names.NFT_TABLE_COMMENT!r})")
            chain_present = False
            if state == "ours":
                sets_ok = all([self._check_set(sock, fam) for fam in names.NFT_SET])  # check both for clashes
                chain_ok, chain_present = self._check_chain(sock)
                if sets_ok and chain_ok:
                    return
        prefix = f"delete chain {_TABLE_REF} {names.NFT_CHAIN}\n" if chain_present else ""
        self._run_nft(prefix + render(self.settings), f"create table {_TABLE_REF}")

    def _check_set(self, sock: nl.Nfnl, family: str) -> bool:
        name = names.NFT_SET[family]
        try:
            attrs = sock.get_set(name)
        except nl.NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise _translate(exc, f"read set {_TABLE_REF} {name}") from None
        flags = int.from_bytes(attrs.get(nl.NFTA_SET_FLAGS, b"\0\0\0\0"), "big")
        keylen = int.from_bytes(attrs.get(nl.NFTA_SET_KEY_LEN, b"\0\0\0\0"), "big")
        need = nl.NFT_SET_INTERVAL | nl.NFT_SET_TIMEOUT
        if flags & need != need or keylen != _FAMILY[family][1] // 8:
            raise NameClash(f"nftables: set {_TABLE_REF} {name} exists but is not an interval set "
                            f"with timeouts of {family} addresses")
        return True

    def _check_chain(self, sock: nl.Nfnl) -> tuple[bool, bool]:
        """(chain matches the Settings, chain exists)."""
        try:
            attrs = sock.get_chain(names.NFT_CHAIN)
        except nl.NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                return False, False
            raise _translate(exc, f"read chain {_TABLE_REF} {names.NFT_CHAIN}") from None
        comment = nl.parse_udata_comment(attrs.get(nl.NFTA_CHAIN_USERDATA, b""))
        if comment != _chain_comment(self.settings):
            return False, True
        try:
            rules = sock.count_rules(names.NFT_CHAIN)
        except nl.NetlinkError as exc:
            raise _translate(exc, f"read chain {_TABLE_REF} {names.NFT_CHAIN}") from None
        return rules == len(self.settings.families), True

    def verdict(self) -> str | None:
        """The verdict of the chain in the kernel, told by its fingerprint (None: none of ours, or other settings)."""
        with self._netlink() as sock:
            if self._table_state(sock) != "ours":
                return None
            try:
                attrs = sock.get_chain(names.NFT_CHAIN)
            except nl.NetlinkError as exc:
                if exc.errno == errno.ENOENT:
                    return None
                raise _translate(exc, f"read chain {_TABLE_REF} {names.NFT_CHAIN}") from None
        comment = nl.parse_udata_comment(attrs.get(nl.NFTA_CHAIN_USERDATA, b""))
        return next((v for v in VERDICTS if comment == _chain_comment(replace(self.settings, verdict=v))), None)

    def apply(self, desired: Desired) -> Change:
        """Make the sets equal to ``desired`` in one netlink batch (one transaction).

        What the kernel holds comes from the state of the last apply if
        the ruleset generation proves nothing changed since (see
        _current), else from a dump of the sets. The batch is guarded
        by that generation, so a concurrent change makes the kernel refuse
        it and the apply starts over from a fresh dump.

        From the last state, only the difference is planned: desired and
        the state are compared as sorted arrays, so a one-element change to
        a 100k set costs milliseconds rather than a Python pass over both.
        """
        now = datetime.now(timezone.utc)
        now_ts = now.timestamp()
        nets, wanted = _wanted(desired, self.settings.families, now_ts)
        what = f"update sets of {_TABLE_REF}"
        with self._netlink() as sock:
            for attempt in range(APPLY_ATTEMPTS):
                genid = self._genid(sock)
                current = self._current(sock, genid, now, live_only=True) if attempt == 0 else None
                from_snapshot = current is not None
                if current is None:
                    read = {fam: self._read(sock, fam) for fam in wanted}
                    if self._genid(sock) != genid:
                        continue  # someone committed while the sets were being read
                    if not any(read.values()):  # empty sets (a restore after a flush): everything is added
                        change, ops, state = _plan_fresh(nets, wanted)
                    else:
                        want = {fam: _want_dict(nets, cols, _FAMILY[fam][1]) for fam, cols in wanted.items()}
                        change, ops, after = _plan(want, read, now_ts)
                        state = {fam: _Column.of(entries, _FAMILY[fam][1]) for fam, entries in after.items()}
                else:
                    change, ops, state = _plan_columns(nets, wanted, current, now_ts)
                try:
                    sock.batch(ops, genid=genid)
                except nl.NetlinkError as exc:
                    self._memo = None
                    _forget_snapshot(sock)
                    if exc.errno == nl.ERESTART or from_snapshot:
                        continue  # the kernel moved on (or the snapshot was wrong): read it afresh
                    raise _translate(exc, f"{what} ({len(change.added)} added, {len(change.removed)} removed, "
                                          f"{len(change.updated)} updated)") from None
                committed = nl.next_genid(genid) if ops else genid
                _save_snapshot(sock, committed, state)
                self._memo = (sock.netns_cookie(), committed, state)
                return change
        raise KernelError(f"nftables: {what}: the ruleset kept changing under netblock; try again")

    def add(self, additions: Desired) -> Change | None:
        """Add single addresses that nothing in the sets covers yet, as one small transaction.

        The daemon's event path: a burst of new offenders must reach the
        kernel at a cost that follows the burst, not the set. What the
        kernel holds comes from the snapshot of the last commit (read back
        only when the generation says it is stale); an address some live
        element covers already is skipped. Returns None when the additions
        are not plain additions (a prefix wider than one address, an expired
        element in the way, a missing set): then the caller runs a full
        sync, which knows how to replace and carve.
        """
        now = datetime.now(timezone.utc)
        now_ts = now.timestamp()
        adding: dict[str, dict[tuple[int, int], tuple[IPNetwork, float | None]]] = {}
        for net, expiry in additions.items():
            fam = _VERSION_FAMILY[net.version]
            if net.prefixlen != _FAMILY[fam][1]:
                return None
            expires = None if expiry is None else expiry.timestamp()
            if fam in self.settings.families and (expires is None or expires > now_ts):
                adding.setdefault(fam, {})[(net.value, net.prefixlen)] = (net, expires)
        if not adding:
            return Change()
        with self._netlink() as sock:
            for attempt in range(APPLY_ATTEMPTS):
                genid = self._genid(sock)
                current = self._current(sock, genid, now) if attempt == 0 else None
                if current is None:
                    try:
                        read = {fam: self._read(sock, fam) for fam in self.settings.families}
                    except NetblockError:
                        return None
                    if self._genid(sock) != genid:
                        continue
                    current = {fam: _Column.of(entries, _FAMILY[fam][1]) for fam, entries in read.items()}
                change, ops = Change(), []
                new: dict = {}
                for fam, wanted in adding.items():
                    bits = _FAMILY[fam][1]
                    have = current[fam]
                    elements = []
                    for key, (net, expires) in sorted(wanted.items()):
                        cover = have.covering(key[0], bits)
                        if cover is not None:
                            if cover <= now_ts:
                                return None  # expired but maybe not collected yet: let apply() sort it out
                            continue
                        elements.extend(_network_elements(key[0], key[1], bits, expires))
                        change.added.append(net)
                        new.setdefault(fam, []).append((key[0] << 8 | key[1], expires))
                    if elements:
                        ops.append(nl.SetOp(names.NFT_SET[fam], False, elements))
                if not ops:
                    return change
                try:
                    sock.batch(ops, genid=genid)
                except nl.NetlinkError as exc:
                    self._memo = None
                    if exc.errno == nl.ERESTART:
                        continue
                    return None  # the full sync says what is wrong, as one line
                current = {fam: col.plus(new[fam]) if fam in new else col for fam, col in current.items()}
                self._memo = (sock.netns_cookie(), nl.next_genid(genid), current)
                return change
        return None

    def _current(self, sock: nl.Nfnl, genid: int, now: datetime, live_only: bool = False):
        """{family: _Column} the last commit left, if the kernel is still at its generation; else None.

        From memory when this object made that commit (as is, unless
        ``live_only`` drops what has expired since), else from the snapshot file.
        """
        memo = self._memo
        if memo is not None and memo[1] == genid and memo[0] == sock.netns_cookie():
            sets = memo[2]
        else:
            sets = self._load_snapshot(sock, genid)
            if sets is None:
                return None
        if not live_only:
            return sets
        cutoff = now.timestamp()
        return {fam: col.live(cutoff) for fam, col in sets.items()}

    def _genid(self, sock: nl.Nfnl) -> int:
        try:
            return sock.get_genid()
        except nl.NetlinkError as exc:
            raise _translate(exc, "read the ruleset generation") from None

    def _load_snapshot(self, sock: nl.Nfnl, genid: int):
        """The sets as the last apply left them, if the kernel is provably still in that state.

        Valid only for the same network namespace (its cookie) at the same
        ruleset generation: any commit by anyone, a hand edit included,
        moves the generation on.
        """
        try:
            data = SNAPSHOT.read(sock.netns_cookie())
            if data is None or data["genid"] != genid:
                return None
            return {fam: _Column.load(data["sets"][fam], _FAMILY[fam][1]) for fam in self.settings.families}
        except (OSError, LookupError, ValueError, EOFError, TypeError):
            return None  # no snapshot, another layout, or not one at all: read the kernel

    def _read(self, sock: nl.Nfnl, family: str) -> dict[tuple[int, int], tuple]:
        """{(first, prefixlen): (expiry or None, packets, bytes, (first, last, has end element))} of one set.

        Expiries are epoch seconds: the kernel's remaining lifetime counted
        from when the reply carrying the element arrived.

        The kernel's range is kept because a hand-made range that is no CIDR
        must be deleted as the one interval the kernel holds.
        """
        set_name = names.NFT_SET[family]
        version, bits = _FAMILY[family]
        try:
            elements = sock.dump_elements(set_name)
        except nl.NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                raise NetblockError(f"nftables: set {_TABLE_REF} {set_name} is missing; "
                                    f"run ensure() (netblock sync) first") from None
            raise _translate(exc, f"read set {_TABLE_REF} {set_name}") from None
        out = {}
        for first, last, has_end, el in _ranges(elements, bits):
            expiry = None if el.expires_ms is None else el.seen + el.expires_ms / 1000
            raw = (first, last, has_end)
            pieces = _cidrs(first, last, version, bits)
            out[pieces[0]] = (expiry, el.packets, el.bytes, raw)
            for piece in pieces[1:]:
                # A hand-made range that is no CIDR: its counter went to the first piece only.
                out[piece] = (expiry, 0, 0, raw)
        return out

    def _read_all(self):
        with self._netlink() as sock:
            return {fam: self._read(sock, fam) for fam in self.settings.families}

    def counters(self) -> dict[IPNetwork, tuple[int, int]]:
        """{netblock: (packets, bytes)}: asked key by key while the generation proves the keys (see
        _counter_columns_proven), else from a dump; `netblock sample` and sync before it removes elements."""
        proven = self._counter_columns_proven()
        if proven is None:
            return self._counters_dumped()
        return {IPNetwork((k >> 8, k & 255), version=version): (p, b)
                for version, (keys, packets, nbytes) in proven.items()
                for k, p, b in zip(keys.tolist(), packets.tolist(), nbytes.tolist())}

    def _counters_dumped(self) -> dict[IPNetwork, tuple[int, int]]:
        return {IPNetwork(key, version=_FAMILY[fam][0]): (p, b)
                for fam, entries in self._read_all().items() for key, (_e, p, b, _r) in entries.items()}

    def counter_columns(self) -> dict[int, tuple]:
        """counters() as arrays: {version: (keys first << 8 | prefixlen, packets, bytes)}, no object per element.

        For the daemon's periodic sample, which compares them with its
        previous read and hands only the changed ones on (Runner._sample).
        """
        proven = self._counter_columns_proven()
        return self._counter_columns_dumped() if proven is None else proven

    def _counter_columns_dumped(self) -> dict[int, tuple]:
        out = {}
        for fam, entries in self._read_all().items():
            keys = [f << 8 | p for f, p in entries]
            n = len(keys)
            arr = np.array(keys, dtype=np.uint64 if _FAMILY[fam][1] == 32 else object)
            order = np.argsort(arr, kind="stable")
            out[_FAMILY[fam][0]] = (
                arr[order],
                np.fromiter((v[1] for v in entries.values()), dtype=np.int64, count=n)[order],
                np.fromiter((v[2] for v in entries.values()), dtype=np.int64, count=n)[order])
        return out

    def _counter_columns_proven(self) -> dict[int, tuple] | None:
        """counter_columns() asked element by element for the keys the generation proves installed.

        nf_tables walks an interval set from its first element again for
        every reply of a dump, so a 100k dump costs the kernel seconds;
        asking for the known keys costs it a lookup each. None (the caller
        dumps) when the generation proves nothing or an element is gone
        (a timeout ran out just now).
        """
        view = self.region_view()
        if view is None:
            return None
        soon = datetime.now(timezone.utc).timestamp() + COUNTER_MARGIN
        out = {}
        with self._netlink() as sock:
            for version, (keys, expiry) in view.sets.items():
                fam = _VERSION_FAMILY[version]
                bits = _FAMILY[fam][1]
                live = [k for k, e in zip(keys, expiry) if e != e or e > soon]
                found: dict[bytes, tuple[int, int]] = {}
                try:
                    for i in range(0, len(live), COUNTER_CHUNK):
                        for el in sock.get_elements(names.NFT_SET[fam],
                                                    [(k >> 8).to_bytes(bits // 8, "big") for k in live[i:i + COUNTER_CHUNK]]):
                            if not el.end:
                                found[el.key] = (el.packets, el.bytes)
                except nl.NetlinkError:
                    return None
                if len(found) != len(live):
                    return None
                counts = [found[(k >> 8).to_bytes(bits // 8, "big")] for k in live]
                out[version] = (np.array(live, dtype=np.uint64 if bits == 32 else object),
                                np.fromiter((c[0] for c in counts), dtype=np.int64, count=len(live)),
                                np.fromiter((c[1] for c in counts), dtype=np.int64, count=len(live)))
        return out

    def installed(self) -> dict[IPNetwork, datetime | None]:
        return {IPNetwork(key, version=_FAMILY[fam][0]): None if e is None else datetime.fromtimestamp(e, timezone.utc)
                for fam, entries in self._read_all().items() for key, (e, _p, _b, _r) in entries.items()}

    # ------------------------------------------------------------ one change, priced by the change

    def region_view(self, whole: bool = False) -> "RegionView | None":
        """The sets as netblock's last commit left them, if the ruleset generation proves it; else None.

        The generation proves every element, so ``whole`` asks for nothing more.

        Read from the snapshot file without numpy and without a Python
        object per element: sorted keys and expiries as memoryviews that
        bisect can search (netblock/run/delta.py). None when anyone else
        committed since (a hand edit, another tool), or the state has
        hand-made ranges: then the caller runs the full sync.
        """
        with self._netlink() as sock:
            genid = self._genid(sock)
            memo = self._memo
            if memo is not None and memo[1] == genid and memo[0] == sock.netns_cookie():
                if any(col.ranges for col in memo[2].values()):
                    return None
                return RegionView(genid, memo[0], {
                    _FAMILY[fam][0]: (memoryview(col.keys.tobytes()).cast("Q") if _FAMILY[fam][1] == 32
                                      else col.keys.tolist(), memoryview(col.expiry.tobytes()).cast("d"))
                    for fam, col in memo[2].items()})
            try:
                data = SNAPSHOT.read(sock.netns_cookie())
                if data is None or data["genid"] != genid:
                    return None
                sets = {}
                for fam in self.settings.families:
                    keys, expiry, ranges = data["sets"][fam]
                    if ranges:
                        return None
                    keys = memoryview(keys).cast("Q") if _FAMILY[fam][1] == 32 else list(keys)
                    expiry = memoryview(expiry).cast("d")
                    if len(keys) != len(expiry):
                        return None
                    sets[_FAMILY[fam][0]] = (keys, expiry)
            except (OSError, LookupError, ValueError, EOFError, TypeError):
                return None
            return RegionView(genid, sock.netns_cookie(), sets)

    def installed_proven(self) -> dict[IPNetwork, datetime | None] | None:
        """installed() from netblock's last state when the ruleset generation proves it, else None.

        Spares `status`, `sync` and the tick the seconds a 100k set dump
        costs the kernel; elements past their expiry are left out, as the
        kernel drops them.
        """
        view = self.region_view()
        if view is None:
            return None
        now = datetime.now(timezone.utc).timestamp()
        out: dict = {}
        for version, (keys, expiry) in view.sets.items():
            for k, e in zip(keys, expiry):
                if e != e:
                    out[IPNetwork((k >> 8, k & 255), version=version)] = None
                elif e > now:
                    out[IPNetwork((k >> 8, k & 255), version=version)] = datetime.fromtimestamp(e, timezone.utc)
        return out

    def counters_of(self, view: "RegionView", keys: list[tuple[int, int]]) -> dict[IPNetwork, tuple[int, int]]:
        """{netblock: (packets, bytes)} of the installed elements ``keys`` ((version, first << 8 | prefixlen))."""
        out = {}
        with self._netlink() as sock:
            for version in (4, 6):
                mine = [k for v, k in keys if v == version]
                if not mine:
                    continue
                fam, bits = _VERSION_FAMILY[version], _FAMILY[_VERSION_FAMILY[version]][1]
                try:
                    elements = sock.get_elements(names.NFT_SET[fam], [(k >> 8).to_bytes(bits // 8, "big") for k in mine])
                except nl.NetlinkError as exc:
                    raise _translate(exc, f"read counters of {names.NFT_SET[fam]}") from None
                found = {int.from_bytes(el.key, "big"): (el.packets, el.bytes) for el in elements if not el.end}
                for k in mine:
                    if (k >> 8) in found:
                        out[IPNetwork((k >> 8, k & 255), version=version)] = found[k >> 8]
        return out

    def apply_region(self, view: "RegionView", removed: list[tuple[int, int]],
                     added: list[tuple[int, int, float | None]],
                     updated: list[tuple[int, int, float | None]], lapsed: Sequence[tuple[int, int]] = ()) -> bool:
        """Remove, add and re-time the given elements in one transaction guarded by the view's generation.

        Keys are (version, first << 8 | prefixlen), expiries epoch seconds
        (None: permanent). False when the kernel moved on since the view
        (the caller runs the full sync); the snapshot is then updated in
        place, so the next change needs no dump either. ``lapsed`` elements
        timed out in the kernel: they leave the snapshot and need no message
        (a delete of one would fail with ENOENT); were one still there, an
        element added over it is refused and the full sync takes over.
        """
        ops = []
        for version in (4, 6):
            fam = _VERSION_FAMILY[version]
            if fam not in self.settings.families:
                if any(v == version for v, *_ in removed + added + updated):
                    return False
                continue
            bits = _FAMILY[fam][1]
            dels = [e for v, k in removed if v == version
                    for e in _range_elements(*_derived(k, bits), bits)]
            ups = [nl.ElemSpec((k >> 8).to_bytes(bits // 8, "big"), False, e or 0)
                   for v, k, e in updated if v == version]
            adds = [e for v, k, x in added if v == version
                    for e in _network_elements(k >> 8, k & 255, bits, x)]
            ops += _set_ops(names.NFT_SET[fam], dels, ups, adds)
        if not ops and not lapsed:
            return True
        self._memo = None
        with self._netlink() as sock:
            if sock.netns_cookie() != view.cookie:
                return False
            genid = view.genid
            if ops:
                try:
                    sock.batch(ops, genid=view.genid)
                except nl.NetlinkError:
                    _forget_snapshot(sock)
                    return False  # the kernel moved on, or refused: the full sync reads it afresh and says why
                genid = nl.next_genid(view.genid)
            sets = {}
            for version, (keys, expiry) in view.sets.items():
                fam = _VERSION_FAMILY[version]
                sets[fam] = (*spliced(keys, expiry, version, [*removed, *lapsed], added, updated), [])
            _write_snapshot(sock, genid, sets)
        return True

    def remove(self) -> None:
        """Delete netblock's table (sets, elements, chain) in one transaction; a stranger's stays."""
        self._memo = None
        with self._netlink() as sock:
            _forget_snapshot(sock)
            if self._table_state(sock) != "ours":
                return
            try:
                sock.batch([], delete_table=True)
            except nl.NetlinkError as exc:
                if exc.errno != errno.ENOENT:
                    raise _translate(exc, f"delete table {_TABLE_REF}") from None


def _plan(want, current, now: float):
    """The batch that turns ``current`` into ``want``: (Change, [SetOp], state after it)."""
    change = Change()
    ops: list[nl.SetOp] = []
    after = {}
    for fam, wanted in want.items():
        set_name = names.NFT_SET[fam]
        version, bits = _FAMILY[fam]
        have = current[fam]
        state = dict(have)
        adds, dels, updates = [], [], []
        gone = set()
        for key, cur in have.items():
            if key not in wanted:
                gone.add(cur[3])
                change.removed.append(IPNetwork(key, version=version))
                del state[key]
        for key, (net, expires) in wanted.items():
            cur = have.get(key)
            if cur is None or (gone and cur[3] in gone):
                # (A wanted piece of a hand-made range that goes is sent again on its own.)
                adds.extend(_network_elements(key[0], key[1], bits, expires))
                change.added.append(net)
            elif _differs(cur[0], expires, now):
                # In-place: a new timeout (0 = permanent) on the interval start keeps its counter.
                updates.append(nl.ElemSpec(key[0].to_bytes(bits // 8, "big"), False, expires or 0))
                change.updated.append(net)
            else:
                continue
            last = key[0] + (1 << (bits - key[1])) - 1
            state[key] = (expires, 0, 0, (key[0], last, last + 1 < 1 << bits))
        for first, last, has_end in sorted(gone):
            dels.extend(_range_elements(first, last, has_end, bits))
        ops += _set_ops(set_name, dels, updates, adds)
        after[fam] = state
    return change, ops, after


# ---------------------------------------------------------------- apply's state as sorted arrays
#
# A set's state is kept as one sorted array of keys (first address << 8 |
# prefix length: uint64 for IPv4, Python ints for IPv6) beside an array of
# expiries, so that comparing 100k desired netblocks with it is a few numpy
# passes, and the snapshot file is two byte strings.

_VALUE, _PREFIXLEN, _MODULE = attrgetter("_value"), attrgetter("_prefixlen"), attrgetter("_module")
_MODULES = {4: IPNetwork("0.0.0.0/0")._module, 6: IPNetwork("::/0")._module}


def _derived(key: int, bits: int) -> tuple[int, int, bool]:
    """The kernel range of the CIDR ``key``: (first, last, has end element)."""
    first, plen = key >> 8, key & 255
    last = first + (1 << (bits - plen)) - 1
    return first, last, last + 1 < 1 << bits


@dataclass
class _Column:
    """One set's state: sorted keys, expiries (NaN: permanent), and the kernel ranges that are no CIDR."""

    keys: np.ndarray
    expiry: np.ndarray
    ranges: dict = field(default_factory=dict)  # key -> (first, last, has end), pieces of hand-made ranges only

    @classmethod
    def of(cls, entries: dict, bits: int) -> "_Column":
        """From _read()/_plan()'s {(first, prefixlen): (expiry, packets, bytes, range)}."""
        keys = [f << 8 | p for f, p in entries]
        expiry = np.array([np.nan if v[0] is None else v[0] for v in entries.values()], dtype=np.float64)
        ranges = {k: v[3] for k, v in zip(keys, entries.values()) if tuple(v[3]) != _derived(k, bits)}
        arr = np.array(keys, dtype=np.uint64 if bits == 32 else object)
        order = np.argsort(arr, kind="stable")
        return cls(arr[order], expiry[order], ranges)

    @classmethod
    def load(cls, data, bits: int) -> "_Column":
        keys, expiry, ranges = data
        arr = np.frombuffer(keys, dtype=np.uint64) if bits == 32 else np.array(keys, dtype=object)
        exp = np.frombuffer(expiry, dtype=np.float64)
        if len(arr) != len(exp) or (len(arr) > 1 and not (arr[1:] > arr[:-1]).all()):
            raise ValueError("not a snapshot")
        return cls(arr, exp, {k: tuple(r) for k, r in ranges})

    def dump(self, bits: int):
        keys = self.keys.tobytes() if bits == 32 else self.keys.tolist()
        return keys, self.expiry.tobytes(), [(k, list(r)) for k, r in self.ranges.items()]

    def live(self, cutoff: float) -> "_Column":
        alive = ~(self.expiry <= cutoff)
        if alive.all():
            return self
        keys = self.keys[alive]
        kept = set(keys.tolist()) if self.ranges else ()
        return _Column(keys, self.expiry[alive], {k: r for k, r in self.ranges.items() if k in kept})

    def find(self, key: int) -> int | None:
        i = int(np.searchsorted(self.keys, key))
        return i if i < len(self.keys) and self.keys[i] == key else None

    def covering(self, first: int, bits: int) -> float | None:
        """The expiry (inf: permanent) of the element whose CIDR holds address ``first``, or None.

        Every prefix length's key is looked up in one searchsorted call: the
        event path asks this for each new address of a burst.
        """
        candidates = [(first >> (bits - plen) << (bits - plen)) << 8 | plen for plen in range(bits, -1, -1)]
        n = len(self.keys)
        if not n:
            return None
        wanted = np.array(candidates, dtype=self.keys.dtype)
        pos = np.minimum(np.searchsorted(self.keys, wanted), n - 1)
        hits = np.flatnonzero(self.keys[pos] == wanted)
        if not len(hits):
            return None
        e = float(self.expiry[pos[hits[0]]])
        return np.inf if np.isnan(e) else e

    def plus(self, added: list[tuple[int, float | None]]) -> "_Column":
        """The column with ``added`` (keys not in it yet) inserted in order: a copy, not a sort of everything."""
        new = sorted(added)
        keys = np.array([k for k, _ in new], dtype=self.keys.dtype)
        exp = np.array([np.nan if e is None else e for _, e in new], dtype=np.float64)
        at = np.searchsorted(self.keys, keys)
        return _Column(np.insert(self.keys, at, keys), np.insert(self.expiry, at, exp), self.ranges)


def _wanted(desired: Desired, families, now: float):
    """(list of the desired networks, {family: (sorted keys, expiries, index into that list)}).

    Expired entries and other families are left out; keys are canonical
    (host bits cleared) whatever address the IPNetwork was written with.
    """
    if isinstance(desired, KeyedDesired):
        return _wanted_keys(desired.by_key, families, now)
    nets = list(desired)
    n = len(nets)
    v4 = countOf(map(_MODULE, nets), _MODULES[4])
    modules = {_MODULES[4]} if v4 == n else {_MODULES[6]} if v4 == 0 else set(_MODULES.values())
    if len(modules) > 1:
        module_ids = np.fromiter(map(id, map(_MODULE, nets)), dtype=np.uint64, count=n)
    plens = np.fromiter(map(_PREFIXLEN, nets), dtype=np.uint64, count=n)
    expiry = timestamps(list(desired.values()))
    live = ~(expiry <= now)
    values = None
    out = {}
    for fam in families:
        version, bits = _FAMILY[fam]
        module = _MODULES[version]
        idx: Any  # the positions of this family's live elements; None: all of them
        if len(modules) > 1:
            idx = np.flatnonzero((module_ids == id(module)) & live)
        elif module in modules:
            idx = None if live.all() else np.flatnonzero(live)  # None: all of them
        else:
            idx = np.array([], dtype=np.int64)
        every = (lambda a: a) if idx is None else (lambda a: a[idx])
        if idx is not None and not len(idx):
            keys = np.array([], dtype=np.uint64 if bits == 32 else object)
        elif bits == 32:
            if len(modules) == 1 and (idx is None or len(idx)):
                # int64 converts faster than uint64; IPv4 values fit either way.
                v = every(np.fromiter(map(_VALUE, nets), dtype=np.int64, count=n).view(np.uint64))
            else:
                values = values if values is not None else np.array(list(map(_VALUE, nets)), dtype=object)
                v = every(values).astype(np.uint64)
            p = every(plens)
            shift = np.uint64(32) - p
            keys = (v >> shift << shift) << np.uint64(8) | p
        else:
            values = values if values is not None else np.array(list(map(_VALUE, nets)), dtype=object)
            p = every(plens).astype(np.int64).astype(object)
            shift = 128 - p
            keys = np.asarray((every(values) >> shift << shift) << 8 | p, dtype=object)
        idx = np.arange(n) if idx is None else idx
        exp = expiry[idx]
        if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():
            order = np.argsort(keys, kind="stable")
            keys, idx, exp = keys[order], idx[order], exp[order]
        out[fam] = (keys, exp, idx)
    return nets, out


class _KeyNets:
    """The desired networks of a KeyedDesired by position, each made only when a plan names it."""

    def __init__(self, keys: list[tuple[int, int]]) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> IPNetwork:
        return key_network(*self.keys[i])


def _wanted_keys(by_key: dict, families, now: float):
    """_wanted() of KeyedDesired's integers: the same arrays, no IPNetwork read (those in a Change are made
    from the keys, as the plan makes them)."""
    keys = list(by_key)
    n = len(keys)
    expiry = np.fromiter(by_key.values(), dtype=np.float64, count=n)
    versions = np.fromiter((v for v, _k in keys), dtype=np.int64, count=n)
    live = ~(expiry <= now)
    out = {}
    for fam in families:
        version, bits = _FAMILY[fam]
        idx = np.flatnonzero((versions == version) & live)
        picked = [keys[i][1] for i in idx.tolist()]
        k = np.array(picked, dtype=np.uint64) if bits == 32 else np.array(picked, dtype=object)
        exp = expiry[idx]
        if len(k) > 1 and not (k[1:] > k[:-1]).all():
            order = np.argsort(k, kind="stable")
            k, idx, exp = k[order], idx[order], exp[order]
        out[fam] = (k, exp, idx)
    return _KeyNets(keys), out


def _plan_fresh(nets: Sequence, wanted: dict):
    """_plan() into empty sets: every wanted entry added, the state the wanted arrays themselves."""
    change = Change()
    ops: list[nl.SetOp] = []
    state = {}
    for fam, (keys, expiry, idx) in wanted.items():
        bits = _FAMILY[fam][1]
        change.added.extend(nets[i] for i in idx.tolist())
        fresh = _fresh_intervals(names.NFT_SET[fam], keys, expiry) if bits == 32 else None
        if fresh is not None:
            ops += fresh
        else:
            adds: list[nl.ElemSpec] = []
            extend = adds.extend
            for k, e in zip(keys.tolist(), expiry.tolist()):
                extend(_network_elements(k >> 8, k & 255, bits, None if e != e else e))
            if adds:
                ops.append(nl.SetOp(names.NFT_SET[fam], False, adds))
        state[fam] = _Column(keys, expiry, {})
    return change, ops, state


_MAX_RUNS = 64  # timed and permanent CIDRs alternating more often than this are sent element by element


def _fresh_intervals(set_name: str, keys, expiry) -> list[nl.SetOp] | None:
    """_plan_fresh()'s additions to an IPv4 set as nl.Intervals columns, in the same order and with the
    same bytes as element by element; None when they do not fit that form (the caller goes element by
    element).

    One op per run of timed or permanent CIDRs; the CIDR that reaches the top of the address space (it
    has no end element) can only be the last key, and goes as an element of its own.
    """
    n = len(keys)
    if not n:
        return []
    firsts = keys >> np.uint64(8)
    plens = keys & np.uint64(255)
    afters = firsts + (np.uint64(1) << (np.uint64(32) - plens))
    reaches_top = afters >> np.uint64(32) != 0
    last: list[nl.ElemSpec] = []
    if reaches_top.any():
        if reaches_top[:-1].any():
            return None
        n -= 1
        e = float(expiry[n])
        last = _network_elements(int(firsts[n]), int(plens[n]), 32, None if e != e else e)
    permanent = np.isnan(expiry[:n])
    cuts = (np.flatnonzero(permanent[1:] != permanent[:-1]) + 1).tolist()
    if len(cuts) >= _MAX_RUNS:
        return None
    ops = [nl.SetOp(set_name, False, intervals=nl.Intervals(firsts[a:b], afters[a:b],
                                                           None if permanent[a] else expiry[a:b]))
           for a, b in zip([0, *cuts], [*cuts, n]) if b > a]
    if last:
        ops.append(nl.SetOp(set_name, False, last))
    return ops


def _want_dict(nets: Sequence, cols, bits: int) -> dict:
    """_plan()'s form of one family's wanted entries."""
    keys, expiry, idx = cols
    return {(k >> 8, k & 255): (nets[i], None if e != e else e)
            for k, e, i in zip(keys.tolist(), expiry.tolist(), idx.tolist())}


def _plan_columns(nets: Sequence, wanted: dict, current: dict, now: float):
    """_plan() of only what differs between the wanted arrays and the state: (Change, [SetOp], new state).

    The arrays single out the entries that are new, gone, re-timed, or
    pieces of a hand-made range; _plan() decides on those as it would on
    everything (an unchanged entry plans to nothing), and the new state is
    the wanted keys with the kernel's expiries where nothing was sent.
    """
    want_small, have_small = {}, {}
    state: dict = {}
    for fam, (wkeys, wexp, widx) in wanted.items():
        bits = _FAMILY[fam][1]
        col = current[fam]
        n = len(col.keys)
        if n:
            pos = np.minimum(np.searchsorted(col.keys, wkeys), n - 1)
            found = col.keys[pos] == wkeys
        else:
            pos = np.zeros(len(wkeys), dtype=np.int64)
            found = np.zeros(len(wkeys), dtype=bool)
        found = np.asarray(found, dtype=bool)
        kexp = col.expiry[pos] if n else np.full(len(wkeys), np.nan)
        knan, wnan = np.isnan(kexp), np.isnan(wexp)
        slack = np.clip((wexp - now) / 100, EXPIRY_TOLERANCE, MAX_EXPIRY_TOLERANCE)
        with np.errstate(invalid="ignore"):
            differs = np.where(knan | wnan, knan != wnan, np.abs(kexp - wexp) > slack)
        pick = ~found | differs
        if col.ranges:
            pick |= np.isin(wkeys, np.array(list(col.ranges), dtype=col.keys.dtype))
        matched = np.zeros(n, dtype=bool)
        matched[pos[found]] = True
        hpick = ~matched
        hpick[pos[found & pick]] = True
        w = np.flatnonzero(pick)
        want_small[fam] = {(k >> 8, k & 255): (nets[i], None if e != e else e)
                           for k, e, i in zip(wkeys[w].tolist(), wexp[w].tolist(), widx[w].tolist())}
        h = np.flatnonzero(hpick)
        have_small[fam] = {(k >> 8, k & 255): (None if e != e else e, 0, 0, col.ranges.get(k) or _derived(k, bits))
                           for k, e in zip(col.keys[h].tolist(), col.expiry[h].tolist())}
        state[fam] = np.where(found, kexp, wexp)
    change, ops, after = _plan(want_small, have_small, now)
    for fam, (wkeys, _wexp, _widx) in wanted.items():
        bits = _FAMILY[fam][1]
        expiry, ranges = state[fam], {}
        for (first, plen), (e, _p, _b, raw) in after[fam].items():
            key = first << 8 | plen
            i = int(np.searchsorted(wkeys, key))
            expiry[i] = np.nan if e is None else e
            if tuple(raw) != _derived(key, bits):
                ranges[key] = tuple(raw)
        state[fam] = _Column(wkeys, expiry, ranges)
    return change, ops, state


# ---------------------------------------------------------------- apply's snapshot
#
# A dump of a 100k-element set costs the kernel seconds (it walks the tree
# from the start for every reply), so apply() remembers what it left behind,
# keyed by the namespace cookie and the ruleset generation right after its own
# commit. It is only ever a shortcut: a missing, unreadable or outdated
# snapshot means a dump, and counters()/installed() always read the kernel.

SNAPSHOT = SnapshotFile("nftables", 2)  # format 2: sorted key and expiry arrays (1: a list of tuples)


def _snapshot_path(sock: nl.Nfnl) -> Path:
    return SNAPSHOT.path(sock.netns_cookie())


def _save_snapshot(sock: nl.Nfnl, genid: int, state: dict) -> None:
    _write_snapshot(sock, genid, {fam: col.dump(_FAMILY[fam][1]) for fam, col in state.items()})


def _write_snapshot(sock: nl.Nfnl, genid: int, sets: dict) -> None:
    """Write the snapshot of sets already in file form ({family: (keys, expiries, ranges)})."""
    SNAPSHOT.write(sock.netns_cookie(), {"genid": genid, "sets": sets})


def _forget_snapshot(sock: nl.Nfnl) -> None:
    SNAPSHOT.forget(sock.netns_cookie())


COUNTER_MARGIN = 2.0  # seconds: an element this close to its timeout may be gone before it is asked for
COUNTER_CHUNK = 4096  # keys asked per round: their replies fit the socket's receive buffer


def _set_ops(set_name: str, dels: list, updates: list, adds: list) -> list[nl.SetOp]:
    """One set's part of a batch, in the order the kernel needs: removals first (an addition may overlap
    what they free), then re-timings of elements that stay (no exclusive flag: they exist), then additions."""
    ops = []
    if dels:
        ops.append(nl.SetOp(set_name, True, dels))
    if updates:
        ops.append(nl.SetOp(set_name, False, updates, exclusive=False))
    if adds:
        ops.append(nl.SetOp(set_name, False, adds))
    return ops


def _differs(current: float | None, wanted: float | None, now: float) -> bool:
    """Whether the kernel's expiry (epoch seconds, None = never) is far enough from the wanted one to update it.

    The kernel starts an element's timeout when it processes the element,
    and a 100k batch takes seconds, so late elements of a bulk load expire a
    few seconds after the wanted time; 1% of the remaining life (at most a
    minute) absorbs that, so the next apply does not rewrite them all.
    """
    if current is None or wanted is None:
        return (current is None) != (wanted is None)
    slack = min(MAX_EXPIRY_TOLERANCE, max(EXPIRY_TOLERANCE, (wanted - now) / 100))
    return abs(current - wanted) > slack


def _translate(exc: OSError, what: str) -> NetblockError:
    """A netlink errno as the one-line error a user can act on."""
    if exc.errno in (errno.EPERM, errno.EACCES):
        return PermissionDenied(f"nftables: {what}: operation not permitted (needs CAP_NET_ADMIN)")
    if exc.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
        return KernelFeatureMissing(f"nftables: {what}: the kernel has no nf_tables support")
    return KernelError(f"nftables: {what}: kernel refused: {exc.strerror or errno.errorcode.get(exc.errno or 0)}")


def create(settings: Settings) -> NftablesBackend:
    """The backend object; fails early with ToolMissing if libnftables cannot be loaded."""
    try:
        import nftables  # the libnftables binding (pip-nftables or Debian's python3-nftables)

        nft = nftables.Nftables()
    except (ImportError, OSError, TypeError) as exc:
        raise ToolMissing(f"nftables: libnftables cannot be loaded ({exc}); "
                          f"install libnftables1 and the nftables Python module") from None
    nft.set_json_output(False)
    nft.set_handle_output(False)
    return NftablesBackend(settings, nft)
