"""Widening to an announced prefix, end to end: the real `netblock ingest` in a server namespace
(nftables backend) reads a log of zombies spread over a fake AS's 198.19.0.0/16 and drops SYNs
from an address of it that never attacked, while a sender that delivered mail from inside it and
addresses outside it still connect.
"""

from __future__ import annotations

import json

import pytest
from helpers import daemon_toml, dnsbl_policy, netblock_in
from loglines import delivery as delivered, dnsbl_reject as reject
from netaddr import IPAddress, IPNetwork
from netns import CLIENT4, scene as make_scene

pytestmark = pytest.mark.kernel

PROBE_S = 0.3
ZOMBIES = [f"198.19.{net}.{host}" for net in range(1, 9) for host in (10, 11)]  # 16 in 8 /24s
NEVER, GOOD, OUTSIDE = "198.19.200.7", "198.19.5.5", "198.51.100.9"


@pytest.fixture
def scene():
    with make_scene("rtd") as sc:
        yield sc


def test_announced_prefix_drops_an_address_that_never_attacked(scene, tmp_path):
    (tmp_path / "ipasn.dat").write_text("; test table\n198.19.0.0/16\t64500\n203.0.113.0/24\t64501\n")
    (tmp_path / "asnames.json").write_text(json.dumps({"64500": "NBTEST-AS Netblock test network, ZZ"}))
    log = tmp_path / "mail.log"
    log.write_text("".join(line + "\n" for line in [delivered(GOOD), *map(reject, ZOMBIES)]))
    conf = tmp_path / "netblock.toml"
    policy = dnsbl_policy(threshold=1, min_count=None, density=False)
    conf.write_text(daemon_toml(f"{tmp_path}/run/netblock.lock", backend="nftables", policy=policy, extra=f"""
[report]
asn_file = "{tmp_path}/ipasn.dat"
as_names_file = "{tmp_path}/asnames.json"
[routed]
enabled = true
"""))

    def netblock(*args: str):
        return netblock_in(scene.server, conf, *args, db=tmp_path / "nb.db").stdout

    scene.add_client(NEVER, GOOD, OUTSIDE)
    scene.listen()
    reach = lambda: {src: scene.probe(src, timeout=PROBE_S) for src in (NEVER, GOOD, OUTSIDE, CLIENT4)}  # noqa: E731
    assert reach() == {NEVER: "open", GOOD: "open", OUTSIDE: "open", CLIENT4: "open"}

    netblock("ingest", str(log))
    assert reach() == {NEVER: "timeout", GOOD: "open", OUTSIDE: "open", CLIENT4: "open"}

    def dropped_from(ip: str) -> tuple[str, int]:
        (hit,) = [(c["netblock"], c["packets"]) for c in json.loads(netblock("sample", "--json"))
                  if IPAddress(ip) in IPNetwork(c["netblock"])]
        return hit

    element, before = dropped_from(NEVER)
    assert IPNetwork(element) in IPNetwork("198.19.0.0/16") and IPNetwork(element).prefixlen <= 17
    assert scene.syn(NEVER, 3) == 3
    assert dropped_from(NEVER) == (element, before + 3)  # the routed element's own counter

    blocks = json.loads(netblock("list", "--json"))
    wide = [b for b in blocks if b["netblock"] == "198.19.0.0/16"]
    assert len(wide) == 1 and wide[0]["reason"] == \
        "routed: 16 offenders in 8 /24s of AS64500 NBTEST-AS 198.19.0.0/16"
    why = json.loads(netblock("why", "--json", NEVER))
    (r,) = why["routed"]
    assert (r["asn"], r["as_name"], r["announced"], r["blocked"]) == \
        (64500, "NBTEST-AS Netblock test network, ZZ", "198.19.0.0/16", True)
    assert sorted(o["ip"] for o in r["offenders"]) == sorted(ZOMBIES)
    assert why["verdict"].startswith("blocked: 198.19.0.0/16 (routed: ")
