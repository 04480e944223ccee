"""The units' hardening does not break the job: CAP_NET_ADMIN alone is enough.

systemd is not PID 1 here, so the unit's restrictions are reproduced with
setpriv: every capability dropped from the bounding set except
CAP_NET_ADMIN (as `CapabilityBoundingSet=CAP_NET_ADMIN` does), no new
privileges, and the real `netblock` command lines of the units run inside a
test namespace: sync, the daemon's tick (run-once), sample and report.
"""

import json
import os
import sys
from datetime import datetime, timedelta, timezone

import pytest

pytestmark = pytest.mark.kernel

NETBLOCK = os.path.join(os.path.dirname(sys.executable), "netblock")
CONFINED = ("setpriv", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all,+net_admin")


def test_daemon_command_lines_work_with_only_cap_net_admin(scene, tmp_path):
    # The clock is pinned relative to the real one: kernel timeouts run on the real clock
    # (netblock/clock.py), so a block decided at a calendar date would expire there.
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    log = tmp_path / "mail.log"
    lines = []
    for i in range(3):
        stamp = (now - timedelta(minutes=20 - i)).strftime("%b %e %H:%M:%S")
        lines.append(f"{stamp} mx postfix/smtpd[{100 + i}]: NOQUEUE: reject: RCPT from unknown[198.51.100.7]: "
                     "554 5.7.1 Service unavailable; Client host [198.51.100.7] blocked using zen.spamhaus.org; "
                     "from=<a@example.org> to=<b@example.net> proto=ESMTP helo=<x>")
    log.write_text("\n".join(lines) + "\n")
    conf = tmp_path / "netblock.toml"
    conf.write_text(f'db = "{tmp_path}/nb.db"\nlock_file = "{tmp_path}/run/netblock.lock"\n'
                    f'[sources]\nfiles = ["{log}"]\n')
    env = dict(os.environ, NETBLOCK_NOW=now.isoformat())

    def confined(*args, check=True):
        r = scene.server_exec(*CONFINED, NETBLOCK, "--config", str(conf), *args, check=False, env=env)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    # The capability set really is reduced: a command needing CAP_NET_RAW fails.
    r = scene.server_exec(*CONFINED, "ping", "-c1", "-W1", "198.18.0.2", check=False)
    assert r.returncode != 0
    status = scene.server_exec(*CONFINED, "grep", "^CapEff", "/proc/self/status").stdout.split()[1]
    assert int(status, 16) == 1 << 12  # CAP_NET_ADMIN alone

    confined("sync")  # ExecStartPre of netblock.service
    confined("run-once")  # the tick of netblock-run.service (and of the daemon)
    scene.add_client("198.51.100.7", "203.0.113.9")
    scene.listen()
    assert scene.probe("198.51.100.7") == "timeout"
    assert scene.probe("203.0.113.9") == "open"
    scene.syn("198.51.100.7", 5)
    confined("sample")
    rows = json.loads(confined("report", "--json", "--since", "1d").stdout)
    assert [(r["netblock"], r["packets"]) for r in rows] == [("198.51.100.7/32", 6)]  # 5 SYNs + the probe's
    confined("expire")  # netblock-expire.service
    assert "netblock_dropped_packets_total" in confined("export").stdout  # netblock-export.service
    # netblock-report.service has no capability at all, and needs none.
    r = scene.server_exec("setpriv", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", NETBLOCK,
                          "--config", str(conf), "wrapup", "--dir", str(tmp_path / "reports"), check=False, env=env)
    assert r.returncode == 0, r.stderr
    year, week, _ = now.isocalendar()
    assert "198.51.100.7" in (tmp_path / "reports" / f"{year}-W{week:02d}.txt").read_text()
