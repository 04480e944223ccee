"""The nftables backend without a kernel: the rendered ruleset and the netlink encoding.

What goes into the kernel must be exactly the text of rules/netblock.nft with
the Settings filled in, and the element keys must be the interval pairs nft
itself would send; both are checked here without root.
"""

from __future__ import annotations

import marshal
import struct
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from netaddr import IPNetwork

from netblock.firewall import Settings, names, nftables
from netblock.firewall.netlink import nftables as nl


def rule_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if "saddr @" in line]


def test_default_ruleset_text():
    text = nftables.render(Settings())
    assert text.startswith("table inet netblock {\n")
    assert f'comment "{names.NFT_TABLE_COMMENT}"' in text
    assert "type filter hook input priority filter; policy accept;" in text
    assert rule_lines(text) == ["tcp dport 25 ip saddr @block4 drop", "tcp dport 25 ip6 saddr @block6 drop"]
    for set_name, key in (("block4", "ipv4_addr"), ("block6", "ipv6_addr")):
        block = text.split(f"set {set_name} {{")[1].split("}")[0]
        assert [line.strip() for line in block.strip().splitlines()] == [
            f"type {key}", "flags interval,timeout", "counter"]
    assert "$" not in text and "#" not in text


def test_variants_fill_every_substitution_point():
    text = nftables.render(Settings(ports=(587, 25, 465), verdict="reject", hook="prerouting"))
    assert "type filter hook prerouting priority raw; policy accept;" in text
    assert rule_lines(text) == ["tcp dport { 25, 465, 587 } ip saddr @block4 reject with tcp reset",
                                "tcp dport { 25, 465, 587 } ip6 saddr @block6 reject with tcp reset"]


@pytest.mark.parametrize("families,kept", [(("ipv4",), "@block4"), (("ipv6",), "@block6")])
def test_a_disabled_family_has_no_rule_but_keeps_its_set(families, kept):
    text = nftables.render(Settings(families=families))
    assert [kept in line for line in rule_lines(text)] == [True]
    assert "set block4 {" in text and "set block6 {" in text


def test_chain_fingerprint_follows_the_settings():
    def comment(s):
        return [line.strip() for line in nftables.render(s).splitlines() if line.strip().startswith("comment")][1]

    assert comment(Settings()) == comment(Settings())
    assert len({comment(Settings()), comment(Settings(ports=(25, 587))), comment(Settings(verdict="reject")),
                comment(Settings(hook="prerouting")), comment(Settings(families=("ipv4",)))}) == 5


def test_template_uses_the_names_of_names_py():
    text = nftables.template()
    assert f"table {names.NFT_FAMILY} {names.NFT_TABLE} {{" in text
    assert f"chain {names.NFT_CHAIN} {{" in text
    for set_name in names.NFT_SET.values():
        assert f"set {set_name} {{" in text and f"@{set_name} " in text


def test_cidr_becomes_the_interval_pair_nft_sends():
    start, end = nftables._network_elements(IPNetwork("198.51.100.0/24").first, 24, 32, None)
    assert (start.key.hex(), start.end, end.key.hex(), end.end) == ("c6336400", False, "c6336500", True)
    (host, after) = nftables._network_elements(IPNetwork("203.0.113.7").first, 32, 32, 5.0)
    assert (host.key.hex(), host.expires, after.key.hex(), after.expires) == ("cb007107", 5.0, "cb007108", None)
    v6 = nftables._network_elements(IPNetwork("2001:db8:bad::/48").first, 48, 128, None)
    assert [e.key.hex() for e in v6] == ["20010db80bad" + "00" * 10, "20010db80bae" + "00" * 10]
    # Up to the top of the address space there is no first address after it: no end element.
    (top,) = nftables._network_elements(IPNetwork("255.255.255.0/24").first, 24, 32, None)
    assert top.key.hex() == "ffffff00" and top.udata


def el(key: str, end: bool = False, expires_ms=None, packets=0, seen=1000.0) -> nl.Element:
    return nl.Element(bytes.fromhex(key), end, None, expires_ms, packets, packets * 40, seen)


def test_dumped_elements_pair_into_cidrs():
    dump = [  # reverse order as the kernel walks it, with the quirks seen on real kernels
        el("ffffff00", packets=2),                        # open range to the top
        el("cb007108", True), el("cb007107", packets=5),  # 203.0.113.7/32
        el("c6336500", True),                             # end of an expired interval: no start left
        el("c0000210", True), el("c0000200"),             # 192.0.2.0/28
        el("c0000200", True), el("c00001ff"),             # hand-made 192.0.1.255-192.0.1.255 adjacent to it
        el("00000000", True),                             # nft's leading end element
    ]
    ranges = {(f, l, has_end): e.packets for f, l, has_end, e in nftables._ranges(dump, 32)}
    ip = lambda t: IPNetwork(t).first  # noqa: E731
    assert ranges == {
        (ip("192.0.1.255"), ip("192.0.1.255"), True): 0,
        (ip("192.0.2.0"), ip("192.0.2.15"), True): 0,
        (ip("203.0.113.7"), ip("203.0.113.7"), True): 5,
        (ip("255.255.255.0"), ip("255.255.255.255"), False): 2,
    }


def test_a_range_that_is_no_cidr_is_split():
    first, last = IPNetwork("192.0.2.200").first, IPNetwork("192.0.2.202").first
    assert nftables._cidrs(first, last, 4, 32) == [(first, 31), (last, 32)]
    whole = IPNetwork("192.0.2.0/24")
    assert nftables._cidrs(whole.first, whole.last, 4, 32) == [(whole.first, 24)]


def test_expiry_tolerance():
    now = 1_800_000_000.0
    hour, week = now + 3600, now + 7 * 86400
    assert not nftables._differs(hour + 30, hour, now)  # 1% of an hour
    assert nftables._differs(hour + 40, hour, now)
    assert not nftables._differs(now + 11.5, now + 10, now)
    assert nftables._differs(now + 13, now + 10, now)
    assert nftables._differs(week + 120, week, now)  # never more than a minute
    assert nftables._differs(None, hour, now) and nftables._differs(hour, None, now)
    assert not nftables._differs(None, None, now)


def test_element_encoding_carries_the_remaining_lifetime():
    enc = nl.ElemSpec(bytes.fromhex("c6336400"), False, 1010.5).encode(now=1000.0)
    inner = nl.parse_attrs(enc)[nl.NFTA_LIST_ELEM]
    attrs = nl.parse_attrs(inner)
    assert nl.parse_attrs(attrs[nl.NFTA_SET_ELEM_KEY]) == {nl.NFTA_DATA_VALUE: bytes.fromhex("c6336400")}
    assert struct.unpack("!Q", attrs[nl.NFTA_SET_ELEM_TIMEOUT]) == (10500,)
    assert nl.NFTA_SET_ELEM_FLAGS not in attrs
    permanent = nl.parse_attrs(nl.parse_attrs(nl.ElemSpec(b"\0" * 4, True, 0).encode(now=5.0))[nl.NFTA_LIST_ELEM])
    assert struct.unpack("!Q", permanent[nl.NFTA_SET_ELEM_TIMEOUT]) == (0,)
    assert struct.unpack("!I", permanent[nl.NFTA_SET_ELEM_FLAGS]) == (nl.NFT_SET_ELEM_INTERVAL_END,)


def _counter(packets: int, nbytes: int) -> bytes:
    return nl.strz(nl.NFTA_EXPR_NAME, "counter") + nl.nest(
        nl.NFTA_EXPR_DATA, nl.attr(nl.NFTA_COUNTER_BYTES, struct.pack("!Q", nbytes)),
        nl.attr(nl.NFTA_COUNTER_PACKETS, struct.pack("!Q", packets)))


def test_dump_parser_reads_keys_flags_lifetimes_and_counters():
    key = lambda hexkey: nl.nest(nl.NFTA_SET_ELEM_KEY, nl.attr(nl.NFTA_DATA_VALUE, bytes.fromhex(hexkey)))  # noqa
    elements = nl.nest(
        nl.NFTA_SET_ELEM_LIST_ELEMENTS,
        nl.nest(nl.NFTA_LIST_ELEM, key("c6336400"), nl.nest(nl.NFTA_SET_ELEM_EXPR, _counter(7, 280)),
                nl.attr(nl.NFTA_SET_ELEM_TIMEOUT, struct.pack("!Q", 60000)),
                nl.attr(nl.NFTA_SET_ELEM_EXPIRATION, struct.pack("!Q", 59000))),
        nl.nest(nl.NFTA_LIST_ELEM, key("c6336500"), nl.attr(nl.NFTA_SET_ELEM_FLAGS, struct.pack("!I", 1))),
        # Several set expressions come as a list; the counter is found among them.
        nl.nest(nl.NFTA_LIST_ELEM, key("cb007107"), nl.nest(
            nl.NFTA_SET_ELEM_EXPRESSIONS, nl.nest(nl.NFTA_LIST_ELEM, nl.strz(nl.NFTA_EXPR_NAME, "limit")),
            nl.nest(nl.NFTA_LIST_ELEM, _counter(2**40, 3)))),
    )
    body = nl.strz(nl.NFTA_SET_ELEM_LIST_TABLE, "netblock") + nl.strz(nl.NFTA_SET_ELEM_LIST_SET, "block4") + elements
    out: list[nl.Element] = []
    nl._parse_elements(body, 0, len(body), out, seen=123.0)
    assert out == [
        nl.Element(bytes.fromhex("c6336400"), False, 60000, 59000, 7, 280, 123.0),
        nl.Element(bytes.fromhex("c6336500"), True, None, None, 0, 0, 123.0),
        nl.Element(bytes.fromhex("cb007107"), False, None, None, 2**40, 3, 123.0),
    ]


def test_udata_comment():
    comment = b"managed by netblock\0"
    assert nl.parse_udata_comment(bytes([3, 1, 9, 0, len(comment)]) + comment) == "managed by netblock"
    assert nl.parse_udata_comment(b"") is None


@pytest.mark.parametrize("spec", [
    nl.ElemSpec(bytes.fromhex("c6336400")), nl.ElemSpec(bytes.fromhex("c6336500"), True),
    nl.ElemSpec(bytes(range(16)), False, 1234.5), nl.ElemSpec(bytes.fromhex("c6336400"), False, 0),
    nl.ElemSpec(bytes.fromhex("c6336400"), True, 99.0)])
def test_prepared_frames_encode_exactly_like_the_generic_encoder(spec):
    assert spec.encode(now=100.0) == spec._encode_generic(now=100.0)


def _have(*entries):
    """Kernel state as apply() reads it: {(first, plen): (expiry, packets, bytes, raw range)}."""
    out = {}
    for text, expiry, raw in entries:
        net = IPNetwork(text)
        out[(net.first, net.prefixlen)] = (expiry, 0, 0, raw or (net.first, net.last, True))
    return out


def _want(*entries):
    return {(IPNetwork(t).first, IPNetwork(t).prefixlen): (IPNetwork(t), e) for t, e in entries}


def test_plan_touches_only_the_difference():
    now = 1_800_000_000.0
    have = _have(("198.51.100.0/24", None, None), ("203.0.113.9/32", now + 3600, None),
                 ("203.0.113.10/32", now + 3600, None), ("192.0.2.0/28", now + 60, None))
    want = _want(("198.51.100.0/24", None), ("203.0.113.9/32", now + 3610),  # within 1% of an hour
                 ("203.0.113.10/32", now + 7200), ("192.0.2.128/25", None))
    change, ops, after = nftables._plan({"ipv4": want}, {"ipv4": have}, now)
    assert [str(n) for n in change.added] == ["192.0.2.128/25"]
    assert [str(n) for n in change.removed] == ["192.0.2.0/28"]
    assert [str(n) for n in change.updated] == ["203.0.113.10/32"]
    deletes, updates, adds = ops
    assert (deletes.delete, [e.key.hex() for e in deletes.elements]) == (True, ["c0000200", "c0000210"])
    assert (updates.exclusive, [(e.key.hex(), e.end, e.expires) for e in updates.elements]) == (
        False, [("cb00710a", False, now + 7200)])
    assert (adds.exclusive, [(e.key.hex(), e.end) for e in adds.elements]) == (
        True, [("c0000280", False), ("c0000300", True)])
    assert set(after["ipv4"]) == set(want)


def test_plan_sends_a_wanted_piece_of_a_hand_made_range_again():
    now = 1_800_000_000.0
    first, last = IPNetwork("192.0.2.200").first, IPNetwork("192.0.2.202").first
    have = _have(("192.0.2.200/31", None, (first, last, True)), ("192.0.2.202/32", None, (first, last, True)))
    change, ops, _ = nftables._plan({"ipv4": _want(("192.0.2.200/31", None))}, {"ipv4": have}, now)
    assert [str(n) for n in change.removed] == ["192.0.2.202/32"]
    assert [str(n) for n in change.added] == ["192.0.2.200/31"]
    deletes, adds = ops
    assert [e.key.hex() for e in deletes.elements] == ["c00002c8", "c00002cb"]  # the kernel's one interval
    assert [e.key.hex() for e in adds.elements] == ["c00002c8", "c00002ca"]


def test_plan_makes_a_timed_element_permanent_in_place():
    now = 1_800_000_000.0
    change, (updates,), _ = nftables._plan({"ipv4": _want(("203.0.113.9/32", None))},
                                           {"ipv4": _have(("203.0.113.9/32", now + 50, None))}, now)
    assert change.updated and updates.elements[0].expires == 0  # timeout 0: never expires


def _state(have: dict) -> dict:
    return {"ipv4": nftables._Column.of(have, 32)}


def test_wanted_arrays_are_canonical_sorted_and_drop_the_expired():
    now = datetime.now(timezone.utc)
    hour = now + timedelta(hours=1)
    desired = {IPNetwork("203.0.113.9/24"): hour, IPNetwork("192.0.2.7/32"): None,
               IPNetwork("198.51.100.0/24"): now - timedelta(seconds=1), IPNetwork("2001:db8::5/48"): hour}
    nets, wanted = nftables._wanted(desired, ("ipv4", "ipv6"), now.timestamp())
    keys, expiry, idx = wanted["ipv4"]
    assert [(k >> 8, k & 255) for k in keys.tolist()] == [
        (IPNetwork("192.0.2.7").value, 32), (IPNetwork("203.0.113.0").value, 24)]  # host bits cleared
    assert np.isnan(expiry[0]) and expiry[1] == hour.timestamp()
    assert [str(nets[i]) for i in idx] == ["192.0.2.7/32", "203.0.113.9/24"]
    (key6,) = wanted["ipv6"][0].tolist()
    assert (key6 >> 8, key6 & 255) == (IPNetwork("2001:db8::").value, 48)


def test_keyed_desired_plans_as_its_dict():
    """A KeyedDesired (run/sync.plan()'s integers) gives _wanted() and _plan_fresh() what its dict gives."""
    import math

    from netblock.firewall import KeyedDesired
    from netblock.run.sync import _networks_of

    now = 1_800_000_000.0
    by_key = {(4, IPNetwork(t).first << 8 | IPNetwork(t).prefixlen): e for t, e in
              [("203.0.113.0/24", now + 3600), ("192.0.2.7/32", math.nan), ("198.51.100.0/24", now - 1),
               ("10.0.0.0/8", now + 7200), ("255.255.255.0/24", math.nan)]}
    by_key[(6, IPNetwork("2001:db8::").value << 8 | 48)] = now + 60
    keyed = KeyedDesired(by_key, lambda: _networks_of(by_key))
    plain = _networks_of(by_key)
    assert len(keyed) == len(plain) and keyed == plain
    for families in (("ipv4",), ("ipv4", "ipv6"), ("ipv6",)):
        nets1, wanted1 = nftables._wanted(plain, families, now)
        nets2, wanted2 = nftables._wanted(KeyedDesired(by_key, lambda: _networks_of(by_key)), families, now)
        for fam in families:
            (k1, e1, i1), (k2, e2, i2) = wanted1[fam], wanted2[fam]
            assert k1.tolist() == k2.tolist() and np.array_equal(e1, e2, equal_nan=True)
            assert [nets1[i] for i in i1.tolist()] == [nets2[i] for i in i2.tolist()]
        c1, ops1, _ = nftables._plan_fresh(nets1, wanted1)
        c2, ops2, _ = nftables._plan_fresh(nets2, wanted2)
        assert c1 == c2 and [str(n) for n in c1.added] == [str(n) for n in c2.added]
        assert [_op_form(op) for op in ops1] == [_op_form(op) for op in ops2]


def _op_form(op) -> tuple:
    cols = op.intervals
    return (op.set, op.delete, op.elements, op.exclusive, cols and (
        cols.firsts.tolist(), cols.afters.tolist(), None if cols.expiry is None else cols.expiry.tolist()))


@pytest.mark.parametrize("seed", range(4))
def test_planning_from_arrays_equals_planning_everything(seed):
    """_plan_columns() must send what _plan() sends for the whole sets, and leave the same state."""
    import random

    rng = random.Random(seed)
    now = 1_800_000_000.0
    pool = [f"198.{18 + i // 256 % 2}.{i % 256}.{rng.choice((0, 7))}/{rng.choice((24, 32))}"
            for i in range(0, 400, 2)]
    pool = list(dict.fromkeys(str(IPNetwork(t).cidr) for t in pool))
    life = (None, now + 3600, now + 3610, now + 7200, now + 50)
    have = _have(*[(t, rng.choice(life), None) for t in pool[:150]])
    first, last = IPNetwork("192.0.2.200").first, IPNetwork("192.0.2.202").first
    have.update(_have(("192.0.2.200/31", None, (first, last, True)), ("192.0.2.202/32", None, (first, last, True))))
    texts = pool[50:] + rng.choice([["192.0.2.200/31"], ["192.0.2.200/31", "192.0.2.202/32"], []])
    desired = {IPNetwork(t): rng.choice((None, datetime.fromtimestamp(now + 3600, timezone.utc),
                                         datetime.fromtimestamp(now + 7200, timezone.utc))) for t in texts}
    nets, wanted = nftables._wanted(desired, ("ipv4",), now)
    full = {"ipv4": nftables._want_dict(nets, wanted["ipv4"], 32)}
    c1, ops1, after1 = nftables._plan(full, {"ipv4": have}, now)
    c2, ops2, state2 = nftables._plan_columns(nets, wanted, _state(have), now)
    assert sorted(map(str, c1.added)) == sorted(map(str, c2.added))
    assert sorted(map(str, c1.removed)) == sorted(map(str, c2.removed))
    assert sorted(map(str, c1.updated)) == sorted(map(str, c2.updated))
    frames = lambda ops: sorted((op.set, op.delete, op.exclusive, e.key, e.end, e.expires)  # noqa: E731
                                for op in ops for e in op.elements)
    assert frames(ops1) == frames(ops2)
    expect = nftables._Column.of(after1["ipv4"], 32)
    got = state2["ipv4"]
    assert got.keys.tolist() == expect.keys.tolist() and got.ranges == expect.ranges
    assert np.array_equal(got.expiry, expect.expiry, equal_nan=True)


@pytest.mark.parametrize("seed", range(4))
def test_planning_into_empty_sets_equals_planning_everything(seed):
    """_plan_fresh() (a restore after a flush) sends what _plan() sends against empty sets, and keeps its state."""
    import random

    rng = random.Random(seed)
    now = 1_800_000_000.0
    texts = [f"198.{18 + i // 256 % 2}.{i % 256}.{rng.choice((0, 7))}/{rng.choice((24, 32))}" for i in range(0, 400, 2)]
    texts += ["255.255.255.255/32", "2001:db8::/48", "2001:db8:1::7/128", "ffff::/16"]
    desired = {IPNetwork(t): rng.choice((None, datetime.fromtimestamp(now + 3600, timezone.utc),
                                         datetime.fromtimestamp(now - 5, timezone.utc))) for t in texts}
    nets, wanted = nftables._wanted(desired, ("ipv4", "ipv6"), now)
    full = {fam: nftables._want_dict(nets, wanted[fam], nftables._FAMILY[fam][1]) for fam in wanted}
    c1, ops1, after1 = nftables._plan(full, {"ipv4": {}, "ipv6": {}}, now)
    c2, ops2, state2 = nftables._plan_fresh(nets, wanted)
    assert list(map(str, c1.added)) == list(map(str, c2.added)) and not c2.removed and not c2.updated
    assert _sent(ops1, now) == _sent(ops2, now)
    for fam, bits in (("ipv4", 32), ("ipv6", 128)):
        expect = nftables._Column.of(after1[fam], bits)
        assert state2[fam].keys.tolist() == expect.keys.tolist() and state2[fam].ranges == expect.ranges
        assert np.array_equal(state2[fam].expiry, expect.expiry, equal_nan=True)


def _sent(ops, now):
    """What a batch of ``ops`` sends per set and kind, elements encoded at ``now``, message boundaries left out."""
    out: list = []
    for op in ops:
        data = op.intervals.records(now)[0] if op.intervals is not None else b""
        data += b"".join(e.encode(now) for e in op.elements)
        if out and out[-1][0] == (op.set, op.delete, op.exclusive):
            out[-1][1] += data
        else:
            out.append([(op.set, op.delete, op.exclusive), data])
    return out


@pytest.mark.parametrize("runs", [1, 2, 5, 100])
def test_a_fresh_bulk_load_is_encoded_in_columns_exactly_as_element_by_element(runs):
    """_plan_fresh() sends IPv4 additions as nl.Intervals: the same bytes, in the same order, as ElemSpecs
    would (timed and permanent runs, the top of the address space, an element by element fallback)."""
    now = 1_800_000_000.5
    texts = [f"10.{i // 256}.{i % 256}.0/{24 + i % 9}" for i in range(0, 2000, 2)] + ["255.255.255.0/24"]
    when = [datetime.fromtimestamp(now + 3600.25 + i, timezone.utc) for i in range(len(texts))]
    desired = {IPNetwork(t): None if (i * runs // len(texts)) % 2 else w for i, (t, w) in enumerate(zip(texts, when))}
    nets, wanted = nftables._wanted(desired, ("ipv4",), now)
    full = {fam: nftables._want_dict(nets, wanted[fam], nftables._FAMILY[fam][1]) for fam in wanted}
    _c1, ops1, _after1 = nftables._plan(full, {"ipv4": {}}, now)
    _c2, ops2, _state2 = nftables._plan_fresh(nets, wanted)
    assert any(op.intervals is not None for op in ops2) == (runs < nftables._MAX_RUNS)
    assert _sent(ops1, now + 0.75) == _sent(ops2, now + 0.75)
    assert ops1[-1].elements[-1].udata != b""  # the top /24 has no end element


def test_state_survives_the_snapshot_format_and_expires_on_time():
    now = 1_800_000_000.0
    first, last = IPNetwork("192.0.2.200").first, IPNetwork("192.0.2.202").first
    have = _have(("198.51.100.0/24", None, None), ("203.0.113.9/32", now + 10, None),
                 ("192.0.2.200/31", now + 60, (first, last, True)), ("192.0.2.202/32", now + 60, (first, last, True)))
    col = nftables._Column.of(have, 32)
    back = nftables._Column.load(marshal.loads(marshal.dumps(col.dump(32))), 32)
    assert back.keys.tolist() == col.keys.tolist() and back.ranges == col.ranges
    assert np.array_equal(back.expiry, col.expiry, equal_nan=True)
    assert back.covering(IPNetwork("198.51.100.77").first, 32) == np.inf
    assert back.covering(IPNetwork("203.0.113.10").first, 32) is None
    later = back.live(now + 30)
    assert [(k >> 8, k & 255) for k in later.keys.tolist()] == sorted(
        k for k in have if k != (IPNetwork("203.0.113.9").first, 32))
    assert len(later.ranges) == 2 and len(back.live(now + 61).ranges) == 0
    v6 = nftables._Column.of(_have(("2001:db8::/48", None, None)), 128)
    assert nftables._Column.load(marshal.loads(marshal.dumps(v6.dump(128))), 128).keys.tolist() == v6.keys.tolist()
    with pytest.raises(ValueError):
        nftables._Column.load((col.keys[::-1].tobytes(), col.expiry.tobytes(), []), 32)  # not sorted: distrusted


@pytest.mark.parametrize("expiry", [None, [0.0, 1000.5, 999.0, 1e9 + 0.25]])
def test_interval_columns_encode_as_their_elements_would(expiry):
    """nl.Intervals: each pair exactly as ElemSpec.encode() of its start and end (0: never; past: 1 ms)."""
    firsts = np.array([0x0A000000, 0x0A000100, 0xC6120000, 0xFFFFFF00], dtype=np.uint64)
    afters = firsts + np.array([256, 1, 65536, 255], dtype=np.uint64)
    exp = None if expiry is None else np.array(expiry)
    records, size = nl.Intervals(firsts, afters, exp).records(1000.0)
    want = [nl.ElemSpec(int(f).to_bytes(4, "big"), False, None if exp is None else float(exp[i])).encode(1000.0)
            + nl.ElemSpec(int(a).to_bytes(4, "big"), True).encode(1000.0)
            for i, (f, a) in enumerate(zip(firsts, afters))]
    assert size == len(want[0]) and records == b"".join(want)
