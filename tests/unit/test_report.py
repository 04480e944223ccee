"""The report's arithmetic: deltas across resets, pieces grouped under the blocks as decided, units."""

from datetime import datetime, timedelta, timezone

from netaddr import IPNetwork

from netblock.model import Block, Sample
from netblock.reports import tables as rep

# A pinned instant, not today: in this file it meets only fakes, the store and pure functions,
# never the kernel's or the real clock (scripts/test-clock.sh runs the suite 400 days ahead).
T0 = datetime(2026, 11, 21, tzinfo=timezone.utc)


def s(minutes, net, packets, nbytes=None):
    return Sample(T0 + timedelta(minutes=minutes), IPNetwork(net), packets, packets * 40 if nbytes is None else nbytes)


def test_seed_table_layout():
    rows = [rep.Row(IPNetwork("212.216.176.0/24"), 7193, 391_000), rep.Row(IPNetwork("221.216.0.0/13"), 4058, 195_300),
            rep.Row(IPNetwork("65.214.61.100/32"), 3768, 181_000)]
    assert rep.table(rows).splitlines() == [
        "Host/Mask            Packets  Bytes",
        "212.216.176.0/24        7193   391K",
        "221.216.0.0/13          4058   195K",
        "65.214.61.100           3768   181K",
    ]


def test_units_match_iptables():
    assert [rep.human(x) for x in (0, 99999, 100000, 100499, 100500, 9_999_499, 9_999_500)] == [
        "0", "99999", "100K", "100K", "101K", "9999K", "10M"]


def test_window_deltas_use_baseline_before_window():
    samples = [s(0, "198.18.1.0/24", 10), s(60, "198.18.1.0/24", 25), s(120, "198.18.1.0/24", 40)]
    rows = rep.drops(samples, T0 + timedelta(minutes=30), T0 + timedelta(minutes=150))
    assert (rows[IPNetwork("198.18.1.0/24")].packets, rows[IPNetwork("198.18.1.0/24")].bytes) == (30, 1200)


def test_reset_counts_from_zero_not_negative():
    samples = [s(0, "198.18.1.0/24", 100), s(10, "198.18.1.0/24", 150), s(20, "198.18.1.0/24", 7),
               s(30, "198.18.1.0/24", 9)]
    row = rep.drops(samples, None, None)[IPNetwork("198.18.1.0/24")]
    assert row.packets == 100 + 50 + 7 + 2
    assert row.first_seen == T0 and row.last_seen == T0 + timedelta(minutes=30)


def blk(net, reason="", minutes=0):
    return Block(IPNetwork(net), reason, "policy", T0 + timedelta(minutes=minutes), None)


def test_pieces_group_under_the_blocks_as_decided():
    decided = rep.Decisions([blk("198.19.0.0/16", "widened"), blk("198.19.5.7/32", "single"),
                             blk("198.18.0.0/24", "a"), blk("198.18.1.0/24", "b"), blk("2001:db8::/48", "v6")])
    assert [(str(d.netblock), d.reason, d.blocks) for d in decided.decisions] == [
        ("198.18.0.0/23", "a", 2), ("198.19.0.0/16", "widened", 2), ("2001:db8::/48", "v6", 1)]
    samples = [s(0, "198.19.0.0/17", 0), s(0, "198.19.128.0/17", 0), s(10, "198.19.0.0/17", 5),
               s(10, "198.19.128.0/17", 3), s(20, "198.19.0.0/16", 4),  # the carve-out ended: one element
               s(10, "198.18.0.0/23", 2), s(10, "203.0.113.7/32", 9), s(10, "2001:db8::/49", 1)]
    out = {r.netblock: r for r in rep.group(rep.drops(samples, None, None).values(), decided)}
    assert {str(k): (r.packets, r.reason) for k, r in out.items()} == {
        "198.19.0.0/16": (12, "widened"), "198.18.0.0/23": (2, "a"), "203.0.113.7/32": (9, ""),
        "2001:db8::/48": (1, "v6")}
    assert sorted(map(str, out[IPNetwork("198.19.0.0/16")].rolled_up)) == ["198.19.0.0/17", "198.19.128.0/17"]


def test_an_ended_decision_takes_what_the_current_ones_do_not_hold():
    now = rep.Decisions([blk("198.18.5.0/24", "narrow now")])
    ended = rep.Decisions([blk("198.18.0.0/16", "wide before")])
    out = {r.netblock: r for r in rep.group(
        rep.drops([s(0, "198.18.5.0/24", 2), s(0, "198.18.128.0/17", 7)], None, None).values(), now, ended)}
    assert {str(k): (r.packets, r.reason) for k, r in out.items()} == {
        "198.18.5.0/24": (2, "narrow now"), "198.18.0.0/16": (7, "wide before")}


def test_carve_outs_are_the_protected_space_inside_a_row():
    rows = [rep.Row(IPNetwork("198.19.0.0/16")), rep.Row(IPNetwork("198.18.5.0/24"))]
    rep.carve_outs(rows, [IPNetwork("198.19.44.44/32"), IPNetwork("198.19.44.45/32"), IPNetwork("10.0.0.0/8"),
                          IPNetwork("198.18.0.0/15"), IPNetwork("2001:db8::1/128")])
    assert [list(map(str, r.carved)) for r in rows] == [["198.19.44.44/31"], []]


def test_comparison_ranks_new_entries_and_those_that_dropped_out():
    now = [rep.Row(IPNetwork(n), p, p) for n, p in (("198.18.1.0/24", 50), ("198.18.2.0/24", 20),
                                                    ("198.18.9.0/24", 1))]
    before = [rep.Row(IPNetwork(n), p, p) for n, p in (("198.18.9.0/24", 30), ("198.18.1.0/24", 10),
                                                       ("198.18.7.0/24", 8))]
    shown = rep.top(now, 2)
    gone = rep.compare(shown, now, before, 2)
    assert [(str(r.netblock), r.prev_rank, r.prev_packets) for r in shown] == [
        ("198.18.1.0/24", 2, 10), ("198.18.2.0/24", None, None)]
    assert [(str(r.netblock), r.packets, r.prev_rank, r.prev_packets) for r in gone] == [("198.18.9.0/24", 1, 1, 30)]


def test_top_orders_and_skips_silent():
    rows = [rep.Row(IPNetwork("198.18.1.0/24"), 3, 500), rep.Row(IPNetwork("198.18.2.0/24"), 7, 100),
            rep.Row(IPNetwork("198.18.3.0/24"), 0, 0)]
    assert [str(r.netblock) for r in rep.top(rows, 10)] == ["198.18.2.0/24", "198.18.1.0/24"]
    assert [str(r.netblock) for r in rep.top(rows, 10, by="bytes")] == ["198.18.1.0/24", "198.18.2.0/24"]
    assert len(rep.top(rows, 1)) == 1


def test_thinning_keeps_totals():
    samples = [s(m, "198.18.1.0/24", m) for m in range(0, 3 * 24 * 60, 60)]
    thinned = rep.thin(samples, T0 + timedelta(days=2))
    assert len(thinned) < len(samples)
    assert rep.drops(thinned, None, None)[IPNetwork("198.18.1.0/24")].packets == samples[-1].packets


def test_store_drops_equal_the_pure_arithmetic():
    """store.sample_drops (what reports run on) against report.drops, on change-only samples with resets."""
    import random

    from netblock.store.sqlite import Store

    rng = random.Random(7)
    nets = [IPNetwork(f"198.18.{i}.0/24") for i in range(6)] + [IPNetwork("2001:db8:1::/48")]
    counts = {n: [0, 0] for n in nets}
    everything = []
    with Store.open(":memory:") as store:
        for m in range(0, 4000, 7):
            now = {}
            for n in nets:
                r = rng.random()
                if r < 0.05:
                    counts[n] = [0, 0]  # reset
                elif r < 0.5:
                    counts[n][0] += rng.randint(1, 5)
                    counts[n][1] += rng.randint(40, 400)
                now[n] = tuple(counts[n])
            store.add_changed_samples(T0 + timedelta(minutes=m), now)
            everything += [Sample(T0 + timedelta(minutes=m), n, *now[n]) for n in nets]
        assert len(store.samples()) < len(everything)  # change-only wrote less
        for since, until in ((None, None), (T0 + timedelta(minutes=500), T0 + timedelta(minutes=2000)),
                             (T0 + timedelta(minutes=501), None), (None, T0 + timedelta(minutes=700))):
            pure = {str(k): (r.packets, r.bytes, r.first_seen, r.last_seen)
                    for k, r in rep.drops(everything, since, until).items() if r.packets or r.bytes}
            assert store.sample_drops(since, until) == pure
            daily = store.daily_drops(since, until)
            assert sum(p for p, _ in daily.values()) == sum(v[0] for v in pure.values())


def test_parse_net_is_the_store_text_form():
    for text in ("198.18.1.0/24", "203.0.113.7/32", "2001:db8::/32", "2001:db8::1/128"):
        assert rep.parse_net(text) == IPNetwork(text)
