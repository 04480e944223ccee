"""The iptables backend's ruleset text and error mapping, without touching any kernel."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from netaddr import IPNetwork

from netblock.errors import BadInput, KernelError, KernelFeatureMissing, PermissionDenied, ToolMissing
from netblock.firewall import Settings, iptables as ipt


def skeleton(settings: Settings) -> list[str]:
    return [line for line in ipt.render(settings).splitlines() if line and not line.startswith("#")]


def test_default_skeleton_is_one_chain_and_one_commented_jump_for_port_25():
    assert skeleton(Settings()) == [
        "*filter",
        ":NETBLOCK - [0:0]",
        "-A INPUT -p tcp -m tcp --dport 25 -m comment --comment netblock -j NETBLOCK",
        "COMMIT",
    ]


def test_several_ports_use_one_multiport_match():
    lines = skeleton(Settings(ports=(25, 465, 587)))
    assert lines[2] == "-A INPUT -p tcp -m multiport --dports 25,465,587 -m comment --comment netblock -j NETBLOCK"


def test_skeleton_does_not_depend_on_verdict_or_family():
    assert skeleton(Settings(verdict="reject", families=("ipv6",))) == skeleton(Settings())


def test_rendered_text_has_no_unfilled_placeholder():
    assert "$" not in ipt.render(Settings(ports=(25, 587)))


def test_more_ports_than_multiport_takes_is_bad_input():
    with pytest.raises(BadInput, match=r"more than 15"):
        ipt.render(Settings(ports=tuple(range(25, 41))))
    with pytest.raises(BadInput):
        ipt.create(Settings(ports=tuple(range(25, 41))))


def test_rule_lines_are_exactly_source_and_verdict():
    assert ipt.rule_line(IPNetwork("192.0.2.0/24"), Settings()) == "-A NETBLOCK -s 192.0.2.0/24 -j DROP"
    assert ipt.rule_line(IPNetwork("2001:db8::/32"), Settings()) == "-A NETBLOCK -s 2001:db8::/32 -j DROP"
    assert (ipt.rule_line(IPNetwork("198.51.100.7/32"), Settings(verdict="reject"))
            == "-A NETBLOCK -s 198.51.100.7/32 -p tcp -j REJECT --reject-with tcp-reset")


def test_description_names_the_legacy_tools():
    b = ipt.create(Settings())
    assert b.name == "iptables"
    assert "NETBLOCK" in b.description and "iptables-legacy/ip6tables-legacy" in b.description
    assert "ip6tables" not in ipt.create(Settings(families=("ipv4",))).description


@pytest.mark.parametrize("mask, addr, expected", [
    ("ffffff00", "c0000207", "192.0.2.0/24"),  # host bits are cleared
    ("ffffffff", "c6336407", "198.51.100.7/32"),
    ("00000000", "00000000", "0.0.0.0/0"),
    ("ff00ff00", "c0000200", None),  # not a prefix: never one of ours
])
def test_source_and_mask_become_a_netblock_only_for_prefix_masks(mask, addr, expected):
    got = ipt._source(bytes.fromhex(addr), bytes.fromhex(mask), 4)
    assert (str(ipt._net(got)) if got is not None else None) == expected


@pytest.mark.parametrize("text, kind", [
    ("can't initialize filter: Permission denied (you must be root)", PermissionDenied),
    ("can't initialize filter: Table does not exist (do you need to insmod?)", ToolMissing),
    ("can't find target REJECT", ToolMissing),
    ("can't commit: No chain/target/match by that name", KernelFeatureMissing),
    ("can't commit: Invalid argument", KernelError),
])
def test_binding_errors_become_one_line_netblock_errors(text, kind):
    err = ipt._translate(RuntimeError(text + "\n"), ipt.FAMILIES["ipv4"], "apply")
    assert type(err) is kind
    assert "\n" not in str(err) and "iptables-legacy" in str(err)


def _load_in_subprocess(prelude: str, env: dict) -> subprocess.CompletedProcess:
    # Only the loader runs: it fails before any table could be opened.
    code = (prelude + "\nfrom netblock.errors import ToolMissing\n"
            "from netblock.firewall import iptables as ipt\n"
            "try:\n    ipt._load_iptc()\nexcept ToolMissing as e:\n    print(e); raise SystemExit(3)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_missing_extensions_are_tool_missing(tmp_path):
    r = _load_in_subprocess("", {**os.environ, "XTABLES_LIBDIR": str(tmp_path)})
    assert r.returncode == 3, r.stderr
    assert "libxt_standard.so" in r.stdout and str(tmp_path) in r.stdout


def test_missing_python_iptables_is_tool_missing():
    r = _load_in_subprocess("import sys; sys.modules['iptc'] = None", dict(os.environ))
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith("python-iptables cannot load") and r.stdout.count("\n") == 1


def test_host_bits_never_reach_the_kernel():
    assert ipt._key(IPNetwork("192.0.2.77/24")) == (4, int(IPNetwork("192.0.2.0/24").value), 24)
    assert ipt._net(ipt._key(IPNetwork("2001:db8::1/32"))) == IPNetwork("2001:db8::/32")


def test_the_change_paths_source_columns_are_the_same_from_an_array_and_from_ints():
    """The C-speed columns (from an array's bytes, translate for the masks) say what the per-rule form says."""
    import random
    from array import array

    from netblock.firewall import iptables_region as region

    rng = random.Random(5)
    keys = []
    for _ in range(300):
        plen = rng.randrange(33)
        first = rng.getrandbits(32) >> (32 - plen) << (32 - plen) if plen else 0
        keys.append(first << 8 | plen)
    assert region._source_columns(array("Q", keys), 4) == region._source_columns(keys, 4)
    assert region._source_columns(array("Q"), 4) == region._source_columns([], 4)


def test_the_change_paths_snapshot_splice_keeps_keys_sorted_with_their_expiries():
    from array import array

    from netblock.firewall import iptables_region as region
    from netblock.firewall.columns import spliced

    keys, expiry = region.columns([(3 << 8 | 32, None), (1 << 8 | 32, 10.0)], 4, 0.0)
    k2, e2 = spliced(memoryview(keys).cast("Q"), memoryview(expiry).cast("d"), 4,
                     [(4, 3 << 8 | 32)], [(4, 2 << 8 | 32, 20.0), (6, 9, None)], [(4, 1 << 8 | 32, 15.0)])
    assert list(array("Q", k2)) == [1 << 8 | 32, 2 << 8 | 32] and list(array("d", e2)) == [15.0, 20.0]
