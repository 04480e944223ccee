"""Conformance of every backend against the real kernel, in namespaces of our own.

The same behaviour is demanded of nftables, ipset and iptables: real SYNs from
blocked sources are dropped and counted on exactly their netblock, others get
through, counters survive applies, and nothing outside netblock's own objects
changes. Each backend call runs in a fresh forked child inside the server
namespace, so the kernel is the only state carried between calls.
"""

from __future__ import annotations

import os
import re
import sys
from datetime import datetime, timedelta, timezone

import pytest
from netaddr import IPNetwork
from netns import nsexec, wait_for

from netblock.firewall import Settings, get_backend

pytestmark = pytest.mark.kernel

BACKENDS = ("nftables", "ipset", "iptables")
SYN4 = 40  # bytes the kernel counts for one bare IPv4 SYN (20 IP + 20 TCP)
SYN6 = 60  # 40 IPv6 + 20 TCP

LATER = datetime.now(timezone.utc) + timedelta(hours=1)


def call(scene, name, method, *args, settings: Settings | None = None):
    def run():
        return getattr(get_backend(name, settings or Settings()), method)(*args)

    return scene.in_server(run)


def nets(*texts):
    return {IPNetwork(t): LATER for t in texts}


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def test_blocked_dropped_others_pass(scene, backend):
    scene.add_client("198.51.100.7", "203.0.113.9", "2001:db8:bad::5", "2001:db8:900::1")
    scene.listen(25)
    call(scene, backend, "ensure")
    call(scene, backend, "apply", nets("198.51.100.0/24", "2001:db8:bad::/48"))
    assert scene.probe("198.51.100.7") == "timeout"
    assert scene.probe("2001:db8:bad::5") == "timeout"
    assert scene.probe("203.0.113.9") == "open"
    assert scene.probe("2001:db8:900::1") == "open"
    # Another port from a blocked source reaches the server (nothing listens: RST).
    assert scene.probe("198.51.100.7", port=26) == "refused"
    assert scene.probe("2001:db8:bad::5", port=26) == "refused"


def test_exact_counters_per_netblock(scene, backend):
    sends = {"198.51.100.7": ("198.51.100.0/24", 5), "203.0.113.70": ("203.0.113.64/26", 3),
             "198.19.7.7": ("198.19.7.7/32", 7), "2001:db8:bad::5": ("2001:db8:bad::/48", 4)}
    scene.add_client(*sends)
    call(scene, backend, "ensure")
    call(scene, backend, "apply", nets(*(n for n, _ in sends.values()), "192.0.2.0/24"))
    for src, (_, k) in sends.items():
        scene.syn(src, k)
    expected = {IPNetwork(n): (k, k * (SYN6 if ":" in n else SYN4)) for n, k in sends.values()}
    expected[IPNetwork("192.0.2.0/24")] = (0, 0)
    got = wait_for(lambda: (c := call(scene, backend, "counters")) == expected and c, timeout=5)
    assert (got or call(scene, backend, "counters")) == expected


def test_apply_keeps_counters_of_unchanged(scene, backend):
    scene.add_client("198.51.100.7", "203.0.113.70", "2001:db8:bad::5")
    call(scene, backend, "ensure")
    call(scene, backend, "apply", nets("198.51.100.0/24", "203.0.113.64/26", "2001:db8:bad::/48"))
    scene.syn("198.51.100.7", 4)
    scene.syn("203.0.113.70", 2)
    scene.syn("2001:db8:bad::5", 3)
    wait_for(lambda: call(scene, backend, "counters").get(IPNetwork("2001:db8:bad::/48")) == (3, 3 * SYN6))
    change = call(scene, backend, "apply", nets("198.51.100.0/24", "2001:db8:bad::/48", "192.0.2.128/25"))
    assert sorted(map(str, change.added)) == ["192.0.2.128/25"]
    assert sorted(map(str, change.removed)) == ["203.0.113.64/26"]
    assert call(scene, backend, "counters") == {
        IPNetwork("198.51.100.0/24"): (4, 4 * SYN4),
        IPNetwork("2001:db8:bad::/48"): (3, 3 * SYN6),
        IPNetwork("192.0.2.128/25"): (0, 0),
    }
    # The removed netblock is really gone from the kernel: its source passes again.
    scene.listen(25)
    assert scene.probe("203.0.113.70") == "open"
    assert scene.probe("198.51.100.7") == "timeout"


def test_idempotent(scene, backend):
    scene.add_client("198.51.100.7")
    desired = nets("198.51.100.0/24", "2001:db8:bad::/48")
    call(scene, backend, "ensure")
    call(scene, backend, "apply", desired)
    scene.syn("198.51.100.7", 3)
    wait_for(lambda: call(scene, backend, "counters")[IPNetwork("198.51.100.0/24")][0] == 3)
    call(scene, backend, "ensure")
    assert not call(scene, backend, "apply", desired)
    assert not call(scene, backend, "apply", desired)
    assert call(scene, backend, "counters")[IPNetwork("198.51.100.0/24")] == (3, 3 * SYN4)
    assert set(call(scene, backend, "installed")) == set(desired)


def test_several_ports(scene, backend):
    scene.add_client("198.51.100.7")
    s = Settings(ports=(25, 587))
    call(scene, backend, "ensure", settings=s)
    call(scene, backend, "apply", nets("198.51.100.0/24"), settings=s)
    assert scene.probe("198.51.100.7", port=25) == "timeout"
    assert scene.probe("198.51.100.7", port=587) == "timeout"
    assert scene.probe("198.51.100.7", port=465) == "refused"


def _snapshot(scene) -> dict[str, str]:
    """Everything in the namespace's netfilter state, comments (timestamps) stripped."""
    out = {}
    for cmd in (("nft", "list", "ruleset"), ("iptables-legacy-save", "-c"), ("ip6tables-legacy-save", "-c"),
                ("ipset", "save")):
        text = nsexec(scene.server, *cmd).stdout
        # Built-in chain policy counters move with the namespace's own traffic
        # (IPv6 neighbour discovery); rule counters, which matter here, stay.
        out[cmd[0]] = "\n".join(re.sub(r"^(:\S+ \S+) \[\d+:\d+\]", r"\1", line)
                                for line in text.splitlines() if not line.startswith("#"))
    return out


def test_coexistence_and_remove_restores(scene, backend):
    scene.add_client("203.0.113.9")
    # Unrelated objects of every kind, each with a counter that has counted something.
    scene.server_exec("nft", "-f", "-", input=(
        "table inet other {\n chain c {\n  type filter hook input priority 10; policy accept;\n"
        "  tcp dport 25 counter\n }\n}\n"))
    scene.server_exec("iptables-legacy", "-N", "OTHER")
    scene.server_exec("iptables-legacy", "-A", "OTHER", "-p", "tcp", "--dport", "25")
    scene.server_exec("iptables-legacy", "-A", "INPUT", "-j", "OTHER")
    scene.server_exec("ip6tables-legacy", "-N", "OTHER6")
    scene.server_exec("iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "2525", "-j", "ACCEPT")
    scene.server_exec("ip6tables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "2525", "-j", "ACCEPT")
    scene.server_exec("ipset", "create", "other", "hash:ip", "counters")
    scene.server_exec("ipset", "add", "other", "203.0.113.9")
    scene.syn("203.0.113.9", 2)
    before = _snapshot(scene)
    assert "packets 2" in before["nft"] and "[2:" in before["iptables-legacy-save"]

    call(scene, backend, "ensure")
    call(scene, backend, "apply", nets("198.51.100.0/24", "2001:db8:bad::/48"))
    call(scene, backend, "counters")
    during = _snapshot(scene)
    assert "table inet other" in during["nft"] and "packets 2" in during["nft"]
    assert "-A OTHER -p tcp -m tcp --dport 25" in during["iptables-legacy-save"]
    assert "create other hash:ip" in during["ipset"]

    call(scene, backend, "remove")
    assert _snapshot(scene) == before
    call(scene, backend, "remove")  # a second remove finds nothing and is fine
    assert _snapshot(scene) == before


def test_without_cap_net_admin_is_a_clear_error(scene, backend):
    code = (
        "import sys\n"
        "from netblock.errors import NetblockError\n"
        "from netblock.firewall import get_backend\n"
        "try:\n"
        f"    get_backend({backend!r}).ensure()\n"
        "except NetblockError as e:\n"
        "    print(type(e).__name__); print(e); sys.exit(3)\n"
    )
    r = scene.server_exec("setpriv", "--inh-caps=-all", "--bounding-set=-net_admin", sys.executable, "-c", code,
                          check=False, env={**os.environ})
    assert r.returncode == 3, r.stderr
    kind, message = r.stdout.splitlines()[:2]
    assert kind == "PermissionDenied"
    assert "\n" not in message and "Traceback" not in r.stderr
    # And nothing was created.
    assert "netblock" not in nsexec(scene.server, "nft", "list", "tables").stdout
