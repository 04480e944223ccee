"""The shipped units: verified and scored by systemd's own analyzer."""

import re
import subprocess

import pytest

from netblock.system import units


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    paths = units.install(str(root))
    return root / "etc/systemd/system", paths


def test_every_unit_installed_with_this_binary(installed):
    unit_dir, paths = installed
    names = sorted(p.name for p in paths)
    assert names == sorted(["netblock.service", "netblock-run.service", "netblock-run.timer",
                            "netblock-expire.service", "netblock-expire.timer", "netblock-report.service",
                            "netblock-report.timer", "netblock-export.service", "netblock-export.timer"])
    for p in paths:
        if p.suffix == ".service":
            assert units.netblock_path() in p.read_text()
            assert units.SHIPPED_BIN not in p.read_text() or units.netblock_path() == units.SHIPPED_BIN


def test_systemd_analyze_verify(installed):
    unit_dir, paths = installed
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, paths)], capture_output=True,
                       text=True, cwd=unit_dir)
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stderr.lower()


@pytest.mark.parametrize("name", ["netblock.service", "netblock-run.service", "netblock-expire.service",
                                  "netblock-report.service", "netblock-export.service"])
def test_security_exposure_at_most_1_5(installed, name):
    unit_dir, _ = installed
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit_dir / name)],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout[-500:] + r.stderr
    assert float(m.group(1)) <= 1.5, m.group(0)
    assert m.group(2) == "OK"


def test_daemon_unit_contract(installed):
    text = (installed[0] / "netblock.service").read_text()
    for line in ("Type=notify", "Restart=on-failure", "PartOf=nftables.service", "CapabilityBoundingSet=CAP_NET_ADMIN",
                 "RestrictAddressFamilies=AF_UNIX AF_NETLINK", "ProtectSystem=strict", "StateDirectory=netblock"):
        assert line in text.splitlines(), line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    assert re.search(r"^ExecStartPre=\S+ sync$", text, re.M)
    timers = {n: (installed[0] / n).read_text() for n in ("netblock-run.timer", "netblock-report.timer")}
    assert "OnCalendar=minutely" in timers["netblock-run.timer"] and "Persistent=true" in timers["netblock-run.timer"]
    assert "OnCalendar=Sat 23:00" in timers["netblock-report.timer"]
