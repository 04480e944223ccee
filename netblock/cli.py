"""The root CLI: parse, call, print.

Command modules register their subcommands (``register(subparsers)``) and get
a ``Context`` that opens the config, the store and the backend lazily, so a
command that needs none of them (``aggregate``) touches nothing. Every
NetblockError becomes one line on stderr and its exit status; usage errors
exit 2 through argparse.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from netblock import __version__, clock
from netblock.errors import NetblockError
from netblock.printable import printable

if TYPE_CHECKING:  # both are imported on first use
    from netblock.firewall import Backend
    from netblock.store import Store

COMMAND_MODULES = (
    "netblock.commands.blocks",
    "netblock.commands.watch",
    "netblock.commands.report",
    "netblock.commands.export",
    "netblock.commands.admin",
    "netblock.commands.fleet",
)

# Which module registers each command, so that a command imports only its own module (a one-block
# `add` at 100k installed must not pay for the daemon's and the reports' imports). A command not
# listed here (or none given: --help) registers them all.
COMMAND_OF = {
    **dict.fromkeys(("add", "del", "list", "allow", "expire", "sync", "status", "remove-rules", "config",
                     "aggregate"), "netblock.commands.blocks"),
    **dict.fromkeys(("ingest", "daemon", "run-once", "why"), "netblock.commands.watch"),
    **dict.fromkeys(("sample", "report", "wrapup"), "netblock.commands.report"),
    "export": "netblock.commands.export",
    **dict.fromkeys(("install-units", "completion", "demo"), "netblock.commands.admin"),
}
_VALUED_OPTIONS = ("--config", "--db", "--backend")

DEFAULT_CONFIG = "/etc/netblock/netblock.toml"


class Context:
    """What a command handler may ask for; each piece is opened on first use."""

    def __init__(self, args: argparse.Namespace, stdout=None, stderr=None, stdin=None):
        self.args = args
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.stdin = stdin or sys.stdin
        self._config = None
        self._store: Store | None = None
        self._backend: Backend | None = None

    # -- configuration, store, backend ---------------------------------
    @property
    def config(self):
        if self._config is None:
            self._config = self._load_config()
        return self._config

    def _load_config(self):
        from netblock import config

        path = self.args.config or os.environ.get("NETBLOCK_CONFIG")
        loaded = config.load(path or DEFAULT_CONFIG, explicit=bool(path))
        if self.count_only:
            loaded = config.with_verdict(loaded, "count")
        return loaded

    @property
    def count_only(self) -> bool:
        """``--count-only`` before the command, or after ``daemon``: [firewall] verdict = "count" for this run."""
        return bool(getattr(self.args, "count_only", False) or getattr(self.args, "daemon_count_only", False))

    def reload_config(self):
        """Read the configuration file again (SIGHUP); if it is refused, the old one stays."""
        fresh = self._load_config()
        self._config = fresh
        self._backend = None  # firewall settings may have changed
        return fresh

    @property
    def db_path(self) -> str:
        return self.args.db or os.environ.get("NETBLOCK_DB") or self.config.db

    @property
    def backend_name(self) -> str:
        return self.args.backend or os.environ.get("NETBLOCK_BACKEND") or self.config.backend

    def store(self):
        if self._store is None:
            from netblock import store

            path = self.db_path
            self._store = store.open(path, host_id=self.config.host_id if store.is_dsn(path) else None)
        return self._store

    def backend(self):
        if self._backend is None:
            from netblock.firewall import get_backend

            self._backend = get_backend(self.backend_name, self.config.firewall_settings())
        return self._backend

    def now(self) -> datetime:
        """The current time; NETBLOCK_NOW (ISO 8601) pins it (see netblock/clock.py)."""
        return clock.now()

    # -- output ----------------------------------------------------------
    def print(self, text: str = "") -> None:
        """One or more lines of text; whatever a field let through is escaped here too (netblock/printable.py)."""
        print(printable(text, keep_newlines=True), file=self.stdout)

    def print_json(self, obj: Any) -> None:
        json.dump(obj, self.stdout, indent=2, default=_json_default)
        self.stdout.write("\n")

    def warn(self, message: str) -> None:
        print(f"netblock: warning: {printable(message)}", file=self.stderr)

    def progress(self, total: int, label: str):
        """A progress bar on stderr when it is a terminal; silent in scripts."""
        from netblock.system.progress import Progress

        return Progress(total, label, self.stderr)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _json_default(obj: Any):
    if isinstance(obj, datetime):
        return obj.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return str(obj)


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, like every other refusal of netblock."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def command_module(argv: list[str]) -> str | None:
    """The module that registers the command named in ``argv``, or None (then all of them)."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in _VALUED_OPTIONS:
            skip = True
        elif token == "--" or token.startswith("-"):
            if token == "--":
                return None
        else:
            module = COMMAND_OF.get(token)
            return module if module in COMMAND_MODULES else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog="netblock",
        description="Keep kernel port-25 drop rules in step with what the mail logs say about abusive senders.",
        epilog="Exit status: 0 success, 1 runtime failure, 2 bad input or usage. "
        "See `netblock COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"netblock {__version__}")
    parser.add_argument("--config", metavar="PATH",
                        help=f"configuration file (default: $NETBLOCK_CONFIG or {DEFAULT_CONFIG}; optional)")
    parser.add_argument("--db", metavar="PATH",
                        help="store (SQLite file, or a postgresql:// DSN for a fleet; default: $NETBLOCK_DB "
                        "or `db` from the config, /var/lib/netblock/netblock.db)")
    # firewall.BACKENDS, spelled out so that parsing imports no backend code (tests/unit/test_protocols.py)
    parser.add_argument("--backend", choices=("nftables", "ipset", "iptables", "dryrun"),
                        help="kernel backend (default: $NETBLOCK_BACKEND or `backend` from the config, nftables; "
                        "dryrun: change nothing in the kernel, to try a configuration)")
    parser.add_argument("--count-only", action="store_true",
                        help="counting-only mode for this run: install the same sets and elements, count "
                        "the connection attempts each netblock would have dropped, drop nothing (the same as "
                        "[firewall] verdict = \"count\"; every command that syncs must get it, or it puts the "
                        "configured verdict back: prefer the config setting; default: the config's verdict)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES if only is None else (only,):
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(command_module(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    ctx = Context(args)
    try:
        return int(args.handler(args, ctx) or 0)
    except NetblockError as exc:
        print(f"netblock: {printable(exc)}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("netblock: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        ctx.close()
