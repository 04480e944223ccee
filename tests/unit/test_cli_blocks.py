"""The block commands' logic against a real store and the fake backend.

Kernel behaviour is proven in tests/kernel/test_cli*.py; here: escalation,
validation-before-write, expiry bookkeeping, output formats.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from netaddr import IPNetwork

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from fakes import FakeBackend, fake_config  # noqa: E402

from netblock import cli  # noqa: E402
from netblock.errors import NetblockError  # noqa: E402
from netblock.store.sqlite import Store  # noqa: E402
from netblock.system import hostaddrs

DATA = Path(__file__).resolve().parents[2] / "../shared/data"
# A pinned instant, not today: in this file it meets only fakes, the store and pure functions,
# never the kernel's or the real clock (scripts/test-clock.sh runs the suite 400 days ahead).
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
OWN = [IPNetwork("203.0.113.25/32")]


def N(text):
    return IPNetwork(text)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Harness:
    """Runs `netblock ARGV` in-process with the fake backend; the store is a real file."""

    def __init__(self, tmp_path, monkeypatch):
        self.db = tmp_path / "nb.db"
        self.config = fake_config(str(tmp_path / "lock"), str(self.db))
        self.backend = FakeBackend()
        self.monkeypatch = monkeypatch
        self.at(NOW)

    def at(self, when: datetime) -> None:
        self.monkeypatch.setenv("NETBLOCK_NOW", when.isoformat())

    def __call__(self, *argv: str, stdin: str = "", tty: bool = False) -> tuple[int, str, str]:
        out, err = io.StringIO(), (Terminal() if tty else io.StringIO())
        try:
            args = cli.build_parser().parse_args(list(argv))
        except SystemExit as exc:
            return exc.code, "", ""
        ctx = cli.Context(args, stdout=out, stderr=err, stdin=io.StringIO(stdin))
        ctx._config = self.config
        ctx._backend = self.backend
        ctx._store = Store.open(self.db)
        try:
            rc = args.handler(args, ctx)
        except NetblockError as exc:
            err.write(f"netblock: {exc}\n")
            rc = exc.exit_status
        finally:
            ctx.close()
        return rc, out.getvalue(), err.getvalue()

    def ok(self, *argv: str, stdin: str = "") -> str:
        rc, out, err = self(*argv, stdin=stdin)
        assert rc == 0, err
        return out

    def refused(self, *argv: str, stdin: str = "") -> str:
        before_store, before_kernel, before_calls = self.rows(), dict(self.backend.elements), len(self.backend.calls)
        rc, out, err = self(*argv, stdin=stdin)
        assert rc == 2, (argv, out, err)
        assert len(err.strip().splitlines()) == 1, err
        assert self.rows() == before_store
        assert self.backend.elements == before_kernel
        assert not set(self.backend.calls[before_calls:]) & {"ensure", "apply", "remove"}
        return err.strip()

    def rows(self) -> dict:
        with Store.open(self.db) as store:
            return {b.netblock: b for b in store.blocks()} | {("allow", e.netblock): e for e in store.allowlist()}

    def block(self, net: str):
        with Store.open(self.db) as store:
            return store.get_block(N(net))


@pytest.fixture
def nb(tmp_path, monkeypatch):
    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: list(OWN))
    return Harness(tmp_path, monkeypatch)


# ---------------------------------------------------------------- add

def test_add_stores_blocks_with_the_default_ttl_and_syncs(nb):
    out = nb.ok("add", "198.18.1.0/24", "2001:db8:7::/48", "--reason", "spam run")
    assert "blocked 2 netblocks (2 new, 0 re-blocked)" in out
    b = nb.block("198.18.1.0/24")
    assert (b.source, b.reason, b.reblocks, b.created, b.expires) == ("cli", "spam run", 0, NOW, NOW + timedelta(days=7))
    assert nb.backend.elements == {N("198.18.1.0/24"): NOW + timedelta(days=7),
                                   N("2001:db8:7::/48"): NOW + timedelta(days=7)}


def test_add_ttl_and_permanent(nb):
    nb.ok("add", "198.18.1.1", "--ttl", "90s")
    nb.ok("add", "198.18.1.4", "--ttl", "1d12h")
    nb.ok("add", "198.18.1.9", "--permanent")
    assert nb.block("198.18.1.1").expires == NOW + timedelta(seconds=90)
    assert nb.block("198.18.1.4").expires == NOW + timedelta(hours=36)
    assert nb.block("198.18.1.9").expires is None
    assert nb.backend.elements[N("198.18.1.9/32")] is None


def test_repeat_offender_ttl_grows_until_max_ttl(nb):
    nb.ok("add", "198.18.2.0/24")
    first = nb.block("198.18.2.0/24")
    assert first.expires == NOW + timedelta(days=7)
    later = NOW + timedelta(days=8)  # expired, but the row is still history
    nb.at(later)
    assert nb.ok("list", "--json").strip() == "[]"
    out = nb.ok("add", "198.18.2.0/24")
    assert "re-block #1" in out
    b = nb.block("198.18.2.0/24")
    assert (b.reblocks, b.expires) == (1, later + timedelta(days=14))
    expiries = []
    for n in range(2, 6):
        later = b.expires + timedelta(seconds=1)
        nb.at(later)
        nb.ok("add", "198.18.2.0/24")
        b = nb.block("198.18.2.0/24")
        assert b.reblocks == n
        expiries.append(b.expires - later)
    assert expiries == [timedelta(days=28), timedelta(days=56), timedelta(days=90), timedelta(days=90)]


def test_readding_an_active_block_escalates_but_never_shortens_it(nb):
    nb.ok("add", "198.18.3.0/24", "--permanent", "--reason", "known bad")
    nb.ok("add", "198.18.3.0/24", "--ttl", "1h")
    b = nb.block("198.18.3.0/24")
    assert (b.expires, b.reblocks, b.reason) == (None, 1, "known bad")
    nb.ok("add", "198.18.4.0/24", "--ttl", "12h")
    nb.ok("add", "198.18.4.0/24", "--ttl", "1h")  # 1h × 2 = 2h < the 12h still running
    assert nb.block("198.18.4.0/24").expires == NOW + timedelta(hours=12)


def test_add_from_stdin_skips_comments_and_trailing_fields(nb):
    listing = ("; Spamhaus DROP List\n# a FireHOL header\n\n198.18.5.0/24 ; SBL123\n"
               "198.18.6.7   seen 3 times\n  2001:db8:8::/48\n; EOF\n")
    out = nb.ok("add", "-", "198.18.9.9", stdin=listing)
    assert "blocked 4 netblocks" in out
    assert nb.block("198.18.5.0/24").source == "list"
    assert nb.block("198.18.9.9").source == "cli"
    assert set(nb.backend.elements) == {N("198.18.5.0/24"), N("198.18.6.7/32"), N("198.18.9.9/32"),
                                        N("2001:db8:8::/48")}


def test_a_real_spamhaus_drop_file_loads_as_is(nb):
    text = (DATA / "netsets/spamhaus/wsock-trace/drop.txt").read_text()
    cidrs = {line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith(";")}
    nb.ok("add", "-", stdin=text)
    assert set(nb.rows()) == {N(c) for c in cidrs}
    assert len(cidrs) > 1000


def test_header_only_list_adds_nothing(nb):
    text = (DATA / "netsets/spamhaus/wsock-trace/edrop-merged-notice-2024-10-18.txt").read_text()
    rc, out, err = nb("add", "-", stdin=text)
    assert rc == 0 and "no targets" in err and nb.rows() == {}


def test_host_bits_are_normalised_with_a_warning(nb):
    rc, out, err = nb("add", "198.18.1.7/24")
    assert rc == 0 and "198.18.1.7/24" in err and "198.18.1.0/24" in err
    assert N("198.18.1.0/24") in nb.rows()


BAD_ADDS = [
    (["198.18.1.256"], "198.18.1.256"),
    (["010.1.2.3"], "010.1.2.3"),
    (["198.18.1.0/33"], "198.18.1.0/33"),
    (["0.0.0.0/0", "--force"], "0.0.0.0/0"),
    (["::/0", "--force"], "::/0"),
    (["198.0.0.0/7"], "198.0.0.0/7"),
    (["2001:db8::/31"], "2001:db8::/31"),
    (["fe80::1%eth0"], "fe80::1%eth0"),
    (["127.0.0.1"], "127.0.0.1"),
    (["169.254.1.0/24"], "169.254.1.0/24"),
    (["224.0.0.0/4"], "224.0.0.0/4"),
    (["ff02::1"], "ff02::1"),
    (["203.0.113.25"], "203.0.113.25"),
    ([""], "''"),
    (["198.18.1.1;reboot"], "198.18.1.1;reboot"),
    (["198.18.1.1", "--ttl", "0s"], "0s"),
    (["198.18.1.1", "--ttl", "7"], "7"),
    (["198.18.1.1", "--ttl", "1y"], "1y"),
    (["198.18.1.1", "--ttl", "100d"], "100d"),
    (["198.18.1.1", "--ttl", "99999999999w"], "99999999999w"),
    (["198.18.1.1", "--ttl", "1h", "--permanent"], "--ttl 1h"),
    (["198.18.1.1", "198.18.1.2", "198.18.300.3", "198.18.1.4"], "198.18.300.3"),
]


@pytest.mark.parametrize("argv,named", BAD_ADDS, ids=[" ".join(a) or "empty" for a, _ in BAD_ADDS])
def test_bad_add_is_one_line_exit_2_and_changes_nothing(nb, argv, named):
    nb.ok("add", "198.18.100.0/24", "--permanent")
    err = nb.refused("add", *argv)
    assert named in err


def test_bad_line_in_stdin_names_the_line_and_changes_nothing(nb):
    nb.ok("add", "198.18.100.0/24")
    err = nb.refused("add", "-", stdin="198.18.1.0/24\n# note\n198.18.2.0/24\n1.2.3.4.5\n198.18.3.0/24\n")
    assert "stdin line 4" in err and "1.2.3.4.5" in err


def test_allowlisted_targets_are_refused_but_wider_blocks_are_carved(nb):
    nb.ok("allow", "add", "198.18.7.0/28", "--comment", "partner")
    assert "allowlisted" in nb.refused("add", "198.18.7.5")
    nb.ok("add", "198.18.7.0/24")
    assert N("198.18.7.0/24") in nb.rows()
    assert not any(N("198.18.7.5/32") in n for n in nb.backend.elements if n.version == 4)
    assert N("198.18.7.128/25") in nb.backend.elements


def test_force_allows_wide_prefixes(nb):
    nb.ok("add", "198.0.0.0/7", "--force")
    assert N("198.0.0.0/7") in nb.rows()


# ---------------------------------------------------------------- del, list

def test_del_removes_and_an_unknown_target_changes_nothing(nb):
    nb.ok("add", "198.18.1.0/24", "198.18.9.7")
    err = nb.refused("del", "198.18.9.7", "198.18.2.0/24")
    assert "198.18.2.0/24" in err and "not in the store" in err
    out = nb.ok("del", "198.18.9.7")
    assert "deleted 198.18.9.7" in out
    assert set(nb.rows()) == {N("198.18.1.0/24")} and set(nb.backend.elements) == {N("198.18.1.0/24")}


def test_list_json_and_all(nb):
    nb.ok("add", "198.18.1.0/24", "--ttl", "1h", "--reason", "r1")
    nb.ok("add", "2001:db8::/48", "--permanent")
    nb.at(NOW + timedelta(hours=2))
    active = json.loads(nb.ok("list", "--json"))
    assert active == [{"netblock": "2001:db8::/48", "reason": "", "source": "cli",
                       "created": "2026-11-27T12:00:00Z", "expires": None}]
    every = json.loads(nb.ok("list", "--all", "--json"))
    assert every[0] == {"netblock": "198.18.1.0/24", "reason": "r1", "source": "cli",
                        "created": "2026-11-27T12:00:00Z", "expires": "2026-11-27T13:00:00Z"}
    table = nb.ok("list", "--all").splitlines()
    assert table[0].split() == ["NETBLOCK", "EXPIRES", "CREATED", "SOURCE", "REBLOCKS", "REASON"]
    assert "(expired)" in table[1] and "never" in table[2]


# ---------------------------------------------------------------- allow

def test_allow_add_carves_at_once_and_del_restores(nb):
    nb.ok("add", "198.51.100.0/24")
    nb.ok("allow", "add", "198.51.100.9", "--comment", "our relay")
    assert N("198.51.100.0/24") not in nb.backend.elements
    assert N("198.51.100.8/32") in nb.backend.elements and N("198.51.100.9/32") not in nb.backend.elements
    listing = json.loads(nb.ok("allow", "list", "--json"))
    assert listing == [{"netblock": "198.51.100.9/32", "comment": "our relay",
                        "created": "2026-11-27T12:00:00Z", "source": "store"}]
    assert "not in the allowlist" in nb.refused("allow", "del", "198.51.100.9", "198.51.100.10")
    nb.ok("allow", "del", "198.51.100.9")
    assert set(nb.backend.elements) == {N("198.51.100.0/24")}
    assert "'198.51.100.1/99'" in nb.refused("allow", "add", "198.51.100.1/99")


# ---------------------------------------------------------------- expire, sync, status

def test_expire_reports_new_expiries_once_and_purges_old_history(nb):
    nb.ok("add", "198.18.1.0/24", "--ttl", "1h")
    nb.ok("add", "198.18.2.0/24", "--ttl", "2d")
    nb.ok("add", "198.18.5.0/24", "--permanent")
    nb.at(NOW + timedelta(hours=3))
    out = nb.ok("expire")
    assert "expired 198.18.1.0/24 at 2026-11-27T13:00:00Z" in out and "198.18.2.0/24" not in out
    assert set(nb.backend.elements) == {N("198.18.2.0/24"), N("198.18.5.0/24")}
    assert N("198.18.1.0/24") in nb.rows()  # kept as history for escalation
    nb.at(NOW + timedelta(days=3))
    out = nb.ok("expire")
    assert "expired 198.18.2.0/24" in out and "198.18.1.0/24" not in out
    nb.at(NOW + timedelta(days=91))
    out = nb.ok("expire")
    assert "purged 198.18.1.0/24" in out and "purged 198.18.2.0/24" not in out
    assert set(nb.rows()) == {N("198.18.2.0/24"), N("198.18.5.0/24")}


def test_sync_dry_run_prints_the_diff_and_changes_nothing(nb):
    nb.ok("add", "198.18.1.0/24")
    nb.backend.elements = {N("198.18.9.7/32"): None}
    calls = len(nb.backend.calls)
    out = nb.ok("sync", "--dry-run")
    assert out.splitlines() == ["+ 198.18.1.0/24", "- 198.18.9.7"]
    assert nb.backend.elements == {N("198.18.9.7/32"): None}
    assert "apply" not in nb.backend.calls[calls:]
    assert "+1 -1" in nb.ok("sync")
    assert nb.ok("sync", "--dry-run").startswith("in sync (1 netblocks)")


def test_status_tells_in_sync_from_drifted(nb):
    nb.ok("add", "198.18.1.0/24", "--ttl", "1h")
    nb.ok("add", "198.18.2.0/24", "--permanent")
    status = json.loads(nb.ok("status", "--json"))
    assert status["in_sync"] is True and status["backend"] == "dryrun"
    assert (status["blocks_active"], status["desired"], status["installed"]) == (2, 2, 2)
    assert status["next_expiry"] == "2026-11-27T13:00:00Z"
    assert status["oldest_block"]["created"] == "2026-11-27T12:00:00Z"
    nb.backend.elements.pop(N("198.18.2.0/24"))
    status = json.loads(nb.ok("status", "--json"))
    assert status["in_sync"] is False and status["drift"]["missing"] == 1
    assert "DRIFTED" in nb.ok("status")


def test_remove_rules_tears_the_backend_down_and_status_and_sync_notice(nb):
    nb.ok("add", "198.18.1.0/24")
    nb.ok("remove-rules")
    assert nb.backend.elements == {} and nb.backend.calls[-1] == "remove"
    assert N("198.18.1.0/24") in nb.rows()
    status = json.loads(nb.ok("status", "--json"))
    assert (status["in_sync"], status["kernel_objects"], status["installed"]) == (False, "missing", 0)
    rc, out, err = nb("sync", "--dry-run")
    assert (rc, out, nb.backend.present) == (0, "+ 198.18.1.0/24\n", False) and "missing" in err
    nb.ok("sync")
    assert json.loads(nb.ok("status", "--json"))["in_sync"] is True


# ---------------------------------------------------------------- aggregate, help

def test_aggregate_merges_stdin_and_honours_exclude(nb, tmp_path):
    exclude = tmp_path / "exclude"
    exclude.write_text("198.18.0.3\n")
    text = "198.18.0.0\n198.18.0.1\n198.18.0.2\n198.18.0.3 # x\n2001:db8::/33\n2001:db8:8000::/33\n"
    out = nb.ok("aggregate", "--exclude", str(exclude), stdin=text)
    assert out.splitlines() == ["198.18.0.0/31", "198.18.0.2", "2001:db8::/32"]
    assert json.loads(nb.ok("aggregate", "--json", stdin=text)) == ["198.18.0.0/30", "2001:db8::/32"]
    assert "no-such-file" in nb.refused("aggregate", "--exclude", str(tmp_path / "no-such-file"), stdin=text)
    assert not nb.db.exists() or nb.rows() == {}


def test_every_option_of_every_command_documents_its_default():
    parser = cli.build_parser()

    def walk(p):
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for q in action.choices.values():
                    yield from walk(q)

    sub = next(a for a in parser._actions if a.dest == "command")
    for name, top in sub.choices.items():
        for p in walk(top):
            assert p.description, p.prog
            for action in p._actions:
                if action.option_strings and action.dest != "help":
                    assert "default" in (action.help or ""), (p.prog, action.option_strings)


def test_large_lists_escalate_the_rows_the_store_remembers(nb):
    first = "".join(f"198.18.{i // 200}.{i % 200}\n" for i in range(1200))
    nb.ok("add", "-", stdin=first)
    nb.at(NOW + timedelta(days=30))
    again = first + "".join(f"198.19.0.{i}\n" for i in range(10))
    assert "(10 new, 1200 re-blocked)" in nb.ok("add", "-", stdin=again)
    assert nb.block("198.18.5.199").reblocks == 1 and nb.block("198.19.0.9").reblocks == 0
    assert nb.block("198.18.5.199").expires == NOW + timedelta(days=30 + 14)


def _bulk_list(bad: str | None = None, at: int = 0) -> str:
    """1,500 targets: canonical IPv4 of every width, host bits, IPv6, repeats, blocks with carve-outs."""
    lines = [f"198.18.{i // 256}.{i % 256}" if i % 3 else f"198.{20 + i % 200}.{i // 8}.0/{21 + i % 4 * 3}"
             for i in range(1200)]
    lines[7:7] = ["198.18.7.0/24", "203.0.113.0/24 ; holds this host's address", "2001:db8::/48",
                  "198.18.0.7/24", "198.18.0.1", "198.18.0.0/24", "::ffff:198.18.9.9", "198.16.0.0/12"]
    lines += [f"2001:db8:{i:x}::/64" for i in range(300)] + ["198.18.7.3/24"]
    if bad is not None:
        lines.insert(at, bad)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("bad,at,named", [
    (None, 0, None), ("198.18.7.5", 1300, "allowlisted"), ("203.0.113.25", 900, "own address"),
    ("198.0.0.0/7", 1000, "wider than /8"), ("127.0.0.1", 5, "built-in"), ("1.2.3.4.5", 1400, "1.2.3.4.5"),
])
def test_a_large_list_is_screened_in_arrays_exactly_as_target_by_target(nb, tmp_path, monkeypatch, bad, at, named):
    """From SCREEN_AT targets on, `add -` screens them in arrays first: the same output, the same first
    refusal, the same store, as when every target goes through the checks one by one."""
    from netblock.commands import blocks

    def run(screen_at: int, db: str):
        monkeypatch.setattr(blocks, "SCREEN_AT", screen_at)
        (tmp_path / db).mkdir()
        harness = Harness(tmp_path / db, monkeypatch)
        harness.ok("allow", "add", "198.18.7.0/28", "--comment", "partner")
        harness.ok("add", "198.19.0.0/24", "--reason", "earlier")
        rc, out, err = harness("add", "-", stdin=_bulk_list(bad, at))
        return rc, out, err, harness.rows(), dict(harness.backend.elements)

    bulk, one_by_one = run(1000, "bulk"), run(10**9, "each")
    assert bulk[:3] == one_by_one[:3], bulk[2]
    assert sorted(map(str, bulk[3])) == sorted(map(str, one_by_one[3]))
    assert [(str(k), v) for k, v in sorted(bulk[3].items(), key=lambda kv: str(kv[0]))] == \
        [(str(k), v) for k, v in sorted(one_by_one[3].items(), key=lambda kv: str(kv[0]))]
    assert bulk[4] == one_by_one[4]
    if named is None:
        assert bulk[0] == 0, bulk[2]
        assert "carved out 198.18.7.0/28 from 198.18.7.0/24" in bulk[1]
        assert "carved out 203.0.113.25 from 203.0.113.0/24" in bulk[1]
    else:
        errors = [line for line in bulk[2].splitlines() if not line.startswith("netblock: warning:")]
        assert bulk[0] == 2 and len(errors) == 1 and named in errors[0]


def test_config_prints_the_effective_configuration(tmp_path, capsys, monkeypatch):
    import tomllib

    monkeypatch.delenv("NETBLOCK_DB", raising=False)
    conf = tmp_path / "netblock.toml"
    conf.write_text('[blocks]\ndefault_ttl = "3d"\nallow = ["198.51.100.0/24"]\n')
    common = ["--config", str(conf), "--db", str(tmp_path / "x.db"), "--backend", "ipset", "config"]
    assert cli.main(common + ["--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["blocks"]["default_ttl"] == "3d" and as_json["blocks"]["allow"] == ["198.51.100.0/24"]
    assert (as_json["db"], as_json["backend"]) == (str(tmp_path / "x.db"), "ipset")
    assert cli.main(common) == 0
    assert tomllib.loads(capsys.readouterr().out) == as_json
    assert not (tmp_path / "x.db").exists()


def test_usage_errors_are_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["add", "198.18.1.1", "--ttl"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "--ttl" in err


def test_escalation_survives_absurd_reblock_counts():
    from netblock.decide.manual import escalated_ttl

    day, cap = timedelta(days=1), timedelta(days=90)
    assert escalated_ttl(day, 0, 2.0, cap) == day
    assert escalated_ttl(day, 3, 1.5, cap) == timedelta(days=3.375)
    assert escalated_ttl(day, 5000, 2.0, cap) == cap
    assert escalated_ttl(day, 5000, 2.0, None) == timedelta.max


def test_sync_and_expire_speak_json(nb):
    nb.ok("add", "198.18.1.0/24", "--ttl", "1h")
    nb.ok("add", "198.18.3.3", "--permanent")
    nb.backend.elements = {N("198.18.9.7/32"): None, N("198.18.3.3/32"): None}
    dry = json.loads(nb.ok("sync", "--dry-run", "--json"))
    assert dry == {"desired": 2, "added": ["198.18.1.0/24"], "removed": ["198.18.9.7/32"], "updated": [],
                   "dry_run": True, "missing": None, "left_out": []}
    nb.at(NOW + timedelta(hours=2))
    out = json.loads(nb.ok("expire", "--json"))
    assert [b["netblock"] for b in out["expired"]] == ["198.18.1.0/24"] and out["purged"] == []
    assert out["kernel"] == {"desired": 1, "added": [], "removed": ["198.18.9.7/32"], "updated": []}


def test_a_kernel_failure_after_the_write_says_the_store_is_updated(nb):
    from netblock.errors import KernelError

    def refuse(desired):
        raise KernelError("nftables: the kernel refused the batch")

    nb.backend.apply = refuse
    rc, out, err = nb("add", "198.18.1.0/24")
    assert rc == 1 and "store is updated" in err and len(err.splitlines()) == 1
    assert N("198.18.1.0/24") in nb.rows()


def test_long_lists_show_progress_on_a_terminal_only(nb):
    listing = "".join(f"198.18.{i // 250}.{i % 250}\n" for i in range(1500))
    rc, out, err = nb("add", "-", stdin=listing, tty=True)
    assert rc == 0 and "checking [" in err and "1500/1500" in err
    rc, out, err = nb("add", "-", stdin=listing)
    assert rc == 0 and err == ""


# ---------------------------------------------------------------- precedence, floors and caps (issue #15)

def _delivered(nb, *ips: str, when=NOW - timedelta(days=1)) -> None:
    from netaddr import IPAddress

    from netblock.model import Observation

    with Store.open(nb.db) as store:
        store.add_observations([Observation(when, IPAddress(ip), "delivered", "postfix") for ip in ips])


def test_a_manual_block_is_not_undone_by_the_delivered_protection(nb):
    _delivered(nb, "198.18.5.5", "198.18.6.6")
    out = nb.ok("add", "198.18.5.5", "198.18.6.0/24")
    assert "not carved out: 198.18.5.5 delivered mail within 30d, but a block made by hand wins" in out
    assert "not carved out: 198.18.6.6 delivered mail within 30d" in out
    assert set(nb.backend.elements) == {N("198.18.5.5/32"), N("198.18.6.0/24")}


def test_a_list_loaded_from_stdin_wins_over_the_delivered_protection_too(nb):
    _delivered(nb, "198.18.7.7")
    nb.ok("add", "-", stdin="198.18.7.0/24 ; SBL1\n")
    assert nb.block("198.18.7.0/24").source == "list"
    assert set(nb.backend.elements) == {N("198.18.7.0/24")}


def test_a_policy_block_is_still_carved_around_a_recent_deliverer(nb):
    from netblock.model import Block

    _delivered(nb, "198.18.8.1")
    with Store.open(nb.db) as store:
        store.put_blocks([Block(N("198.18.8.0/30"), "widened: 4 offenders", "policy", NOW, NOW + timedelta(days=1))])
    nb.ok("sync")
    assert set(nb.backend.elements) == {N("198.18.8.0/32"), N("198.18.8.2/31")}


def test_allowlist_and_own_address_still_win_and_add_names_each_carve_out(nb):
    nb.ok("allow", "add", "198.18.9.9", "198.18.9.16/30")
    out = nb.ok("add", "198.18.9.0/24", "203.0.113.0/24")
    lines = [line for line in out.splitlines() if line.startswith("carved out")]
    assert lines == ["carved out 198.18.9.9 from 198.18.9.0/24 (allowlisted)",
                     "carved out 198.18.9.16/30 from 198.18.9.0/24 (allowlisted)",
                     "carved out 203.0.113.25 from 203.0.113.0/24 (this host's own address)"]
    got = nb.backend.elements
    assert not any(N("198.18.9.9/32") in n or N("198.18.9.17/32") in n or N("203.0.113.25/32") in n for n in got)
    assert any(N("198.18.9.8/32") in n for n in got)


def test_why_says_a_manual_block_wins_over_the_delivered_protection(nb):
    _delivered(nb, "198.18.5.5")
    nb.ok("add", "198.18.5.0/24", "--reason", "by hand")
    text = nb.ok("why", "198.18.5.5")
    assert "a block made by hand wins over that protection" in text.splitlines()[0]
    assert "not protected: 198.18.5.5 delivered mail recently, but 198.18.5.0/24 was blocked by hand" in text
    data = json.loads(nb.ok("why", "198.18.5.5", "--json"))
    assert data["protected"] == [] and data["overridden"] == [
        {"kind": "delivered", "netblock": "198.18.5.5", "by": "198.18.5.0/24"}]


@pytest.mark.parametrize("target", ["0.0.0.0/1", "128.0.0.0/1", "0.0.0.0/3", "2000::/15", "::ffff:0.0.0.0/97"])
def test_nothing_wider_than_the_floor_even_with_force(nb, target):
    err = nb.refused("add", target, "--force")
    assert target in err and "even with --force" in err


def test_the_floor_itself_is_allowed_with_force(nb):
    nb.ok("add", "16.0.0.0/4", "2001::/16", "--force")
    assert set(nb.backend.elements) == {N("16.0.0.0/4"), N("2001::/16")}


def test_the_ipv4_cap_refuses_a_change_whole_before_anything_is_written(nb):
    nb.ok("add", "16.0.0.0/5", "--force")
    nb.ok("add", "32.0.0.0/5", "--force")  # 2^28 exactly: at the cap, not over it
    err = nb.refused("add", "198.18.1.0/24", "198.18.2.1")
    assert "268435713 IPv4 addresses, over the cap of 268435456" in err
    nb.ok("add", "2001:db8::/32")  # IPv6 is not capped
    err = nb.refused("add", "-", stdin="198.18.3.0/24\n")
    assert "over the cap" in err


def test_the_cap_counts_what_sync_installs_so_carved_space_is_free(nb):
    nb.ok("allow", "add", "40.0.0.0/24")
    nb.ok("add", "32.0.0.0/4", "--force")  # 2^28, of which a /24 is allowlisted
    nb.ok("add", "198.18.1.0/24")  # fits exactly in the allowlisted /24's room
    err = nb.refused("allow", "del", "40.0.0.0/24")  # un-carving would take it over the cap
    assert "over the cap" in err


def test_rows_wider_than_the_floor_in_the_store_never_reach_the_kernel(nb):
    from netblock.model import Block

    with Store.open(nb.db) as store:  # a fleet peer's (or a hand-edited) row
        store.put_blocks([Block(N("0.0.0.0/1"), "peer", "policy", NOW, None),
                          Block(N("198.18.1.0/24"), "fine", "cli", NOW, None)])
    rc, out, err = nb("sync")
    assert rc == 0 and set(nb.backend.elements) == {N("198.18.1.0/24")}
    assert "0.0.0.0/1" in err and "wider than /4" in err  # skipped on receipt (netblock/store/receipt.py)
    dry = json.loads(nb.ok("sync", "--dry-run", "--json"))
    assert "0.0.0.0/1" not in json.dumps(dry["added"] if "added" in dry else dry)
    rows = json.loads(nb.ok("status", "--json"))["rejected_rows"]
    assert [(r["table"], r["key"]) for r in rows] == [("blocks", "0.0.0.0/1")]
    nb.ok("del", "0.0.0.0/1")  # and it can be deleted


def test_status_says_once_that_file_sources_can_be_forged(nb):
    nb.config = replace(nb.config, sources=replace(nb.config.sources, files=(), journal=False, journal_units=()))
    rc, text, err = nb("status")
    assert rc == 0 and "forge" not in text + err and "sources:      0 file(s); journal off" in text
    assert json.loads(nb.ok("status", "--json"))["forgeable"] is False
    nb.config = replace(nb.config, sources=replace(nb.config.sources, files=("/var/log/mail.log", "/var/log/exim4/mainlog"),
                                                   journal=True, journal_units=("postfix.service",)))
    rc, text, err = nb("status")
    assert "sources:      2 file(s), /var/log/mail.log, /var/log/exim4/mainlog; journal on" in text
    notes = [line for line in (text + err).splitlines() if "forge" in line]
    assert len(notes) == 1 and "logger -t postfix/smtpd" in notes[0] and err.count("\n") == 1
    assert "journal's trusted fields" in notes[0]
    data = json.loads(nb.ok("status", "--json"))
    assert data["forgeable"] is True and data["sources"]["files"] == ["/var/log/mail.log", "/var/log/exim4/mainlog"]
    assert data["sources"]["journal"] is True


PLAIN_OR_NOT = ["198.18.1.7", "198.18.1.0/24", "0.0.0.0", "255.255.255.255/32", "10.0.0.0/8", "10.0.0.0/7",
                "198.18.1.7/24", "198.18.1.0/024", "198.18.1.0/", "198.18.01.0/24", "198.18.1.256", "1.2.3",
                "1.2.3.4.5", "١.٢.٣.٤", "1.2.3.4/33", "1.2.3.4/+8", "240.0.0.0/4", "0.0.0.0/0", "127.0.0.1",
                "::ffff:198.18.1.1", "2001:db8::/48", "198.18.1.1;x", "198.18.1.0/24\x00", "198.18.1.0/8"]


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("text", PLAIN_OR_NOT)
def test_the_plain_ipv4_shortcut_parses_exactly_as_parse_target(text, force):
    """parse_targets() reads canonical IPv4 text itself: the same netblock, warning or error as parse_target()."""
    from netblock.commands.blocks import parse_targets
    from netblock.decide.targets import parse_target
    from netblock.errors import BadInput

    class Ctx:
        warnings: list[str] = []

        def warn(self, text):
            self.warnings.append(text)

    try:
        want = parse_target(text, force=force)
    except BadInput as exc:
        with pytest.raises(type(exc)) as got:
            parse_targets([(text, "argument")], Ctx(), force=force)
        assert str(got.value) == str(exc)
        return
    ctx = Ctx()
    got = parse_targets([(text, "argument")], ctx, force=force)
    assert got == [want.netblock] and str(got[0]) == str(want.netblock) and hash(got[0]) == hash(want.netblock)
    assert ctx.warnings == ([want.warning] if want.warning else [])
