"""The config file: defaults, round-trip through dump, and one-line errors naming the key."""

from __future__ import annotations

import socket
from dataclasses import replace
from datetime import timedelta

import pytest

from netblock import config
from netblock.config import ClassPolicy, Config, WidenRule, dump, load
from netblock.errors import ConfigError
from netblock.firewall import Settings


def write(tmp_path, text: str):
    path = tmp_path / "netblock.toml"
    path.write_text(text)
    return path


def error(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text), explicit=True)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "netblock.toml") + ": ")
    return msg.split(": ", 1)[1]


# -- defaults and files --------------------------------------------------------------


def test_defaults_without_a_file(tmp_path):
    cfg = load(tmp_path / "absent.toml")
    assert cfg == Config()
    assert cfg.db == "/var/lib/netblock/netblock.db"
    assert cfg.backend == "nftables"
    assert cfg.lock_file == "/run/netblock/netblock.lock"
    assert cfg.host_id == socket.gethostname()
    assert cfg.blocks.default_ttl == timedelta(days=7)
    assert cfg.blocks.max_ttl == timedelta(days=90)
    assert cfg.blocks.reblock_factor == 2.0
    assert (cfg.blocks.max_prefix_v4, cfg.blocks.max_prefix_v6) == (8, 32)
    assert cfg.widen.rules[1] == WidenRule(4, 16, 64, 24)
    assert cfg.widen.window == timedelta(days=1)
    assert cfg.policy.window == timedelta(hours=1)
    assert cfg.policy.classes["lost-connection"] == ClassPolicy(30, timedelta(hours=1), timedelta(hours=6), False)
    assert cfg.daemon.coalesce == timedelta(milliseconds=50)
    assert cfg.sources.journal_units[0] == "postfix.service"
    assert cfg.export.listen == "127.0.0.1:9425"
    assert cfg.firewall_settings() == Settings()


def test_default_path_is_used_when_none_given(monkeypatch, tmp_path):
    path = write(tmp_path, 'backend = "ipset"\n')
    monkeypatch.setattr(config, "DEFAULT_PATH", str(path))
    assert load().backend == "ipset"


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.toml: no such file"):
        load(tmp_path / "absent.toml", explicit=True)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path, explicit=True)  # a directory
    assert error(tmp_path, "[blocks\n").startswith("invalid TOML")
    (tmp_path / "netblock.toml").write_bytes(b'db = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(tmp_path / "netblock.toml")


def test_partial_file_overrides_only_what_it_names(tmp_path):
    cfg = load(write(tmp_path, """
backend = "iptables"

[firewall]
ports = [25, 587]
verdict = "reject"

[blocks]
default_ttl = "2d"
allow = ["192.0.2.7/24", "2001:db8:1::/48"]

[policy.classes.bad-helo]
threshold = 1
window = "10m"
ttl = "2w"
widen = false

[policy.classes."dnsbl:local.example"]
threshold = 1
window = "1h"
ttl = "30d"
widen = true
"""), explicit=True)
    default = Config()
    assert cfg.backend == "iptables" and cfg.db == default.db
    assert cfg.firewall == replace(default.firewall, ports=(25, 587), verdict="reject")
    assert cfg.blocks == replace(default.blocks, default_ttl=timedelta(days=2),
                                 allow=("192.0.2.0/24", "2001:db8:1::/48"))
    assert cfg.policy.classes["bad-helo"] == ClassPolicy(1, timedelta(minutes=10), timedelta(weeks=2), False)
    assert cfg.policy.classes["dnsbl"] == default.policy.classes["dnsbl"]
    assert len(cfg.policy.classes) == len(default.policy.classes) + 1
    assert cfg.policy.class_policy("dnsbl:local.example").ttl == timedelta(days=30)
    assert cfg.policy.class_policy("dnsbl:zen.example") == default.policy.classes["dnsbl"]
    assert cfg.policy.class_policy("made-up") is None
    for section in ("widen", "sources", "daemon", "report", "export"):
        assert getattr(cfg, section) == getattr(default, section)
    assert cfg.firewall_settings() == Settings(ports=(25, 587), verdict="reject")


# -- dump ---------------------------------------------------------------------------------


def test_dump_of_defaults_loads_back_equal(tmp_path):
    cfg = Config()
    assert load(write(tmp_path, dump(cfg)), explicit=True) == cfg


def test_dump_of_everything_changed_loads_back_equal(tmp_path):
    d = Config()
    cfg = Config(
        db='/srv/nb "quoted"\\db\tname\x7f.db',
        backend="ipset",
        lock_file="/run/nb.lock",
        host_id="mx1.example.org",
        firewall=replace(d.firewall, ports=(25, 465), families=("ipv6",), verdict="reject",
                         hook="prerouting", ipset_maxelem=65536),
        blocks=replace(d.blocks, default_ttl=timedelta(hours=36), max_ttl=timedelta(weeks=3),
                       reblock_factor=1.5, max_prefix_v4=12, max_prefix_v6=40,
                       allow=("198.51.100.0/24",)),
        widen=replace(d.widen, enabled=False, rules=(WidenRule(6, 56, 3, 64),),
                      window=timedelta(minutes=90), max_prefix_v4=20, max_prefix_v6=44),
        policy=replace(d.policy, window=timedelta(seconds=45), delivered_window=timedelta(days=60),
                       classes={**config.DEFAULT_CLASSES,
                                "dnsbl": ClassPolicy(1, timedelta(hours=2), timedelta(days=3), False),
                                "site spécial": ClassPolicy(4, timedelta(hours=1), timedelta(days=1), True)}),
        sources=replace(d.sources, files=("/var/log/mail.log", "/var/log/mail.log.1"), format="exim",
                        journal=True, journal_units=("exim4.service",), max_line=4096,
                        own_names=("mx1.example.org",)),
        daemon=replace(d.daemon, tick=timedelta(seconds=5), coalesce=timedelta(milliseconds=1500),
                       observation_retention=timedelta(days=14)),
        report=replace(d.report, top=25, retention=timedelta(days=30), asn_file="/usr/share/asn.dat",
                       as_names_file="/usr/share/as-names.json", storm_factor=3.25),
        export=replace(d.export, listen="[::1]:9100", textfile="/var/lib/node_exporter/netblock.prom"),
    )
    text = dump(cfg)
    back = load(write(tmp_path, text), explicit=True)
    assert back == cfg
    assert '[policy.classes."site spécial"]' in text
    assert back.blocks.default_ttl == timedelta(hours=36)
    assert back.daemon.coalesce == timedelta(milliseconds=1500)


def test_dump_writes_readable_durations():
    text = dump(Config())
    assert 'default_ttl = "7d"' in text
    assert 'coalesce = "50ms"' in text
    assert 'tick = "30s"' in text


# -- errors name the key ---------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("colour = 1", "colour: unknown setting"),
    ("[firewal]\nports = [25]", "firewal: unknown setting"),
    ("[blocks]\ndefault_tll = \"7d\"", "[blocks] default_tll: unknown setting"),
    ("[blocks]\ndefault_ttl = 7", '[blocks] default_ttl: expected a duration like "7d", got 7'),
    ("[blocks]\ndefault_ttl = \"7 days\"", '[blocks] default_ttl: expected a duration like "7d", got "7 days"'),
    ("[blocks]\nmax_prefix_v4 = \"8\"", '[blocks] max_prefix_v4: expected an integer, got "8"'),
    ("[blocks]\nmax_prefix_v4 = true", "[blocks] max_prefix_v4: expected an integer, got true"),
    ("[blocks]\nmax_prefix_v4 = 33", "[blocks] max_prefix_v4: expected an integer from 4 to 32, got 33"),
    ("[blocks]\nmax_prefix_v4 = 3", "[blocks] max_prefix_v4: expected an integer from 4 to 32, got 3"),
    ("[widen]\nmax_prefix_v6 = 15", "[widen] max_prefix_v6: expected an integer from 16 to 128, got 15"),
    ("[blocks]\nreblock_factor = 0.5", "[blocks] reblock_factor: expected a number from 1.0 to 1000.0, got 0.5"),
    ("[blocks]\nallow = true", "[blocks] allow: expected a list, got true"),
    ("[blocks]\nallow = [\"192.0.2.0/24\", \"192.0.2.300/32\"]",
     '[blocks] allow[1]: expected a CIDR like "192.0.2.0/24", got "192.0.2.300/32"'),
    ("[blocks]\ndefault_ttl = \"100d\"", "[blocks] default_ttl: 100d is longer than max_ttl 90d"),
    ("[sources]\nfiles = true", "[sources] files: expected a list, got true"),
    ("[sources]\nformat = \"qmail\"", '[sources] format: expected one of "auto", "postfix", "exim", "sendmail", got "qmail"'),
    ("[sources]\njournal = \"yes\"", '[sources] journal: expected true, false or "auto", got "yes"'),
    ("backend = \"pf\"", 'backend: expected one of "nftables", "ipset", "iptables", "dryrun", got "pf"'),
    ("db = \"\"", 'db: expected a non-empty string, got ""'),
    ("[firewall]\nports = [25, 0]", "[firewall] ports[1]: expected an integer from 1 to 65535, got 0"),
    ("[firewall]\nports = []", "[firewall] ports: expected a non-empty list, got []"),
    ("[firewall]\nfamilies = [\"ipv4\", \"ipv4\"]", '[firewall] families: expected a list without repeats'),
    ("[firewall]\nverdict = \"accept\"", '[firewall] verdict: expected one of "drop", "reject", "count", got "accept"'),
    ("[firewall]\nhook = \"output\"", '[firewall] hook: expected one of "input", "prerouting", got "output"'),
    ("firewall = 1", "[firewall]: expected a table, got 1"),
    ("[widen]\nrules = [{family = 4, prefixlen = 24, min_count = 4}, {family = 5, prefixlen = 24, min_count = 1}]",
     "[widen] rules[1].family: expected 4 or 6, got 5"),
    ("[widen]\nrules = [{family = 4, prefixlen = 24}]", "[widen] rules[0].min_count: missing"),
    ("[widen]\nrules = [{family = 4, prefixlen = 24, min_count = 2, size = 3}]", "[widen] rules[0].size: unknown setting"),
    ("[widen]\nrules = [{family = 4, prefixlen = 24, min_count = 2, unit_prefixlen = 16}]",
     "[widen] rules[0].unit_prefixlen: expected an integer from 25 to 32, got 16"),
    ("[widen]\nrules = [{family = 6, prefixlen = 129, min_count = 2}]",
     "[widen] rules[0].prefixlen: expected an integer from 1 to 128, got 129"),
    ("[policy]\nwindow = \"1y\"", '[policy] window: expected a duration like "7d", got "1y"'),
    ("[policy]\nclasses = 3", "[policy] classes: expected tables [policy.classes.NAME], got 3"),
    ("[policy.classes.dnsbl]\nthreshold = 3\nwindow = \"1h\"\nttl = \"1d\"",
     "[policy.classes.dnsbl] widen: missing (each class sets threshold, window, ttl, widen)"),
    ("[policy.classes.dnsbl]\nthreshold = 3\nwindow = \"1h\"\nttl = \"1d\"\nwiden = true\ncolour = 1",
     "[policy.classes.dnsbl] colour: unknown setting"),
    ("[policy.classes.x]\nthreshold = 0\nwindow = \"1h\"\nttl = \"1d\"\nwiden = true",
     "[policy.classes.x] threshold: expected an integer >= 1, got 0"),
    ("[daemon]\ntick = \"0s\"", '[daemon] tick: expected a duration of at least 1s, got "0s"'),
    ("[report]\ntop = 0", "[report] top: expected an integer from 1 to 100000, got 0"),
    ("[export]\nlisten = \"localhost\"", '[export] listen: expected an address like "127.0.0.1:9425", got "localhost"'),
    ("[export]\nlisten = \"127.0.0.1:70000\"", '[export] listen: expected an address like "127.0.0.1:9425", got "127.0.0.1:70000"'),
])
def test_errors_name_section_and_key(tmp_path, text, message):
    assert error(tmp_path, text).startswith(message)


def test_empty_listen_and_coalesce_zero_are_allowed(tmp_path):
    cfg = load(write(tmp_path, '[export]\nlisten = ""\n[daemon]\ncoalesce = "0ms"\n'))
    assert cfg.export.listen == "" and cfg.daemon.coalesce == timedelta(0)


def test_ipv4_mapped_allow_entry_is_folded(tmp_path):
    cfg = load(write(tmp_path, '[blocks]\nallow = ["::ffff:192.0.2.0/120"]\n'))
    assert cfg.blocks.allow == ("192.0.2.0/24",)


def test_duration_syntax():
    d = config._duration
    assert d("50ms") == timedelta(milliseconds=50)
    assert d("30s") == timedelta(seconds=30)
    assert d("5m") == timedelta(minutes=5)
    assert d("12h") == timedelta(hours=12)
    assert d("7d") == timedelta(days=7)
    assert d("2w") == timedelta(weeks=2)
    assert d("1d12h") == timedelta(hours=36)
    assert d("1m30s500ms") == timedelta(seconds=90.5)
    for bad in ("", "7", "d", "-1d", "1.5h", "7D", " 7d", "12h1d", "1h1h", "1s1m", 7):
        with pytest.raises(config._Bad):
            d(bad)
    with pytest.raises(config._Bad):
        d("99999999999999w")


# -- [routed] (netblock/decide/routed.py) ---------------------------------------------------------


def test_routed_section(tmp_path):
    d = Config().routed
    assert (d.enabled, d.min_offenders, d.min_spread, d.window) == (False, 16, 8, timedelta(days=1))
    assert (d.max_prefix_v4, d.max_prefix_v6) == (12, 32) and 15169 in d.do_not_widen
    cfg = load(write(tmp_path, '[report]\nasn_file = "/x.dat"\n[routed]\nenabled = true\nmax_prefix_v4 = 10\n'
                     'do_not_widen = [64500]\n'), explicit=True)
    assert (cfg.routed.enabled, cfg.routed.max_prefix_v4, cfg.routed.do_not_widen) == (True, 10, (64500,))
    assert load(write(tmp_path, dump(cfg)), explicit=True) == cfg
    assert error(tmp_path, "[routed]\nenabled = true\n") == \
        "[routed] enabled: needs [report] asn_file (a pyasn ipasn_*.dat table)"
    assert error(tmp_path, "[routed]\nmax_prefix_v4 = 7\n") == \
        "[routed] max_prefix_v4: expected an integer from 8 to 32, got 7"
    assert error(tmp_path, "[routed]\ndo_not_widen = [15169, -1]\n") == \
        "[routed] do_not_widen[1]: expected an integer from 0 to 4294967295, got -1"


@pytest.mark.parametrize("text", ["10.1/16", "0x0a000000/8", "010.0.0.0/8", "0.0.0.0/0", "192.0.2.0/24 "])
def test_allow_entries_are_parsed_strictly_whatever_netaddr_version(tmp_path, text):
    """netaddr 0.8 (Debian 12) reads 10.1/16 as 10.1.0.0/16, 1.x refuses it: netblock refuses it on both."""
    with pytest.raises(ConfigError, match=r"\[blocks\] allow\[0\]: expected a CIDR"):
        load(write(tmp_path, f'[blocks]\nallow = ["{text}"]\n'))
