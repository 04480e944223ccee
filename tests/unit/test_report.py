"""The report's arithmetic: deltas across resets, roll-up across re-aggregation, units."""

from datetime import datetime, timedelta, timezone

from netaddr import IPNetwork

from netblock import report as rep
from netblock.model import Sample

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


def test_merge_rolls_history_into_the_wider_block():
    samples = [s(0, "198.18.1.0/25", 5), s(0, "198.18.1.128/25", 3), s(10, "198.18.1.0/25", 7),
               s(10, "198.18.1.128/25", 3), s(20, "198.18.1.0/24", 4)]
    rows = rep.drops(samples, None, None)
    out = rep.rollup(rows, [IPNetwork("198.18.1.0/24")])
    assert list(out) == [IPNetwork("198.18.1.0/24")]
    assert out[IPNetwork("198.18.1.0/24")].packets == 7 + 3 + 4


def test_split_goes_to_largest_piece_and_gone_blocks_keep_rows():
    samples = [s(0, "198.18.0.0/16", 50), s(0, "203.0.113.7/32", 2),
               s(10, "198.18.128.0/17", 1), s(10, "198.18.0.0/24", 1)]
    out = rep.rollup(rep.drops(samples, None, None), [IPNetwork("198.18.128.0/17"), IPNetwork("198.18.0.0/24")])
    assert out[IPNetwork("198.18.128.0/17")].packets == 51
    assert out[IPNetwork("198.18.0.0/24")].packets == 1
    assert out[IPNetwork("203.0.113.7/32")].packets == 2


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

    from netblock.store import Store

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
