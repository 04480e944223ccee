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
still being listed (see Listing in netlink/ipset.py and ipset_diff.StreamDiff).
A one-change `add`/`del`/`allow` goes another way, without a listing: see
ipset_region.py (the snapshot of netblock's last write, trusted while the
sets' headers agree).

Sets are created and destroyed through pyroute2.IPSet; members are added,
deleted, tested and listed, and headers read, over ipset's netlink protocol
(netlink/ipset.py). The diff arithmetic is ipset_diff.py, the iptables side
ipset_rules.py.

The scratch sets of names.py serve one case only: a set whose maxelem
differs from Settings (ipset cannot change it in place) is rebuilt by
ensure() in the scratch set, members, timeouts and counters included, and
swapped in.

ipset's longest timeout is 2147483 s (24.8 days). A block that lives longer is
installed without kernel timeout; netblock's own sync removes it on time, and
a later apply() gives it a kernel timeout once its expiry is within reach.
"""

from __future__ import annotations

import errno
import functools
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Sequence

from netaddr import IPNetwork

from netblock import firewall
from netblock.errors import KernelError, KernelFeatureMissing, NameClash, NetblockError, PermissionDenied, ToolMissing
from netblock.firewall import VERDICTS, BackendBase, Change, Desired, Settings, ipset_region as region
from netblock.firewall.ipset_diff import (
    NUMPY_FROM,
    V4,
    V6,
    Members,
    StreamDiff,
    decode,
    diff,
    diff_v4,
    installed_state,
    network,
    networks,
    quick_gil_handover,
    sorted_wanted,
    wanted,
)
from netblock.firewall.ipset_rules import FAMILIES, SET_TYPE, Iptables, appended, render, rule_lines
from netblock.firewall.names import IPSET_SCRATCH, IPSET_SET, IPT_CHAIN, IPT_COMMENT
from netblock.firewall.netlink.ipset import (
    CMD_ADD,
    CMD_DEL,
    D_MAXELEM,
    IPSET_ERRORS,
    Header,
    Listing,
    Netlink,
    NetlinkError,
    encode_member,
    error_text,
    listed,
    walk,
)


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
    text = error_text(code) if isinstance(exc, NetlinkError) else IPSET_ERRORS.get(code) or str(exc)
    return KernelError(f"ipset: {what}: {text}")


@dataclass
class IpsetBackend(BackendBase):
    settings: Settings
    name: str = "ipset"
    _tables: dict = field(default_factory=dict, repr=False)
    # Per family, the keys and networks counters()/installed() last returned: (keys, [IPNetwork]).
    _named: dict = field(default_factory=dict, repr=False, compare=False)
    # The IPv4 keys apply() last computed, by network: see wanted().
    _converted: dict = field(default_factory=dict, repr=False, compare=False)
    # Per family, the order that sorted the last listing's keys: see ipset_region.in_key_order().
    _orders: dict = field(default_factory=dict, repr=False, compare=False)

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
        created: list[str] = []
        # pyroute2 only creates and swaps sets: opened when one must be made, as importing it costs 0.25 s,
        # more than the rest of a one-change `netblock add`.
        opened: list = []

        def pyroute():
            if not opened:
                opened.append(self._open_ipset())
            return opened[0]

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
                        self._resize(pyroute(), family)
                    continue
                _, PyrouteError = _pyroute2()
                try:
                    pyroute().create(name, stype=SET_TYPE, family=FAMILIES[family][0], counters=True, timeout=0,
                                     maxelem=self.settings.maxelem)
                except PyrouteError as exc:
                    raise _kernel_error(exc, f"creating set {name}") from exc
                created.append(name)
            for family in families:
                self._ensure_rules(family, tables[family])
        except BaseException:
            if created:
                _, PyrouteError = _pyroute2()
                for name in created:  # nothing half-made is left behind
                    try:
                        opened[0].destroy(name)
                    except PyrouteError:
                        pass
            raise
        finally:
            for ipset in opened:
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
        chain_rule, jump = rule_lines(render(self.settings, family)[1])
        exists, rules, jumps = table.read()
        if exists and not any(f"--comment {IPT_COMMENT}" in r for r in rules):
            raise NameClash(f"{table.tool} chain {IPT_CHAIN!r} exists without netblock's comment "
                            f"'{IPT_COMMENT}' and is not netblock's")
        ours = [j for j in jumps if f"--comment {IPT_COMMENT}" in j]
        if rules == [chain_rule] and ours == [appended(jump)]:
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
                chain_rule, jump = rule_lines(render(replace(self.settings, verdict=v), family)[1])
                if exists and rules == [chain_rule] and ours == [appended(jump)]:
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
                    keys, timeouts = wanted(*columns(), 6 if v6 else 4, now, self._converted)
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
                    region.forget(nl.netns_cookie())
                    for undone in [plan, *reversed(done)]:
                        undone.undo(nl)
                    raise _kernel_error(exc, f"set {plan.name}: {plan.failed}") from None
                done.append(plan)
            self._remember(nl, columns, now)
        change = Change()
        for plan in plans:
            module = V6 if plan.v6 else V4
            change.added += [network(k >> 8, k & 255, module) for k, _ in plan.add]
            gone = [plan.members.row(i)[0] for i in plan.delete]
            change.removed += [network(k >> 8, k & 255, module) for k in gone]
            change.updated += [network(k >> 8, k & 255, module) for k, _, _ in plan.update]
        return change

    def _remember(self, nl: Netlink, columns, now: float) -> None:
        """Write the one-change path's snapshot of what apply() just left (see ipset_region.py)."""
        cookie = nl.netns_cookie()
        try:
            heads = region.heads_of(nl, self._families())
            if heads is None:
                region.forget(cookie)
                return
            sets, earliest = {}, math.inf
            nets, expiries = columns()
            for family in self._families():
                keys, expiry, first = installed_state(nets, expiries, 6 if family == "ipv6" else 4, now, self._converted)
                sets[family] = (keys, expiry)
                earliest = min(earliest, first)
        except NetlinkError:
            region.forget(cookie)
            return
        region.write(cookie, sets, heads, earliest)

    # -------------------------------------------------------------- one change, priced by the change

    def region_view(self, whole: bool = False) -> region.RegionView | None:
        """netblock's last write, while the sets' headers still agree with it; else None (see ipset_region.py).

        ``whole`` (the daemon's tick): the sets are listed too and compared with it, member by member,
        in arrays; the view is ``exact`` when they agree.
        """
        with self._netlink() as nl:
            try:
                view = region.region_view(nl, self._families())
                if whole and view is not None:
                    view.exact = region.proves_whole(nl, self._families(), view, self._orders)
                    region.trim_heap()
                return view
            except NetlinkError:
                return None

    def installed_proven(self) -> dict[IPNetwork, datetime | None] | None:
        """installed() from netblock's last write while the sets' headers agree with it, else None."""
        view = self.region_view()
        return None if view is None else region.installed_proven(view)

    def counters_of(self, view: firewall.RegionView, keys: list[tuple[int, int]]) -> dict[IPNetwork, tuple[int, int]]:
        """{netblock: (packets, bytes)} of the installed members ``keys`` ((version, first << 8 | prefixlen))."""
        with self._netlink() as nl:
            try:
                return region.counters_of(nl, keys)
            except NetlinkError as exc:
                raise _kernel_error(exc, "reading counters") from None

    def apply_region(self, view: firewall.RegionView, removed: list[tuple[int, int]],
                     added: list[tuple[int, int, float | None]],
                     updated: list[tuple[int, int, float | None]], lapsed: Sequence[tuple[int, int]] = ()) -> bool:
        """Add, re-time and remove the given members without a listing; False: the caller runs the full sync."""
        if not isinstance(view, region.RegionView) or lapsed:
            return False  # another backend's view proves nothing; a lapsed member: its view refuses those
        if not (removed or added or updated):
            return True
        with self._netlink() as nl:
            return region.apply_region(nl, self._families(), view, removed, added, updated)

    def counters(self) -> dict[IPNetwork, tuple[int, int]]:
        """Per-member counters; a missing set (before ensure(), after a reboot) has none."""
        out: dict[IPNetwork, tuple[int, int]] = {}
        with self._netlink() as nl:
            for family in self._families():
                members, _ = self._read(nl, IPSET_SET[family], family == "ipv6", missing_ok=True)
                out.update(zip(self._networks(family, members.keys), zip(members.packets, members.bytes)))
        return out

    def counter_columns(self) -> dict[int, tuple]:
        """counters() as arrays, {version: (sorted keys, packets, bytes)}, no Python object per member.

        For the daemon's periodic sample (Runner._sample_changed), which
        hands on only what moved since its last read: one listing per set,
        as counters() takes, but decoded straight into arrays.
        """
        with self._netlink() as nl:
            try:
                return region.counter_columns(nl, self._families(), self._orders)
            except NetlinkError as exc:
                raise _kernel_error(exc, "reading counters") from None

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
        with self._netlink() as nl:
            region.forget(nl.netns_cookie())
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
        known.update(zip(missing, networks(missing, family == "ipv6")))
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
        return decode(blob, v6, lists), self._maxelem(headers)

    def _maxelem(self, headers: list[bytes]) -> int:
        """The set's maxelem, from the header DATA payloads of its listing."""
        maxelem = self.settings.maxelem
        for h in headers:
            attrs = walk(h, 0, len(h))
            if D_MAXELEM in attrs:
                maxelem = int.from_bytes(h[slice(*attrs[D_MAXELEM])], "big")
        return maxelem

    def _read_and_diff_v4(self, nl: Netlink, name: str, columns,
                          now: float) -> tuple[Members, int, tuple[list, list, list]]:
        """(members, maxelem, diff) of the IPv4 set, the diff made while the kernel lists the set.

        The listing is received by a Listing thread; meanwhile this thread
        makes ``columns()`` (networks, expiries), computes the wanted keys
        and sorts them, then diffs each batch of members as it arrives (see
        StreamDiff), so that after the last message only the combining of
        the batches is left. Members of an unusual layout are decoded and
        diffed the ordinary way at the end.
        """
        fast = True
        headers, blobs = [], []
        try:
            with quick_gil_handover(), Listing(nl, name) as listing:
                nets, expiries = columns()
                stream = StreamDiff(*sorted_wanted(nets, expiries, now, self._converted))
                for payloads in listing:
                    batch_headers, blob = listed(payloads)
                    headers += batch_headers
                    blobs.append(blob)
                    fast = fast and stream.feed(blob)
        except NetlinkError as exc:
            raise self._list_error(exc, name) from None
        if fast:
            members, diffed = stream.result()
        else:
            members = decode(b"".join(blobs), False, lists=False)
            diffed = diff_v4(members, *wanted(nets, expiries, 4, now, self._converted))
        return members, self._maxelem(headers), diffed


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
        return str(network(key >> 8, key & 255, V6 if self.v6 else V4))

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
