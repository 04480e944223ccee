"""Bash completion, driven by a real bash the way readline drives it."""

import os
import subprocess
import sys

import pytest

NETBLOCK = os.path.join(os.path.dirname(sys.executable), "netblock")


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("completion") / "netblock.bash"
    out = subprocess.run([NETBLOCK, "completion", "bash"], capture_output=True, text=True, check=True).stdout
    path.write_text(out)
    return path


def complete(script, line: str) -> list[str]:
    code = ('source "$1"; read -ra COMP_WORDS <<< "$2"; [ "${2: -1}" = " " ] && COMP_WORDS+=(""); '
            'COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _netblock; printf "%s\\n" "${COMPREPLY[@]}"')
    r = subprocess.run(["bash", "-c", code, "_", str(script), line], capture_output=True, text=True, check=True)
    return sorted(w for w in r.stdout.split("\n") if w)


@pytest.mark.parametrize("line,expected", [
    ("netblock rep", ["report"]),
    ("netblock report cl", ["classes"]),
    ("netblock allow ", ["--help", "add", "del", "list"]),
    ("netblock allow add --c", ["--comment"]),
    ("netblock --db /tmp/x.db sy", ["sync"]),
    ("netblock --backend ipset li", ["list"]),
    ("netblock add --t", ["--ttl"]),
    ("netblock ingest --format ", []),  # a value: left to the shell's default completion
])
def test_completes_commands_options_and_choices(script, line, expected):
    assert complete(script, line) == expected


def test_every_command_is_offered(script):
    offered = complete(script, "netblock ")
    for command in ("add", "del", "list", "allow", "expire", "sync", "status", "remove-rules", "config",
                    "aggregate", "ingest", "daemon", "run-once", "why", "sample", "report", "wrapup", "export",
                    "install-units", "demo", "completion"):
        assert command in offered
