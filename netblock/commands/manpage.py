"""The manual page netblock(8), generated from the argument parser so it never drifts.

The Debian package builds it with ``python3 -m netblock.commands.manpage > netblock.8``;
like completion.py it reads the parser's actions, so a new option is in the
manual the moment it is in ``--help``. The date comes from SOURCE_DATE_EPOCH
when set (dpkg-buildpackage sets it from debian/changelog), so two builds of
one source give the same page.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import datetime, timezone

from netblock.system.completion import subparsers

# Facts of the installation that the parser cannot know, shown in FILES.
FILES = (
    ("/etc/netblock/netblock.toml", "the configuration (optional: every key has a default); "
     "`netblock config` prints the configuration in effect"),
    ("/var/lib/netblock/netblock.db", "the store (SQLite): blocks, allowlist, observations, counter samples"),
    ("/var/lib/netblock/reports/", "the weekly wrap-ups written by netblock-report.timer"),
    ("/run/netblock/", "the kernel lock and the nftables backend's snapshot of its last commit"),
    ("netblock.service", "the daemon; netblock-run.timer is the daemon-less alternative (never both), "
     "netblock-expire.timer, netblock-report.timer and netblock-export.timer the periodic jobs"),
)

ENVIRONMENT = (
    ("NETBLOCK_CONFIG", "configuration file, when --config is not given"),
    ("NETBLOCK_DB", "store, when --db is not given (overrides `db` from the configuration)"),
    ("NETBLOCK_BACKEND", "backend, when --backend is not given (overrides `backend` from the configuration)"),
)

SEE_ALSO = ("nft(8)", "ipset(8)", "iptables(8)", "journalctl(1)", "systemd.service(5)")


def _roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, `code` in bold, no control lines."""
    parts = re.split(r"(`[^`]*`)", text.replace("\\", "\\e"))
    out = []
    for part in parts:
        if len(part) > 2 and part.startswith("`") and part.endswith("`"):
            out.append("\\fB" + part[1:-1].replace("-", "\\-") + "\\fR")
        else:
            out.append(part.replace("-", "\\-"))
    text = "".join(out)
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def _invocation(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    """``--ttl D`` with the option in bold and the metavar in italics."""
    if not action.option_strings:
        return "\\fI" + _roff(formatter._format_action_invocation(action)) + "\\fR"
    words = formatter._format_action_invocation(action).split(", ")
    shown = []
    for word in words:
        option, _, metavar = word.partition(" ")
        shown.append("\\fB" + _roff(option) + "\\fR" + (" \\fI" + _roff(metavar) + "\\fR" if metavar else ""))
    return ", ".join(shown)


def _usage(parser: argparse.ArgumentParser) -> str:
    """The usage line, unwrapped (the man reader fills it to the terminal)."""
    formatter = argparse.HelpFormatter(parser.prog, width=100_000)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return " ".join(formatter.format_help().split())


def _actions(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    lines = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        lines += [".TP", _invocation(action, formatter), _roff(formatter._expand_help(action) if action.help else "")]
    return lines


def _command(parser: argparse.ArgumentParser, summary: str) -> list[str]:
    """One subsection per command, then one per action of a command that has actions (``allow add``)."""
    lines = [f'.SS "{_roff(parser.prog)}"', ".PP", "\\fB" + _roff(_usage(parser)) + "\\fR", ".PP",
             _roff(parser.description or summary)]
    lines += _actions(parser)
    helps = _helps(parser)
    for name, sub in subparsers(parser).items():
        lines += _command(sub, helps.get(name, ""))
    return lines


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The one-line help of each subcommand, as `netblock --help` lists it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def render(parser: argparse.ArgumentParser, *, version: str, date: str) -> str:
    prog = parser.prog
    description = (parser.description or "").strip()
    name_line = description[:1].lower() + description[1:].rstrip(".")
    lines = [
        f'.TH {prog.upper()} 8 "{date}" "{_roff(prog)} {_roff(version)}" "System Administration"',
        ".nh", ".ad l",
        ".SH NAME", f"{_roff(prog)} \\- {_roff(name_line)}",
        ".SH SYNOPSIS", f"\\fB{_roff(prog)}\\fR [\\fIglobal options\\fR] \\fICOMMAND\\fR [\\fIoptions\\fR]",
        ".SH DESCRIPTION", _roff(description), ".PP",
        _roff(f"Every command is described under COMMANDS; `{prog} COMMAND --help` prints the same."),
        ".SH OPTIONS", *_actions(parser),
        ".SH COMMANDS",
    ]
    helps = _helps(parser)
    for name, sub in subparsers(parser).items():
        lines += _command(sub, helps.get(name, ""))
    if parser.epilog:
        lines += [".SH EXIT STATUS", _roff(parser.epilog)]
    lines += [".SH ENVIRONMENT"]
    for var, text in ENVIRONMENT:
        lines += [".TP", f"\\fB{var}\\fR", _roff(text)]
    lines += [".SH FILES"]
    for path, text in FILES:
        lines += [".TP", f"\\fI{_roff(path)}\\fR", _roff(text)]
    lines += [".SH SEE ALSO", ", ".join(f"\\fB{_roff(p.split('(')[0])}\\fR({p.split('(')[1]}" for p in SEE_ALSO)]
    return "\n".join(lines) + "\n"


def build_date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return when.strftime("%Y-%m-%d")


def main() -> int:
    from netblock import __version__
    from netblock.cli import build_parser

    sys.stdout.write(render(build_parser(), version=__version__, date=build_date()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
