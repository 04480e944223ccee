"""The event path: a threshold-crossing line reaches the kernel without waiting for the tick.

The real `netblock daemon` runs in a server namespace with a one-hour tick,
so every drop seen here came from the event path (inotify wake, the
in-memory tracker, one small nftables transaction). The tracker must decide
exactly what policy.decide() would for the addresses it saw; the second test
holds it to that on one store. The third checks the nftables backend's add(),
the small transaction behind the event path, against its own apply().
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from helpers import (
    NETBLOCK,
    Notify,
    append,
    clean_env,
    daemon_toml,
    dnsbl_policy,
    nft_elements,
    start_daemon,
    stop_daemon,
)
from loglines import dnsbl_reject as reject
from netaddr import IPAddress, IPNetwork
from netns import scene as make_scene, wait_for

from netblock import config as config_mod
from netblock.decide import policy
from netblock.decide.tracker import Tracker
from netblock.model import Observation
from netblock.store.sqlite import Store

pytestmark = pytest.mark.kernel

PROBE_S = 0.3
WAIT_S = 10.0  # bound on every wait; the tick (1 h) never comes within it
ONCE, TWICE = "203.0.113.10", "203.0.113.20"
DENSE = ("198.51.100.5", "198.51.100.6", "198.51.100.7")  # three offenders: their /24 is widened
NEIGHBOUR, LATE = "198.51.100.99", "198.51.100.8"
BURST = [f"198.{18 + i // 250}.{1 + i % 250}.5" for i in range(300)]  # one per /24: none is widened


def config_text(tmp, log) -> str:
    return daemon_toml(f"{tmp}/run/netblock.lock", [log], tick="1h", backend="nftables", policy=dnsbl_policy())


@pytest.fixture
def scene():
    with make_scene("rct") as sc:
        yield sc


def in_kernel(scene) -> set[str]:
    """The addresses and prefixes of netblock's IPv4 set."""
    return set(nft_elements(scene.server))


def test_a_crossing_line_is_dropped_without_waiting_for_the_tick(scene, tmp_path):
    log = tmp_path / "mail.log"
    log.touch()
    conf = tmp_path / "netblock.toml"
    conf.write_text(config_text(tmp_path, log))
    notify = Notify(tmp_path / "notify", WAIT_S)
    scene.add_client(ONCE, TWICE, NEIGHBOUR, LATE, *DENSE)
    scene.listen()
    errlog = open(tmp_path / "daemon.err", "w+")
    proc = start_daemon(scene.server, conf, errlog, db=tmp_path / "nb.db", notify=notify)
    try:
        assert notify.ready()  # the start-up tick is over: the next is 1 h away
        assert scene.probe(TWICE, timeout=PROBE_S) == "open"

        append(log, reject(ONCE), reject(TWICE))
        append(log, reject(TWICE))  # TWICE crosses; ONCE, read before it, stays under the threshold
        assert wait_for(lambda: scene.probe(TWICE, timeout=PROBE_S) == "timeout", timeout=WAIT_S)
        assert scene.probe(ONCE, timeout=PROBE_S) == "open"
        append(log, reject(ONCE))
        assert wait_for(lambda: scene.probe(ONCE, timeout=PROBE_S) == "timeout", timeout=WAIT_S)

        # A burst in one write: every address gets in, each as its own /32.
        append(log, *[reject(ip) for ip in BURST], *[reject(ip) for ip in BURST])
        assert wait_for(lambda: set(BURST) <= in_kernel(scene), timeout=WAIT_S)

        # Density widening between ticks: the third offender of a /24 drops its neighbours too.
        append(log, *[reject(ip) for ip in DENSE for _ in range(2)])
        assert wait_for(lambda: scene.probe(NEIGHBOUR, timeout=PROBE_S) == "timeout", timeout=WAIT_S)
        assert "198.51.100.0/24" in in_kernel(scene)
        # An offender inside the dropped /24 is covered already: nothing to add, nothing fails.
        append(log, reject(LATE), reject(LATE), reject(TWICE), reject(TWICE))
        assert wait_for(lambda: f"{LATE}/32" in scene.server_exec(
            NETBLOCK, "--config", str(conf), "--db", str(tmp_path / "nb.db"), "why", "--json", LATE,
            env=clean_env()).stdout, timeout=WAIT_S)
        assert scene.probe(LATE, timeout=PROBE_S) == "timeout"
        assert scene.probe("198.18.0.2", timeout=PROBE_S) == "open"  # the client's own address
    finally:
        stop_daemon(proc, WAIT_S)
        notify.close()
        errlog.seek(0)
        err = errlog.read()
        errlog.close()
    assert proc.returncode == 0
    assert "failed" not in err and "Traceback" not in err, err


def test_the_tracker_decides_what_the_policy_decides(tmp_path):
    """Same store, same clock: the tracker's blocks are policy.decide()'s blocks for the same addresses."""
    cfg = config_mod.loads(config_text(tmp_path, tmp_path / "mail.log") + """
[policy.classes.helo]
threshold = 3
window = "10m"
ttl = "2h"
widen = false
""")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)  # pinned: store and tracker only, no kernel
    counts = {"198.51.100.1": 1, "198.51.100.2": 2, "198.51.100.3": 3, "198.51.100.4": 2, "203.0.113.9": 1,
              "192.0.2.4": 2}
    obs = [Observation(now - timedelta(minutes=5 * k + 1), IPAddress(ip), "dnsbl:zen.example", "postfix")
           for ip, n in counts.items() for k in range(n)]
    obs += [Observation(now - timedelta(minutes=m), IPAddress("192.0.2.8"), "helo", "postfix") for m in (1, 2, 30)]
    obs += [Observation(now - timedelta(minutes=m), IPAddress("192.0.2.9"), "helo", "postfix") for m in (1, 2, 3)]
    obs += [Observation(now - timedelta(hours=2), IPAddress("203.0.113.77"), "dnsbl:zen.example", "postfix")] * 2
    obs += [Observation(now - timedelta(minutes=1), IPAddress("192.0.2.4"), "delivered", "postfix")]
    with Store.open(tmp_path / "nb.db") as store:
        store.add_observations(obs)
        tracker = Tracker(cfg)
        tracker.feed(o for o in obs if o.cls != "delivered")
        got = {(str(b.netblock), b.expires, b.reason) for b in tracker.decide(store, cfg, now)}
        want = {(str(b.netblock), b.expires, b.reason) for b in policy.decide(store, cfg, now)}
        assert got == want
        assert {net for net, _e, _r in got} == {"198.51.100.2/32", "198.51.100.3/32", "198.51.100.4/32",
                                               "198.51.100.0/24", "192.0.2.9/32"}
        with store.transaction():
            policy.record(store, policy.decide(store, cfg, now), now)
        tracker.feed([Observation(now, IPAddress("198.51.100.3"), "dnsbl:zen.example", "postfix")])
        assert tracker.decide(store, cfg, now) == []  # blocked already: extending it is the tick's job
        seeded = Tracker(cfg, store, now)  # after a restart, the store's offences count
        seeded.feed([Observation(now, IPAddress("198.51.100.1"), "dnsbl:zen.example", "postfix")])
        assert [str(b.netblock) for b in seeded.decide(store, cfg, now)] == ["198.51.100.1/32"]
    with Store.open(tmp_path / "restarted.db") as store:  # two offenders of a /24 before a restart
        store.add_observations(o for o in obs if str(o.ip) in ("198.51.100.2", "198.51.100.3"))
        seeded = Tracker(cfg, store, now)
        seeded.feed([Observation(now, IPAddress("198.51.100.9"), "dnsbl:zen.example", "postfix")] * 2)
        assert [str(b.netblock) for b in seeded.decide(store, cfg, now)] == ["198.51.100.0/24", "198.51.100.9/32"]
    small = Tracker(cfg, limit=2)  # bounded memory: the address seen first goes
    small.feed(Observation(now, IPAddress(f"203.0.113.{i}"), "dnsbl:zen.example", "postfix") for i in (1, 2, 3, 3))
    assert sorted(map(str, small.recent)) == ["203.0.113.2", "203.0.113.3"]
    assert small.pending == {IPAddress("203.0.113.3")}


def _add_scenario() -> dict:
    from netblock.firewall import Settings, nftables

    exp = datetime.now(timezone.utc) + timedelta(hours=1)
    b = nftables.create(Settings())
    b.ensure()
    b.apply({IPNetwork("198.51.100.0/24"): exp})
    out = {"covered": b.add({IPNetwork("198.51.100.7/32"): exp, IPNetwork("203.0.113.5/32"): exp}).added}
    subprocess.run(["nft", "add", "element", "inet", "netblock", "block4", "{ 192.0.2.9 timeout 1h }"], check=True)
    out["after_hand_edit"] = b.add({IPNetwork("192.0.2.9/32"): exp, IPNetwork("192.0.2.10/32"): exp}).added
    out["prefix"] = b.add({IPNetwork("192.0.2.16/28"): exp})
    out["installed"] = sorted(b.installed())
    change = b.apply({IPNetwork(n): exp for n in ("198.51.100.0/24", "203.0.113.5/32", "192.0.2.10/32")})
    out["apply"] = (change.added, change.removed)
    return out


def test_add_puts_in_only_what_nothing_covers_and_keeps_apply_exact(scene):
    got = scene.in_server(_add_scenario)
    assert got["covered"] == [IPNetwork("203.0.113.5/32")]  # 198.51.100.7 is in the /24 already
    assert got["after_hand_edit"] == [IPNetwork("192.0.2.10/32")]  # the hand-added one was seen, not re-added
    assert got["prefix"] is None  # not a plain addition: the daemon runs a full sync instead
    assert got["installed"] == [IPNetwork(n) for n in ("192.0.2.9/32", "192.0.2.10/32", "198.51.100.0/24",
                                                       "203.0.113.5/32")]
    assert got["apply"] == ([], [IPNetwork("192.0.2.9/32")])  # apply's view after add() matches the kernel
