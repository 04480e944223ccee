"""The real `netblock` command in a test namespace, with each backend: after every
command, SYNs from the affected client addresses are dropped or admitted as the
store says.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from helpers import NETBLOCK, clean_env
from netns import CLIENT4, SERVER4, SERVER6

from netblock.system import hostaddrs

pytestmark = pytest.mark.kernel

PROBE_S = 0.3  # a SYN-ACK over one veth comes back in microseconds; silence this long is a drop
SPAM4, ALLOWED4, OTHER4, SPAM6 = "198.51.100.7", "198.51.100.9", "203.0.113.5", "2001:db8:5::7"


class Cli:
    """`netblock --config C --db D --backend B ...` inside the scene's server namespace."""

    def __init__(self, scene, tmp_path, backend: str):
        self.scene = scene
        self.db = tmp_path / "nb.db"
        self.conf = tmp_path / "netblock.toml"
        self.conf.write_text(f'lock_file = "{tmp_path}/run/netblock.lock"\n')
        self.backend = backend

    def __call__(self, *args: str, input: str | None = None, now: datetime | None = None, expect: int = 0):
        env = clean_env()
        if now is not None:
            env["NETBLOCK_NOW"] = now.isoformat()
        r = self.scene.server_exec(NETBLOCK, "--config", str(self.conf), "--db", str(self.db),
                                   "--backend", self.backend, *args, check=False, input=input, env=env)
        assert r.returncode == expect, (args, r.returncode, r.stdout, r.stderr)
        return r

    def json(self, *args: str, now: datetime | None = None):
        return json.loads(self(*args, "--json", now=now).stdout)


def reach(scene) -> dict[str, str]:
    return {src: scene.probe(src, timeout=PROBE_S) for src in (SPAM4, ALLOWED4, OTHER4, SPAM6, CLIENT4)}


def damage(scene, backend: str) -> None:
    """What an admin's careless flush does to each backend's kernel objects."""
    if backend == "nftables":
        scene.server_exec("nft", "flush", "ruleset")
    elif backend == "ipset":
        scene.server_exec("ipset", "flush")
    else:
        scene.server_exec("iptables-legacy", "-F", "NETBLOCK")
        scene.server_exec("ip6tables-legacy", "-F", "NETBLOCK")


@pytest.mark.parametrize("backend", ["nftables", "ipset", "iptables"])
def test_block_allow_drift_sync_del_expire(scene, tmp_path, backend):
    nb = Cli(scene, tmp_path, backend)
    scene.add_client(SPAM4, ALLOWED4, OTHER4, SPAM6)
    scene.listen()
    open_all = {src: "open" for src in (SPAM4, ALLOWED4, OTHER4, SPAM6, CLIENT4)}
    assert reach(scene) == open_all

    out = nb("add", "198.51.100.0/24", "2001:db8:5::/48", "--reason", "kernel test").stdout
    assert "blocked 2 netblocks" in out
    assert reach(scene) == open_all | {SPAM4: "timeout", ALLOWED4: "timeout", SPAM6: "timeout"}

    nb("allow", "add", ALLOWED4, "--comment", "partner relay")
    blocked = open_all | {SPAM4: "timeout", SPAM6: "timeout"}
    assert reach(scene) == blocked

    damage(scene, backend)
    assert scene.probe(SPAM4, timeout=PROBE_S) == "open"
    status = nb.json("status")
    assert status["in_sync"] is False and status["desired"] == 9  # the /24 minus one host, and the /48
    dry = nb("sync", "--dry-run").stdout.splitlines()
    assert "+ 198.51.100.0/29" in dry and "+ 198.51.100.8" in dry and "+ 2001:db8:5::/48" in dry
    assert not any(line.startswith("- ") for line in dry)
    assert scene.probe(SPAM4, timeout=PROBE_S) == "open"  # a dry run changes nothing
    nb("sync")
    assert reach(scene) == blocked
    assert nb.json("status")["in_sync"] is True

    nb("del", "198.51.100.0/24")
    assert reach(scene) == open_all | {SPAM6: "timeout"}

    start = datetime.now(timezone.utc)
    nb("add", "203.0.113.0/24", "--ttl", "1h")
    assert reach(scene) == open_all | {SPAM6: "timeout", OTHER4: "timeout"}
    out = nb("expire", now=start + timedelta(hours=2)).stdout
    assert "expired 203.0.113.0/24" in out
    assert reach(scene) == open_all | {SPAM6: "timeout"}

    nb("remove-rules")
    assert scene.probe(SPAM6, timeout=PROBE_S) == "open" and scene.probe(OTHER4, timeout=PROBE_S) == "open"
    assert [b["netblock"] for b in nb.json("list")] == ["203.0.113.0/24", "2001:db8:5::/48"]


def test_own_addresses_are_read_in_the_namespace(scene):
    own = {str(n) for n in scene.in_server(hostaddrs.own_addresses)}
    assert {f"{SERVER4}/32", f"{SERVER6}/128", "127.0.0.1/32", "::1/128"} <= own
    assert f"{CLIENT4}/32" not in own
