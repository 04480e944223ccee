"""The real `netblock daemon` process in a server namespace, with the nftables backend.

Rejections appended to the followed log make the kernel drop the offenders'
SYNs (density widening takes their /24), while a sender that delivered mail in
the same /24 still connects; a flushed ruleset comes back on the next tick;
SIGTERM exits 0 and leaves the rules in place.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from datetime import datetime, timezone

import pytest
from loglines import dnsbl_reject
from netns import scene as make_scene, wait_for

pytestmark = pytest.mark.kernel

NETBLOCK = shutil.which("netblock", path=os.path.dirname(sys.executable))
PROBE_S = 0.3
SPAM4, NEIGHBOUR4, GOOD4 = "198.51.100.7", "198.51.100.20", "198.51.100.9"
OTHER_SPAMMERS = ("198.51.100.5", "198.51.100.6")  # only in the log: they make the /24 dense
WAIT_S = 15.0  # bound on every wait for the daemon; ticks are 1 s


def stamp() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def reject(ip: str) -> str:
    return dnsbl_reject(ip, stamp())


def delivered(ip: str) -> str:
    """smtpd's client= and qmgr's proof that the message was accepted (sources/join.py pairs them)."""
    return (f"{stamp()} mx postfix/smtpd[42]: 4AB12C3D4E: client=relay.example[{ip}]\n"
            f"{stamp()} mx postfix/qmgr[43]: 4AB12C3D4E: from=<a@relay.example>, size=1234, nrcpt=1 (queue active)")


def append(path, *lines: str) -> None:
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in lines))


@pytest.fixture
def scene():
    """Namespaces tagged for this file, so concurrent runs of other kernel tests never collide."""
    with make_scene("dmn") as sc:
        yield sc


def test_daemon_blocks_from_the_log_repairs_drift_and_stops_cleanly(scene, tmp_path):
    log = tmp_path / "mail.log"
    log.touch()
    conf = tmp_path / "netblock.toml"
    conf.write_text(f"""
lock_file = "{tmp_path}/run/netblock.lock"
backend = "nftables"
[sources]
files = ["{log}"]
[daemon]
tick = "1s"
[policy.classes.dnsbl]
threshold = 2
window = "1h"
ttl = "1d"
widen = true
[widen]
enabled = true
rules = [{{family = 4, prefixlen = 24, min_count = 3}}]
""")
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)  # a path socket is reachable from the namespace (abstract ones are not)
    notify.settimeout(WAIT_S)
    scene.add_client(SPAM4, NEIGHBOUR4, GOOD4)
    scene.listen()
    assert {src: scene.probe(src, timeout=PROBE_S) for src in (SPAM4, NEIGHBOUR4, GOOD4)} == \
        {SPAM4: "open", NEIGHBOUR4: "open", GOOD4: "open"}

    env = {k: v for k, v in os.environ.items() if not k.startswith(("NETBLOCK_", "NOTIFY_", "WATCHDOG_"))}
    env["NOTIFY_SOCKET"] = notify_path
    errlog = open(tmp_path / "daemon.err", "w+")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", scene.server, NETBLOCK, "--config", str(conf), "--db", str(tmp_path / "nb.db"),
         "daemon"], env=env, stdout=subprocess.DEVNULL, stderr=errlog)
    try:
        assert notify.recv(4096).startswith(b"READY=1")

        append(log, delivered(GOOD4))
        for ip in (SPAM4, *OTHER_SPAMMERS):
            append(log, reject(ip), reject(ip))
        assert wait_for(lambda: scene.probe(SPAM4, timeout=PROBE_S) == "timeout", timeout=WAIT_S)
        assert scene.probe(NEIGHBOUR4, timeout=PROBE_S) == "timeout"  # widened to the /24
        assert scene.probe(GOOD4, timeout=PROBE_S) == "open"  # carved out: it delivered mail
        assert scene.probe("198.18.0.2", timeout=PROBE_S) == "open"  # the client's own address

        scene.server_exec("nft", "flush", "ruleset")
        assert wait_for(lambda: scene.probe(SPAM4, timeout=PROBE_S) == "timeout", timeout=WAIT_S)
        assert scene.probe(GOOD4, timeout=PROBE_S) == "open"
        assert wait_for(lambda: "drift repaired" in (tmp_path / "daemon.err").read_text(), timeout=WAIT_S)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_S) == 0
        assert scene.probe(SPAM4, timeout=PROBE_S) == "timeout"  # the rules stay after exit
        assert scene.probe(GOOD4, timeout=PROBE_S) == "open"
        listed = scene.server_exec("nft", "list", "table", "inet", "netblock").stdout
        assert "198.51.100.7" in listed or "198.51.100.0/" in listed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        errlog.seek(0)
        err = errlog.read()
        errlog.close()
    assert "Traceback" not in err, err


def run(scene, tmp_path, *args: str, expect: int = 0) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETBLOCK_")}
    r = scene.server_exec(NETBLOCK, "--config", str(tmp_path / "netblock.toml"), "--db", str(tmp_path / "nb.db"),
                          *args, check=False, env=env)
    assert r.returncode == expect, (args, r.returncode, r.stdout, r.stderr)
    return r.stdout


def test_ingest_and_run_once_take_the_same_path(scene, tmp_path):
    log = tmp_path / "mail.log"
    log.touch()
    (tmp_path / "netblock.toml").write_text(f"""
lock_file = "{tmp_path}/run/netblock.lock"
[sources]
files = ["{log}"]
[policy.classes.dnsbl]
threshold = 2
window = "1h"
ttl = "1d"
widen = false
""")
    scene.add_client(SPAM4, GOOD4, NEIGHBOUR4)
    scene.listen()
    old = tmp_path / "old.log.gz"
    with gzip.open(old, "wt") as f:
        f.write(reject(SPAM4) + "\n" + reject(SPAM4) + "\n" + delivered(GOOD4) + "\n")

    preview = run(scene, tmp_path, "ingest", "--dry-run", "--json", str(old))
    assert [json.loads(line)["ip"] for line in preview.splitlines()] == [SPAM4, SPAM4, GOOD4]
    assert not (tmp_path / "nb.db").exists()
    assert scene.probe(SPAM4, timeout=PROBE_S) == "open"

    summary = json.loads(run(scene, tmp_path, "ingest", "--json", str(old)))
    assert summary["observations"] == 3 and summary["decided"] == [f"{SPAM4}/32"]
    assert scene.probe(SPAM4, timeout=PROBE_S) == "timeout"
    assert scene.probe(GOOD4, timeout=PROBE_S) == "open"

    append(log, reject(NEIGHBOUR4))
    first = json.loads(run(scene, tmp_path, "run-once", "--json"))
    assert first["observations"] == 1 and first["decided"] == 0
    assert scene.probe(NEIGHBOUR4, timeout=PROBE_S) == "open"
    append(log, reject(NEIGHBOUR4))
    second = json.loads(run(scene, tmp_path, "run-once", "--json"))
    assert second["observations"] == 1 and second["decided"] == 1  # the saved offset: no line twice
    assert scene.probe(NEIGHBOUR4, timeout=PROBE_S) == "timeout"
    why = run(scene, tmp_path, "why", NEIGHBOUR4)
    assert why.splitlines()[0].startswith(f"{NEIGHBOUR4}: blocked: {NEIGHBOUR4}/32 (2 dnsbl (dnsbl:zen.example)")
