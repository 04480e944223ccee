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
import signal
from datetime import datetime, timezone

import pytest
from helpers import append, daemon_toml, dnsbl_policy, netblock_in, start_daemon, stop_daemon
from loglines import dnsbl_reject as reject
from netns import SERVER4, scene as make_scene, wait_for

pytestmark = pytest.mark.kernel

PROBE_S = 0.3
GUARD_S = 120  # only so a hang fails the test instead of stalling the run
HAND4, POLICY4, ALLOW4, SPAM4 = "198.51.100.7", "203.0.113.7", "198.51.100.9", "192.0.2.7"


@pytest.fixture
def scene():
    with make_scene("rail") as sc:
        yield sc


def run(scene, tmp_path, *argv: str, input: str | None = None, check: bool = True):
    return netblock_in(scene.server, tmp_path / "netblock.toml", *argv, db=tmp_path / "nb.db", input=input,
                       expect=0 if check else None, timeout=GUARD_S)


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
    (tmp_path / "netblock.toml").write_text(daemon_toml(f"{tmp_path}/run/netblock.lock", [fifo, "/dev/zero", log],
                                                        tick="1s", policy=dnsbl_policy(widen=False, min_count=None)))
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
    proc = start_daemon(scene.server, tmp_path / "netblock.toml", errlog, db=tmp_path / "nb.db")
    try:
        append(log, reject("192.0.2.8"), reject("192.0.2.8"))
        assert wait_for(lambda: scene.probe("192.0.2.8", timeout=PROBE_S) == "timeout", timeout=GUARD_S)
        assert stop_daemon(proc, GUARD_S) == 0
    finally:
        stop_daemon(proc, GUARD_S, signal.SIGKILL)
    text = (tmp_path / "daemon.err").read_text()
    assert text.count(f"{fifo}: a FIFO, not a regular file") == 1, text


@pytest.mark.parametrize("budget,neighbour", [(1000, "timeout"), (8, "open")])
def test_a_widened_block_over_its_element_budget_falls_back_to_its_offenders(scene, tmp_path, budget, neighbour):
    from netaddr import IPAddress

    from netblock.model import Observation
    from netblock.store.sqlite import Store

    policy = f"[policy]\nmax_elements_per_block = {budget}\n" + dnsbl_policy(threshold=1)
    (tmp_path / "netblock.toml").write_text(daemon_toml(f"{tmp_path}/run/netblock.lock", policy=policy))
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
