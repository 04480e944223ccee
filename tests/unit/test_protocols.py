"""The Store and Backend protocols hold: every implementation provides every call, and nobody probes.

Callers rely on netblock/store/__init__.py's ``Store`` and
netblock/firewall/__init__.py's ``Backend`` declaring everything they call
(fleet mode and the cheap kernel paths included), so none asks an object
what it can do with ``hasattr``/``getattr``. Checked by inspecting the
classes and the source: no kernel, no PostgreSQL server.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from netaddr import IPNetwork

from netblock import cli, firewall, store as stores
from netblock.errors import NetblockError
from netblock.firewall import BACKENDS, Change, Settings, dryrun, get_backend
from netblock.store.postgres import PgStore
from netblock.store.sqlite import SqliteStore

PACKAGE = Path(__file__).resolve().parents[2] / "netblock"

# What a probe looks at: the objects whose capabilities the protocols (and the config) declare.
SUBJECTS = {"store", "backend", "runner", "config"}


def _names(node: ast.AST) -> set[str]:
    """Every name and attribute name in an expression: `self.runner.store` -> {self, runner, store}."""
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            out.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            out.add(sub.attr)
        elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
            out.add(sub.func.attr)
    return {n.lstrip("_") for n in out}


def probes(source: str) -> list[tuple[int, str]]:
    """(line, call) of every hasattr(), getattr(x, "literal") or getattr(x, name, default) on a store,
    backend, runner or config. A getattr of a computed name without a default (config sections by
    name) reads a field that must exist, and asks nothing."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("hasattr", "getattr") and node.args):
            continue
        asks = (node.func.id == "hasattr" or len(node.args) > 2
                or (len(node.args) == 2 and isinstance(node.args[1], ast.Constant)))
        if asks and _names(node.args[0]) & SUBJECTS:
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_netblock_probes_no_store_backend_runner_or_config():
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}: {call}"
             for path in sorted(PACKAGE.rglob("*.py")) for line, call in probes(path.read_text())]
    assert found == []


def test_the_probe_finder_sees_probes():
    text = ("hasattr(store, 'dsn')\ngetattr(self.backend(), 'add', None)\ngetattr(runner.store, 'path')\n"
            "getattr(config.policy, 'x', 1)\ngetattr(self.config.daemon, name)\ngetattr(exc, 'code', 0)\n")
    assert [line for line, _ in probes(text)] == [1, 2, 3, 4]


def members(protocol) -> dict[str, object]:
    """The calls and attributes a Protocol declares (its own, not object's or Protocol's)."""
    out = {n: v for n, v in vars(protocol).items()
           if not n.startswith("_") or n in ("__enter__", "__exit__")}
    out.update({n: None for n in getattr(protocol, "__annotations__", {})})
    for skip in ("_is_protocol", "_is_runtime_protocol"):
        out.pop(skip, None)
    return out


def _params(func) -> list[tuple[str, object]]:
    return [(p.name, p.kind) for p in list(inspect.signature(func).parameters.values())[1:]]


def missing(obj, protocol) -> list[str]:
    """What ``obj`` lacks of ``protocol``, or has with other parameters."""
    wrong = []
    for name, declared in members(protocol).items():
        if inspect.isfunction(declared):
            mine = inspect.getattr_static(type(obj), name, None)
            if mine is None or not callable(mine):
                wrong.append(f"{name}: missing")
            elif _params(mine) != _params(declared):
                wrong.append(f"{name}: {_params(mine)} != {_params(declared)}")
        elif not hasattr(obj, name):  # a property or a plain attribute
            wrong.append(f"{name}: missing attribute")
    return wrong


def test_the_store_protocol_declares_the_fleet_calls():
    declared = members(stores.Store)
    assert {"fleet", "dsn", "view_host", "rejected", "unreachable_since", "path", "hosts", "peer_addresses",
            "publish_addresses", "may_write", "change_mark", "changes_since", "backend_pid"} <= set(declared)


def test_both_stores_provide_the_whole_store_protocol(tmp_path):
    with SqliteStore.open(tmp_path / "nb.db") as sqlite_store:
        assert missing(sqlite_store, stores.Store) == []
    pg_store = PgStore("postgresql://nb:secret@/netblock", None, "mx1")  # no connection: only its shape
    assert missing(pg_store, stores.Store) == []
    assert (sqlite_store.fleet, pg_store.fleet) == (False, True)


def test_sqlite_answers_the_fleet_calls_as_one_host(tmp_path):
    with stores.open(tmp_path / "nb.db", host_id="mx1") as s:
        assert type(s) is SqliteStore
        assert (s.dsn, s.unreachable_since, s.rejected, s.hosts(), s.peer_addresses()) == (None, None, {}, [], [])
        assert s.publish_addresses([IPNetwork("192.0.2.1/32")]) is False
        assert s.may_write("cli") and s.may_write("policy")
        assert s.change_mark() is None and s.backend_pid() is None


def backends() -> list:
    """One object of each backend class, built without the kernel (create() would load the bindings)."""
    from netblock.firewall import ipset, iptables, nftables

    settings = Settings()
    return [nftables.NftablesBackend(settings, nft=None), ipset.IpsetBackend(settings),
            iptables.IptablesBackend(settings), dryrun.DryrunBackend(settings)]


def test_every_backend_provides_the_whole_backend_protocol():
    declared = members(firewall.Backend)
    assert {"add", "region_view", "installed_proven", "counters_of", "apply_region", "counter_columns"} <= set(declared)
    found = {b.name: missing(b, firewall.Backend) for b in backends()}
    assert found == {name: [] for name in BACKENDS}


def test_a_backend_without_the_cheap_paths_sends_callers_down_the_full_one():
    b = dryrun.DryrunBackend()
    b.ensure()
    b.apply({IPNetwork("198.18.1.0/24"): None})
    assert (b.add({IPNetwork("198.18.2.1/32"): None}), b.region_view(), b.installed_proven(),
            b.counter_columns()) == (None, None, None, None)
    assert b.counters_of(None, [(4, IPNetwork("198.18.1.0/24").first << 8 | 24)]) == {IPNetwork("198.18.1.0/24"): (0, 0)}
    assert b.apply_region(None, [], [], []) is False


def test_the_command_line_offers_every_backend():
    parser = cli.build_parser("netblock.commands.blocks")
    option = next(a for a in parser._actions if "--backend" in a.option_strings)
    assert tuple(option.choices) == BACKENDS


# -- the dry-run backend -------------------------------------------------------------


def test_dryrun_keeps_the_backend_contract_in_memory():
    b = get_backend("dryrun", Settings(families=("ipv4",)))
    assert isinstance(b, dryrun.DryrunBackend) and "DRY RUN" in b.description
    with pytest.raises(NetblockError, match="missing"):
        b.installed()
    assert b.verdict() is None
    b.ensure()
    a, c, v6 = IPNetwork("198.18.1.0/24"), IPNetwork("198.18.3.3/32"), IPNetwork("2001:db8::/48")
    assert b.apply({a: None, c: None, v6: None}) == Change(added=[a, c])  # IPv6 is not a configured family
    assert b.installed() == {a: None, c: None} and b.counters() == {a: (0, 0), c: (0, 0)}
    later = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert b.apply({a: later}) == Change(removed=[c], updated=[a])
    assert b.verdict() == "drop"
    b.remove()
    assert b.elements == {} and b.verdict() is None
    assert b.calls == ["installed", "ensure", "apply", "installed", "counters", "apply", "remove"]


def test_the_cli_with_the_dryrun_backend_changes_nothing_and_says_so(tmp_path):
    conf = tmp_path / "netblock.toml"
    conf.write_text(f'backend = "dryrun"\nlock_file = "{tmp_path / "lock"}"\ndb = "{tmp_path / "nb.db"}"\n'
                    "[sources]\njournal = false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETBLOCK_")}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "netblock", "--config", str(conf), *argv],
                              capture_output=True, text=True, env=env, timeout=120)

    added = run("add", "198.18.1.0/24", "--reason", "trying a config")
    assert added.returncode == 0, added.stderr
    assert "198.18.1.0/24" in added.stdout
    status = run("status", "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["backend"] == "dryrun" and "DRY RUN" in info["description"]
    assert info["kernel_objects"] == "missing" and info["blocks_active"] == 1  # a new process: nothing held
    text = run("status")
    assert "backend:      dryrun (DRY RUN: nothing is installed in the kernel" in text.stdout
