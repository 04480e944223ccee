"""The blocking policy: thresholds, windows and TTLs per class, protection, widening, no churn, `why`."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone

import pytest
from netaddr import IPAddress, IPNetwork

from netblock import cli, config as config_mod
from netblock.decide import explain, policy
from netblock.errors import BadInput
from netblock.model import AllowEntry, Block, Observation
from netblock.store.sqlite import Store

# A pinned instant, not today: in this file it meets only fakes, the store and pure functions,
# never the kernel's or the real clock (scripts/test-clock.sh runs the suite 400 days ahead).
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)

TOML = """
[policy]
delivered_window = "30d"

[policy.classes.dnsbl]
threshold = 2
window = "1h"
ttl = "1d"
widen = true

[policy.classes.no-rdns]
threshold = 3
window = "30m"
ttl = "6h"
widen = false

[policy.classes.protocol]
threshold = 1
window = "1d"
ttl = "1h"
widen = false

[widen]
enabled = true
window = "1d"
rules = [{family = 4, prefixlen = 24, min_count = 3}]
"""


@pytest.fixture
def cfg():
    return config_mod.loads(TOML)


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "nb.db")
    yield s
    s.close()


def seen(store, ip: str, cls: str, *minutes_ago: float, source: str = "/var/log/mail.log") -> None:
    store.add_observations(
        Observation(NOW - timedelta(minutes=m), IPAddress(ip), cls, "postfix", source, int(m * 1000))
        for m in minutes_ago)


def decided(store, cfg, now=NOW) -> dict[str, Block]:
    return {str(b.netblock): b for b in policy.decide(store, cfg, now)}


# ------------------------------------------------------------------ thresholds, windows, TTLs

def test_threshold_within_the_window_makes_a_block(store, cfg):
    seen(store, "198.18.1.1", "no-rdns", 20, 10)
    assert decided(store, cfg) == {}
    seen(store, "198.18.1.1", "no-rdns", 5)
    got = decided(store, cfg)
    assert list(got) == ["198.18.1.1/32"]
    b = got["198.18.1.1/32"]
    assert b.source == "policy" and b.created == NOW
    assert b.expires == NOW - timedelta(minutes=5) + timedelta(hours=6)  # last offence + ttl
    assert b.reason == "3 no-rdns within 30m (threshold 3)"


def test_observations_outside_the_window_do_not_count(store, cfg):
    seen(store, "198.18.1.2", "no-rdns", 45, 10, 5)  # 45 min ago: outside no-rdns' 30m
    assert decided(store, cfg) == {}


def test_each_class_has_its_own_ttl(store, cfg):
    seen(store, "198.18.1.3", "dnsbl:zen.example", 30, 20)
    seen(store, "198.18.1.4", "protocol", 10)
    got = decided(store, cfg)
    assert got["198.18.1.3/32"].expires == NOW - timedelta(minutes=20) + timedelta(days=1)
    assert got["198.18.1.4/32"].expires == NOW - timedelta(minutes=10) + timedelta(hours=1)


def test_a_block_that_has_already_run_out_is_not_decided(store, cfg):
    seen(store, "198.18.1.5", "protocol", 120)  # inside protocol's 1d window, but ttl 1h is over
    assert decided(store, cfg) == {}


def test_classes_without_a_rule_never_block(store, cfg):
    seen(store, "198.18.1.7", "connect", 1, 2, 3, 4, 5)
    seen(store, "198.18.1.7", "no-such-class", 1, 2, 3, 4, 5)
    assert decided(store, cfg) == {}


def test_dnsbl_zones_fall_under_the_dnsbl_rule_and_count_together(store, cfg):
    seen(store, "198.18.1.8", "dnsbl:zen.example", 10)
    assert decided(store, cfg) == {}
    seen(store, "198.18.1.8", "dnsbl:bl.example", 5)
    got = decided(store, cfg)
    assert got["198.18.1.8/32"].reason == "2 dnsbl (dnsbl:bl.example, dnsbl:zen.example) within 1h (threshold 2)"
    assert got["198.18.1.8/32"].expires == NOW - timedelta(minutes=5) + timedelta(days=1)


def test_a_zone_with_its_own_rule_uses_it(store):
    cfg = config_mod.loads(TOML + '\n[policy.classes."dnsbl:strict.example"]\n'
                           'threshold = 1\nwindow = "1h"\nttl = "7d"\nwiden = false\n')
    seen(store, "198.18.1.9", "dnsbl:strict.example", 10)
    got = decided(store, cfg)
    assert got["198.18.1.9/32"].expires == NOW - timedelta(minutes=10) + timedelta(days=7)


# ------------------------------------------------------------------ protection

def test_a_sender_that_delivered_mail_is_never_blocked(store, cfg):
    seen(store, "198.18.2.1", "dnsbl:zen.example", 10, 5, 1)
    seen(store, "198.18.2.1", "delivered", 60 * 24 * 10)  # ten days ago: inside the 30d window
    assert decided(store, cfg) == {}
    seen(store, "198.18.2.2", "dnsbl:zen.example", 10, 5, 1)
    seen(store, "198.18.2.2", "delivered", 60 * 24 * 40)  # forty days ago: no longer protects
    assert list(decided(store, cfg)) == ["198.18.2.2/32"]


def test_allowlisted_and_builtin_space_is_never_decided(store, cfg):
    store.allow_add([AllowEntry(IPNetwork("198.18.3.0/28"), "partner", NOW)])
    seen(store, "198.18.3.1", "dnsbl:zen.example", 10, 5)
    seen(store, "127.0.0.1", "dnsbl:zen.example", 10, 5)
    assert decided(store, cfg) == {}


# ------------------------------------------------------------------ widening

def test_dense_offenders_widen_to_their_prefix(store, cfg):
    for i, last in ((1, 10), (2, 8), (3, 6)):
        seen(store, f"198.18.5.{i}", "dnsbl:zen.example", last + 1, last)
    got = decided(store, cfg)
    wide = got["198.18.5.0/24"]
    assert wide.reason == "widened: 3 offenders in 198.18.5.0/24"
    assert wide.expires == NOW - timedelta(minutes=6) + timedelta(days=1)  # the last offender's
    assert {"198.18.5.1/32", "198.18.5.2/32", "198.18.5.3/32"} <= set(got)


def test_widening_counts_only_offenders_of_widening_classes(store, cfg):
    for i in (1, 2, 3):
        seen(store, f"198.18.6.{i}", "no-rdns", 3, 2, 1)  # blocked, but no-rdns does not widen
    assert "198.18.6.0/24" not in decided(store, cfg)


def test_a_delivered_sender_is_no_offender_for_widening(store, cfg):
    for i in (1, 2, 3):
        seen(store, f"198.18.8.{i}", "dnsbl:zen.example", 2, 1)
    seen(store, "198.18.8.3", "delivered", 60)
    got = decided(store, cfg)
    assert "198.18.8.0/24" not in got and "198.18.8.3/32" not in got


def test_widening_can_be_switched_off(store):
    cfg = config_mod.loads(TOML.replace("enabled = true", "enabled = false"))
    for i in (1, 2, 3):
        seen(store, f"198.18.9.{i}", "dnsbl:zen.example", 2, 1)
    assert "198.18.9.0/24" not in decided(store, cfg)


# ------------------------------------------------------------------ recording without churn

def test_recording_again_changes_nothing_until_a_new_offence(store, cfg):
    seen(store, "198.18.10.1", "dnsbl:zen.example", 10, 5)
    first = policy.record(store, policy.decide(store, cfg, NOW), NOW)
    assert [str(b.netblock) for b in first] == ["198.18.10.1/32"]
    later = NOW + timedelta(minutes=3)
    assert policy.record(store, policy.decide(store, cfg, later), later) == []
    store.add_observations([Observation(later, IPAddress("198.18.10.1"), "dnsbl:zen.example", "postfix")])
    again = policy.record(store, policy.decide(store, cfg, later), later)
    assert len(again) == 1
    b = store.get_block("198.18.10.1/32")
    assert b.expires == later + timedelta(days=1)
    assert b.created == NOW  # the block is the same one, extended


def test_an_expired_block_decided_again_counts_as_reblocked(store, cfg):
    store.put_blocks([Block(IPNetwork("198.18.10.2/32"), "old", "policy", NOW - timedelta(days=3),
                            NOW - timedelta(days=2), reblocks=1)])
    seen(store, "198.18.10.2", "dnsbl:zen.example", 2, 1)
    policy.record(store, policy.decide(store, cfg, NOW), NOW)
    assert store.get_block("198.18.10.2/32").reblocks == 2


def test_a_manual_block_keeps_its_reason_and_a_permanent_one_is_left_alone(store, cfg):
    store.put_blocks([
        Block(IPNetwork("198.18.10.3/32"), "by hand", "cli", NOW - timedelta(hours=1), NOW + timedelta(minutes=5)),
        Block(IPNetwork("198.18.10.4/32"), "forever", "cli", NOW - timedelta(hours=1), None),
    ])
    seen(store, "198.18.10.3", "dnsbl:zen.example", 2, 1)
    seen(store, "198.18.10.4", "dnsbl:zen.example", 2, 1)
    changed = policy.record(store, policy.decide(store, cfg, NOW), NOW)
    assert [str(b.netblock) for b in changed] == ["198.18.10.3/32"]
    kept = store.get_block("198.18.10.3/32")
    assert (kept.reason, kept.source) == ("by hand", "cli")
    assert kept.expires == NOW - timedelta(minutes=1) + timedelta(days=1)
    assert store.get_block("198.18.10.4/32").expires is None


# ------------------------------------------------------------------ explaining

def test_explain_a_blocked_address(store, cfg):
    seen(store, "198.18.5.1", "dnsbl:zen.example", 11, 10)
    seen(store, "198.18.5.2", "dnsbl:zen.example", 9, 8)
    seen(store, "198.18.5.3", "dnsbl:zen.example", 7, 6)
    policy.record(store, policy.decide(store, cfg, NOW), NOW)
    ex = explain.explain(store, cfg, "198.18.5.2", NOW)
    assert ex.verdict.startswith("blocked: ")
    text = "\n".join(explain.render(ex))
    assert "2026-11-27 11:51:00Z  198.18.5.2  dnsbl:zen.example  postfix  /var/log/mail.log byte 9000" in text
    assert "mail.log:9000" not in text  # a byte offset is never shown as if it were a line number
    assert ("198.18.5.2 dnsbl (dnsbl:zen.example): 2 seen, threshold 2 within 1h, ttl 1d -> BLOCK "
            "until 2026-11-28 11:52:00Z") in text
    assert "widened: 198.18.5.0/24 holds 3 offenders, rule ipv4 /24 at 3" in text
    assert "block: 198.18.5.0/24 [policy] widened: 3 offenders in 198.18.5.0/24" in text
    data = json.loads(json.dumps(ex.to_dict(), default=str))
    assert data["target"] == "198.18.5.2"
    assert [o["position"] for o in data["observations"]] == [9000, 8000]
    assert data["rules"][0]["fired"] is True and data["rules"][0]["threshold"] == 2
    assert data["widened"][0]["offenders"] == ["198.18.5.1", "198.18.5.2", "198.18.5.3"]


def test_explain_an_address_below_its_threshold(store, cfg):
    seen(store, "198.18.11.1", "no-rdns", 10)
    ex = explain.explain(store, cfg, "198.18.11.1", NOW)
    assert ex.verdict == "not blocked: no rule reached its threshold"
    assert ex.checks[0].note == "1 of 3 needed within 30m"
    assert not ex.checks[0].fired


def test_explain_a_protected_address(store, cfg):
    seen(store, "198.18.12.1", "dnsbl:zen.example", 5, 4)
    seen(store, "198.18.12.1", "delivered", 60)
    store.allow_add([AllowEntry(IPNetwork("198.18.13.0/24"), "partner", NOW)])
    ex = explain.explain(store, cfg, "198.18.12.1", NOW)
    assert ex.protected == [("delivered", "198.18.12.1")]
    assert ex.verdict.startswith("protected (delivered)")
    assert ex.checks[0].note == "over the threshold, but protected"
    allowed = explain.explain(store, cfg, "198.18.13.7", NOW)
    assert allowed.protected == [("allowlist", "198.18.13.0/24")]
    own = explain.explain(store, cfg, "198.18.14.1", NOW, own=[IPNetwork("198.18.14.1/32")])
    assert own.protected == [("own address", "198.18.14.1/32")]


def test_explain_a_prefix_collects_its_addresses(store, cfg):
    seen(store, "198.18.15.1", "no-rdns", 3)
    seen(store, "198.18.15.200", "protocol", 2)
    seen(store, "198.18.16.1", "protocol", 1)
    ex = explain.explain(store, cfg, "198.18.15.0/24", NOW)
    assert sorted({str(o.ip) for o in ex.observations}) == ["198.18.15.1", "198.18.15.200"]
    assert [c.fired for c in ex.checks] == [False, True]


def test_explain_refuses_bad_targets():
    for bad in ("198.18.0.300", "198.18.1.1/33", "mail.example"):
        with pytest.raises(BadInput):
            explain.parse_target(bad)
    assert str(explain.parse_target("::ffff:198.18.1.1")) == "198.18.1.1/32"


def test_why_command_prints_text_and_json(tmp_path, monkeypatch):
    conf = tmp_path / "netblock.toml"
    conf.write_text(TOML)
    db = tmp_path / "nb.db"
    with Store.open(db) as s:
        seen(s, "198.18.17.1", "no-rdns", 3, 2, 1)
    monkeypatch.setenv("NETBLOCK_NOW", NOW.isoformat())
    monkeypatch.setattr("netblock.system.hostaddrs.own_addresses", lambda: [])

    def run(*argv):
        out = io.StringIO()
        args = cli.build_parser().parse_args(["--config", str(conf), "--db", str(db), *argv])
        ctx = cli.Context(args, stdout=out, stderr=io.StringIO())
        try:
            assert args.handler(args, ctx) == 0
        finally:
            ctx.close()
        return out.getvalue()

    text = run("why", "198.18.17.1")
    assert text.splitlines()[0] == "198.18.17.1: over a threshold: blocked at the next sync"
    data = json.loads(run("why", "--json", "198.18.17.1"))
    assert data["rules"][0]["class"] == "no-rdns" and data["rules"][0]["count"] == 3


# ------------------------------------------------------------------ a storm's shapes

def test_a_widened_block_lives_as_long_as_its_longest_lived_offender(store):
    cfg = config_mod.loads(TOML + '\n[policy.classes.spamtrap]\nthreshold = 1\nwindow = "1h"\nttl = "7d"\n'
                           'widen = true\n')
    seen(store, "198.18.11.1", "dnsbl:zen.example", 3, 2)
    seen(store, "198.18.11.2", "dnsbl:zen.example", 3, 1)
    seen(store, "198.18.11.3", "spamtrap", 40)
    seen(store, "198.18.11.3", "dnsbl:zen.example", 5, 4)  # two rules for one offender: counted once
    wide = decided(store, cfg)["198.18.11.0/24"]
    assert wide.reason == "widened: 3 offenders in 198.18.11.0/24"
    assert wide.expires == NOW - timedelta(minutes=40) + timedelta(days=7)


def test_widening_ignores_offenders_outside_the_prefix_for_its_expiry(store, cfg):
    for i in (1, 2, 3):
        seen(store, f"198.18.12.{i}", "dnsbl:zen.example", 30, 20)
    seen(store, "198.18.13.1", "dnsbl:zen.example", 2, 1)  # later, but in another /24
    got = decided(store, cfg)
    assert got["198.18.12.0/24"].expires == NOW - timedelta(minutes=20) + timedelta(days=1)
    assert "198.18.13.0/24" not in got


def test_shield_covers_exactly_what_an_ipset_of_its_networks_holds():
    import random

    from netaddr import IPSet

    from netblock.aggregate import protected_builtin
    from netblock.decide import protect

    sh = protect.Protection(list(protected_builtin()),
                             [IPNetwork("198.18.20.0/23"), IPNetwork("198.18.21.128/25"), IPNetwork("2001:db8:5::/48")],
                             {IPAddress("198.18.30.1")}, [IPNetwork("203.0.113.7/32")])
    nets = IPSet(sh.builtin + sh.allowlist + sh.own)
    rng = random.Random(4)
    probes = [IPAddress("198.18.30.1"), IPAddress("198.18.19.255"), IPAddress("198.18.20.0"),
              IPAddress("198.18.21.255"), IPAddress("198.18.22.0"), IPAddress("203.0.113.7"),
              IPAddress("203.0.113.8"), IPAddress("2001:db8:5::1"), IPAddress("2001:db8:6::")]
    probes += [IPAddress(rng.getrandbits(32), 4) for _ in range(2000)]
    probes += [IPAddress(rng.getrandbits(128), 6) for _ in range(500)]
    for ip in probes:
        assert sh.covers(ip) == (ip in sh.delivered or ip in nets), ip


# -- the element budget: carve-out amplification (issue #15) ---------------------------

def _widened_with_deliverers(store, n_deliverers: int) -> None:
    for i in (1, 2, 3):
        seen(store, f"198.18.5.{i}", "dnsbl:zen.example", 5, 4)
    for i in range(n_deliverers):  # spread out: each one costs the /24 several more elements
        seen(store, f"198.18.5.{16 + 8 * i}", "delivered", 60 * 24)


def test_a_widened_block_within_its_element_budget_is_decided_and_carved(store):
    cfg = config_mod.loads(TOML.replace('delivered_window = "30d"', 'delivered_window = "30d"\nmax_elements_per_block = 64'))
    _widened_with_deliverers(store, 3)
    nets = {str(b.netblock) for b in policy.decide(store, cfg, NOW)}
    assert "198.18.5.0/24" in nets


def test_past_its_element_budget_a_widened_block_falls_back_to_its_offenders(store):
    cfg = config_mod.loads(TOML.replace('delivered_window = "30d"', 'delivered_window = "30d"\nmax_elements_per_block = 8'))
    _widened_with_deliverers(store, 3)  # 3 isolated deliverers in a /24: 13 elements
    decided = {str(b.netblock): b for b in policy.decide(store, cfg, NOW)}
    assert set(decided) == {"198.18.5.1/32", "198.18.5.2/32", "198.18.5.3/32"}
    policy.record(store, decided.values(), NOW)
    text = "\n".join(explain.render(explain.explain(store, cfg, "198.18.5.0/24", NOW)))
    assert "widened: 198.18.5.0/24 holds 3 offenders" in text
    assert "falls back to its offenders: with the protected addresses inside it cut out it would take more " \
           "than 8 kernel elements" in text
    data = explain.explain(store, cfg, "198.18.5.7", NOW).to_dict()
    assert data["widened"][0]["fallback"] is True and data["widened"][0]["max_elements"] == 8
    assert data["verdict"] == "not blocked: no offences observed"


def test_sync_leaves_out_a_stored_widened_block_that_grew_past_its_budget(store):
    from netblock.run.sync import plan

    cfg = config_mod.loads(TOML.replace('delivered_window = "30d"', 'delivered_window = "30d"\nmax_elements_per_block = 8'))
    store.put_blocks([Block(IPNetwork("198.18.5.0/24"), "widened: 3 offenders in 198.18.5.0/24", "policy", NOW,
                            NOW + timedelta(days=1)),
                      Block(IPNetwork("198.18.5.1/32"), "3 dnsbl", "policy", NOW, NOW + timedelta(days=1)),
                      Block(IPNetwork("198.18.6.0/24"), "by hand", "cli", NOW, None)])
    for i in range(3):
        seen(store, f"198.18.5.{16 + 8 * i}", "delivered", 60)
        seen(store, f"198.18.6.{16 + 8 * i}", "delivered", 60)
    planned = plan(store, cfg, now=NOW, own=[])
    assert [(str(b.netblock), cost > 8) for b, cost in planned.over_budget] == [("198.18.5.0/24", True)]
    assert set(map(str, planned.desired)) == {"198.18.5.1/32", "198.18.6.0/24"}  # a manual block is not budgeted
    assert "198.18.5.0/24 [policy] left out" in planned.notes()[0]
    ex = explain.explain(store, cfg, "198.18.5.7", NOW)
    assert ex.verdict == "not blocked: no offences observed" and ex.to_dict()["left_out"] == [
        {"netblock": "198.18.5.0/24", "max_elements": 8}]
    assert "left out: 198.18.5.0/24 would take more than 8 kernel elements" in "\n".join(explain.render(ex))


def test_the_1000_deliverers_of_issue_15_are_priced_without_building_the_pieces():
    """The figures of bench/bench_carve.py, in the pure core: a /48 and a /16 with 1000 deliverers inside."""
    from netblock import limits

    v6 = limits.Carved([IPNetwork(f"2001:db8:48:{0x100 + i:x}::{i % 7 + 1:x}") for i in range(1000)])
    v4 = limits.Carved([IPNetwork(f"198.18.{70 + i // 6}.{(i % 6) * 40 + 3}") for i in range(1000)])
    assert v6.cost(IPNetwork("2001:db8:48::/48")) > 60_000 and v4.cost(IPNetwork("198.18.0.0/16")) > 5_000
    for carved, net in ((v6, IPNetwork("2001:db8:48::/48")), (v4, IPNetwork("198.18.0.0/16"))):
        assert 64 < carved.cost(net, 64) <= 64 + 256  # counting stops soon after the budget
