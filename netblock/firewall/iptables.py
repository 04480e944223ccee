"""The iptables backend: chain NETBLOCK with one ``-s CIDR -j DROP`` rule per netblock.

This is the classic layout: the kernel walks the chain rule by rule, so lookup
costs O(n) per packet and every apply rewrites the whole filter table. It is
kept for hosts without nftables or ipset, and because each rule carries its own
packet and byte counters.

Everything goes through python-iptables (module ``iptc``), which drives libiptc,
i.e. the *legacy* xtables tables: the rules are listed with
``iptables-legacy -L NETBLOCK -v -n`` (not by the nft-based ``iptables``).
libiptc edits a private copy of the whole table and commits it with one
``IPT_SO_SET_REPLACE``: that commit is the transaction, one per family. Rules
that survive a commit keep their counters because libiptc maps them onto their
old positions and adds the kernel's counters back (including packets counted
between our read and our commit).

The kernel holds no expiry here; the store does. ``installed()`` therefore
reports ``None`` for every netblock, and ``apply()`` installs exactly what is
desired now.

Why this module is long: one backend: its rule placement, counters and diff
read the same chain state.
"""

from __future__ import annotations

import ctypes
import fcntl
import glob
import os
import struct
import time
from array import array
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import resources
from string import Template
from typing import Any, Sequence

from netaddr import IPNetwork

from netblock import firewall
from netblock.errors import (
    Busy,
    KernelError,
    KernelFeatureMissing,
    NameClash,
    NetblockError,
    PermissionDenied,
    ToolMissing,
)
from netblock.firewall import VERDICTS, BackendBase, Change, Desired, Settings, iptables_region as region
from netblock.firewall.names import IPT_CHAIN, IPT_COMMENT, IPT_PARENT
from netblock.firewall.xtables import SYN_FLAGS, ports_match

NAME = "iptables"
TABLE = "filter"
# Extensions python-iptables loads from XTABLES_LIBDIR to build our rules.
EXTENSIONS = ("libxt_standard.so", "libxt_tcp.so", "libxt_multiport.so", "libxt_comment.so",
              "libipt_REJECT.so", "libip6t_REJECT.so")
LOCK_WAIT_S = 10.0
STANDARD_VERDICTS = {"ACCEPT", "DROP", "QUEUE", "RETURN"}
_TARGET = {"drop": "DROP", "reject": "REJECT", "count": "RETURN"}  # per-netblock rule target by verdict
TARGET_HEADER = 32  # sizeof(struct xt_entry_target): the payload follows it
# Tables python-iptables opened in this process: the tests tell the one-change path, which opens none, from a sync.
TABLE_OPENS = 0
JUST_READ_S = 1.0  # how long the tables ensure() proved stand for region_view(), unless netblock wrote since


@dataclass(frozen=True)
class _Family:
    name: str
    version: int
    tool: str
    table_cls: str
    rule_cls: str
    entry_cls: str  # "module.struct" inside iptc
    addr_len: int


FAMILIES = {
    "ipv4": _Family("ipv4", 4, "iptables-legacy", "Table", "Rule", "ip4tc.ipt_entry", 4),
    "ipv6": _Family("ipv6", 6, "ip6tables-legacy", "Table6", "Rule6", "ip6tc.ip6t_entry", 16),
}


# ---------------------------------------------------------------- the ruleset text

def render(settings: Settings) -> str:
    """rules/iptables.rules with the settings filled in: the skeleton as installed."""
    text = resources.files("netblock.rules").joinpath("iptables.rules").read_text()
    return Template(text).substitute(chain=IPT_CHAIN, parent=IPT_PARENT, comment=IPT_COMMENT,
                                     ports_match=ports_match(settings.ports, settings.verdict == "count"))


def verdict_args(settings: Settings) -> str:
    """What follows the source in a per-netblock rule (reject with RST needs ``-p tcp``)."""
    if settings.verdict == "reject":
        return "-p tcp -j REJECT --reject-with tcp-reset"
    return "-j RETURN" if settings.verdict == "count" else "-j DROP"


def rule_line(net: IPNetwork, settings: Settings) -> str:
    """One per-netblock rule as iptables-save prints it."""
    return f"-A {IPT_CHAIN} -s {net.cidr} {verdict_args(settings)}"


# ---------------------------------------------------------------- loading python-iptables

def _xtables_libdir() -> str | None:
    """Where the xtables extensions live; an explicit XTABLES_LIBDIR wins."""
    if os.environ.get("XTABLES_LIBDIR"):
        return os.environ["XTABLES_LIBDIR"]
    for pattern in ("/usr/lib/*/xtables", "/usr/lib64/xtables", "/usr/lib/xtables",
                    "/usr/local/lib/xtables", "/lib/*/xtables"):
        for path in sorted(glob.glob(pattern)):
            if os.path.exists(os.path.join(path, "libxt_standard.so")):
                return path
    return None


_IPTC = None


def _load_iptc():
    """Import iptc once, turning every way it can fail into ToolMissing.

    python-iptables runs ldconfig at import time to guess the extension
    directory; handing it XTABLES_LIBDIR first makes that step deterministic.
    """
    global _IPTC
    if _IPTC is not None:
        return _IPTC
    libdir = _xtables_libdir()
    if libdir is None:
        raise ToolMissing("xtables extensions not found under /usr/lib/*/xtables; "
                          "install iptables or set XTABLES_LIBDIR")
    missing = [e for e in EXTENSIONS if not os.path.exists(os.path.join(libdir, e))]
    if missing:
        raise ToolMissing(f"xtables extension {missing[0]} not found in {libdir}; "
                          "install iptables or set XTABLES_LIBDIR")
    os.environ["XTABLES_LIBDIR"] = libdir
    try:
        import iptc  # noqa: PLC0415 - optional until this backend is used
    except Exception as exc:  # noqa: BLE001 - ImportError, OSError, XTablesError, AttributeError
        raise ToolMissing(f"python-iptables cannot load libxtables/libiptc: {_one_line(exc)}") from None
    # Resolving a jump target makes python-iptables probe every table, and a probe
    # instantiates raw/mangle/nat/security in the namespace; netblock only uses filter.
    _probe_filter_only(iptc)
    _IPTC = iptc
    return iptc


def _probe_filter_only(iptc) -> None:
    """Keep python-iptables' table probe away from every table but filter.

    python-iptables ≥ 1.1 remembers probe results in ``existing_table_names``;
    1.0.1 (Debian 12's python3-iptables) has no such cache and probes through
    the module functions ``is_table_available``/``is_table6_available``, so
    those are narrowed instead.
    """
    for cls, module, probe in ((iptc.Table, iptc.ip4tc, "is_table_available"),
                               (iptc.Table6, iptc.ip6tc, "is_table6_available")):
        cache = getattr(cls, "existing_table_names", None)
        if cache is not None:
            for table in cls.ALL:
                if table != TABLE:
                    cache[table] = False
        elif not getattr(getattr(module, probe), "_netblock_filter_only", False):
            original = getattr(module, probe)

            def filter_only(name, _original=original):
                return name == TABLE and _original(name)

            setattr(filter_only, "_netblock_filter_only", True)
            setattr(module, probe, filter_only)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _translate(exc: BaseException, fam: _Family, action: str) -> NetblockError:
    """Map a python-iptables exception onto the error a user can act on."""
    text = _one_line(exc)
    where = f"{fam.tool} {TABLE} table: {action}"
    if "Permission denied" in text or "Operation not permitted" in text:
        return PermissionDenied(f"{where}: permission denied; needs root with CAP_NET_ADMIN "
                                f"and CAP_NET_RAW ({text})")
    if "insmod" in text or "Table does not exist" in text or "wrong version" in text:
        return ToolMissing(f"{where}: the kernel's legacy xtables are unavailable "
                           f"(ip_tables/ip6_tables, iptable_filter) ({text})")
    if "can't find" in text or "XTablesError" in text:
        return ToolMissing(f"{where}: an xtables extension failed to load ({text})")
    if "No chain/target/match by that name" in text:
        return KernelFeatureMissing(f"{where}: the kernel lacks a match or target netblock uses ({text})")
    return KernelError(f"{where}: {text}")


@contextmanager
def _xtables_lock():
    """Hold the lock the iptables tools take, so no tool edits the table under our commit.

    libiptc reads the whole table, edits a copy and replaces it; an iptables
    command running in between would be silently undone. The lock file is the
    same one (and the same XTABLES_LOCKFILE override) iptables-legacy uses.
    """
    path = os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        fd = None  # unprivileged: iptc itself reports the real problem next
    try:
        if fd is not None:
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Busy(f"xtables lock {path} held by another process for over "
                                   f"{LOCK_WAIT_S:.0f} s") from None
                    time.sleep(0.02)
        yield
    finally:
        if fd is not None:
            os.close(fd)


# ---------------------------------------------------------------- one family's table

# A netblock as (version, network as int, prefix length): netaddr objects are far
# too slow to hash and sort by the ten thousand.
Key = tuple[int, int, int]


def _key(net: IPNetwork) -> Key:
    # The kernel compares (source & mask) with the rule's address as stored, so a
    # stray host bit would make a rule that never matches: clear them here.
    host = (32 if net.version == 4 else 128) - net.prefixlen
    return (net.version, net.value >> host << host, net.prefixlen)


def _net(key: Key) -> IPNetwork:
    return IPNetwork((key[1], key[2]), version=key[0])


@dataclass
class _Row:
    index: int
    key: Key | None  # None: the source mask is not a prefix
    ours: bool  # exactly `-s CIDR <verdict>` as netblock writes it (so never with key None)
    counters: tuple[int, int]


@dataclass
class _FamilyTable:
    """One family's filter table, opened fresh from the kernel."""

    fam: _Family
    settings: Settings
    iptc: Any  # the python-iptables module: untyped, and loaded late
    table: Any = field(init=False)

    def __post_init__(self) -> None:
        global TABLE_OPENS
        TABLE_OPENS += 1
        try:
            self.table = getattr(self.iptc, self.fam.table_cls)(TABLE, autocommit=False)
            self.table.refresh()  # python-iptables caches tables per process
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, self.fam, "open") from None

    def _entry_type(self):
        module, struct = self.fam.entry_cls.split(".")
        return getattr(getattr(self.iptc, module), struct)

    def new_rule(self):
        return getattr(self.iptc, self.fam.rule_cls)()

    def has_chain(self) -> bool:
        return bool(self.table.is_chain(IPT_CHAIN))

    # -- the per-netblock rules

    def template(self) -> bytes:
        """The raw entry of one per-netblock rule with source 0/0, built once per call."""
        rule = self.new_rule()
        if self.settings.verdict == "reject":
            rule.protocol = "tcp"
            target = rule.create_target("REJECT")
            target.reject_with = "tcp-reset"
        else:
            target = rule.create_target(_TARGET[self.settings.verdict])
        rule.target = target
        return bytes(rule.rule)

    def _ip_fixed(self, raw: bytes, size: int) -> bytes:
        """The entry's ip header without source address and mask: what every rule of ours shares."""
        n = self.fam.addr_len
        return raw[n:2 * n] + raw[3 * n:size]

    def rows(self) -> list[_Row]:
        """The chain's rules, parsed from libiptc's raw entries (no Rule objects: fast at 10k)."""
        template = self.template()
        entry_type = self._entry_type()
        head = ctypes.sizeof(entry_type)
        t_at, n_at, c_at = (getattr(entry_type, f).offset for f in ("target_offset", "next_offset", "counters"))
        t_off = struct.unpack_from("=H", template, t_at)[0]
        ip_size = ctypes.sizeof(entry_type._fields_[0][1])
        want_fixed = self._ip_fixed(template, ip_size)
        want_name = _TARGET[self.settings.verdict]
        want_payload = template[t_off + TARGET_HEADER:]
        # Target bytes libiptc has already named our verdict: the same bytes mean the
        # same verdict, so the per-rule library call is needed once, not 10k times.
        verified: set[bytes] = set()
        n, version = self.fam.addr_len, self.fam.version
        rows = []
        entry = self.table.first_rule(IPT_CHAIN)
        index = 0
        while entry:
            address = ctypes.addressof(entry)
            raw = ctypes.string_at(address, head)
            key = _source(raw[:n], raw[2 * n:3 * n], version)
            ours = False
            if (key is not None and struct.unpack_from("=HH", raw, t_at) == (t_off, len(template))
                    and self._ip_fixed(raw, ip_size) == want_fixed):
                target = ctypes.string_at(address + t_off, len(template) - t_off)
                if target in verified:
                    ours = True
                else:
                    name = self.table.get_target(entry)
                    name = name.decode() if isinstance(name, bytes) else str(name or "")
                    ours = name == want_name and (name in STANDARD_VERDICTS or target[TARGET_HEADER:] == want_payload)
                    if ours:
                        verified.add(target)
            rows.append(_Row(index, key, ours, struct.unpack_from("=QQ", raw, c_at)))
            entry = self.table.next_rule(entry)
            index += 1
        return rows

    def append(self, template: bytes, key: Key, counters: tuple[int, int] | None = None) -> None:
        """Append one per-netblock rule; ``counters`` start it where a replaced rule of the same source left off."""
        n = self.fam.addr_len
        bits = 8 * n
        mask = ((1 << bits) - 1) ^ ((1 << (bits - key[2])) - 1)
        buf = bytearray(template)
        buf[0:n] = key[1].to_bytes(n, "big")
        buf[2 * n:3 * n] = mask.to_bytes(n, "big")
        if counters is not None:  # libiptc commits an appended entry's counters as they are given
            struct.pack_into("=QQ", buf, self._entry_type().counters.offset, *counters)
        # Straight to libiptc, which copies the entry: python-iptables' wrapper costs
        # more than the call itself at 10k rules.
        if self.table._iptc.iptc_append_entry(IPT_CHAIN.encode(), bytes(buf), self.table._handle) != 1:
            raise KernelError(f"{self.fam.tool}: cannot append {_net(key)} to {IPT_CHAIN}: "
                              f"{self.table.strerror()}")

    def delete_at(self, chain: str, index: int) -> None:
        # python-iptables only deletes by content, which is a linear search per rule.
        if self.table._iptc.iptc_delete_num_entry(chain.encode(), index, self.table._handle) != 1:
            raise KernelError(f"{self.fam.tool}: cannot delete rule {index + 1} of {chain}: "
                              f"{self.table.strerror()}")

    # -- the jump rule in INPUT

    def jump_rule(self):
        rule = self.new_rule()
        rule.protocol = "tcp"
        ports = self.settings.ports
        ports_match(ports)  # refuse too many ports before touching anything
        if len(ports) == 1:
            match = rule.create_match("tcp")
            match.dport = str(ports[0])
        else:
            match = rule.create_match("multiport")
            match.dports = ",".join(str(p) for p in ports)
        if self.settings.verdict == "count":
            if len(ports) != 1:
                match = rule.create_match("tcp")
            match.tcp_flags = list(SYN_FLAGS)
        comment = rule.create_match("comment")
        comment.comment = IPT_COMMENT
        rule.target = rule.create_target(IPT_CHAIN)
        return rule

    def our_jumps(self) -> list[tuple[int, object]]:
        """Rules in INPUT that jump to our chain and carry our comment: netblock's marker."""
        found = []
        for index, rule in enumerate(self.iptc.Chain(self.table, IPT_PARENT).rules):
            if rule.target is None or rule.target.name != IPT_CHAIN:
                continue
            for match in rule.matches:
                if match.name == "comment" and match.get_all_parameters().get("comment") == [IPT_COMMENT]:
                    found.append((index, rule))
                    break
        return found

    def commit(self) -> None:
        """Replace the kernel's table with our edited copy, keeping the policy counters.

        libiptc carries rule counters over but zeroes the built-in chains' policy
        counters on every commit (iptables-legacy -A does the same). Pinning them
        to a fresh reading taken just before the commit keeps other people's
        accounting intact, short of the packets that hit a policy during the
        replace itself.
        """
        fresh = self._policy_counters()
        for chain in self.table.chains:
            if self.table.builtin_chain(chain.name):
                policy, counters = self.table.get_policy(chain.name)
                self.table.set_policy(chain.name, policy, fresh.get(chain.name, counters))
        self.table.commit()

    def _policy_counters(self) -> dict[str, tuple[int, int]]:
        """The built-in chains' policy counters as the kernel has them now (a second handle)."""
        lib = self.table._iptc
        handle = lib.iptc_init(TABLE.encode())
        if not handle:
            return {}
        try:
            out = {}
            for chain in self.table.chains:
                if self.table.builtin_chain(chain.name):
                    counters = self.iptc.xtables.xt_counters()
                    if lib.iptc_get_policy(chain.name.encode(), ctypes.byref(counters), handle):
                        out[chain.name] = (counters.pcnt, counters.bcnt)
            return out
        finally:
            lib.iptc_free(handle)

    def discard(self) -> None:
        try:
            self.table.refresh()
        except Exception:  # noqa: BLE001 - the next call reopens the table anyway
            pass


def _table_exists(fam: _Family) -> bool:
    """Whether the namespace has a legacy filter table yet; opening one would create it.

    Reads and remove() look first so that they leave a namespace without
    legacy tables exactly as they found it.
    """
    path = "/proc/net/ip_tables_names" if fam.version == 4 else "/proc/net/ip6_tables_names"
    try:
        with open(path) as f:
            return TABLE in f.read().split()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # unreadable: let opening the table report why


def _signature(rule) -> tuple:
    """What makes two jump rules the same, ignoring counters."""
    return (rule.protocol, rule.src, rule.dst, rule.in_interface, rule.out_interface,
            tuple((m.name, tuple(sorted(m.get_all_parameters().items()))) for m in rule.matches),
            rule.target.name if rule.target else None)


def _prefix_masks(bits: int) -> dict[bytes, int]:
    full = (1 << bits) - 1
    return {(full ^ ((1 << (bits - plen)) - 1)).to_bytes(bits // 8, "big"): plen for plen in range(bits + 1)}


# A source mask's bytes → its prefix length; a mask missing here is not a prefix.
_PREFIX = {4: _prefix_masks(32), 6: _prefix_masks(128)}


def _source(addr: bytes, mask: bytes, version: int) -> Key | None:
    """A rule's source as a netblock key, or None when its mask is not a prefix."""
    plen = _PREFIX[version].get(mask)
    if plen is None:
        return None
    host = 8 * len(addr) - plen
    return (version, int.from_bytes(addr, "big") >> host << host, plen)


def _check_ours(ft: _FamilyTable) -> list[tuple[int, object]]:
    """Our jump rules; NameClash when a NETBLOCK chain exists that no commented jump marks as ours."""
    jumps = ft.our_jumps()
    if not jumps and ft.has_chain():
        raise NameClash(f"{ft.fam.tool}: chain {IPT_CHAIN} exists but no {IPT_PARENT} rule jumps to it "
                        f"with comment {IPT_COMMENT!r}; it is not netblock's")
    return jumps


# ---------------------------------------------------------------- the backend

@dataclass
class IptablesBackend(BackendBase):
    settings: Settings
    name: str = NAME
    description: str = field(init=False)
    _just_read: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ports_match(self.settings.ports)
        self.description = (f"iptables chain {IPT_CHAIN} jumped to from {IPT_PARENT} in the legacy "
                            f"xtables ({'/'.join(FAMILIES[f].tool for f in self.settings.families)}) "
                            "via python-iptables")

    def _families(self) -> list[_Family]:
        return [FAMILIES[f] for f in ("ipv4", "ipv6") if f in self.settings.families]

    def _open(self, fam: _Family) -> _FamilyTable:
        return _FamilyTable(fam, self.settings, _load_iptc())

    @contextmanager
    def _editing(self, fam: _Family, action: str):
        """Open the table under the xtables lock; any failure discards the pending edits."""
        with _xtables_lock():
            ft = self._open(fam)
            try:
                yield ft
            except NetblockError:
                ft.discard()
                raise
            except Exception as exc:  # noqa: BLE001 - a binding error, never a raw traceback
                ft.discard()
                raise _translate(exc, fam, action) from None

    def _settings_key(self) -> tuple:
        """What the snapshot's chain and jump were written under: another setting, another skeleton."""
        s = self.settings
        return (tuple(s.ports), s.verdict, tuple(f for f in ("ipv4", "ipv6") if f in s.families))

    def _skeleton_proven(self) -> bool:
        """Whether every family's chain and jump are the ones netblock's last write recorded (no python-iptables)."""
        cookie = region.netns_cookie()
        data = None if cookie is None else region.read(cookie)
        if data is None or data.get("settings") != self._settings_key():
            return False
        tables = {}
        try:
            for fam in self._families():
                table = region.read_table(fam.version)
                start = None if table is None else region.chain_start(table)
                if table is None or start is None or region.jump_facts(table, start) != data["families"][fam.name]["jump"]:
                    return False
                tables[fam.version] = table
        except (LookupError, TypeError):
            return False
        self._just_read = (time.monotonic(), tables)
        return True

    def ensure(self) -> None:
        self._just_read = None
        if self._skeleton_proven():
            return
        # Every family is checked before any is changed, so a clash in ip6tables
        # does not leave a fresh iptables skeleton behind.
        for fam in self._families():
            with self._editing(fam, "ensure") as ft:
                _check_ours(ft)
        for fam in self._families():
            with self._editing(fam, "ensure") as ft:
                exists = ft.has_chain()
                jumps = _check_ours(ft)
                if not exists:
                    ft.table.create_chain(IPT_CHAIN)
                wanted = ft.jump_rule()  # its target must name an existing chain
                if exists and len(jumps) == 1 and _signature(jumps[0][1]) == _signature(wanted):
                    continue
                for index, _ in reversed(jumps):  # the ports changed: replace our jump
                    ft.delete_at(IPT_PARENT, index)
                # First in INPUT, so an earlier accept rule cannot let a blocked sender through.
                ft.table.insert_entry(IPT_PARENT, wanted.rule, 0)
                region.forget(region.netns_cookie())
                ft.commit()

    def apply(self, desired: Desired) -> Change:
        now = datetime.now(timezone.utc)
        change = Change()
        self._just_read = None
        cookie = region.netns_cookie()
        region.forget(cookie)  # until this write is recorded, the one-change path reads nothing old
        recorded: dict | None = {}
        for fam in self._families():
            # Netblocks arrive canonical (host bits clear) from aggregation.
            want = {key for net, expiry in desired.items()
                    if (key := _key(net))[0] == fam.version and (expiry is None or expiry > now)}
            with self._editing(fam, "apply") as ft:
                if not ft.has_chain():
                    raise KernelError(f"{fam.tool}: chain {IPT_CHAIN} is missing; "
                                      "call ensure() before apply()")
                _check_ours(ft)
                kept: set[Key] = set()
                order: list[Key] = []  # the chain's rules after this write, in chain order
                doomed: list[int] = []
                seen: set[Key] = set()
                # A rule replaced by one with another verdict (drop <-> count) hands its
                # counters to its successor: the report's totals run on across the switch.
                carried: dict[Key, tuple[int, int]] = {}
                for row in ft.rows():
                    if row.ours and row.key in want and row.key not in kept:
                        kept.add(row.key)
                        order.append(row.key)
                    else:
                        doomed.append(row.index)
                        if row.key in want and not row.ours:
                            p, b = carried.get(row.key, (0, 0))
                            carried[row.key] = (p + row.counters[0], b + row.counters[1])
                    if row.key is not None:
                        seen.add(row.key)
                added = sorted(want - kept)
                template = ft.template()
                if doomed or added:
                    for index in reversed(doomed):
                        ft.delete_at(IPT_CHAIN, index)
                    for net in added:
                        ft.append(template, net, carried.get(net))
                    ft.commit()
                if recorded is not None:
                    recorded = self._record(fam, recorded, order + added, template, desired, now)
                change.added += [_net(k) for k in added if k not in seen]
                change.updated += [_net(k) for k in added if k in seen]
                change.removed += [_net(k) for k in sorted(seen - want)]
        if recorded is not None and cookie is not None:
            region.write(cookie, self._settings_key(), recorded)
        return change

    def _record(self, fam: _Family, recorded: dict, order: list[Key], template: bytes,
                desired: Desired, now: datetime) -> dict | None:
        """Add one family's chain, as just written, to the one-change path's snapshot (see iptables_region.py).

        Called under the xtables lock, right after the commit; None when the
        chain read back is not exactly ``order`` (then no snapshot is written).
        """
        table = region.read_table(fam.version)
        keys = [k[1] << 8 | k[2] for k in order]
        facts = None if table is None else region.record(
            table, array("Q", keys) if fam.version == 4 else keys, template)
        if facts is None:
            return None
        pairs = []
        for net, expiry in desired.items():
            key = _key(net)
            if key[0] == fam.version and (expiry is None or expiry > now):
                pairs.append((key[1] << 8 | key[2], None if expiry is None else expiry.timestamp()))
        facts["keys"], facts["expiry"] = region.columns(pairs, fam.version, now.timestamp())
        return {**recorded, fam.name: facts}

    def verdict(self) -> str | None:
        """The verdict of the installed rules: the one whose jump and per-netblock rules they all are."""
        found = set()
        order = [self.settings.verdict] + [v for v in VERDICTS if v != self.settings.verdict]
        for fam in self._families():
            if not _table_exists(fam):
                return None
            try:
                for v in order:
                    ft = _FamilyTable(fam, replace(self.settings, verdict=v), _load_iptc())
                    jumps = ft.our_jumps() if ft.has_chain() else []
                    if (len(jumps) == 1 and _signature(jumps[0][1]) == _signature(ft.jump_rule())
                            and all(row.ours for row in ft.rows())):
                        found.add(v)
                        break
                else:
                    return None
            except NetblockError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise _translate(exc, fam, "read") from None
        return found.pop() if len(found) == 1 else None

    def _read(self, fam: _Family) -> list[_Row]:
        if not _table_exists(fam):
            return []
        try:
            ft = self._open(fam)
            return ft.rows() if ft.has_chain() and ft.our_jumps() else []
        except NetblockError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, fam, "read") from None

    def counters(self) -> dict[IPNetwork, tuple[int, int]]:
        out: dict[Key, tuple[int, int]] = {}
        for fam in self._families():
            for row in self._read(fam):
                if row.ours and row.key is not None:
                    packets, nbytes = out.get(row.key, (0, 0))
                    out[row.key] = (packets + row.counters[0], nbytes + row.counters[1])
        return {_net(k): v for k, v in out.items()}

    def installed(self) -> dict[IPNetwork, datetime | None]:
        keys = {row.key for fam in self._families() for row in self._read(fam) if row.ours and row.key is not None}
        return {_net(k): None for k in keys}

    # -------------------------------------------------------------- one change, priced by the change

    def region_view(self, whole: bool = False) -> region.RegionView | None:
        """netblock's last write, while the chain's digest and the jump prove it; else None (see iptables_region.py).

        The digest covers every rule, so ``whole`` asks for nothing more.
        """
        # The tables ensure() read a moment ago, once: delta.py asks for the view right after ensure().
        just, self._just_read = self._just_read, None
        tables = just[1] if just is not None and time.monotonic() - just[0] < JUST_READ_S else None
        try:
            found = region.snapshot_view(self._settings_key(), [f.name for f in self._families()], tables)
        except OSError:
            return None
        return None if found is None else found[0]

    def installed_proven(self) -> dict[IPNetwork, datetime | None] | None:
        """installed() from netblock's last write while the digest proves it, else None (no expiries, as installed())."""
        view = self.region_view()
        if view is None:
            return None
        return {IPNetwork((k >> 8, k & 255), version=v): None for v, (keys, _e) in view.sets.items() for k in keys}

    def counters_of(self, view: firewall.RegionView, keys: list[tuple[int, int]]) -> dict[IPNetwork, tuple[int, int]]:
        """{netblock: (packets, bytes)} of the rules ``keys``, from their raw entries."""
        found = region.counters_of(view, keys) if isinstance(view, region.RegionView) else None
        if found is None:
            raise NetblockError("iptables: the chain changed since its view was taken")
        return {IPNetwork((k >> 8, k & 255), version=v): c for (v, k), c in found.items()}

    def apply_region(self, view: firewall.RegionView, removed: list[tuple[int, int]],
                     added: list[tuple[int, int, float | None]],
                     updated: list[tuple[int, int, float | None]], lapsed: Sequence[tuple[int, int]] = ()) -> bool:
        """Delete and append the given rules by position, one libiptc commit per family; False: the full sync."""
        self._just_read = None
        if not isinstance(view, region.RegionView) or lapsed:
            return False  # rules never lapse: only their removal takes them out
        with _xtables_lock():
            return region.apply_region(self._settings_key(), [f.name for f in self._families()],
                                       view, removed, added, updated)

    def remove(self) -> None:
        self._just_read = None
        region.forget(region.netns_cookie())
        for fam in FAMILIES.values():
            try:
                self._remove(fam)
            except ToolMissing:
                if fam.name in self.settings.families:
                    raise

    def _remove(self, fam: _Family) -> None:
        if not _table_exists(fam):
            return
        with self._editing(fam, "remove") as ft:
            jumps = ft.our_jumps()
            if not jumps:
                return  # nothing of ours; a same-named stranger's chain stays
            for index, _ in reversed(jumps):
                ft.delete_at(IPT_PARENT, index)
            if ft.has_chain():
                ft.table.flush_entries(IPT_CHAIN)
                ft.table.delete_chain(IPT_CHAIN)
            ft.commit()


def create(settings: Settings) -> IptablesBackend:
    return IptablesBackend(settings)
