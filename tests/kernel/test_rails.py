"""The safety rails of issue #15 through the real `netblock` command and the real kernel.

* A block made by hand drops a sender that delivered mail recently, while a
  policy block around the same kind of sender leaves it open; the allowlist
  and this host's own address still win over a block made by hand.
* A source that is a FIFO or a device never hangs `run-once` or the daemon:
  it is refused with one line and the log next to it still blocks its
  offender. The subprocess timeouts here are guards against a hang, not
  timings.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from datetime import datetime, timezone

import pytest
from loglines import dnsbl_reject
from netns import SERVER4, scene as make_scene, wait_for

pytestmark = pytest.mark.kernel

NETBLOCK = shutil.which("netblock", path=os.path.dirname(sys.executable))
PROBE_S = 0.3
GUARD_S = 120  # only so a hang fails the test instead of stalling the run
HAND4, POLICY4, ALLOW4, SPAM4 = "198.51.100.7", "203.0.113.7", "198.51.100.9", "192.0.2.7"


@pytest.fixture
def scene():
    with make_scene("rail") as sc:
        yield sc


def stamp() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def reject(ip: str) -> str:
    return dnsbl_reject(ip, stamp())


def run(scene, tmp_path, *argv: str, input: str | None = None, check: bool = True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETBLOCK_")}
    r = subprocess.run(["ip", "netns", "exec", scene.server, NETBLOCK, "--config", str(tmp_path / "netblock.toml"),
                        "--db", str(tmp_path / "nb.db"), *argv], env=env, input=input, capture_output=True,
                       text=True, timeout=GUARD_S)
    if check:
        assert r.returncode == 0, (argv, r.stdout, r.stderr)
    return r


def test_a_block_made_by_hand_wins_over_the_delivered_protection_but_not_over_the_allowlist(scene, tmp_path):
    from netaddr import IPAddress, IPNetwork

    from netblock.model import Block, Observation
    from netblock.store.sqlite import Store

    (tmp_path / "netblock.toml").write_text(f'lock_file = "{tmp_path}/run/netblock.lock"\n')
    scene.add_client(HAND4, POLICY4, ALLOW4)
    scene.listen()
    now = datetime.now(timezone.utc)
    with Store.open(tmp_path / "nb.db") as store:
        store.add_observations([Observation(now, IPAddress(ip), "delivered", "postfix") for ip in (HAND4, POLICY4)])
        store.put_blocks([Block(IPNetwork("203.0.113.0/28"), "widened: 4 offenders", "policy", now, None)])
    run(scene, tmp_path, "allow", "add", ALLOW4)
    out = run(scene, tmp_path, "add", "198.51.100.0/28", "198.18.0.0/30", "--reason", "by hand").stdout
    assert f"carved out {ALLOW4} from 198.51.100.0/28 (allowlisted)" in out
    assert f"carved out {SERVER4} from 198.18.0.0/30 (this host's own address)" in out
    assert f"not carved out: {HAND4} delivered mail within 30d, but a block made by hand wins" in out

    assert scene.probe(HAND4, timeout=PROBE_S) == "timeout"  # blocked by hand despite its delivery
    assert scene.probe(POLICY4, timeout=PROBE_S) == "open"  # carved out of the policy's block
    assert scene.probe(ALLOW4, timeout=PROBE_S) == "open"  # the allowlist still wins
    assert scene.probe("198.18.0.2", timeout=PROBE_S) == "timeout"  # the rest of the /30 around this host
    listed = scene.server_exec("nft", "list", "table", "inet", "netblock").stdout
    assert "198.18.0.2/31" in listed and "198.18.0.0/30" not in listed  # this host's own address cut out
    why = run(scene, tmp_path, "why", HAND4).stdout
    assert "a block made by hand wins over that protection" in why.splitlines()[0]


def test_a_fifo_or_a_device_as_source_never_hangs_run_once_or_the_daemon(scene, tmp_path):
    fifo, log = tmp_path / "fifo.log", tmp_path / "mail.log"
    os.mkfifo(fifo)
    log.write_text(reject(SPAM4) + "\n" + reject(SPAM4) + "\n")
    (tmp_path / "netblock.toml").write_text(f"""
lock_file = "{tmp_path}/run/netblock.lock"
[sources]
files = ["{fifo}", "/dev/zero", "{log}"]
[daemon]
tick = "1s"
[policy.classes.dnsbl]
threshold = 2
window = "1h"
ttl = "1d"
widen = false
""")
    scene.add_client(SPAM4, "192.0.2.8")
    scene.listen()
    assert scene.probe(SPAM4, timeout=PROBE_S) == "open"

    r = run(scene, tmp_path, "run-once")
    refusals = [line for line in r.stderr.splitlines() if "not a regular file" in line]
    assert refusals == [f"netblock: {fifo}: a FIFO, not a regular file; not read (the other sources go on)",
                        "netblock: /dev/zero: a character device, not a regular file; not read "
                        "(the other sources go on)"]
    assert "2 observations, 1 blocks decided" in r.stdout
    assert scene.probe(SPAM4, timeout=PROBE_S) == "timeout"

    errlog = open(tmp_path / "daemon.err", "w+")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NETBLOCK_", "NOTIFY_", "WATCHDOG_"))}
    proc = subprocess.Popen(["ip", "netns", "exec", scene.server, NETBLOCK, "--config", str(tmp_path / "netblock.toml"),
                             "--db", str(tmp_path / "nb.db"), "daemon"], env=env, stdout=subprocess.DEVNULL,
                            stderr=errlog)
    try:
        with open(log, "a") as f:
            f.write(reject("192.0.2.8") + "\n" + reject("192.0.2.8") + "\n")
        assert wait_for(lambda: scene.probe("192.0.2.8", timeout=PROBE_S) == "timeout", timeout=GUARD_S)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=GUARD_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = (tmp_path / "daemon.err").read_text()
    assert text.count(f"{fifo}: a FIFO, not a regular file") == 1, text


@pytest.mark.parametrize("budget,neighbour", [(1000, "timeout"), (8, "open")])
def test_a_widened_block_over_its_element_budget_falls_back_to_its_offenders(scene, tmp_path, budget, neighbour):
    from netaddr import IPAddress

    from netblock.model import Observation
    from netblock.store.sqlite import Store

    (tmp_path / "netblock.toml").write_text(f"""
lock_file = "{tmp_path}/run/netblock.lock"
[policy]
max_elements_per_block = {budget}
[policy.classes.dnsbl]
threshold = 1
window = "1h"
ttl = "1d"
widen = true
[widen]
enabled = true
rules = [{{family = 4, prefixlen = 24, min_count = 3}}]
""")
    offenders, deliverers, bystander = ["192.0.2.1", "192.0.2.2", "192.0.2.3"], ["192.0.2.16", "192.0.2.24",
                                                                               "192.0.2.32"], "192.0.2.77"
    scene.add_client(*offenders, deliverers[0], bystander)
    scene.listen()
    now = datetime.now(timezone.utc)
    with Store.open(tmp_path / "nb.db") as store:
        store.add_observations([Observation(now, IPAddress(ip), "dnsbl:zen.example", "postfix") for ip in offenders])
        store.add_observations([Observation(now, IPAddress(ip), "delivered", "postfix") for ip in deliverers])
    run(scene, tmp_path, "run-once")
    assert scene.probe(offenders[0], timeout=PROBE_S) == "timeout"
    assert scene.probe(deliverers[0], timeout=PROBE_S) == "open"  # carved out either way
    assert scene.probe(bystander, timeout=PROBE_S) == neighbour  # the /24 only within its budget
    elements = scene.server_exec("nft", "list", "set", "inet", "netblock", "block4").stdout
    why = run(scene, tmp_path, "why", bystander).stdout
    if budget == 8:
        assert "falls back to its offenders" in why and "192.0.2.0/24" not in elements
    else:
        assert "falls back" not in why
