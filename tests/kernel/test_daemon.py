"""The real `netblock daemon` process in a server namespace, with the nftables backend.

Rejections appended to the followed log make the kernel drop the offenders'
SYNs (density widening takes their /24), while a sender that delivered mail in
the same /24 still connects; a flushed ruleset comes back on the next tick;
SIGTERM exits 0 and leaves the rules in place.
"""

from __future__ import annotations

import gzip
import json
import signal
from contextlib import contextmanager

import pytest
from helpers import (
    Notify,
    append,
    daemon_toml,
    dnsbl_policy,
    netblock_in,
    start_daemon,
    stop_daemon,
)
from loglines import delivery as delivered, dnsbl_reject as reject
from netns import scene as make_scene, wait_for

pytestmark = pytest.mark.kernel

PROBE_S = 0.3
SPAM4, NEIGHBOUR4, GOOD4 = "198.51.100.7", "198.51.100.20", "198.51.100.9"
OTHER_SPAMMERS = ("198.51.100.5", "198.51.100.6")  # only in the log: they make the /24 dense
WAIT_S = 15.0  # bound on every wait for the daemon; ticks are 1 s


@pytest.fixture
def scene():
    """Namespaces tagged for this file, so concurrent runs of other kernel tests never collide."""
    with make_scene("dmn") as sc:
        yield sc


@contextmanager
def running(scene, conf, tmp_path, notify):
    """`netblock daemon` with its stderr in tmp_path/daemon.err; killed if the test left it running."""
    with open(tmp_path / "daemon.err", "w") as errlog:
        proc = start_daemon(scene.server, conf, errlog, db=tmp_path / "nb.db", notify=notify)
        try:
            yield proc
        finally:
            stop_daemon(proc, WAIT_S, signal.SIGKILL)
            notify.close()


def test_daemon_blocks_from_the_log_repairs_drift_and_stops_cleanly(scene, tmp_path):
    log = tmp_path / "mail.log"
    log.touch()
    conf = tmp_path / "netblock.toml"
    conf.write_text(daemon_toml(f"{tmp_path}/run/netblock.lock", [log], tick="1s", backend="nftables",
                                policy=dnsbl_policy()))
    notify = Notify(tmp_path / "notify", WAIT_S)
    scene.add_client(SPAM4, NEIGHBOUR4, GOOD4)
    scene.listen()
    assert {src: scene.probe(src, timeout=PROBE_S) for src in (SPAM4, NEIGHBOUR4, GOOD4)} == \
        {SPAM4: "open", NEIGHBOUR4: "open", GOOD4: "open"}

    with running(scene, conf, tmp_path, notify) as proc:
        assert notify.ready()

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

        assert stop_daemon(proc, WAIT_S) == 0
        assert scene.probe(SPAM4, timeout=PROBE_S) == "timeout"  # the rules stay after exit
        assert scene.probe(GOOD4, timeout=PROBE_S) == "open"
        listed = scene.server_exec("nft", "list", "table", "inet", "netblock").stdout
        assert "198.51.100.7" in listed or "198.51.100.0/" in listed
    err = (tmp_path / "daemon.err").read_text()
    assert "Traceback" not in err, err


def run(scene, tmp_path, *args: str, expect: int = 0) -> str:
    return netblock_in(scene.server, tmp_path / "netblock.toml", *args, db=tmp_path / "nb.db", expect=expect).stdout


def test_ingest_and_run_once_take_the_same_path(scene, tmp_path):
    log = tmp_path / "mail.log"
    log.touch()
    (tmp_path / "netblock.toml").write_text(daemon_toml(f"{tmp_path}/run/netblock.lock", [log],
                                                        policy=dnsbl_policy(widen=False, min_count=None)))
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


def test_daemon_carries_expiries_as_a_change_and_unblocks_what_ran_out(scene, tmp_path):
    """Blocks that run out while the daemon idles go to the kernel as a change of their netblocks (no
    full sync): the half of a merged /24 that ran out connects again, the other half stays dropped."""
    from netblock.run.delta import LAPSE_GRACE

    log = tmp_path / "mail.log"
    log.touch()
    conf = tmp_path / "netblock.toml"
    conf.write_text(daemon_toml(f"{tmp_path}/run/netblock.lock", [log], tick="1s", backend="nftables",
                                daemon='log_level = "debug"'))
    ran_out, kept, alone = "198.18.61.5", "198.18.61.200", "198.18.62.7"
    ttl = 8
    run(scene, tmp_path, "add", "198.18.61.128/25")
    run(scene, tmp_path, "add", "--ttl", f"{ttl}s", "198.18.61.0/25", alone)
    scene.add_client(ran_out, kept, alone)
    scene.listen()
    notify = Notify(tmp_path / "notify", WAIT_S)
    with running(scene, conf, tmp_path, notify) as proc:
        assert notify.ready()
        assert {src: scene.probe(src, timeout=PROBE_S) for src in (ran_out, kept, alone)} == \
            {ran_out: "timeout", kept: "timeout", alone: "timeout"}
        assert wait_for(lambda: "expiries: 2 blocks ran out" in (tmp_path / "daemon.err").read_text(),
                        timeout=ttl + LAPSE_GRACE + WAIT_S)
        assert {src: scene.probe(src, timeout=PROBE_S) for src in (ran_out, kept, alone)} == \
            {ran_out: "open", kept: "timeout", alone: "open"}
        listed = scene.server_exec("nft", "list", "set", "inet", "netblock", "block4").stdout
        assert "198.18.61.128/25" in listed and "198.18.61.0/24" not in listed, listed
        assert stop_daemon(proc, WAIT_S) == 0
    err = (tmp_path / "daemon.err").read_text()
    assert "Traceback" not in err, err
    assert "expiries: 2 blocks ran out; kernel +1 -1 ~0" in err, err
    assert f"expired {alone}/32" in err and "unblocked 128 of the 256 addresses of 198.18.61.0/24" in err, err
