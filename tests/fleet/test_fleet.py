"""Fleet mode for real: three MX hosts, one PostgreSQL, three kernels kept in step.

Each "MX host" is a server namespace (with its client namespace to send SYNs
from) running the real `netblock daemon` with its own host id, all against
one PostgreSQL server reached over its Unix socket (a file: every namespace
sees it). The tests assert what arrives, never how fast: the figures they
print are informative, and bench/bench_fleet.py measures latency at scale.

The tests share one fleet and run in file order; each leaves the fleet
running for the next.
"""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import threading
import time

import pytest
from helpers import (
    NETBLOCK,
    append,
    clean_env,
    daemon_toml,
    dnsbl_policy,
    netblock_in,
    nft_elements,
    start_daemon,
    stop_daemon,
)
from loglines import dnsbl_reject as reject
from netaddr import IPNetwork
from netns import build_scene, nsexec, wait_for

from netblock import store as stores
from netblock.run.fleet import RETRY_EVERY_S as RETRY_S, Listener
from netblock.store.sqlite import Spool

pytestmark = pytest.mark.kernel

HOSTS = ("mx-a", "mx-b", "mx-c")
TICK_S = 5
WAIT_S = 20.0  # bound on every wait for the daemons


class Host:
    def __init__(self, host_id: str, scene, directory, dsn: str):
        self.id = host_id
        self.scene = scene
        self.dir = directory
        # not next to daemon.err: the daemon watches the log's directory, and its own
        # complaints there would wake it up again
        (directory / "logs").mkdir()
        self.log = directory / "logs" / "mail.log"
        self.log.touch()
        self.conf = directory / "netblock.toml"
        # counters read at every tick (sample_every): the report test sums them
        daemon = f'sample_every = "{TICK_S}s"\nspool = "{directory}/state/spool.db"'
        self.conf.write_text(daemon_toml(f"{directory}/run/netblock.lock", [self.log], tick=f"{TICK_S}s",
                                         backend="nftables", host_id=host_id, db=dsn, daemon=daemon,
                                         policy=dnsbl_policy(min_count=4)))
        self.err = open(directory / "daemon.err", "w+")
        self.proc: subprocess.Popen | None = None

    @property
    def ns(self) -> str:
        return self.scene.server

    def start(self) -> None:
        self.proc = start_daemon(self.ns, self.conf, self.err)

    def cli(self, *args: str, input: str | None = None) -> str:
        return netblock_in(self.ns, self.conf, *args, input=input).stdout

    def kernel(self) -> dict[IPNetwork, int]:
        """{element: packets} of the IPv4 drop set, straight from nft."""
        return {IPNetwork(e): packets for e, packets in nft_elements(self.ns).items()}

    def stop(self) -> str:
        if self.proc is not None:
            stop_daemon(self.proc, WAIT_S)
        self.err.seek(0)
        text = self.err.read()
        self.err.close()
        return text


@pytest.fixture(scope="module")
def fleet(pg_server, tmp_path_factory):  # noqa: F811
    dsn = pg_server.new_database("fleet")
    stores.open(dsn).close()  # migrate once, before three daemons race to
    hosts: list[Host] = []
    try:
        for host_id in HOSTS:
            scene = build_scene("fl")
            d = tmp_path_factory.mktemp(host_id)
            hosts.append(Host(host_id, scene, d, dsn))
            scene.listen()
        for h in hosts:
            h.start()
        for h in hosts:  # the first tick installs the (empty) skeleton
            assert wait_for(lambda h=h: "netblock" in nsexec(h.ns, "nft", "list", "tables").stdout, timeout=WAIT_S)
        yield hosts
    finally:
        errors = {h.id: h.stop() for h in hosts}
        for h in hosts:
            h.scene.close()
    for host_id, err in errors.items():
        assert "Traceback" not in err, (host_id, err)


def _dsn(host: Host) -> str:
    return host.conf.read_text().split('db = "')[1].split('"')[0]


def covered(net: IPNetwork, kernel) -> bool:
    """Aggregation may merge neighbours: an element covering ``net`` counts."""
    return any(net in element for element in kernel)


def _appears(hosts: list[Host], net: IPNetwork, t0: float, timeout: float) -> dict[str, float]:
    """Seconds from t0 until ``net`` is in each host's kernel (bounded polling)."""
    seen: dict[str, float] = {}
    deadline = t0 + timeout
    while len(seen) < len(hosts) and time.monotonic() < deadline:
        for h in hosts:
            if h.id not in seen and covered(net, h.kernel()):
                seen[h.id] = time.monotonic() - t0
    return seen


def test_add_on_one_host_reaches_the_other_kernels_within_a_second(fleet):
    """Latency from the commit (seen by a LISTEN of the test's own) to the element being in B's and C's kernels."""
    a, others = fleet[0], fleet[1:]
    latencies, cli = [], []
    commits = Listener(_dsn(a))
    try:
        assert commits.fileno() is not None
        commits.changed()
        for i in range(8):
            net = IPNetwork(f"203.0.113.{100 + 4 * i}/32")
            t0 = time.monotonic()
            proc = subprocess.Popen(["ip", "netns", "exec", a.ns, NETBLOCK, "--config", str(a.conf), "add", str(net),
                                     "--reason", "propagation test"], env=clean_env(), stdout=subprocess.DEVNULL)
            assert select.select([commits.fileno()], [], [], WAIT_S)[0] and commits.changed()
            committed = time.monotonic()
            seen = _appears(others, net, committed, WAIT_S)
            assert proc.wait(timeout=WAIT_S) == 0
            cli.append(time.monotonic() - t0)
            assert set(seen) == {h.id for h in others}, (net, seen)
            latencies += seen.values()
    finally:
        commits.close()
    latencies.sort()
    print(f"\npropagation from the commit of `netblock add` on {a.id} to the kernels of the other two "
          f"(n={len(latencies)}): min {latencies[0] * 1000:.0f} ms, median {statistics.median(latencies) * 1000:.0f} ms, "
          f"p90 {latencies[int(len(latencies) * 0.9) - 1] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms "
          f"(tick {TICK_S} s; the whole `add` command took {statistics.median(cli) * 1000:.0f} ms median)")
    # No timed assertion: bench/bench_fleet.py carries the latency figures (p99 at 10 hosts, 100k blocks).

    # a deletion travels the same way
    t0 = time.monotonic()
    a.cli("del", "203.0.113.100")
    gone = wait_for(lambda: not any(covered(IPNetwork("203.0.113.100/32"), h.kernel()) for h in others),
                    timeout=WAIT_S)
    assert gone and time.monotonic() - t0 < TICK_S


def test_evidence_split_across_hosts_widens_the_prefix_everywhere(fleet):
    a, b = fleet[0], fleet[1]
    append(a.log, *[reject(ip) for ip in ("198.51.100.11", "198.51.100.12") for _ in range(2)])
    append(b.log, *[reject(ip) for ip in ("198.51.100.13", "198.51.100.14") for _ in range(2)])
    wide = IPNetwork("198.51.100.0/24")
    assert wait_for(lambda: all(covered(wide, h.kernel()) for h in fleet), timeout=WAIT_S + 2 * TICK_S), \
        {h.id: sorted(map(str, h.kernel())) for h in fleet}
    # neither host alone had the four offenders the rule asks for
    with stores.open(_dsn(a)) as st:
        for h in (a, b):
            st.view_host = h.id
            assert st.observation_class_counts() == {"dnsbl:zen.example": 4}, h.id
    # each host's export is labelled with its id and counts its own rejections
    for h, seen in ((a, 4), (b, 4), (fleet[2], 0)):
        snap = json.loads(h.cli("export", "--format", "json"))
        assert snap["host"] == h.id and sum(snap["observations"].values()) == seen, (h.id, snap)


KNOCKER = "203.0.113.77"
KNOCKS = {"mx-a": 5, "mx-b": 7, "mx-c": 9}


def _report(host: Host, *args: str) -> dict[str, int]:
    rows = json.loads(host.cli("report", "--json", "--exact", "--since", "1h", "--top", "1000", *args))
    return {r["netblock"]: r["packets"] for r in rows}


def _kernel_packets(host: Host, net: IPNetwork) -> int:
    return sum(p for element, p in host.kernel().items() if net in element)


def test_fleet_report_sums_the_kernels_and_per_host_reports_equal_each_kernel(fleet):
    a = fleet[0]
    knocker = IPNetwork(f"{KNOCKER}/32")
    a.cli("add", KNOCKER, "--reason", "knocks on every MX")
    assert wait_for(lambda: all(covered(knocker, h.kernel()) for h in fleet), timeout=WAIT_S)
    for h in fleet:
        h.scene.add_client(KNOCKER)
        h.scene.syn(KNOCKER, count=KNOCKS[h.id])
    kernels = {h.id: _kernel_packets(h, knocker) for h in fleet}
    assert kernels == KNOCKS
    # the daemons sample on their tick; the fleet report then sums the three series
    assert wait_for(lambda: _report(a).get(str(knocker)) == sum(KNOCKS.values()), timeout=WAIT_S, interval=0.5), \
        _report(a)
    for h in fleet:
        assert _report(a, "--host", h.id)[str(knocker)] == kernels[h.id]
    rows = json.loads(a.cli("report", "--json", "--since", "1h", "--top", "1000"))
    assert [r["hosts"] for r in rows if r["netblock"] == str(knocker)] == [KNOCKS]  # the per-host column
    r = netblock_in(a.ns, a.conf, "report", "--host", "mx-z", expect=None)
    assert r.returncode == 2 and "mx-z" in r.stderr and "mx-a" in r.stderr


def test_outage_keeps_rules_loses_no_observation_and_converges(fleet, pg_server):  # noqa: F811
    knocker = IPNetwork(f"{KNOCKER}/32")
    zombies = {"mx-a": ["192.0.2.21", "192.0.2.22"], "mx-b": ["192.0.2.23", "192.0.2.24"],
               "mx-c": ["192.0.2.25", "192.0.2.26"]}
    before = {h.id: set(h.kernel()) for h in fleet}
    assert all(covered(knocker, k) for k in before.values())
    flushed: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # every kernel keeps at least what it had, for the whole outage
        while not stop.is_set():
            for h in fleet:
                missing = before[h.id] - set(h.kernel())
                if missing:
                    flushed.append(f"{h.id}: {sorted(map(str, missing))[:3]}")
            stop.wait(0.5)

    pg_server.stop()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        t_end = time.monotonic() + 20
        for h in fleet:  # zombies knock and the logs grow while the store is gone
            append(h.log, *[reject(zombies[h.id][0]) for _ in range(2)])
            h.scene.syn(KNOCKER, count=3)
        # the logs are read meanwhile, into each host's spool; then they rotate, and the old file
        # is gone before the store returns: only the spool still has its lines
        assert wait_for(lambda: all(_spooled(h) == 2 for h in fleet), timeout=WAIT_S), [_spooled(h) for h in fleet]
        for h in fleet:
            os.rename(h.log, h.log.with_name("mail.log.1"))
            append(h.log, *[reject(zombies[h.id][1]) for _ in range(2)])
        assert wait_for(lambda: all(_spooled(h) == 4 for h in fleet), timeout=WAIT_S), [_spooled(h) for h in fleet]
        for h in fleet:
            h.log.with_name("mail.log.1").unlink()
        time.sleep(max(0.0, min(t_end - time.monotonic(), 2 * RETRY_S)))  # the daemons notice
        r = netblock_in(fleet[0].ns, fleet[0].conf, "status", expect=None)
        assert r.returncode == 1 and "store unreachable since 20" in r.stdout, (r.stdout, r.stderr)
        assert f"{len(before['mx-a'])} netblocks installed, kept" in r.stdout
        time.sleep(max(0.0, t_end - time.monotonic()))
        assert all(h.proc.poll() is None for h in fleet)
    finally:
        stop.set()
        watcher.join()
        pg_server.start()
    assert flushed == []

    everyone = [IPNetwork(f"{ip}/32") for ips in zombies.values() for ip in ips]
    assert wait_for(lambda: all(covered(z, h.kernel()) for h in fleet for z in everyone),
                    timeout=WAIT_S + 2 * TICK_S), {h.id: sorted(map(str, h.kernel())) for h in fleet}
    with stores.open(_dsn(fleet[0])) as st:
        # every line is read once the store is back (each host at its next tick), and read once
        def stored() -> dict[str, int]:
            return {ip: len(st.observations(ip=ip)) for ips in zombies.values() for ip in ips}

        assert wait_for(lambda: set(stored().values()) == {2}, timeout=WAIT_S + 2 * TICK_S), stored()
        time.sleep(TICK_S)
        assert set(stored().values()) == {2}, stored()
    assert [_spooled(h) for h in fleet] == [0, 0, 0]  # caught up: the positions are the store's again
    # the counters of the outage are not lost either: sampled once the store answered again
    total = sum(_kernel_packets(h, knocker) for h in fleet)
    assert total == sum(KNOCKS.values()) + 3 * len(fleet)
    assert wait_for(lambda: _report(fleet[0]).get(str(knocker)) == total, timeout=WAIT_S, interval=0.5)
    for h in fleet:  # reported, not hidden, and not once per new log line either
        complaints = (h.dir / "daemon.err").read_text().splitlines()
        assert any("store unreachable since" in line for line in complaints), h.id
        assert len(complaints) <= 10 * (20 // TICK_S + 2), (h.id, len(complaints))


def _spooled(host: Host) -> int:
    """Observations waiting in the host's local spool ([daemon] spool)."""
    path = host.dir / "state" / "spool.db"
    if not path.exists():
        return 0
    with Spool.open(path) as sp:
        return len(sp.contents()[0])


def test_ten_thousand_blocks_added_on_one_host_reach_every_kernel(fleet):
    """Convergence is timed from the commit (a LISTEN of the test's own); parsing 10k lines is the CLI's business."""
    a = fleet[0]
    nets = [f"198.19.{i // 128}.{2 * (i % 128)}" for i in range(10_000)]
    wanted = {IPNetwork(f"{n}/32") for n in nets}
    commits = Listener(_dsn(a))
    try:
        assert commits.fileno() is not None
        commits.changed()
        t0 = time.monotonic()
        proc = subprocess.Popen(["ip", "netns", "exec", a.ns, NETBLOCK, "--config", str(a.conf), "add", "-",
                                 "--reason", "bulk"], env=clean_env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                text=True)
        proc.stdin.write("\n".join(nets) + "\n")
        proc.stdin.close()
        assert select.select([commits.fileno()], [], [], 60)[0] and commits.changed()
        committed = time.monotonic()
    finally:
        commits.close()
    done: dict[str, float] = {}
    last = nets[-1]  # each sync is one kernel transaction: when its last element is there, all are
    while len(done) < len(fleet) and time.monotonic() < committed + 90:  # a guard, not a timing
        for h in fleet:
            if h.id not in done and nsexec(h.ns, "nft", "get", "element", "inet", "netblock", "block4",
                                           f"{{ {last} }}", check=False).returncode == 0:
                done[h.id] = time.monotonic() - committed
        time.sleep(0.02)
    assert proc.wait(timeout=60) == 0
    print(f"\n10k blocks in one `add -` on {a.id}: committed {committed - t0:.2f} s after the command started; "
          "in each kernel after the commit: " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(done.items())))
    assert set(done) == set(HOSTS)
    for h in fleet:
        assert wanted <= set(h.kernel()), h.id
