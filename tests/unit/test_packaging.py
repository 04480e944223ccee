"""What the Debian package generates at build time, checked without building it:
netblock(8) from the parser, the commented /etc/netblock/netblock.toml from the
defaults, and the build's own bookkeeping (setup.sh, versions)."""

import argparse
import dataclasses
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from netblock import __version__, config
from netblock.cli import build_parser
from netblock.commands import manpage
from netblock.system.completion import subparsers

REPO = Path(__file__).resolve().parents[2]


def page() -> str:
    return manpage.render(build_parser(), version="9.9", date="2026-01-02")


def parsers(parser=None):
    parser = parser or build_parser()
    for sub in subparsers(parser).values():
        yield sub
        yield from parsers(sub)


def test_manpage_has_every_command_and_option():
    text = page()
    assert text.startswith('.TH NETBLOCK 8 "2026-01-02" "netblock 9.9"')
    for sub in parsers():
        assert f'.SS "{sub.prog.replace("-", chr(92) + "-")}"' in text
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option.replace("-", "\\-") in text, (sub.prog, option)
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXIT STATUS", "ENVIRONMENT",
                    "FILES", "SEE ALSO"):
        assert f"\n.SH {section}\n" in text


def test_manpage_text_cannot_make_roff_requests():
    """Help text is data: a leading dot or quote, a backslash or a hyphen stays literal."""
    p = argparse.ArgumentParser(prog="netblock", description="Top.")
    sub = p.add_subparsers()
    s = sub.add_parser("x", description=".so /etc/passwd\n'br \\fB no bold `a-b`")
    s.add_argument("--dry-run", help="\\(em and -")
    text = manpage.render(p, version="1", date="2026-01-02")
    assert "\n\\&.so /etc/passwd\n\\&'br \\efB no bold \\fBa\\-b\\fR" in text
    assert "\\fB\\-\\-dry\\-run\\fR" in text and "\\e(em and \\-" in text
    requests = {line.split()[0] for line in text.splitlines() if line.startswith((".", "'"))}
    assert requests <= {".TH", ".SH", ".SS", ".PP", ".TP", ".nh", ".ad"}


def test_manpage_date_from_source_date_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert manpage.build_date() == "2023-11-14"


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db not installed")
def test_manpage_renders_without_warnings(tmp_path):
    path = tmp_path / "netblock.8"
    path.write_text(page())
    r = subprocess.run(["man", "--warnings", "-l", str(path)], capture_output=True, text=True,
                       env={"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "netblock remove-rules" in r.stdout


def test_example_config_changes_nothing_as_shipped():
    text = config.dump_example()
    assert tomllib.loads(text) == {}
    assert all(line == "" or line.startswith("# ") for line in text.splitlines())


def test_example_config_uncommented_is_the_defaults():
    """Uncommenting every setting (prose comments stay comments) gives exactly the defaults."""
    text = config.dump_example()
    settings = [line[2:] for line in text.splitlines()
                if re.match(r"# (\[[\w.\"-]+\]$|[\w\"-]+ = )", line)]
    loaded = config.loads("\n".join(settings))
    assert loaded.host_id == config.EXAMPLE_HOST_ID
    assert dataclasses.replace(loaded, host_id="h") == dataclasses.replace(config.loads(""), host_id="h")
    for line in ("# [firewall]", '# backend = "nftables"', "# [policy.classes.dnsbl]"):
        assert line in text.splitlines()


def debian_control_build_depends() -> set[str]:
    text = (REPO / "debian/control").read_text()
    field = re.search(r"^Build-Depends:(.*?)^\S", text, re.M | re.S).group(1)
    names = {re.split(r"[\s(]", d.strip())[0] for d in field.split(",") if d.strip()}
    return names - {"debhelper-compat"} | {"debhelper"}


def test_setup_installs_what_the_package_build_and_test_need():
    setup = (REPO / "scripts/setup.sh").read_text()
    listed = set(re.findall(r"[a-z0-9][a-z0-9.+-]+", " ".join(re.findall(r"packages\+?=\(([^)]*)\)", setup))))
    assert debian_control_build_depends() | {"build-essential", "lintian", "mmdebstrap"} <= listed


def test_versions_agree():
    changelog = (REPO / "debian/changelog").read_text().splitlines()[0]
    assert re.match(rf"netblock \({re.escape(__version__)}\) ", changelog)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__
