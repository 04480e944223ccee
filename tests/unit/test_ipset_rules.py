"""Tier 1 for the ipset backend: what it would install, checked as text and bytes, no root needed."""

from __future__ import annotations

import struct
from importlib import resources

import pytest
from netaddr import IPNetwork

from netblock.errors import ToolMissing
from netblock.firewall import Settings, ipset, ipset_diff, ipset_rules
from netblock.firewall.netlink import ipset as nlipset


def test_default_skeleton_text():
    sets, rules = ipset.render(Settings(), "ipv4")
    assert sets == "create netblock4 hash:net family inet counters timeout 0 maxelem 1048576\n"
    assert rules == (
        "*filter\n"
        ":NETBLOCK - [0:0]\n"
        "-A NETBLOCK -p tcp -m set --match-set netblock4 src -m comment --comment netblock -j DROP\n"
        "-I INPUT 1 -p tcp -m tcp --dport 25 -m comment --comment netblock -j NETBLOCK\n"
        "COMMIT\n"
    )


def test_ipv6_reject_several_ports_and_maxelem():
    sets, rules = ipset.render(Settings(ports=(25, 465, 587), verdict="reject", maxelem=200_000), "ipv6")
    assert sets == "create netblock6 hash:net family inet6 counters timeout 0 maxelem 200000\n"
    lines = rules.splitlines()
    assert "-A NETBLOCK -p tcp -m set --match-set netblock6 src -m comment --comment netblock " \
           "-j REJECT --reject-with tcp-reset" in lines
    assert "-I INPUT 1 -p tcp -m multiport --dports 25,465,587 -m comment --comment netblock -j NETBLOCK" in lines
    assert "netblock4" not in rules


def test_rules_file_is_the_template():
    text = resources.files("netblock.rules").joinpath("ipset.rules").read_text()
    assert "# [ipset]" in text and "# [iptables]" in text
    assert "create {set} hash:net family {family} counters timeout 0 maxelem {maxelem}" in text
    # Every non-comment line of the file ends up in what render() returns.
    body = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    rendered = "".join(ipset.render(Settings(), "ipv4"))
    assert len(body) == len(rendered.splitlines())


def test_chain_and_jump_lines():
    chain_rule, jump = ipset_rules.rule_lines(ipset.render(Settings(ports=(2525,)), "ipv4")[1])
    assert chain_rule.startswith("-A NETBLOCK ") and chain_rule.endswith("-j DROP")
    assert jump == "-I INPUT 1 -p tcp -m tcp --dport 2525 -m comment --comment netblock -j NETBLOCK"


def _attrs(buf: bytes) -> list[tuple[int, bytes]]:
    out, off = [], 0
    while off < len(buf):
        length, atype = struct.unpack_from("=HH", buf, off)
        out.append((atype, buf[off + 4:off + length]))
        off += (length + 3) & ~3
    return out


def test_member_encoding_v4():
    net = IPNetwork("198.51.100.0/24")
    data = nlipset.encode_member(net.value, 24, False, 7, timeout=3600, counters=(5, 300))
    ((dtype, body),) = _attrs(data)
    assert dtype == nlipset.A_DATA | nlipset.NLA_F_NESTED
    attrs = dict(_attrs(body))
    ip_nest = dict(_attrs(attrs[nlipset.D_IP | nlipset.NLA_F_NESTED]))
    assert ip_nest[nlipset.IPADDR_V4 | nlipset.NLA_F_NET_BYTEORDER] == bytes([198, 51, 100, 0])
    assert attrs[nlipset.D_CIDR][0] == 24
    assert struct.unpack("=I", attrs[nlipset.D_LINENO])[0] == 7
    assert struct.unpack(">I", attrs[nlipset.D_TIMEOUT | nlipset.NLA_F_NET_BYTEORDER])[0] == 3600
    assert struct.unpack(">Q", attrs[nlipset.D_PACKETS | nlipset.NLA_F_NET_BYTEORDER])[0] == 5
    assert struct.unpack(">Q", attrs[nlipset.D_BYTES | nlipset.NLA_F_NET_BYTEORDER])[0] == 300


def _kernel_style(net: IPNetwork, timeout: int, packets: int, nbytes: int) -> bytes:
    """A member as the kernel lists it: address without the byte-order flag, then cidr, timeout, counters."""
    addr = net.value.to_bytes(16 if net.version == 6 else 4, "big")
    a = nlipset.attr
    ip = a(nlipset.D_IP | nlipset.NLA_F_NESTED, a(nlipset.IPADDR_V6 if net.version == 6 else nlipset.IPADDR_V4, addr))
    body = (ip + a(nlipset.D_CIDR, bytes([net.prefixlen]))
            + a(nlipset.D_TIMEOUT | nlipset.NLA_F_NET_BYTEORDER, timeout.to_bytes(4, "big"))
            + a(nlipset.D_BYTES | nlipset.NLA_F_NET_BYTEORDER, nbytes.to_bytes(8, "big"))
            + a(nlipset.D_PACKETS | nlipset.NLA_F_NET_BYTEORDER, packets.to_bytes(8, "big")))
    return a(nlipset.A_DATA | nlipset.NLA_F_NESTED, body)


@pytest.mark.parametrize("texts", [("198.51.100.0/24", "203.0.113.7/32", "192.0.2.128/25"),
                                   ("2001:db8:bad::/48", "2001:db8::5/128")])
def test_fast_and_generic_decoders_agree(texts):
    nets = [IPNetwork(t) for t in texts]
    blob = b"".join(_kernel_style(n, 100 * i, i, 40 * i) for i, n in enumerate(nets))
    v6 = nets[0].version == 6
    fast, slow = ipset_diff.fast_members(blob, v6), ipset_diff.slow_members(blob)
    assert fast is not None
    assert fast == slow
    assert fast.networks(v6) == nets
    assert fast.timeouts == [0, 100, 200][:len(nets)] and fast.packets == list(range(len(nets)))
    # An unknown layout (here: the timeout missing) is left to the generic decoder.
    odd = nlipset.attr(nlipset.A_DATA | nlipset.NLA_F_NESTED, _attrs(blob)[0][1][:-32])
    assert ipset_diff.fast_members(odd, v6) is None


def test_expiry_tolerance():
    assert not ipset_diff.differs(100, 102)
    assert ipset_diff.differs(100, 103)
    assert ipset_diff.differs(0, 100) and ipset_diff.differs(100, 0)
    assert not ipset_diff.differs(0, 0)


def test_missing_iptables_is_tool_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match="iptables"):
        ipset.Iptables.detect("iptables")
    # The description still renders: `netblock status` must say what is wrong, not crash.
    assert "not found" in ipset.create(Settings()).description


def test_numpy_diff_agrees_with_plain_diff():
    import random

    rng = random.Random(25)
    pool = [(rng.randrange(1 << 32) & ~0xFF) << 8 | rng.choice((24, 32)) for _ in range(3000)]
    pool = list(dict.fromkeys(pool))
    kernel = ipset_diff.Members(keys=pool[:2000], timeouts=[rng.choice((0, 100, 3600)) for _ in range(2000)],
                           packets=[0] * 2000, bytes=[0] * 2000)
    wanted = pool[1000:3000]
    timeouts = [rng.choice((0, 99, 101, 103, 3600)) for _ in wanted]
    plain, fast = ipset_diff.diff(kernel, wanted, timeouts), ipset_diff.diff_v4(kernel, wanted, timeouts)
    assert plain == fast
    delete, add, update = plain
    assert len(delete) == 1000 and len(add) == 1000 and update
    assert all(ipset_diff.differs(kernel.timeouts[i], t) for _, t, i in update)
    # Empty kernel or nothing wanted: all added / all deleted, in both.
    assert ipset_diff.diff_v4(ipset_diff.Members(), wanted, timeouts) == ipset_diff.diff(ipset_diff.Members(), wanted, timeouts)
    assert ipset_diff.diff_v4(kernel, [], []) == ipset_diff.diff(kernel, [], [])


def test_kernel_failures_map_to_one_error_type_each(monkeypatch):
    import errno
    import socket

    from netblock.errors import KernelError, KernelFeatureMissing, PermissionDenied

    def refuse(err):
        def make(*args, **kwargs):
            raise (PermissionError if err == errno.EPERM else OSError)(err, "refused")
        return make

    monkeypatch.setattr(socket, "socket", refuse(errno.EPROTONOSUPPORT))
    with pytest.raises(KernelFeatureMissing, match="netfilter netlink"):
        ipset.Netlink()
    monkeypatch.setattr(socket, "socket", refuse(errno.EPERM))
    with pytest.raises(PermissionDenied, match="CAP_NET_ADMIN"):
        ipset.Netlink()
    assert isinstance(ipset._kernel_error(ipset.NetlinkError(errno.EPERM), "x"), PermissionDenied)
    assert isinstance(ipset._kernel_error(ipset.NetlinkError(4098), "x"), KernelFeatureMissing)
    full = ipset._kernel_error(ipset.NetlinkError(4353), "set netblock4: 198.51.100.0/24")
    assert isinstance(full, KernelError) and str(full) == \
        "ipset: set netblock4: 198.51.100.0/24: hash is full (maxelem reached)"


def test_wanted_in_numpy_equals_the_plain_pass(monkeypatch):
    import random
    from datetime import datetime, timedelta, timezone

    rng = random.Random(7)
    now = datetime.now(timezone.utc)
    lives = [None, now - timedelta(seconds=5), now + timedelta(seconds=0.4), now + timedelta(hours=1),
             now + timedelta(days=40)]  # the last is beyond ipset's longest timeout: permanent
    desired = {}
    for i in range(ipset_diff.NUMPY_FROM + 500):
        if i % 10 == 0:
            net = IPNetwork(f"2001:db8:{i:x}::5/{rng.choice((48, 128))}")
        else:
            net = IPNetwork(f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.9/"
                            f"{rng.choice((24, 32))}")
        desired[net] = rng.choice(lives) if i % 3 else lives[3]
    nets, expiries, t = list(desired), list(desired.values()), now.timestamp()
    fast = [a.tolist() for a in ipset_diff.wanted(nets, expiries, 4, t)]
    monkeypatch.setattr(ipset, "NUMPY_FROM", 10**9)
    plain = ipset_diff.wanted(nets, expiries, 4, t)
    assert fast == [list(plain[0]), list(plain[1])]
    assert len(fast[0]) > 1000 and 0 in fast[1] and 3600 in fast[1]
    assert all(k >> 8 & 0xFF == 0 for k in fast[0] if k & 255 == 24)  # host bits cleared


def test_networks_hash_and_compare_like_ipnetwork_and_are_reused():
    import pickle

    b = ipset.create(Settings())
    texts = ["198.51.100.0/24", "203.0.113.7/32", "192.0.2.128/25"]
    keys = [IPNetwork(t).first << 8 | IPNetwork(t).prefixlen for t in texts]
    nets = b._networks("ipv4", keys)
    assert nets == [IPNetwork(t) for t in texts] and [str(n) for n in nets] == texts
    assert {IPNetwork(t): t for t in texts} == {n: str(n) for n in nets}  # same hashes, same lookups
    assert repr(nets[0]) == "IPNetwork('198.51.100.0/24')"
    assert b._networks("ipv4", list(keys)) is nets  # unchanged set: the same list
    again = b._networks("ipv4", keys[1:] + [IPNetwork("192.0.2.1/32").first << 8 | 32])
    assert again[0] is nets[1] and str(again[-1]) == "192.0.2.1/32"
    back = pickle.loads(pickle.dumps({nets[0]: 1}))
    assert type(next(iter(back))) is IPNetwork and back == {IPNetwork(texts[0]): 1}
    v6 = b._networks("ipv6", [IPNetwork("2001:db8::1").first << 8 | 128])
    assert v6 == [IPNetwork("2001:db8::1/128")] and hash(v6[0]) == hash(IPNetwork("2001:db8::1/128"))


def test_fast_decoder_declines_an_unknown_layout():
    nets = [IPNetwork("198.51.100.0/24"), IPNetwork("203.0.113.7/32")]
    blob = bytearray(b"".join(_kernel_style(n, 100, 1, 40) for n in nets))
    assert ipset_diff.fast_members(bytes(blob), False) is not None
    size = len(blob) // 2
    for at in (size + 2, size + 4 + 8 + 4 + 2):  # the second member's nest type, then its cidr attribute type
        changed = bytearray(blob)
        changed[at] ^= 0x01
        assert ipset_diff.fast_members(bytes(changed), False) is None


def _plain_keys(nets):
    return [int(n.first) << 8 | n.prefixlen for n in nets if n.version == 4]


def test_wanted_reuses_the_last_conversion_only_for_the_same_networks():
    from datetime import datetime, timezone

    later = datetime.now(timezone.utc).timestamp() + 3600
    nets = [IPNetwork(f"10.{i >> 8 & 255}.{i & 255}.7/{24 if i % 2 else 32}") for i in range(ipset_diff.NUMPY_FROM + 10)]
    nets[17] = IPNetwork("2001:db8::/48")  # a mixed mapping: the IPv6 one is no IPv4 key
    cache: dict = {}
    keys, _ = ipset_diff.wanted(nets, [None] * len(nets), 4, later, cache)
    assert keys.tolist() == _plain_keys(nets) and cache["nets"] is nets
    # Grown at the end (the same objects first): only the tail is read, the result is still exact.
    grown = nets + [IPNetwork("198.51.100.0/24"), IPNetwork("2001:db8:1::/64"), IPNetwork("192.0.2.9/32")]
    keys, timeouts = ipset_diff.wanted(grown, [None] * len(grown), 4, later, cache)
    assert keys.tolist() == _plain_keys(grown) and cache["nets"] is grown and not timeouts.any()
    # Equal networks as new objects, one replaced in the middle, the same length: converted afresh.
    swapped = [IPNetwork(str(n)) for n in grown]
    swapped[len(swapped) // 3] = IPNetwork("203.0.113.0/24")
    keys, _ = ipset_diff.wanted(swapped, [None] * len(swapped), 4, later, cache)
    assert keys.tolist() == _plain_keys(swapped)
    # Shorter than last time: no reuse either.
    keys, _ = ipset_diff.wanted(nets[:-3], [None] * (len(nets) - 3), 4, later, cache)
    assert keys.tolist() == _plain_keys(nets[:-3])


def test_members_as_arrays_give_the_same_rows_as_lists():
    nets = [IPNetwork("198.51.100.0/24"), IPNetwork("203.0.113.7/32"), IPNetwork("192.0.2.128/25")]
    blob = b"".join(_kernel_style(n, 100 * i, i, 40 * i) for i, n in enumerate(nets))
    lists, arrays = ipset_diff.fast_members(blob, False), ipset_diff.fast_members(blob, False, lists=False)
    assert arrays.keys == [] and len(arrays) == len(lists) == 3
    rows = [arrays.row(i) for i in range(3)]
    assert rows == [lists.row(i) for i in range(3)] and all(type(v) is int for r in rows for v in r)
    assert rows[1] == (int(nets[1].first) << 8 | 32, 100, 1, 40)


def test_sorted_keys_match_an_argsort_across_the_whole_address_range():
    import numpy as np

    rng = np.random.default_rng(19)
    keys = rng.integers(0, 1 << 32, 5000, dtype=np.uint64) << np.uint64(8) | np.uint64(24)
    keys[:3] = [0xFFFFFFFF << 8 | 32, 0x80000000 << 8 | 1, 24]  # the top bit of the address set, and 0.0.0.0
    got, order = ipset_diff.sort_keys(keys)
    want = np.argsort(keys, kind="stable")
    assert got.tolist() == keys[want].tolist() and order.tolist() == want.tolist()


def test_numpy_diff_of_kernel_arrays_and_unsorted_wanted_keys():
    import random

    import numpy as np

    rng = random.Random(5)
    pool = list(dict.fromkeys((rng.randrange(1 << 32) & ~0xFF) << 8 | rng.choice((24, 32)) for _ in range(3000)))
    timeouts = [rng.choice((0, 100, 3600)) for _ in range(2000)]
    kernel = ipset_diff.Members(keys=pool[:2000], timeouts=timeouts, packets=[0] * 2000, bytes=[0] * 2000)
    lazy = ipset_diff.Members(arrays=(np.array(pool[:2000], dtype=np.uint64), np.array(timeouts, dtype=np.int64),
                                 np.zeros(2000, dtype=np.uint64), np.zeros(2000, dtype=np.uint64)))
    wanted = pool[1500:2500][::-1] + pool[:10]  # descending, then a few from the start
    want_t = [rng.choice((0, 99, 3600)) for _ in wanted]
    plain = ipset_diff.diff(kernel, wanted, want_t)
    assert ipset_diff.diff_v4(lazy, np.array(wanted, dtype=np.uint64), np.array(want_t)) == plain
    assert len(plain[0]) == 1490 and len(plain[1]) == 500 and plain[2]
