"""The ipset backend against the real kernel, in namespaces of our own.

What the shared conformance suite does not cover: counters equal to what the
ipset tool lists, the rules as `iptables-save` shows them equal to rules/,
kernel-side timeouts, drift, 100k members, rollback, reject, name clashes,
missing tools and privileges, and the xtables-legacy placement.
"""

from __future__ import annotations

import os
import random
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from netaddr import IPNetwork
from netns import wait_for

from netblock.errors import KernelError, NameClash, NetblockError, PermissionDenied, ToolMissing
from netblock.firewall import Settings, ipset, ipset_diff, ipset_rules
from netblock.firewall.netlink import ipset as nlipset

pytestmark = pytest.mark.kernel

SYN4, SYN6 = 40, 60


def now() -> datetime:
    return datetime.now(timezone.utc)


def call(scene, method, *args, settings: Settings | None = None, path: str | None = None):
    def run():
        if path is not None:
            os.environ["PATH"] = path
        return getattr(ipset.create(settings or Settings()), method)(*args)

    return scene.in_server(run)


def listed(scene, name: str = "netblock4") -> dict[IPNetwork, tuple[int, int, int]]:
    """{member: (timeout, packets, bytes)} as `ipset save` prints them."""
    out = {}
    for line in scene.server_exec("ipset", "save", name).stdout.splitlines():
        words = line.split()
        if words[0] == "add":
            opts = dict(zip(words[3::2], map(int, words[4::2])))
            out[IPNetwork(words[2])] = (opts["timeout"], opts["packets"], opts["bytes"])
    return out


def saved(scene) -> str:
    """`iptables-save -c` without its timestamped comments."""
    text = scene.server_exec("iptables-save", "-c").stdout
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def set_names(scene) -> list[str]:
    return scene.server_exec("ipset", "list", "-n").stdout.split()


def test_counters_equal_ipset_list_after_real_syns(scene):
    sends = {"198.51.100.7": ("198.51.100.0/24", 5), "203.0.113.70": ("203.0.113.64/26", 2),
             "2001:db8:bad::5": ("2001:db8:bad::/48", 3)}
    scene.add_client(*sends)
    call(scene, "ensure")
    later = now() + timedelta(hours=2)
    call(scene, "apply", {IPNetwork(n): later for n, _ in sends.values()} | {IPNetwork("192.0.2.9/32"): None})
    for src, (_, k) in sends.items():
        scene.syn(src, k)
    want = {IPNetwork(n): (k, k * (SYN6 if ":" in n else SYN4)) for n, k in sends.values()}
    want[IPNetwork("192.0.2.9/32")] = (0, 0)
    got = wait_for(lambda: (c := call(scene, "counters")) == want and c)
    assert got == want
    tool = listed(scene, "netblock4") | listed(scene, "netblock6")
    assert {n: (p, b) for n, (_, p, b) in tool.items()} == got
    assert tool[IPNetwork("192.0.2.9/32")][0] == 0  # permanent: no kernel timeout
    assert 7190 < tool[IPNetwork("198.51.100.0/24")][0] <= 7200


def _as_counters(columns: dict) -> dict[IPNetwork, tuple[int, int]]:
    return {IPNetwork((int(k) >> 8, int(k) & 255), version=v):
            (int(p), int(b)) for v, (keys, packets, nbytes) in columns.items() for k, p, b in zip(keys, packets, nbytes)}


def test_counter_columns_equal_counters_sorted_and_follow_hand_edits(scene):
    """The daemon's sample reads counter_columns(): the counters() of every member, as sorted arrays.

    One backend reads twice (the second time through the sort order it
    kept), then once more after hand edits changed the set's hash order.
    """
    sends = {"198.51.100.7": ("198.51.100.0/24", 3), "2001:db8:bad::5": ("2001:db8:bad::/48", 2)}
    scene.add_client(*sends)
    call(scene, "ensure")
    later = now() + timedelta(hours=2)
    desired = {IPNetwork(n): later for n, _ in sends.values()}
    desired |= {IPNetwork(f"203.0.{i}.0/24"): None for i in range(0, 200, 2)}
    call(scene, "apply", desired)
    for src, (_, k) in sends.items():
        scene.syn(src, k)
    counted = {IPNetwork("198.51.100.0/24"): (3, 3 * SYN4), IPNetwork("2001:db8:bad::/48"): (2, 2 * SYN6)}
    assert wait_for(lambda: counted.items() <= call(scene, "counters").items())

    def read():
        backend = ipset.create(Settings())
        first = backend.counter_columns()
        scene.server_exec("ipset", "del", "netblock4", "203.0.10.0/24")
        scene.server_exec("ipset", "add", "netblock4", "192.0.2.0/28")
        return first, backend.counter_columns(), backend.counter_columns(), backend.counters()

    first, edited, again, counters = scene.in_server(read)
    assert edited.keys() == {4, 6}
    for cols in (first, edited, again):
        for keys, packets, nbytes in cols.values():
            assert len(keys) == len(packets) == len(nbytes)
            assert keys.tolist() == sorted(keys.tolist())
    assert _as_counters(edited) == _as_counters(again) == counters
    assert IPNetwork("192.0.2.0/28") in counters and IPNetwork("203.0.10.0/24") not in counters
    assert counted.items() <= _as_counters(first).items()
    assert len(_as_counters(first)) == len(desired)


def test_rules_as_listed_match_rules_file(scene):
    s = Settings(ports=(25, 587), verdict="reject", maxelem=300_000)
    call(scene, "ensure", settings=s)
    for family, save in (("ipv4", "iptables-save"), ("ipv6", "ip6tables-save")):
        sets, rules = ipset.render(s, family)
        chain_rule, jump = ipset_rules.rule_lines(rules)
        listed_rules = scene.server_exec(save, "-t", "filter").stdout.splitlines()
        assert ":NETBLOCK - [0:0]" in listed_rules
        assert [r for r in listed_rules if r.startswith("-A NETBLOCK ")] == [chain_rule]
        assert [r for r in listed_rules if r.endswith("-j NETBLOCK")] == [jump.replace("-I INPUT 1 ", "-A INPUT ")]
        # The set's create line, as `ipset save` prints it, has every option rules/ asks for.
        name = sets.split()[1]
        (create,) = [line for line in scene.server_exec("ipset", "save", name).stdout.splitlines()
                     if line.startswith("create ")]
        assert set(sets.split()) <= set(create.split()), (sets, create)
    # The host's iptables in the namespace is the nf_tables one, and the description says so.
    assert "(nf_tables) via iptables-restore --noflush" in scene.in_server(lambda: ipset.create(s).description)
    assert "NETBLOCK" not in scene.server_exec("iptables-legacy-save").stdout


def test_ensure_twice_and_settings_change(scene):
    scene.add_client("198.51.100.7")
    call(scene, "ensure")
    call(scene, "apply", {IPNetwork("198.51.100.0/24"): None})
    scene.syn("198.51.100.7", 2)
    wait_for(lambda: call(scene, "counters")[IPNetwork("198.51.100.0/24")] == (2, 2 * SYN4))
    before = saved(scene)
    assert "[2:80] -A INPUT" in before  # the jump rule's own counter
    call(scene, "ensure")
    assert saved(scene) == before
    # Other ports: the jump is replaced, not duplicated, and members keep their counters.
    call(scene, "ensure", settings=Settings(ports=(587,)))
    jumps = [r for r in scene.server_exec("iptables-save").stdout.splitlines() if r.endswith("-j NETBLOCK")]
    assert jumps == ["-A INPUT -p tcp -m tcp --dport 587 -m comment --comment netblock -j NETBLOCK"]
    assert call(scene, "counters")[IPNetwork("198.51.100.0/24")] == (2, 2 * SYN4)


def test_drift_is_seen_and_repaired(scene):
    later = now() + timedelta(hours=1)
    desired = {IPNetwork(n): later for n in ("198.51.100.0/24", "203.0.113.0/25", "192.0.2.7/32")}
    v4 = Settings(families=("ipv4",))
    call(scene, "ensure", settings=v4)
    call(scene, "apply", desired, settings=v4)
    scene.server_exec("ipset", "del", "netblock4", "203.0.113.0/25")
    scene.server_exec("ipset", "add", "netblock4", "198.18.99.0/24", "timeout", "0")
    seen = call(scene, "installed", settings=v4)
    assert set(seen) == {IPNetwork("198.51.100.0/24"), IPNetwork("192.0.2.7/32"), IPNetwork("198.18.99.0/24")}
    assert seen[IPNetwork("198.18.99.0/24")] is None
    assert abs((seen[IPNetwork("198.51.100.0/24")] - later).total_seconds()) <= 3
    change = call(scene, "apply", desired, settings=v4)
    assert [str(n) for n in change.added] == ["203.0.113.0/25"]
    assert [str(n) for n in change.removed] == ["198.18.99.0/24"]
    scene.server_exec("ipset", "flush", "netblock4")
    assert call(scene, "installed", settings=v4) == {}
    assert sorted(map(str, call(scene, "apply", desired, settings=v4).added)) == sorted(map(str, desired))


def test_kernel_expires_members_by_itself(scene):
    call(scene, "ensure")
    soon = now() + timedelta(seconds=2)
    call(scene, "apply", {IPNetwork("198.51.100.0/24"): soon, IPNetwork("2001:db8:bad::/48"): soon,
                          IPNetwork("203.0.113.0/24"): now() - timedelta(seconds=5)})  # already expired
    assert set(listed(scene)) == {IPNetwork("198.51.100.0/24")}
    assert set(listed(scene, "netblock6")) == {IPNetwork("2001:db8:bad::/48")}
    # No netblock process runs from here on: only the kernel can remove them.
    gone = wait_for(lambda: not listed(scene) and not listed(scene, "netblock6"), timeout=6, interval=0.25)
    assert gone
    assert call(scene, "installed") == {}


def test_longer_than_ipset_max_timeout_is_installed_permanent(scene):
    v4 = Settings(families=("ipv4",))
    call(scene, "ensure", settings=v4)
    far = now() + timedelta(days=30)
    near = now() + timedelta(seconds=ipset_diff.MAX_TIMEOUT - 1000)
    desired = {IPNetwork("198.51.100.0/24"): far, IPNetwork("203.0.113.0/24"): near}
    call(scene, "apply", desired, settings=v4)
    tool = listed(scene)
    assert tool[IPNetwork("198.51.100.0/24")][0] == 0
    assert ipset_diff.MAX_TIMEOUT - 1010 < tool[IPNetwork("203.0.113.0/24")][0] <= ipset_diff.MAX_TIMEOUT - 1000
    assert call(scene, "installed", settings=v4)[IPNetwork("198.51.100.0/24")] is None
    assert not call(scene, "apply", desired, settings=v4)  # no churn on the next sync
    # Once the expiry comes within reach, the member gets a kernel timeout in place.
    change = call(scene, "apply", {**desired, IPNetwork("198.51.100.0/24"): now() + timedelta(hours=1)}, settings=v4)
    assert [str(n) for n in change.updated] == ["198.51.100.0/24"] and not change.added and not change.removed
    assert 3590 < listed(scene)[IPNetwork("198.51.100.0/24")][0] <= 3600


def _many(n: int) -> list[IPNetwork]:
    """n distinct /32 members from 198.18.16.0 up (inside 198.18.0.0/15, clear of the scene's own hosts)."""
    base = IPNetwork("198.18.16.0/32").value
    return [ipset_diff.network(base + i, 32, ipset_diff.V4) for i in range(n)]


@pytest.mark.slow
def test_100k_members_and_a_one_member_change_keeps_counters(scene):
    scene.add_client("198.18.16.5", "198.18.200.9")
    settings = Settings(families=("ipv4",))
    call(scene, "ensure", settings=settings)
    expiry = now() + timedelta(days=1)
    desired = dict.fromkeys(_many(100_000), expiry)
    change = call(scene, "apply", desired, settings=settings)
    assert len(change.added) == 100_000
    header = scene.server_exec("ipset", "list", "-t", "netblock4").stdout
    assert "Number of entries: 100000" in header and "maxelem 1048576" in header
    scene.syn("198.18.16.5", 3)
    scene.syn("198.18.200.9", 2)
    member_a, member_b = IPNetwork("198.18.16.5/32"), IPNetwork("198.18.200.9/32")
    wait_for(lambda: call(scene, "counters", settings=settings)[member_b] == (2, 2 * SYN4))
    extra = IPNetwork("198.51.100.0/24")
    desired.pop(IPNetwork("198.18.16.9/32"))
    change = call(scene, "apply", {**desired, extra: expiry}, settings=settings)
    assert change.added == [extra] and [str(n) for n in change.removed] == ["198.18.16.9/32"]
    counters = call(scene, "counters", settings=settings)
    assert len(counters) == 100_000
    assert counters[member_a] == (3, 3 * SYN4) and counters[member_b] == (2, 2 * SYN4)
    assert sum(p for p, _ in counters.values()) == 5


def test_maxelem_is_checked_before_anything_changes(scene):
    s = Settings(families=("ipv4",), maxelem=4)
    call(scene, "ensure", settings=s)
    first = dict.fromkeys(_many(4), None)
    call(scene, "apply", first, settings=s)
    with pytest.raises(KernelError, match="maxelem 4"):
        call(scene, "apply", dict.fromkeys(_many(5), None), settings=s)
    assert set(listed(scene)) == set(first)


def test_ensure_with_a_new_maxelem_resizes_and_keeps_counters(scene):
    scene.add_client("198.51.100.7")
    small, large = Settings(families=("ipv4",), maxelem=3), Settings(families=("ipv4",))
    call(scene, "ensure", settings=small)
    desired = {IPNetwork("198.51.100.0/24"): now() + timedelta(hours=1), IPNetwork("192.0.2.0/24"): None}
    call(scene, "apply", desired, settings=small)
    scene.syn("198.51.100.7", 3)
    wait_for(lambda: listed(scene)[IPNetwork("198.51.100.0/24")][1] == 3)
    before = listed(scene)
    call(scene, "ensure", settings=large)
    assert "maxelem 1048576" in scene.server_exec("ipset", "list", "-t", "netblock4").stdout
    assert set_names(scene) == ["netblock4"]  # the scratch set is gone
    after = listed(scene)
    assert {n: v[1:] for n, v in after.items()} == {n: v[1:] for n, v in before.items()}
    assert after[IPNetwork("192.0.2.0/24")][0] == 0 and after[IPNetwork("198.51.100.0/24")][0] > 3500
    call(scene, "apply", {**desired, **dict.fromkeys(_many(5), None)}, settings=large)  # more than 3 now fit
    # The rule follows the swapped-in set: the blocked source is still counted.
    scene.syn("198.51.100.7", 1)
    assert wait_for(lambda: listed(scene)[IPNetwork("198.51.100.0/24")][1] == 4)


def test_refused_member_rolls_back_everything(scene):
    scene.add_client("198.51.100.7")
    s = Settings(families=("ipv4",))
    call(scene, "ensure", settings=s)
    later = now() + timedelta(hours=1)
    call(scene, "apply", {IPNetwork("198.51.100.0/24"): later, IPNetwork("203.0.113.0/24"): later}, settings=s)
    scene.syn("198.51.100.7", 4)
    wait_for(lambda: listed(scene)[IPNetwork("198.51.100.0/24")][1] == 4)
    before = listed(scene)
    # Deletes 198.51.100.0/24, re-times 203.0.113.0/24, adds 192.0.2.0/24; then the kernel refuses a /0.
    bad = {IPNetwork("203.0.113.0/24"): later + timedelta(hours=5), IPNetwork("192.0.2.0/24"): later,
           IPNetwork("0.0.0.0/0"): later}
    with pytest.raises(KernelError, match=r"0\.0\.0\.0/0"):
        call(scene, "apply", bad, settings=s)
    after = listed(scene)
    assert set(after) == set(before)
    assert after[IPNetwork("198.51.100.0/24")][1:] == (4, 4 * SYN4)
    for net in after:
        assert abs(after[net][0] - before[net][0]) <= 2


def test_reject_sends_a_reset(scene):
    scene.add_client("198.51.100.7", "2001:db8:bad::5")
    scene.listen(25)
    s = Settings(verdict="reject")
    call(scene, "ensure", settings=s)
    call(scene, "apply", {IPNetwork("198.51.100.0/24"): None, IPNetwork("2001:db8:bad::/48"): None}, settings=s)
    assert scene.probe("198.51.100.7") == "refused"
    assert scene.probe("2001:db8:bad::5") == "refused"
    assert scene.probe("198.18.0.2") == "open"
    assert call(scene, "counters", settings=s)[IPNetwork("198.51.100.0/24")][0] >= 1


def test_name_clash_with_a_strangers_set(scene):
    scene.server_exec("ipset", "create", "netblock6", "hash:ip", "family", "inet6")
    with pytest.raises(NameClash, match="netblock6"):
        call(scene, "ensure")
    # netblock4 was created first in the same ensure(): it is gone again, and no rule was placed.
    assert set_names(scene) == ["netblock6"]
    assert "NETBLOCK" not in scene.server_exec("iptables-save").stdout
    call(scene, "remove")
    assert set_names(scene) == ["netblock6"]


def test_name_clash_with_a_strangers_chain(scene):
    scene.server_exec("iptables", "-N", "NETBLOCK")
    scene.server_exec("iptables", "-A", "NETBLOCK", "-s", "192.0.2.0/24", "-j", "DROP")
    with pytest.raises(NameClash, match="NETBLOCK"):
        call(scene, "ensure")
    assert set_names(scene) == []
    call(scene, "remove")
    assert "-A NETBLOCK -s 192.0.2.0/24 -j DROP" in scene.server_exec("iptables-save").stdout


def test_missing_iptables_or_pyroute2_is_tool_missing(scene, tmp_path):
    with pytest.raises(ToolMissing, match="iptables"):
        call(scene, "ensure", path=str(tmp_path))

    def without_pyroute2():
        sys.modules["pyroute2"] = None  # as if it were not installed
        return ipset.create(Settings()).ensure()

    with pytest.raises(ToolMissing, match="pyroute2"):
        scene.in_server(without_pyroute2)
    assert set_names(scene) == []
    assert "NETBLOCK" not in scene.server_exec("iptables-save").stdout


def test_apply_before_ensure_is_a_clear_error(scene):
    with pytest.raises(NetblockError, match="netblock4 does not exist"):
        call(scene, "apply", {IPNetwork("198.51.100.0/24"): None})
    # Reading finds nothing installed, and remove() finds nothing to do.
    assert call(scene, "counters") == {} and call(scene, "installed") == {}
    assert {v: [len(c) for c in cols] for v, cols in call(scene, "counter_columns").items()} == {4: [0] * 3, 6: [0] * 3}
    call(scene, "remove")
    assert set_names(scene) == []


@pytest.mark.parametrize("method", ["counters", "remove"])
def test_without_cap_net_admin(scene, method):
    call(scene, "ensure")
    code = (
        "import sys\n"
        "from netblock.errors import NetblockError\n"
        "from netblock.firewall import Settings, ipset\n"
        "try:\n"
        f"    ipset.create(Settings()).{method}()\n"
        "except NetblockError as e:\n"
        "    print(type(e).__name__); print(e); sys.exit(3)\n"
    )
    r = scene.server_exec("setpriv", "--inh-caps=-all", "--bounding-set=-net_admin", sys.executable, "-c", code,
                          check=False, env={**os.environ})
    assert r.returncode == 3, r.stderr
    kind, message = r.stdout.splitlines()[:2]
    assert kind == PermissionDenied.__name__ and "CAP_NET_ADMIN" in message
    assert sorted(set_names(scene)) == ["netblock4", "netblock6"]  # remove() took nothing away


def test_legacy_host_gets_rules_through_python_iptables(scene, tmp_path):
    """A host whose `iptables` is xtables-legacy: rules go where that iptables shows them."""
    for tool in ("iptables", "ip6tables"):
        (tmp_path / tool).symlink_to(f"/usr/sbin/{tool}-legacy")
    path = f"{tmp_path}:{os.environ['PATH']}"
    scene.add_client("198.51.100.7")
    scene.listen(25)
    s = Settings(ports=(25, 587))
    call(scene, "ensure", settings=s, path=path)
    call(scene, "ensure", settings=s, path=path)
    call(scene, "apply", {IPNetwork("198.51.100.0/24"): None}, settings=s, path=path)
    assert scene.probe("198.51.100.7") == "timeout"
    for family, save in (("ipv4", "iptables-legacy-save"), ("ipv6", "ip6tables-legacy-save")):
        chain_rule, jump = ipset_rules.rule_lines(ipset.render(s, family)[1])
        lines = scene.server_exec(save, "-t", "filter").stdout.splitlines()
        assert [r for r in lines if "NETBLOCK" in r and r.startswith("-A")] == \
            [jump.replace("-I INPUT 1 ", "-A INPUT "), chain_rule]
    assert "NETBLOCK" not in scene.server_exec("iptables-nft-save").stdout
    assert "(legacy) via python-iptables" in scene.in_server(
        lambda: (os.environ.__setitem__("PATH", path), ipset.create(s).description)[1])
    call(scene, "remove", settings=s, path=path)
    assert "NETBLOCK" not in scene.server_exec("iptables-legacy-save").stdout
    assert set_names(scene) == []
    assert scene.probe("198.51.100.7") == "open"


def test_one_backend_applying_a_kept_mapping_as_it_grows_and_shrinks(scene):
    """apply() reuses the keys of networks it converted last time; the kernel must still end exact."""
    settings = Settings(families=("ipv4",))
    expiry = now() + timedelta(days=1)
    desired = dict.fromkeys(_many(ipset_diff.NUMPY_FROM + 100), expiry)
    extra, middle = IPNetwork("198.51.100.0/24"), list(desired)[len(desired) // 2]

    def run():
        b = ipset.create(settings)
        b.ensure()
        b.apply(desired)
        desired[extra] = expiry
        grown = b.apply(desired)
        del desired[middle]
        shrunk = b.apply(desired)
        return grown, shrunk

    grown, shrunk = scene.in_server(run)
    assert grown.added == [extra] and not grown.removed and not grown.updated
    assert shrunk.removed == [middle] and not shrunk.added and not shrunk.updated
    final = listed(scene)  # run() changed a copy of desired: the namespace's side is a forked child
    assert set(final) == (set(desired) | {extra}) - {middle} and len(final) == ipset_diff.NUMPY_FROM + 100


def test_large_set_reads_hand_edits_back_and_rolls_back(scene):
    """At NUMPY_FROM members and more, apply() diffs while a helper thread receives the listing.

    It must still see members deleted and added by hand, re-time, keep the
    counters of members it leaves alone, and undo everything on a refusal.
    """
    scene.add_client("198.18.16.5")
    settings = Settings(families=("ipv4",))
    call(scene, "ensure", settings=settings)
    later = now() + timedelta(hours=1)
    desired = dict.fromkeys(_many(ipset_diff.NUMPY_FROM + 500), later)
    call(scene, "apply", desired, settings=settings)
    counted, gone, retimed = IPNetwork("198.18.16.5/32"), IPNetwork("198.18.16.9/32"), IPNetwork("198.18.17.1/32")
    scene.syn("198.18.16.5", 3)
    wait_for(lambda: listed(scene)[counted][1] == 3)
    scene.server_exec("ipset", "del", "netblock4", str(gone))
    scene.server_exec("ipset", "add", "netblock4", "198.51.100.0/24", "timeout", "0")

    def apply_streamed(mapping):
        """apply() in the namespace, failing unless the batch-by-batch diff made it."""
        fed = []
        feed = ipset_diff.StreamDiff.feed
        ipset_diff.StreamDiff.feed = lambda self, blob: fed.append(len(blob)) or feed(self, blob)
        try:
            return ipset.create(settings).apply(mapping)
        finally:
            assert fed, "the streamed diff was not used"

    change = scene.in_server(apply_streamed, {**desired, retimed: later + timedelta(hours=5)})
    assert change.added == [gone] and [str(n) for n in change.removed] == ["198.51.100.0/24"]
    assert change.updated == [retimed]
    after = listed(scene)
    assert set(after) == set(desired)
    assert after[counted][1:] == (3, 3 * SYN4) and sum(p for _, p, _ in after.values()) == 3
    assert 5 * 3600 + 3590 < after[retimed][0] <= 6 * 3600
    # Deletes the counted member, re-times another, adds one; then the kernel refuses a /0.
    bad = {net: later for net in desired if net != counted}
    bad.update({retimed: later, IPNetwork("192.0.2.0/24"): later, IPNetwork("0.0.0.0/0"): later})
    with pytest.raises(KernelError, match=r"0\.0\.0\.0/0"):
        scene.in_server(apply_streamed, bad)
    rolled_back = listed(scene)
    assert set(rolled_back) == set(after)
    assert rolled_back[counted][1:] == (3, 3 * SYN4)
    assert all(abs(rolled_back[net][0] - after[net][0]) <= 2 for net in after)


def _listed_member(key: int, timeout: int, packets: int) -> bytes:
    """An IPv4 member nest in the layout the kernel lists (see _fast_members)."""
    a = nlipset.attr
    ip = a(nlipset.D_IP | nlipset.NLA_F_NESTED, a(nlipset.IPADDR_V4, (key >> 8).to_bytes(4, "big")))
    return a(nlipset.A_DATA | nlipset.NLA_F_NESTED, ip + a(nlipset.D_CIDR, bytes([key & 255]))
             + a(nlipset.D_TIMEOUT | nlipset.NLA_F_NET_BYTEORDER, timeout.to_bytes(4, "big"))
             + a(nlipset.D_BYTES | nlipset.NLA_F_NET_BYTEORDER, (60 * packets).to_bytes(8, "big"))
             + a(nlipset.D_PACKETS | nlipset.NLA_F_NET_BYTEORDER, packets.to_bytes(8, "big")))


def test_streamed_diff_equals_diff_v4():
    """_StreamDiff, fed a listing batch by batch, finds exactly what diff_v4() finds in all of it, in its order."""
    rng = random.Random(7)
    start = time.time()
    later = datetime.fromtimestamp(start, timezone.utc) + timedelta(hours=1)
    nets = rng.sample(_many(ipset_diff.NUMPY_FROM * 2), ipset_diff.NUMPY_FROM + 1000)  # the caller's order: not the keys'
    expiries = [None if i % 7 == 0 else later - timedelta(hours=2) if i % 11 == 0 else later
                for i in range(len(nets))]
    nets.append(IPNetwork("2001:db8::/32"))  # not of this family
    expiries.append(None)
    keys, timeouts = ipset_diff.wanted(nets, expiries, 4, start, {})
    kept = rng.sample(range(len(keys)), len(keys) - 300)  # 300 wanted members are missing from the kernel
    # The kernel's members: most wanted ones, some re-timed, some strangers; in no particular order.
    kernel = [(int(keys[i]), max(0, int(timeouts[i]) + rng.choice((0, 0, 1, 5, -3600))), i % 4) for i in kept]
    kernel += [(net.value << 8 | 32, 0, 1) for net in _many(ipset_diff.NUMPY_FROM * 3)[-200:]]
    rng.shuffle(kernel)
    stream = ipset_diff.StreamDiff(*ipset_diff.sorted_wanted(nets, expiries, start, {}))
    blobs = [b"".join(_listed_member(*m) for m in kernel[i:i + 570]) for i in range(0, len(kernel), 570)]
    assert all(stream.feed(blob) for blob in blobs)
    members, (deleted, added, updated) = stream.result()
    whole = ipset_diff.decode(b"".join(blobs), False, lists=False)
    assert [m.tolist() for m in members.arrays] == [m.tolist() for m in whole.arrays]
    assert (deleted, added, updated) == ipset_diff.diff_v4(whole, keys, timeouts)
    assert len(deleted) == 200 and len(added) == 300 and 0 < len(updated) < len(kept)


def test_a_kept_sort_order_is_used_only_while_it_sorts():
    """in_key_order() reuses the last order for a listing in the same hash order, and sorts anew otherwise."""
    import numpy as np

    from netblock.firewall import ipset_region

    rng = np.random.default_rng(3)
    keys = rng.permutation(np.arange(1000, dtype=np.uint64) << np.uint64(8) | np.uint64(32))
    orders: dict = {}
    order, ordered = ipset_region.in_key_order(keys, "ipv4", orders)
    assert ordered.tolist() == sorted(keys.tolist()) and orders["ipv4"] is order
    again, ordered = ipset_region.in_key_order(keys.copy(), "ipv4", orders)
    assert again is order and ordered.tolist() == sorted(keys.tolist())
    swapped = keys.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # the same members, another hash order
    moved, ordered = ipset_region.in_key_order(swapped, "ipv4", orders)
    assert moved is not order and ordered.tolist() == sorted(keys.tolist()) and orders["ipv4"] is moved
    fewer, ordered = ipset_region.in_key_order(swapped[1:], "ipv4", orders)
    assert ordered.tolist() == sorted(swapped[1:].tolist())
    v6 = np.array([3 << 100 | 48, 1 << 100 | 64, 2 << 100 | 56], dtype=object)
    _order, ordered = ipset_region.in_key_order(v6, "ipv6", orders)
    assert ordered.tolist() == sorted(v6.tolist())
