"""Other aggregators' own test vectors, run against ours where they test merging or excluding.

Vectors are read in place from ../shared/data/aggregation (see SOURCES.md
there); FireHOL's real lists in ../shared/data/netsets/firehol add a check
against the counts iprange wrote into their headers. Each vector is classified below, with the reason when it does not
apply (output-shaping flags netblock does not have, or a deliberately
different input policy); a test checks that every vector in the files is
classified, so none is skipped silently.
"""

import json
from pathlib import Path

import pytest
from netaddr import IPNetwork, IPRange, IPSet

from netblock.aggregate import aggregate, aggregate_lines
from netblock.errors import BadInput

DATA = Path(__file__).resolve().parents[2] / "../shared/data/aggregation"
IPRANGE = DATA / "iprange-tests"


def lines_of(*paths):
    out = []
    for p in paths:
        out.extend(p.read_text().splitlines())
    return out


def canon(text_lines):
    """Output lines in one spelling: aggregate6 writes hosts as /32, iprange bare."""
    return [str(IPNetwork(line)) for line in text_lines if line.strip()]


# ---- iprange ---------------------------------------------------------------

IPRANGE_APPLIES = {
    "01-basic-merge": "union of input1, input2, stdin",
    "02-common": "intersection, computed as A - (A - B) with exclusion",
    "03-exclude": "stdin + input1 minus input2",
    "08-print-ranges": "merge; expected ranges compared as address sets (we print CIDRs)",
    "44-reduce-mode": "two /25 merge into a /24 (what --ipset-reduce 0 yields is plain merging)",
    "95-ipv6-multi-file-merge": "IPv6 union",
    "96-ipv6-common": "IPv6 intersection as A - (A - B)",
    "97-ipv6-exclude": "IPv6 subtraction",
    "99-ipv6-count-unique-merged": "unique_ips of the merged set (entries counts ranges, not CIDRs: not compared)",
}
IPRANGE_NOT = {
    "10-dont-fix-network": "--dont-fix-network: netblock always masks host bits, as iprange does by default",
    "17-mixed-input-formats": "'a - b' ranges and dotted netmasks are refused on purpose (strict input)",
    "34-min-prefix": "--min-prefix output shaping: no such option",
    "35-prefixes": "--prefixes output shaping: no such option",
    "38-default-prefix": "--default-prefix: bare IPs are always hosts",
}


def iprange_case(name):
    d = IPRANGE / name
    stdin = lines_of(d / "stdin") if (d / "stdin").exists() else []
    inputs = [lines_of(d / f) for f in ("input1", "input2") if (d / f).exists()]
    expected = (d / "output").read_text().splitlines()
    return d, stdin, inputs, expected


def intersect(*sets):
    result = sets[0]
    for other in sets[1:]:
        result = aggregate_lines(result, aggregate_lines(result, other))
    return result


def test_every_iprange_vector_is_classified():
    present = {p.name for p in IPRANGE.iterdir() if p.is_dir()}
    assert present == set(IPRANGE_APPLIES) | set(IPRANGE_NOT)


@pytest.mark.parametrize("name", sorted(IPRANGE_APPLIES))
def test_iprange_vector(name):
    d, stdin, inputs, expected = iprange_case(name)
    if name == "01-basic-merge":
        assert aggregate_lines(inputs[0] + inputs[1] + stdin) == expected
    elif name == "02-common":
        assert intersect(inputs[0], inputs[1], stdin) == expected
    elif name == "03-exclude":
        assert aggregate_lines(stdin + inputs[0], inputs[1]) == expected
    elif name == "08-print-ranges":
        got = aggregate_lines(stdin + inputs[0])
        want = IPSet()
        for line in expected:
            first, last = line.split("-")
            want.add(IPRange(first, last))
        assert IPSet(got) == want
        assert len(got) == len(want.iter_cidrs())
    elif name == "44-reduce-mode":
        assert aggregate_lines(stdin) == expected
    elif name == "95-ipv6-multi-file-merge":
        assert aggregate_lines(inputs[0] + inputs[1]) == expected
    elif name == "96-ipv6-common":
        assert intersect(inputs[0], inputs[1]) == expected
    elif name == "97-ipv6-exclude":
        assert aggregate_lines(inputs[0], inputs[1]) == expected
    elif name == "99-ipv6-count-unique-merged":
        header, row = expected
        assert header == "entries,unique_ips"
        got = aggregate_lines(inputs[0] + inputs[1])
        assert IPSet(got).size == int(row.split(",")[1])
    else:
        raise AssertionError(f"no check written for {name}")


def test_iprange_mixed_formats_are_refused_naming_the_line():
    _, stdin, inputs, _ = iprange_case("17-mixed-input-formats")
    with pytest.raises(BadInput, match=r"line 6: .*'192\.168\.2\.0/255\.255\.255\.0'"):
        aggregate_lines(inputs[0])


# ---- aggregate6 and aggregate-prefixes -------------------------------------

# name -> how the vector is checked ("list": aggregate() on the list; "error":
# BadInput naming the bad value; "stdin": aggregate_lines on the text, compared
# after canon(); "stdin-v6": the same, IPv6 part only, as the tool's -6 flag
# filters families).
PY_APPLIES = {
    "aggregate6": {
        "test_00__default_wins": "list",
        "test_01__join_two": "list",
        "test_03__mix_v4_v6_default": "list",
        "test_04__lot_of_ipv4": "list",
        "test_05__lot_of_ipv4_holes": "list",
        "test_06__reduce_dups": "list",
        "test_07__non_ip_input": "error",
        "test_09__main": "stdin",
        "test_10__main": "stdin-v6",
        "test_12__use_space_in_stdin": "stdin-v6",
    },
    "aggregate-prefixes": {
        "test_00__default_wins": "list",
        "test_01__join_two": "list",
        "test_03__lot_of_ipv4": "list",
        "test_04__lot_of_ipv4_holes": "list",
        "test_05__reduce_dups": "list",
        "test_06__non_ip_input": "error",
        "test_10__no_host_mask": "stdin",
    },
}
PY_NOT = {
    "aggregate6": {
        "test_11_main": "bad lines are skipped with a warning there; netblock refuses the whole input",
        "test_13_truncate": "-t truncation: no such option (host bits are always masked)",
        "test_14_maxlength": "-m max length: no such option",
        "test_15_verbose": "-v diff output: no such option",
    },
    "aggregate-prefixes": {
        "test_02__mix_v4_v6_default": "that tool refuses mixed families; netblock aggregates both",
        "test_07__main": "several prefixes per line; netblock reads only the first field of a line",
        "test_08__maxlength": "-m max length: no such option",
        "test_09__truncate_31": "-t truncation: no such option",
        "test_09__truncate_0": "-t truncation: no such option",
    },
}


def cases(tool):
    return {c["name"]: c for c in json.loads((DATA / tool / "vectors.json").read_text())["cases"]}


@pytest.mark.parametrize("tool", sorted(PY_APPLIES))
def test_every_python_tool_vector_is_classified(tool):
    assert set(cases(tool)) == set(PY_APPLIES[tool]) | set(PY_NOT[tool])
    assert not set(PY_APPLIES[tool]) & set(PY_NOT[tool])


@pytest.mark.parametrize(
    "tool,name", [(tool, name) for tool in sorted(PY_APPLIES) for name in sorted(PY_APPLIES[tool])]
)
def test_python_tool_vector(tool, name):
    case = cases(tool)[name]
    how = PY_APPLIES[tool][name]
    if how == "list":
        assert [str(n) for n in aggregate(case["input"])] == case["expected_stdout"]
    elif how == "error":
        bad = case["input"][0]
        with pytest.raises(BadInput, match=repr(bad)):
            aggregate(case["input"])
    elif how == "stdin":
        got = aggregate_lines(case["input"].splitlines())
        assert canon(got) == canon(case["expected_stdout"].splitlines())
        if "-s" in case["args"]:
            assert got == case["expected_stdout"].splitlines()
    elif how == "stdin-v6":
        got = [line for line in aggregate_lines(case["input"].splitlines()) if ":" in line]
        assert canon(got) == canon(case["expected_stdout"].splitlines())
    else:
        raise AssertionError(f"unknown check {how}")


# ---- real lists FireHOL processed with iprange -------------------------------

NETSETS = DATA / "../netsets/firehol"


def test_firehol_lists_are_there():
    assert len(list(NETSETS.glob("*.netset"))) >= 2 and len(list(NETSETS.glob("*.ipset"))) >= 1


@pytest.mark.parametrize("path", sorted(NETSETS.glob("*.*set")), ids=lambda p: p.name)
def test_firehol_list_header_counts(path):
    """Each header says what iprange made of the list; a .netset body is iprange's own output."""
    text = path.read_text()
    header = next(line for line in text.splitlines() if line.startswith("# Entries"))
    counts = dict(reversed(part.split(None, 1)) for part in header.split(":", 1)[1].strip().split(", "))
    got = aggregate_lines(text.splitlines())
    assert IPSet(got).size == int(counts["unique IPs"])
    if "subnets" in counts:
        assert len(got) == int(counts["subnets"])
        assert got == [line for line in text.splitlines() if line and not line.startswith("#")]
