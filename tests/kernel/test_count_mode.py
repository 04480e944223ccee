"""Counting-only mode against the real kernel, with each backend and the real daemon.

In count mode the same netblocks are installed, real connections from a
blocked sender reach the listener ("open"), and each connection attempt is
counted on its netblock. One config change and a SIGHUP turn the rule into a
drop: the sender's SYNs time out, no decision is made again, the counters of
the count phase stay in the kernel and in `report`, and the dropped SYNs add
to them.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from helpers import Notify, daemon_toml, netblock_in, start_daemon, stop_daemon
from netaddr import IPNetwork
from netns import scene as make_scene, wait_for

from netblock.firewall import Settings, get_backend

pytestmark = pytest.mark.kernel

PROBE_S = 0.3  # one SYN: the kernel's first retransmission comes after a second
WAIT_S = 20.0
SPAM4, SPAM6, OTHER4 = "198.51.100.7", "2001:db8:5::7", "203.0.113.5"
NET4, NET6 = "198.51.100.0/24", "2001:db8:5::/64"


@pytest.fixture
def scene():
    with make_scene("cnt") as sc:
        yield sc


def write_config(path, tmp_path, backend: str, verdict: str) -> None:
    # counters read at every tick (sample_every): the test reads the report soon after
    path.write_text(daemon_toml(f"{tmp_path}/run/netblock.lock", [tmp_path / "mail.log"], tick="1s", backend=backend,
                                daemon='sample_every = "1s"', extra=f'[firewall]\nverdict = "{verdict}"\n'))


def kernel_counters(backend: str, verdict: str) -> dict[str, int]:
    """{netblock: packets} as the backend reads them (run inside the server namespace)."""
    return {str(n): p for n, (p, _b) in get_backend(backend, Settings(verdict=verdict)).counters().items()}


def kernel_verdict(backend: str, verdict: str) -> str | None:
    return get_backend(backend, Settings(verdict=verdict)).verdict()


@pytest.mark.parametrize("backend", ["nftables", "ipset", "iptables"])
def test_count_mode_lets_senders_through_counts_them_and_a_reload_turns_it_into_drop(scene, tmp_path, backend):
    (tmp_path / "mail.log").touch()
    conf, db = tmp_path / "netblock.toml", tmp_path / "nb.db"
    write_config(conf, tmp_path, backend, "count")
    def cli(*args: str) -> str:
        return netblock_in(scene.server, conf, *args, db=db).stdout

    def report() -> dict[str, int]:
        return {row["netblock"]: row["packets"] for row in json.loads(cli("report", "--json", "--exact"))}

    scene.add_client(SPAM4, SPAM6, OTHER4)
    scene.listen()
    notify = Notify(tmp_path / "notify", WAIT_S)
    errlog = open(tmp_path / "daemon.err", "w+")
    proc = start_daemon(scene.server, conf, errlog, db=db, notify=notify)
    said = lambda: (tmp_path / "daemon.err").read_text()  # noqa: E731
    try:
        assert notify.ready()
        cli("add", NET4, NET6, "--reason", "trying count mode")
        status = json.loads(cli("status", "--json"))
        assert (status["verdict"], status["verdict_installed"], status["counting_only"]) == ("count", "count", True)
        assert "COUNTING ONLY" in cli("status")

        # Blocked senders still connect, and every attempt is counted on its netblock.
        assert [scene.probe(SPAM4, timeout=PROBE_S) for _ in range(3)] == ["open"] * 3
        assert [scene.probe(SPAM6, timeout=PROBE_S) for _ in range(2)] == ["open"] * 2
        assert scene.probe(OTHER4, timeout=PROBE_S) == "open"
        assert scene.in_server(kernel_counters, backend, "count") == {NET4: 3, NET6: 2}
        assert wait_for(lambda: report() == {NET4: 3, NET6: 2}, timeout=WAIT_S)  # sampled by the daemon's tick
        assert scene.in_server(kernel_verdict, backend, "count") == "count"

        # One config change and a reload: the rule drops now, the counts stay.
        write_config(conf, tmp_path, backend, "drop")
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "verdict count -> drop" in said(), timeout=WAIT_S), said()
        assert scene.in_server(kernel_verdict, backend, "drop") == "drop"
        assert scene.in_server(kernel_counters, backend, "drop") == {NET4: 3, NET6: 2}
        assert [scene.probe(SPAM4, timeout=PROBE_S) for _ in range(2)] == ["timeout"] * 2
        assert scene.probe(SPAM6, timeout=PROBE_S) == "timeout"
        assert scene.probe(OTHER4, timeout=PROBE_S) == "open"
        assert scene.in_server(kernel_counters, backend, "drop") == {NET4: 5, NET6: 3}
        assert wait_for(lambda: report() == {NET4: 5, NET6: 3}, timeout=WAIT_S)
        status = json.loads(cli("status", "--json"))
        assert (status["verdict"], status["verdict_installed"], status["counting_only"]) == ("drop", "drop", False)

        assert stop_daemon(proc, WAIT_S) == 0
    finally:
        stop_daemon(proc, WAIT_S, signal.SIGKILL)
        notify.close()
        errlog.close()
    log = said()
    assert "Traceback" not in log, log
    assert "verdict count (COUNTING ONLY: nothing is dropped)" in log  # the start line names the mode
    assert not [line for line in log.splitlines() if line.startswith("netblock: blocked ")]  # nothing re-decided


@pytest.mark.parametrize("backend", ["nftables", "ipset", "iptables"])
def test_count_only_flag_and_a_cli_without_it(scene, tmp_path, backend):
    """``--count-only`` is per command: the CLI that syncs without it puts the configured verdict back."""
    conf, db = tmp_path / "netblock.toml", tmp_path / "nb.db"
    conf.write_text(f'lock_file = "{tmp_path}/run/netblock.lock"\nbackend = "{backend}"\n')

    def cli(*args: str) -> str:
        return netblock_in(scene.server, conf, *args, db=db).stdout

    scene.add_client(SPAM4)
    scene.listen()
    cli("--count-only", "add", NET4)
    assert scene.probe(SPAM4, timeout=PROBE_S) == "open"
    status = json.loads(cli("--count-only", "status", "--json"))
    assert (status["verdict"], status["verdict_installed"]) == ("count", "count")
    plain = cli("status")
    assert "enforcing: drop (the kernel still has verdict count" in plain
    cli("sync")
    assert scene.probe(SPAM4, timeout=PROBE_S) == "timeout"
    assert scene.in_server(kernel_counters, backend, "drop") == {NET4: 2}  # one counted, one dropped


def test_ipset_on_a_legacy_host_counts_and_switches_through_python_iptables(scene, tmp_path):
    """Where `iptables` is xtables-legacy the ipset backend's rules go through libiptc: count mode there too."""
    for tool in ("iptables", "ip6tables"):
        (tmp_path / tool).symlink_to(f"/usr/sbin/{tool}-legacy")
    path = f"{tmp_path}:{os.environ['PATH']}"

    def call(verdict: str, method: str, *args):
        def run():
            os.environ["PATH"] = path
            return getattr(get_backend("ipset", Settings(ports=(25, 587), verdict=verdict)), method)(*args)
        return scene.in_server(run)

    scene.add_client(SPAM4)
    scene.listen(587)
    call("count", "ensure")
    call("count", "ensure")
    call("count", "apply", {IPNetwork(NET4): None})
    assert call("count", "verdict") == "count"
    assert [scene.probe(SPAM4, port=587, timeout=PROBE_S) for _ in range(2)] == ["open"] * 2
    saved = scene.server_exec("iptables-legacy-save", "-t", "filter").stdout
    assert ("-A INPUT -p tcp -m multiport --dports 25,587 -m tcp --tcp-flags FIN,SYN,RST,ACK SYN "
            "-m comment --comment netblock -j NETBLOCK") in saved
    assert "NETBLOCK" not in scene.server_exec("iptables-nft-save").stdout
    call("drop", "ensure")
    assert call("drop", "verdict") == "drop"
    assert call("drop", "counters") == {IPNetwork(NET4): (2, 120)}
    assert scene.probe(SPAM4, port=587, timeout=PROBE_S) == "timeout"
    assert call("drop", "counters")[IPNetwork(NET4)][0] == 3
    call("drop", "remove")
