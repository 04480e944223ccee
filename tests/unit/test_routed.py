"""Widening to announced prefixes: the rule and its limits on the real 2014 routing table and on
tiny hand-made tables, then through policy.decide, sync's carve-out and `netblock why`."""

from __future__ import annotations

import io
import json
import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import dnsbl_policy
from netaddr import IPAddress, IPNetwork, IPSet

from netblock import cli, config as config_mod
from netblock.aggregate import aggregate
from netblock.decide import asn, explain, policy, protect, routed
from netblock.model import Observation
from netblock.run import sync
from netblock.store.sqlite import Store

DATA = Path(__file__).resolve().parents[2] / "../shared/data/asn/pyasn"
TABLE = str(DATA / "ipasn_20140513.dat.gz")
NAMES = str(DATA / "asnames.json.gz")
# A pinned instant, not today: in this file it meets only fakes, the store and pure functions,
# never the kernel's or the real clock (scripts/test-clock.sh runs the suite 400 days ahead).
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
DEFAULTS = routed.settings(config_mod.Config())
ON = replace(DEFAULTS, enabled=True)


def zombies(slash24s: list[str], total: int) -> list[str]:
    """``total`` addresses spread round-robin over the given /24s (as "a.b.c" prefixes)."""
    return [f"{slash24s[i % len(slash24s)]}.{10 + i // len(slash24s)}" for i in range(total)]


# 20 /24s scattered over AS4808's 221.216.0.0/13 (which also announces /16s and longer inside it)
STORM = zombies([f"221.{216 + i % 8}.{(i * 37) % 256}" for i in range(20)], 31)
DELIVERED = "221.218.9.9"  # a real mail server inside the /13
NEVER = "221.222.200.1"  # inside the /13, never seen


class _Off:
    """What policy hands over per offender: its address and when its own block would end."""

    def __init__(self, ip: str, expires: datetime | None = NOW + timedelta(hours=1)):
        self.ip, self.expires, self.classes = IPAddress(ip), expires, ("dnsbl",)


@pytest.fixture(scope="module")
def table():
    return asn.load(TABLE, NAMES)


def tiny(text: str) -> asn.Table:
    return asn.from_text(text, names={64500: "NBTEST-AS Test network, ZZ", 4134: "CHINANET-BACKBONE x, CN"})


# ------------------------------------------------------------------ the rule, pure

def test_defaults_are_the_documented_ones():
    assert (DEFAULTS.enabled, DEFAULTS.min_offenders, DEFAULTS.min_spread) == (False, 16, 8)
    assert DEFAULTS.window == timedelta(days=1) and dict(DEFAULTS.max_prefixlen) == {4: 12, 6: 32}
    assert {15169, 8075, 36647, 10310, 714, 16509, 14618} <= DEFAULTS.do_not_widen


def test_storm_over_20_slash24s_widens_to_the_announced_slash13(table):
    assert len(set(STORM)) == 31 and len({ip.rsplit(".", 1)[0] for ip in STORM}) == 20
    found = routed.find(STORM, table, ON)
    assert [(str(c.netblock), str(c.announced), c.asn, len(c.offenders), c.spread) for c in found] == \
        [("221.216.0.0/13", "221.216.0.0/13", 4808, 31, 20)]
    assert routed.reason(found[0], table) == "routed: 31 offenders in 20 /24s of AS4808 CHINA169-BJ 221.216.0.0/13"
    denser = STORM + zombies([f"221.216.{100 + i}" for i in range(8)], 16)  # AS4808 announces 221.216.0.0/16 too
    assert [(str(c.netblock), len(c.offenders)) for c in routed.find(denser, table, ON)] == [("221.216.0.0/13", 47)]
    inner = {str(c.netblock): c.refused for c in routed.assess(denser, table, ON)}
    assert inner["221.216.0.0/16"] == "inside 221.216.0.0/13, blocked already"


@pytest.mark.parametrize("n_24s, n_ips, blocked", [
    (8, 16, True),  # exactly the defaults
    (8, 15, False),  # one offender short
    (7, 16, False),  # one /24 short
    (1, 200, False),  # a single busy /24 is density widening's job
])
def test_thresholds(table, n_24s, n_ips, blocked):
    ips = zombies([f"221.217.{i}" for i in range(n_24s)], n_ips)
    assert bool(routed.find(ips, table, ON)) is blocked
    if not blocked:
        holding = [c for c in routed.assess(ips, table, ON) if str(c.announced) == "221.216.0.0/13"]
        assert holding[0].refused == f"{n_ips} offenders in {n_24s} /24s, needs 16 in 8"


def test_do_not_widen_holds(table):
    google = zombies([f"142.250.{i}" for i in range(12)], 24)  # AS15169's 142.250.0.0/15
    assert table.lookup(google[0]).asn == 15169
    assert routed.find(google, table, ON) == []
    assert routed.assess(google, table, ON) == []  # its addresses do not count for anyone
    without = replace(ON, do_not_widen=frozenset())
    assert [str(c.netblock) for c in routed.find(google, table, without)] == ["142.250.0.0/15"]


def test_do_not_widen_inside_a_wider_announcement_is_carved_and_not_counted():
    t = tiny("198.18.0.0/15\t64500\n198.18.200.0/24\t15169\n")
    inside_google = zombies(["198.18.200"], 10)
    few = zombies([f"198.18.{i}" for i in range(8)], 12) + inside_google
    assert routed.find(few, t, ON) == []  # 12 outside the provider's mail network's /24: not enough
    enough = zombies([f"198.18.{i}" for i in range(8)], 16) + inside_google
    (c,) = routed.find(enough, t, ON)
    assert str(c.netblock) == "198.18.0.0/15" and len(c.offenders) == 16
    assert c.carved == (IPNetwork("198.18.200.0/24"),)
    assert IPSet(c.parts()) == IPSet(["198.18.0.0/15"]) - IPSet(["198.18.200.0/24"])
    blocks = routed.blocks([_Off(ip) for ip in enough], t, ON, [], NOW)
    assert IPSet(b.netblock for b in blocks) == IPSet(c.parts())
    assert {b.reason for b in blocks} == {"routed: 16 offenders in 8 /24s of AS64500 NBTEST-AS 198.18.0.0/15"}


def test_wider_announcement_is_judged_in_parts_of_the_maximum_size():
    t = tiny("61.128.0.0/10\t4134\n")
    one_part = zombies([f"61.170.{i}" for i in range(8)], 16)
    assert [str(c.netblock) for c in routed.find(one_part, t, ON)] == ["61.160.0.0/12"]
    assert routed.reason(routed.find(one_part, t, ON)[0], t) == \
        "routed: 16 offenders in 8 /24s of AS4134 CHINANET-BACKBONE 61.128.0.0/10 (its /12 61.160.0.0/12)"
    site = replace(ON, max_prefixlen=((4, 10), (6, 32)))
    assert [str(c.netblock) for c in routed.find(one_part, t, site)] == ["61.128.0.0/10"]
    everywhere = [ip for second in (130, 150, 170, 190)
                  for ip in zombies([f"61.{second}.{i}" for i in range(8)], 16)]
    parts = [c.netblock for c in routed.find(everywhere, t, ON)]
    assert [str(n) for n in parts] == ["61.128.0.0/12", "61.144.0.0/12", "61.160.0.0/12", "61.176.0.0/12"]
    assert [str(n) for n in aggregate(parts)] == ["61.128.0.0/10"]  # the kernel gets the seed's /10


def test_protected_as_a_whole_is_refused_and_ipv6_counts_slash48s():
    t = tiny("198.18.0.0/16\t64500\n2001:db8::/32\t64500\n")
    ips = zombies([f"198.18.{i}" for i in range(8)], 16)
    (c,) = routed.assess(ips, t, ON, protected=[IPNetwork("198.18.0.0/15")])
    assert c.refused == "protected as a whole"
    assert routed.find(ips, t, ON, protected=[IPNetwork("198.18.0.0/24")])  # partly: sync carves it
    v6 = [f"2001:db8:{i}::{j}" for i in range(1, 9) for j in (1, 2)]
    (c6,) = routed.find(v6, t, ON)
    assert (str(c6.netblock), c6.spread, c6.unit) == ("2001:db8::/32", 8, 48)
    assert routed.find([f"2001:db8:1:{i}::1" for i in range(16)], t, ON) == []  # one /48


def test_batch_grouping_equals_one_address_at_a_time(table, monkeypatch):
    """IPv4 offenders are grouped with numpy; the plain per-address path (used for IPv6) must agree."""
    rng = random.Random(5)
    ips = [str(IPAddress(rng.choice([0xDDD80000, 0x3D800000, 0xDB800000, 0x8EFA0000, 0x01000000])
                         + rng.getrandbits(20), 4)) for _ in range(3000)]
    ips += [str(IPAddress(rng.getrandbits(32), 4)) for _ in range(500)]
    for s in (ON, replace(ON, min_offenders=3, min_spread=2), replace(ON, max_prefixlen=((4, 16), (6, 32)))):
        fast = routed.assess(ips, table, s)
        monkeypatch.setattr(routed, "_groups_v4", routed._groups_py)
        slow = routed.assess(ips, table, s)
        monkeypatch.undo()
        assert len(fast) > 100 and any(c.blocked for c in fast)
        key = lambda c: (str(c.netblock), str(c.announced), c.asn, sorted(c.offenders), c.spread, c.refused)  # noqa: E731
        assert sorted(map(key, fast)) == sorted(map(key, slow))


def test_block_lives_as_long_as_its_longest_lived_offender():
    t = tiny("198.18.0.0/16\t64500\n")
    ips = zombies([f"198.18.{i}" for i in range(8)], 16)
    offs = [_Off(ip, NOW + timedelta(minutes=i)) for i, ip in enumerate(ips)]
    (b,) = routed.blocks(offs, t, ON, [], NOW)
    assert b.expires == NOW + timedelta(minutes=15) and b.source == "policy"
    assert routed.blocks(offs + [_Off(ips[0], None)], t, ON, [], NOW)[0].expires is None
    assert routed.blocks(offs, t, ON, [], NOW + timedelta(minutes=16)) == []


# ------------------------------------------------------------------ through policy, sync and why

TOML = '[policy]\ndelivered_window = "30d"\n' + dnsbl_policy(threshold=1, min_count=None, density=False) + f"""
[report]
asn_file = "{TABLE}"
as_names_file = "{NAMES}"
[routed]
enabled = true
"""


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "nb.db")
    yield s
    s.close()


def seen(store, ips, cls: str, minutes_ago: float = 10) -> None:
    store.add_observations(Observation(NOW - timedelta(minutes=minutes_ago), IPAddress(ip), cls, "postfix",
                                       "/var/log/mail.log", i) for i, ip in enumerate(ips))


def test_policy_widens_to_the_slash13_and_sync_carves_the_delivered_sender(store, table):
    cfg = config_mod.loads(TOML)
    seen(store, STORM, "dnsbl:zen.example")
    seen(store, [DELIVERED], "delivered", 60)
    decided = {str(b.netblock): b for b in policy.decide(store, cfg, NOW)}
    wide = decided.pop("221.216.0.0/13")
    assert wide.reason == "routed: 31 offenders in 20 /24s of AS4808 CHINA169-BJ 221.216.0.0/13"
    assert wide.source == "policy" and wide.expires == NOW - timedelta(minutes=10) + timedelta(days=1)
    assert sorted(decided) == sorted(f"{ip}/32" for ip in STORM)

    blocks = policy.decide(store, cfg, NOW)
    desired = sync.compute_desired(blocks, protect.for_sync(store, cfg, now=NOW, own=[]).all())
    assert IPSet(desired) == IPSet(["221.216.0.0/13"]) - IPSet([DELIVERED])
    assert IPAddress(NEVER) in IPSet(desired) and IPAddress(DELIVERED) not in IPSet(desired)

    assert "221.216.0.0/13" not in {str(b.netblock) for b in policy.decide(store, replace(
        cfg, routed=replace(cfg.routed, enabled=False)), NOW)}


def test_policy_does_not_widen_to_a_webmail_provider(store):
    cfg = config_mod.loads(TOML)
    google = zombies([f"142.250.{i}" for i in range(12)], 24)
    seen(store, google, "dnsbl:zen.example")
    assert {b.netblock.prefixlen for b in policy.decide(store, cfg, NOW)} == {32}
    open_cfg = replace(cfg, routed=replace(cfg.routed, do_not_widen=()))
    assert "142.250.0.0/15" in {str(b.netblock) for b in policy.decide(store, open_cfg, NOW)}


def test_why_names_the_as_the_prefix_and_the_offenders(store, tmp_path, monkeypatch):
    conf = tmp_path / "netblock.toml"
    conf.write_text(TOML)
    seen(store, STORM, "dnsbl:zen.example")
    seen(store, [STORM[0]] * 3, "bad-helo")  # bad-helo's threshold is 3
    store.close()
    monkeypatch.setenv("NETBLOCK_NOW", NOW.isoformat())
    monkeypatch.setattr("netblock.system.hostaddrs.own_addresses", lambda: [])

    def run(*argv):
        out = io.StringIO()
        args = cli.build_parser().parse_args(["--config", str(conf), "--db", str(tmp_path / "nb.db"), *argv])
        ctx = cli.Context(args, stdout=out, stderr=io.StringIO())
        try:
            assert args.handler(args, ctx) == 0
        finally:
            ctx.close()
        return out.getvalue()

    lines = run("why", NEVER).splitlines()
    assert lines[0] == f"{NEVER}: inside a widened prefix: blocked at the next sync"
    head = [x for x in lines if x.startswith("routed: ")]
    assert head == ["routed: 221.216.0.0/13 announced by AS4808 (CHINA169-BJ CNCGROUP IP network China169 "
                    "Beijing Province Network, CN): 31 offenders in 20 /24s -> BLOCK"]
    assert f"  offender {STORM[0]}: bad-helo, dnsbl:zen.example" in lines
    assert "  ... and 11 more (--json lists all)" in lines

    data = json.loads(run("why", "--json", NEVER))
    (r,) = [r for r in data["routed"] if r["blocked"]]
    assert (r["announced"], r["netblock"], r["asn"], r["spread"], r["unit"]) == \
        ("221.216.0.0/13", "221.216.0.0/13", 4808, 20, "/24")
    assert r["as_name"].startswith("CHINA169-BJ")
    assert sorted(o["ip"] for o in r["offenders"]) == sorted(STORM)
    assert {o["ip"]: o["classes"] for o in r["offenders"]}[STORM[1]] == ["dnsbl:zen.example"]

    quiet = json.loads(run("why", "--json", "1.0.0.1"))  # announced, but no offenders there
    assert quiet["routed"] == [] and quiet["verdict"] == "not blocked: no offences observed"


def test_why_says_how_far_an_announced_prefix_is_from_its_threshold(store):
    cfg = config_mod.loads(TOML)
    seen(store, ["221.216.1.10", "221.217.2.10", "221.218.3.10"], "dnsbl:zen.example")
    ex = explain.explain(store, cfg, "221.216.77.1", NOW)
    assert ex.verdict == "not blocked: no offences observed"
    lines = [x for x in explain.render(ex) if x.startswith("routed: ")]
    assert lines[0] == ("routed: 221.216.0.0/13 announced by AS4808 (CHINA169-BJ CNCGROUP IP network China169 "
                        "Beijing Province Network, CN): 3 offenders in 3 /24s -> no block "
                        "(3 offenders in 3 /24s, needs 16 in 8)")
    assert [r["announced"] for r in ex.routed] == ["221.216.0.0/13", "221.216.0.0/16", "221.216.0.0/17"]
