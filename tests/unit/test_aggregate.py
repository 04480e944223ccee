"""The aggregation engine: exact, minimal, order-free, and carving around protected space."""

import random

import pytest
from hypothesis import given, settings, strategies as st
from netaddr import IPAddress, IPNetwork, IPSet

from netblock.aggregate import (
    DEFAULT_WIDEN,
    WidenRule,
    aggregate,
    aggregate_lines,
    aggregate_text,
    main_aggregate,
    protected_builtin,
    widen,
    widen_detail,
)
from netblock.errors import BadInput

FEW = settings(max_examples=150, deadline=None)

# Windows where random prefixes collide a lot, including both ends of each address space.
V4_BASES = [0, int(IPAddress("198.18.0.0")), (1 << 32) - 512]
V6_BASES = [0, int(IPAddress("2001:db8::")), (1 << 128) - 512]
MAPPED = 0xFFFF_0000_0000


@st.composite
def v4_nets(draw):
    base = draw(st.sampled_from(V4_BASES))
    value = base + draw(st.integers(0, 511))
    plen = draw(st.one_of(st.integers(23, 32), st.integers(0, 32)))
    return IPNetwork((value, plen), version=4).cidr


@st.composite
def v6_nets(draw):
    base = draw(st.sampled_from(V6_BASES))
    value = base + draw(st.integers(0, 511))
    plen = draw(st.one_of(st.integers(119, 128), st.integers(0, 128)))
    return IPNetwork((value, plen), version=6).cidr


@st.composite
def items(draw):
    """One input in any accepted spelling, with the network it must mean (IPv4 for mapped IPv6)."""
    kind = draw(st.sampled_from(["v4", "v4", "v4", "v6", "mapped"]))
    if kind == "v6":
        net = draw(v6_nets())
        meaning = net
    else:
        net = draw(v4_nets())
        meaning = net
        if kind == "mapped":
            net = IPNetwork((MAPPED + net.first, net.prefixlen + 96), version=6)
    form = draw(st.sampled_from(["str", "net", "addr"]))
    if form == "addr" and net.size == 1:
        return net.ip, meaning
    if form == "str":
        return str(net), meaning
    return net, meaning


def reference(blocked, protected):
    """netaddr's IPSet as the slow, obviously-right oracle."""
    want = IPSet(m for _, m in blocked) - IPSet(m for _, m in protected)
    return list(want.iter_cidrs())


def siblings(a, b):
    """The two halves of one CIDR, which a minimal result never lists apart."""
    if a.version != b.version or a.prefixlen != b.prefixlen or a.prefixlen == 0:
        return False
    shift = (32 if a.version == 4 else 128) - a.prefixlen + 1
    return a.first >> shift == b.first >> shift


def test_siblings_helper_can_fail():
    assert siblings(IPNetwork("198.18.0.0/25"), IPNetwork("198.18.0.128/25"))
    assert not siblings(IPNetwork("198.18.0.128/25"), IPNetwork("198.18.1.0/25"))


def text_of(net):
    return str(net.ip) if net.size == 1 else str(net)


@FEW
@given(st.lists(items(), max_size=12), st.lists(items(), max_size=5))
def test_matches_the_ipset_reference(blocked, protected):
    got = aggregate([i for i, _ in blocked], [i for i, _ in protected])
    assert got == reference(blocked, protected)


@FEW
@given(st.lists(items(), max_size=12), st.lists(items(), max_size=5), st.randoms(use_true_random=False))
def test_structural_properties(blocked, protected, rnd):
    got = aggregate([i for i, _ in blocked], [i for i, _ in protected])
    covered = IPSet(got)
    for _, m in blocked:
        rest = IPSet([m]) - IPSet(p for _, p in protected)
        assert rest.issubset(covered)
    for _, p in protected:
        assert not (IPSet([p]) & covered)
    assert got == sorted(got, key=lambda n: (n.version, n.first))
    for a, b in zip(got, got[1:]):
        if a.version == b.version:
            assert a.last < b.first, "overlap or disorder"
            assert not siblings(a, b), f"{a} and {b} should have been merged"
    assert all(n.version == 4 or not (MAPPED <= n.first and n.last <= MAPPED + 0xFFFFFFFF) for n in got)
    assert aggregate(got, [i for i, _ in protected]) == got
    shuffled = [i for i, _ in blocked]
    rnd.shuffle(shuffled)
    assert aggregate(shuffled, [i for i, _ in protected]) == got


@FEW
@given(st.lists(items(), max_size=12), st.lists(items(), max_size=5))
def test_text_path_agrees_with_the_object_path(blocked, protected):
    want = [text_of(n) for n in aggregate([m for _, m in blocked], [m for _, m in protected])]
    lines = [str(m) for _, m in blocked]
    excl = [str(m) for _, m in protected]
    assert aggregate_lines(lines, excl) == want
    assert aggregate_lines(["# header"] + [f"{x}  comment" for x in lines], excl) == want


@FEW
@given(st.lists(v4_nets(), max_size=40), st.lists(v4_nets(), max_size=4), st.booleans())
def test_fast_ipv4_parser_agrees_with_the_line_parser(blocked, protected, blank):
    lines = [str(n.ip if n.size == 1 else n) for n in blocked]
    if blank:
        lines = [""] + lines[:3] + ["", ""] + lines[3:]
    excl = [str(n) for n in protected]
    fast = aggregate_text("\n".join(lines), "\n".join(excl))
    slow = aggregate_lines(["#"] + lines, excl)
    assert fast == slow == [text_of(n) for n in aggregate(blocked, protected)]


def test_fast_parser_chunks_join_up(monkeypatch):
    import netblock.aggregate as engine

    rnd = random.Random(3)
    lines = [f"198.18.{rnd.randrange(4)}.{rnd.randrange(256)}" + rnd.choice(["", "/31", "/30"]) for _ in range(500)]
    lines[100:100] = ["", ""]
    text = "\n".join(lines)
    whole = aggregate_text(text)
    monkeypatch.setattr(engine, "_CHUNK", 37)
    assert aggregate_text(text) == whole == aggregate_lines(["#"] + lines)
    with pytest.raises(BadInput, match=r"line 503: .*'198\.18\.1\.256'"):
        aggregate_text(text + "\n198.18.1.256\n198.18.1.1")


def test_windows_line_ends_and_tabs_are_fine():
    assert aggregate_text("198.18.0.1\r\n198.18.0.0\t# x\r\n") == ["198.18.0.0/31"]


def test_docstring_examples_run():
    import doctest

    import netblock.aggregate as engine

    result = doctest.testmod(engine)
    assert result.attempted >= 5 and result.failed == 0


def test_docstring_example_shape():
    got = aggregate(["198.18.0.0/25", "198.18.0.128/25", IPAddress("198.18.1.1"), IPNetwork("::ffff:198.18.1.2/128")])
    assert got == [IPNetwork("198.18.0.0/24"), IPNetwork("198.18.1.1/32"), IPNetwork("198.18.1.2/32")]


def test_one_protected_address_in_a_slash16_costs_at_most_16_prefixes():
    got = aggregate(["198.18.0.0/16"], ["198.18.77.9"])
    assert len(got) == 16
    assert IPAddress("198.18.77.9") not in IPSet(got)
    assert IPSet(got).size == 65535


def test_protected_network_swallowing_everything_leaves_nothing():
    assert aggregate(["198.18.1.0/24", "2001:db8::1"], ["0.0.0.0/0", "::/0"]) == []


def test_mapped_protected_address_protects_the_ipv4_address():
    assert aggregate(["198.18.1.0/31"], ["::ffff:198.18.1.1"]) == [IPNetwork("198.18.1.0/32")]


def test_whole_space_edges():
    assert aggregate(["0.0.0.0/1", "128.0.0.0/1"]) == [IPNetwork("0.0.0.0/0")]
    assert aggregate(["255.255.255.255", "255.255.255.254"]) == [IPNetwork("255.255.255.254/31")]
    assert aggregate(["::/1", "8000::/1"]) == [IPNetwork("::/0")]


def test_builtin_protection_keeps_loopback_and_friends_out():
    got = IPSet(aggregate(["0.0.0.0/0", "::/0"], protected_builtin()))
    never = ["127.0.0.1", "169.254.1.1", "224.0.0.1", "239.255.255.255", "0.0.0.0", "::1", "::", "fe80::1", "ff02::1"]
    for addr in never:
        assert IPAddress(addr) not in got, addr
    for addr in ["198.18.1.1", "223.255.255.255", "0.0.0.1", "2001:db8::1", "fe00::1"]:
        assert IPAddress(addr) in got, addr


@pytest.mark.parametrize("bad", ["10.1", "010.1.2.3", "nonsense", "2001:db8::/129", "1.2.3.4/33", 17])
def test_bad_items_raise_badinput(bad):
    with pytest.raises(BadInput) as caught:
        aggregate(["198.18.1.1", bad])
    assert repr(bad) in str(caught.value)


# ---- aggregate_lines: the text path


def test_lines_format_matches_iprange_defaults():
    assert aggregate_lines(["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.4", "2001:db8::3", "2001:db8::2"]) == [
        "198.18.0.1",
        "198.18.0.2/31",
        "198.18.0.4",
        "2001:db8::2/127",
    ]


def test_lines_mask_host_bits_and_ignore_extra_fields():
    assert aggregate_lines(["198.18.1.77/24 seen 9 times", "  198.18.0.0/24\tx", "# 10.0.0.1", ""]) == ["198.18.0.0/23"]


@pytest.mark.parametrize(
    "lines,number,value",
    [
        (["198.18.0.1", "198.18.0.2", "198.18.0.300"], 3, "198.18.0.300"),
        (["198.18.0.1", "", "# c", "10.1"], 4, "10.1"),
        (["198.18.0.1", "010.0.0.1"], 2, "010.0.0.1"),
        (["198.18.0.1/33"], 1, "198.18.0.1/33"),
        (["2001:db8::1", "fe80::1%eth0"], 2, "fe80::1%eth0"),
        (["198.18.0.1", "198.18.0.2x"], 2, "198.18.0.2x"),
        (["198.18.0.1", "198.18..1"], 2, "198.18..1"),
        (["198.18.0.1", "198.18.0.1/"], 2, "198.18.0.1/"),
        (["198.18.0.1", "198.18.0.1.5"], 2, "198.18.0.1.5"),
    ],
)
def test_malformed_line_names_number_and_value(lines, number, value):
    with pytest.raises(BadInput) as caught:
        aggregate_lines(lines)
    message = str(caught.value)
    assert f"line {number}:" in message and repr(value) in message and "\n" not in message


def test_malformed_exclude_line_is_named_as_exclude():
    with pytest.raises(BadInput, match="exclude line 2: .*'bogus'"):
        aggregate_lines(["198.18.0.0/24"], ["198.18.0.1", "bogus"])


def test_file_like_lines_keep_their_numbers():
    lines = iter(["198.18.0.1\n", "\n", "oops\n"])
    with pytest.raises(BadInput, match="line 3:"):
        aggregate_lines(lines)


def test_large_random_input_matches_reference():
    rnd = random.Random(7)
    addrs = [IPAddress(int(IPAddress("198.18.0.0")) + rnd.randrange(4096)) for _ in range(3000)]
    got = aggregate_lines([str(a) for a in addrs], ["198.18.3.3", "198.18.8.0/22"])
    want = IPSet(addrs) - IPSet(["198.18.3.3", "198.18.8.0/22"])
    assert got == [text_of(n) for n in want.iter_cidrs()]


def test_main_aggregate_reads_bytes_and_writes_text(tmp_path):
    import io

    exclude = tmp_path / "allow"
    exclude.write_text("198.18.0.3\n")
    out = io.StringIO()
    status = main_aggregate(io.BytesIO(b"198.18.0.0/30\n2001:db8::1\n"), out, exclude_path=str(exclude))
    assert status == 0
    assert out.getvalue() == "198.18.0.0/31\n198.18.0.2\n2001:db8::1\n"
    out = io.StringIO()
    assert main_aggregate(io.BytesIO(b"198.18.0.1\n198.18.0.0\n"), out, json=True) == 0
    assert out.getvalue() == '["198.18.0.0/31"]\n'
    with pytest.raises(BadInput, match="nope"):
        main_aggregate(io.BytesIO(b""), io.StringIO(), exclude_path=str(tmp_path / "nope"))


# ---- density widening


def v4s(prefix, hosts):
    return [IPAddress(f"{prefix}.{h}") for h in hosts]


def test_four_addresses_in_a_slash24_widen_to_it():
    assert widen(v4s("198.18.7", [1, 50, 99, 200])) == [IPNetwork("198.18.7.0/24")]


def test_three_addresses_do_not_widen():
    assert widen(v4s("198.18.7", [1, 50, 99])) == []


def test_duplicates_do_not_count_twice():
    assert widen(v4s("198.18.7", [1, 1, 2, 2, 3, 3])) == []


def test_64_distinct_slash24s_widen_the_slash16():
    offenders = [IPAddress(f"198.18.{i}.1") for i in range(64)]
    assert widen(offenders) == [IPNetwork("198.18.0.0/16")]
    assert widen(offenders[:63]) == []


def test_many_addresses_in_few_slash24s_do_not_widen_the_slash16():
    offenders = [IPAddress(f"198.18.{i}.{h}") for i in range(10) for h in range(1, 30)]
    assert IPSet(widen(offenders)) == IPSet(IPNetwork(f"198.18.{i}.0/24") for i in range(10))


def test_protected_address_inside_a_widened_slash24_is_carved_out():
    got = widen(v4s("198.18.7", [1, 2, 3, 4]), protected=["198.18.7.200"])
    assert 1 <= len(got) - 1 <= 8
    assert IPSet(got) == IPSet(["198.18.7.0/24"]) - IPSet(["198.18.7.200"])


def test_max_prefixlen_is_honoured():
    offenders = [IPAddress(f"198.18.{i}.1") for i in range(64)]
    assert widen(offenders, max_prefixlen={4: 20, 6: 32}) == []
    rules = (WidenRule(4, 8, 2, 16),)
    spread = [IPAddress("10.1.0.1"), IPAddress("10.2.0.1")]
    assert widen(spread, rules) == [IPNetwork("10.0.0.0/8")]
    assert widen(spread, rules, max_prefixlen={4: 9, 6: 32}) == []


def test_ipv6_rules():
    assert widen([IPAddress("2001:db8::1"), IPAddress("2001:db8::2")]) == [IPNetwork("2001:db8::/64")]
    sixty_fours = [IPAddress(f"2001:db8:0:{i:x}::1") for i in range(8)]
    assert IPNetwork("2001:db8::/48") in widen(sixty_fours)
    assert IPNetwork("2001:db8::/48") not in widen(sixty_fours[:7])


def test_mapped_offenders_count_as_ipv4():
    offenders = [IPAddress(f"::ffff:198.18.9.{h}") for h in (1, 2, 3)] + [IPAddress("198.18.9.4")]
    assert widen(offenders) == [IPNetwork("198.18.9.0/24")]


@pytest.mark.parametrize(
    "args", [(5, 24, 4, None), (4, 0, 4, None), (4, 33, 4, None), (4, 24, 0, None), (4, 24, 4, 16), (4, 24, 4, 33),
             (6, 64, 2, 129)]
)
def test_nonsense_widen_rules_are_refused(args):
    with pytest.raises(BadInput, match="widen rule"):
        WidenRule(*args)


def test_detail_says_which_rule_and_which_offenders():
    offenders = v4s("198.18.7", [9, 1, 50, 99])
    (found,) = widen_detail(offenders)
    assert found.netblock == IPNetwork("198.18.7.0/24")
    assert found.rule == DEFAULT_WIDEN[0]
    assert found.offenders == sorted(offenders)


def test_spans_name_the_same_prefixes_and_offenders_as_the_detail():
    import numpy as np

    from netblock.aggregate import address_int, widen_spans

    rng = random.Random(17)
    offenders = [IPAddress((198 << 24) | (18 << 16) | rng.getrandbits(12), 4) for _ in range(3000)]
    offenders += [IPAddress((0x20010DB8 << 96) | (rng.getrandbits(4) << 64) | rng.getrandbits(16), 6)
                  for _ in range(300)]
    offenders.append(IPAddress("::ffff:198.18.3.3"))
    detail = [(w.netblock, w.rule, w.offenders) for w in widen_detail(offenders)]
    ints = {4: set(), 6: set()}
    for ip in offenders:
        family, value = address_int(ip)
        ints[family].add(value)
    v4 = np.array(sorted(ints[4]), dtype=np.int64)
    spans = [(net, rule, [IPAddress(int(a), rule.family) for a in addrs[lo:hi].tolist()])
             for net, rule, addrs, lo, hi in widen_spans(v4, sorted(ints[6]))]
    assert len(detail) > 10 and {n.version for n, _, _ in detail} == {4, 6}
    assert spans == detail
    assert address_int(IPAddress("::ffff:198.18.3.3")) == (4, int(IPAddress("198.18.3.3")))
