"""What is specific to the nftables backend, against the real kernel in namespaces of our own.

The shared behaviour (drop/admit, exact counters, idempotence, coexistence) is
in test_backends.py. Here: agreement with nft's own listing, the shipped
ruleset text, kernel-side expiry, the netlink path at 100k elements, the hook
and verdict variants, drift, and the errors a user can act on.
"""

from __future__ import annotations

import json
import marshal
import os
import re
import sys
from datetime import datetime, timedelta, timezone

import pytest
from netaddr import IPNetwork
from netns import CLIENT4, nsexec, wait_for

from netblock.errors import KernelError, NameClash, NetblockError
from netblock.firewall import Settings, nftables as backend
from netblock.firewall.netlink import nftables as nl

pytestmark = pytest.mark.kernel

SYN4, SYN6 = 40, 60


def later(hours: float = 1) -> datetime:
    return datetime.now(timezone.utc) + timedelta(hours=hours)


def call(scene, method, *args, settings: Settings | None = None):
    def run():
        return getattr(backend.create(settings or Settings()), method)(*args)

    return scene.in_server(run)


def nft_counters(scene, family: str) -> dict[IPNetwork, tuple[int, int]]:
    """The set's per-element counters as `nft -j list set` shows them."""
    out = scene.server_exec("nft", "-j", "list", "set", "inet", "netblock", f"block{family}").stdout
    result = {}
    for item in json.loads(out)["nftables"]:
        for entry in item.get("set", {}).get("elem", []):
            elem = entry["elem"]
            val = elem["val"]
            net = IPNetwork(f"{val['prefix']['addr']}/{val['prefix']['len']}" if isinstance(val, dict) else val)
            result[net] = (elem["counter"]["packets"], elem["counter"]["bytes"])
    return result


def normalised(text: str) -> list[str]:
    return [re.sub(r"\s+", " ", line).strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_counters_equal_nft_listing_after_real_syns(scene):
    sends = {"198.51.100.7": ("198.51.100.0/24", 6), "203.0.113.9": ("203.0.113.9/32", 2),
             "2001:db8:bad::5": ("2001:db8:bad::/48", 3), "2001:db8:77::1": ("2001:db8:77::1/128", 1)}
    scene.add_client(*sends)
    call(scene, "ensure")
    call(scene, "apply", {IPNetwork(n): later() for n, _ in sends.values()} | {IPNetwork("192.0.2.0/24"): None})
    for src, (_, k) in sends.items():
        scene.syn(src, k)
    expected = {IPNetwork(n): (k, k * (SYN6 if ":" in n else SYN4)) for n, k in sends.values()}
    expected[IPNetwork("192.0.2.0/24")] = (0, 0)
    got = wait_for(lambda: (c := call(scene, "counters")) == expected and c)
    assert got == expected
    assert nft_counters(scene, "4") | nft_counters(scene, "6") == expected


@pytest.mark.parametrize("settings", [Settings(), Settings(ports=(25, 465, 587), families=("ipv6",),
                                                            verdict="reject", hook="prerouting")])
def test_kernel_lists_back_the_shipped_ruleset(scene, settings):
    call(scene, "ensure", settings=settings)
    listed = scene.server_exec("nft", "list", "table", "inet", "netblock").stdout
    assert normalised(listed) == normalised(backend.render(settings))
    # The template's own lines are what went in: every rule line of rules/netblock.nft appears.
    assert f'comment "{backend.names.NFT_TABLE_COMMENT}"' in listed


def test_ensure_twice_changes_nothing_and_a_new_setting_keeps_counters(scene):
    scene.add_client("198.51.100.7")
    call(scene, "ensure")
    call(scene, "apply", {IPNetwork("198.51.100.0/24"): later()})
    scene.syn("198.51.100.7", 4)
    assert wait_for(lambda: call(scene, "counters")[IPNetwork("198.51.100.0/24")] == (4, 4 * SYN4))
    handles = lambda: re.sub(r"expires \S+", "", scene.server_exec(  # noqa: E731
        "nft", "-a", "list", "table", "inet", "netblock").stdout)
    before = handles()
    call(scene, "ensure")
    assert handles() == before
    # Another port list rebuilds the chain only; the sets and their counters stay.
    wider = Settings(ports=(25, 587))
    call(scene, "ensure", settings=wider)
    assert "tcp dport { 25, 587 }" in scene.server_exec("nft", "list", "chain", "inet", "netblock", "filter").stdout
    assert call(scene, "counters", settings=wider) == {IPNetwork("198.51.100.0/24"): (4, 4 * SYN4)}
    assert scene.probe("198.51.100.7", port=587) == "timeout"


def test_element_expires_in_the_kernel_without_netblock(scene):
    call(scene, "ensure")
    call(scene, "apply", {IPNetwork("198.51.100.0/24"): datetime.now(timezone.utc) + timedelta(seconds=2),
                          IPNetwork("203.0.113.0/24"): None})
    installed = call(scene, "installed")
    assert installed[IPNetwork("203.0.113.0/24")] is None
    assert timedelta(seconds=0) < installed[IPNetwork("198.51.100.0/24")] - datetime.now(timezone.utc) \
        <= timedelta(seconds=3)
    listing = lambda: scene.server_exec("nft", "list", "set", "inet", "netblock", "block4").stdout  # noqa: E731
    assert "198.51.100.0/24" in listing()
    assert wait_for(lambda: "198.51.100.0/24" not in listing(), timeout=8, interval=0.25)
    assert set(call(scene, "installed")) == {IPNetwork("203.0.113.0/24")}


def test_expiry_update_is_in_place_and_keeps_the_counter(scene):
    scene.add_client("198.51.100.7")
    net = IPNetwork("198.51.100.0/24")
    call(scene, "ensure")
    call(scene, "apply", {net: later(1)})
    scene.syn("198.51.100.7", 3)
    assert wait_for(lambda: call(scene, "counters")[net] == (3, 3 * SYN4))
    change = call(scene, "apply", {net: later(5)})
    assert change.updated == [net] and not change.added and not change.removed
    assert call(scene, "installed")[net] - later(5) < timedelta(seconds=2)
    change = call(scene, "apply", {net: None})
    assert change.updated == [net]
    assert call(scene, "installed") == {net: None}
    assert call(scene, "counters") == {net: (3, 3 * SYN4)}
    # Within the tolerance nothing is touched.
    assert not call(scene, "apply", {net: None})


def _scale_netblocks() -> dict[IPNetwork, datetime]:
    """100,000 netblocks, mixed /24 and /32, all inside the documentation/benchmark ranges."""
    nets = [IPNetwork((0xC6120000 + i, 32), version=4) for i in range(65536)]  # 198.18.0.0/16
    nets += [IPNetwork((0xC6130000 + (i << 8), 24), version=4) for i in range(128)]  # 198.19.0.0/17
    nets += [IPNetwork((0xC6138000 + i, 32), version=4) for i in range(32768)]  # 198.19.128.0/17
    for base in (0xC0000200, 0xC6336400, 0xCB007100):  # 192.0.2.0, 198.51.100.0, 203.0.113.0
        nets += [IPNetwork((base + i, 32), version=4) for i in range(256)]
    nets += [IPNetwork((0x20010DB8FFFF << 80 | i, 128), version=6) for i in range(100_000 - len(nets))]
    expiry = later()
    return {n: expiry for n in nets}


@pytest.mark.slow
def test_100k_in_one_transaction_then_a_one_element_change(scene):
    desired = _scale_netblocks()
    assert len(desired) == 100_000
    call(scene, "ensure")
    # One transaction: an overlap anywhere makes the kernel refuse all of it.
    with pytest.raises(KernelError):
        call(scene, "apply", desired | {IPNetwork("198.19.200.0/24"): None})
    assert call(scene, "installed") == {}
    change = call(scene, "apply", desired)
    assert len(change.added) == 100_000
    client = IPNetwork(f"{CLIENT4}/32")
    scene.syn(CLIENT4, 3)
    gone, new = IPNetwork("198.18.0.9/32"), IPNetwork("2001:db8:fffe::1/128")
    desired.pop(gone)
    desired[new] = later()
    change = call(scene, "apply", desired)
    assert (change.added, change.removed, change.updated) == ([new], [gone], [])
    # The SYNs were counted before the change and are still there after it.
    counters = call(scene, "counters")
    assert counters[client] == (3, 3 * SYN4) and gone not in counters and counters[new] == (0, 0)
    assert len(counters) == 100_000
    assert sum(p for p, _ in counters.values()) == 3
    call(scene, "remove")


@pytest.mark.parametrize("verdict,seen", [("drop", "timeout"), ("reject", "refused")])
def test_prerouting_hook_and_verdicts_stop_a_real_syn(scene, verdict, seen):
    scene.add_client("198.51.100.7", "203.0.113.9", "2001:db8:bad::5")
    scene.listen(25)
    s = Settings(hook="prerouting", verdict=verdict)
    call(scene, "ensure", settings=s)
    call(scene, "apply", {IPNetwork("198.51.100.0/24"): later(), IPNetwork("2001:db8:bad::/48"): None}, settings=s)
    assert "hook prerouting priority raw" in scene.server_exec("nft", "list", "chain", "inet", "netblock",
                                                               "filter").stdout
    assert scene.probe("198.51.100.7") == seen
    assert scene.probe("2001:db8:bad::5") == seen
    assert scene.probe("203.0.113.9") == "open"
    counters = call(scene, "counters", settings=s)
    assert counters[IPNetwork("198.51.100.0/24")][0] >= 1 and counters[IPNetwork("2001:db8:bad::/48")][0] >= 1


def test_installed_follows_a_hand_edited_kernel_and_apply_repairs_it(scene):
    desired = {IPNetwork("198.51.100.0/24"): None, IPNetwork("203.0.113.9/32"): None}
    call(scene, "ensure")
    call(scene, "apply", desired)
    scene.server_exec("nft", "flush", "set", "inet", "netblock", "block4")
    assert call(scene, "installed") == {}
    scene.server_exec("nft", "add", "element", "inet", "netblock", "block4",
                      "{ 192.0.2.64/26, 192.0.2.200-192.0.2.202 }")
    assert call(scene, "installed") == {IPNetwork("192.0.2.64/26"): None, IPNetwork("192.0.2.200/31"): None,
                                        IPNetwork("192.0.2.202/32"): None}
    change = call(scene, "apply", desired)
    assert sorted(map(str, change.added)) == ["198.51.100.0/24", "203.0.113.9/32"]
    assert len(change.removed) == 3
    assert call(scene, "installed") == desired
    assert "192.0.2" not in scene.server_exec("nft", "list", "set", "inet", "netblock", "block4").stdout


def test_disabled_family_and_expired_entries_are_not_installed(scene):
    v4 = Settings(families=("ipv4",))
    call(scene, "ensure", settings=v4)
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    change = call(scene, "apply", {IPNetwork("198.51.100.0/24"): None, IPNetwork("2001:db8:bad::/48"): None,
                                   IPNetwork("203.0.113.0/24"): past}, settings=v4)
    assert (change.added, change.removed, change.updated) == ([IPNetwork("198.51.100.0/24")], [], [])
    assert call(scene, "installed", settings=v4) == {IPNetwork("198.51.100.0/24"): None}
    assert "elements" not in scene.server_exec("nft", "list", "set", "inet", "netblock", "block6").stdout
    assert "ip6 saddr" not in scene.server_exec("nft", "list", "chain", "inet", "netblock", "filter").stdout


def test_apply_snapshot_is_only_a_shortcut(scene):
    desired = {IPNetwork("198.51.100.0/24"): None, IPNetwork("203.0.113.9/32"): later()}
    call(scene, "ensure")
    call(scene, "apply", desired)

    def rewrite(fn):
        with nl.Nfnl(backend.names.NFT_TABLE) as sock:
            path = backend._snapshot_path(sock)
            path.write_bytes(fn(path.read_bytes()))

    def claim_empty(raw: bytes) -> bytes:
        data = marshal.loads(raw)
        data["sets"]["ipv4"] = []  # a lie at the right generation: the kernel's refusal exposes it
        return marshal.dumps(data)

    scene.in_server(rewrite, claim_empty)
    assert not call(scene, "apply", desired)
    assert set(call(scene, "installed")) == set(desired)
    scene.in_server(rewrite, lambda raw: b"not a snapshot")
    change = call(scene, "apply", desired | {IPNetwork("192.0.2.0/24"): None})
    assert change.added == [IPNetwork("192.0.2.0/24")] and not change.removed and not change.updated
    # A hand edit moves the ruleset generation on, so the next apply reads the kernel again.
    scene.server_exec("nft", "delete", "element", "inet", "netblock", "block4", "{ 192.0.2.0/24 }")
    change = call(scene, "apply", desired | {IPNetwork("192.0.2.0/24"): None})
    assert change.added == [IPNetwork("192.0.2.0/24")]
    call(scene, "remove")
    assert not scene.in_server(lambda: backend._snapshot_path(nl.Nfnl("x")).exists())


def test_missing_skeleton_is_a_clear_error(scene):
    with pytest.raises(NetblockError) as info:
        call(scene, "apply", {IPNetwork("198.51.100.0/24"): None})
    assert "ensure" in str(info.value).splitlines()[0]
    call(scene, "remove")  # nothing there: fine


def test_foreign_table_is_a_name_clash_and_is_left_alone(scene):
    scene.server_exec("nft", "add", "table", "inet", "netblock")
    scene.server_exec("nft", "add", "chain", "inet", "netblock", "mine")
    with pytest.raises(NameClash) as info:
        call(scene, "ensure")
    assert "inet netblock" in str(info.value)
    call(scene, "remove")
    listed = scene.server_exec("nft", "list", "table", "inet", "netblock").stdout
    assert "chain mine" in listed and "block4" not in listed


def _child(scene, code: str, *prefix: str):
    script = ("import sys\nfrom netblock.errors import NetblockError\n"
              "from netblock.firewall import Settings\n"
              "try:\n" + "".join(f"    {line}\n" for line in code.splitlines()) +
              "except NetblockError as e:\n    print(type(e).__name__); print(e); sys.exit(3)\n")
    return scene.server_exec(*prefix, sys.executable, "-c", script, check=False, env={**os.environ})


def test_libnftables_missing_is_tool_missing(scene):
    r = _child(scene, "sys.modules['nftables'] = None\n"
                      "from netblock.firewall import nftables\nnftables.create(Settings())")
    assert r.returncode == 3, r.stderr
    kind, message = r.stdout.splitlines()[:2]
    assert kind == "ToolMissing" and "libnftables" in message


@pytest.mark.parametrize("method", ["ensure", "counters", "remove"])
def test_without_cap_net_admin_is_permission_denied(scene, method):
    call(scene, "ensure")
    r = _child(scene, f"from netblock.firewall import nftables\nnftables.create(Settings()).{method}()",
               "setpriv", "--inh-caps=-all", "--bounding-set=-net_admin")
    assert r.returncode == 3, r.stderr
    kind, message = r.stdout.splitlines()[:2]
    assert kind == "PermissionDenied" and "CAP_NET_ADMIN" in message
    assert "Traceback" not in r.stderr
    assert "netblock" in nsexec(scene.server, "nft", "list", "tables").stdout
