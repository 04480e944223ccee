"""Strict parsing of what a root user types: a typo must never become a drop rule."""

from datetime import timedelta

import pytest
from netaddr import IPNetwork

from netblock.decide.targets import Target, parse_duration, parse_target
from netblock.errors import BadInput, LimitExceeded


def test_docstring_examples_run():
    import doctest

    import netblock.decide.targets as targets

    result = doctest.testmod(targets)
    assert result.attempted >= 3 and result.failed == 0


GOOD = [
    ("198.18.1.7", "198.18.1.7/32"),
    ("198.18.1.0/24", "198.18.1.0/24"),
    ("198.18.0.0/15", "198.18.0.0/15"),
    ("0.0.0.0", "0.0.0.0/32"),
    ("255.255.255.255/32", "255.255.255.255/32"),
    ("10.0.0.0/8", "10.0.0.0/8"),
    ("2001:db8::1", "2001:db8::1/128"),
    ("2001:DB8::/48", "2001:db8::/48"),
    ("2001:db8::/32", "2001:db8::/32"),
    ("::ffff:198.18.1.1", "198.18.1.1/32"),
    ("::ffff:c612:101", "198.18.1.1/32"),
    ("::ffff:198.18.1.0/120", "198.18.1.0/24"),
    ("::ffff:198.18.1.1/128", "198.18.1.1/32"),
]


@pytest.mark.parametrize("text,want", GOOD)
def test_good_targets_parse_to_the_canonical_network(text, want):
    target = parse_target(text)
    assert target == Target(IPNetwork(want), None)
    assert target.netblock.version == IPNetwork(want).version


def test_mapped_ipv6_is_ipv4_not_a_v6_network():
    assert parse_target("::ffff:198.18.1.1").netblock.version == 4


@pytest.mark.parametrize(
    "text,want",
    [
        ("198.18.1.7/24", "198.18.1.0/24"),
        ("198.18.255.255/15", "198.18.0.0/15"),
        ("2001:db8::1/64", "2001:db8::/64"),
        ("::ffff:198.18.1.9/120", "198.18.1.0/24"),
    ],
)
def test_host_bits_are_cleared_with_a_warning_naming_both(text, want):
    target = parse_target(text)
    assert target.netblock == IPNetwork(want)
    assert target.warning == f"{text} has host bits set; using {want}"


BAD = [
    "",
    " ",
    "\t",
    "\n",
    " 198.18.1.1",
    "198.18.1.1 ",
    "198.18.1.1\n",
    "198.18. 1.1",
    "198.18.1.1 /24",
    "256.1.2.3",
    "198.18.1.300",
    "198.18.1.1/33",
    "2001:db8::/129",
    "198.18.1.1/",
    "198.18.1.1/x",
    "198.18.1.1/-1",
    "198.18.1.1/+8",
    "198.18.1.1/24/24",
    "198.18.1.1/024",
    "010.1.2.3",
    "198.018.1.1",
    "198.18.1.00",
    "10.1",
    "10.1.2",
    "1.2.3.4.5",
    "0x7f.1",
    "0x7f.0.0.1",
    "0177.0.0.1",
    "2130706433",
    "fe80::1%eth0",
    "fe80::1%25eth0",
    "198.18.1.1x",
    "198.18.1.1;rm -rf /",
    "198.18.1.1&",
    "$(reboot)",
    "`id`",
    "198.18.1.1|cat",
    "198.18.1.1>x",
    "*",
    "0.0.0.0/0",
    "::/0",
    "::ffff:0.0.0.0/96",
    "198.0.0.0/7",
    "2001:db8::/31",
    "1::2::3",
    ":::",
    "2001:db8::g",
    "[2001:db8::1]",
    "198.18.1.1.",
    ".198.18.1.1",
    "१९८.18.1.1",
    "198.18.1.1\x00",
    "localhost",
    "198.18.1.0-198.18.1.255",
    "198.18.1.0/255.255.255.0",
]


@pytest.mark.parametrize("text", BAD)
def test_bad_targets_are_refused_with_one_line_naming_the_value(text):
    with pytest.raises(BadInput) as caught:
        parse_target(text)
    message = str(caught.value)
    assert "\n" not in message
    assert repr(text) in message


def test_enough_bad_inputs_are_covered():
    assert len(BAD) >= 30


@pytest.mark.parametrize("text,want", [("198.0.0.0/7", "198.0.0.0/7"), ("2001:db8::/31", "2001:db8::/31"),
                                       ("16.0.0.0/4", "16.0.0.0/4"), ("::ffff:16.0.0.0/100", "16.0.0.0/4"),
                                       ("2001::/16", "2001::/16")])
def test_force_allows_wide_prefixes_down_to_the_floor(text, want):
    assert parse_target(text, force=True).netblock == IPNetwork(want)


@pytest.mark.parametrize("text", ["128.0.0.0/1", "0.0.0.0/3", "::ffff:128.0.0.0/97", "2000::/15", "::/1"])
def test_nothing_wider_than_the_floor_even_with_force(text):
    with pytest.raises(LimitExceeded) as caught:
        parse_target(text, force=True)
    assert repr(text) in str(caught.value) and "even with --force" in str(caught.value)
    assert parse_target(text, any_width=True).netblock.prefixlen < 16  # del/allow/why may still name it


@pytest.mark.parametrize("text", ["0.0.0.0/0", "::/0", "198.18.1.1/0", "::ffff:0.0.0.0/96"])
def test_force_never_allows_slash_zero(text):
    with pytest.raises(BadInput):
        parse_target(text, force=True)


def test_widest_allowed_without_force():
    assert parse_target("10.0.0.0/8").netblock.prefixlen == 8
    assert parse_target("2001:db8::/32").netblock.prefixlen == 32


@pytest.mark.parametrize(
    "text,want",
    [
        ("90s", timedelta(seconds=90)),
        ("45m", timedelta(minutes=45)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
        ("0d1h", timedelta(hours=1)),
    ],
)
def test_durations(text, want):
    assert parse_duration(text) == want


@pytest.mark.parametrize(
    "text", ["", "0s", "0d", "0w0s", "-1d", "-90s", "90", "d", "7 d", " 7d", "7d ", "7D", "7days",
             "1h1d", "1d1d", "1.5h", "x7d", "7dx", "+7d", "99999999999999w", "١d"],
)
def test_bad_durations_are_refused_naming_the_value(text):
    with pytest.raises(BadInput) as caught:
        parse_duration(text)
    assert repr(text) in str(caught.value)
