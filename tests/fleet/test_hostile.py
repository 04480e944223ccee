"""A compromised MX in the fleet: what it writes is refused or skipped, the honest kernels stay right.

Two honest MX hosts run the real daemon in namespaces of their own, each as its
own host role; a third host role, mx-evil, is driven by the test straight
through psycopg, as an attacker holding that host's DSN would. The admin role
(the root CLI's) and the owner (the test server's superuser, standing for an
older netblock or someone with the owner's password) write what the roles
cannot, to show that validation on receipt catches it.

The tests share one fleet and run in file order.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import psycopg
import pytest
from helpers import NETBLOCK, clean_env, daemon_toml, netblock_in, nft_elements, start_daemon, stop_daemon
from netaddr import IPNetwork
from netns import build_scene, nsexec, wait_for

from netblock import store as stores
from netblock.store.sqlite import _net_cols

pytestmark = pytest.mark.kernel

TICK_S = 3
WAIT_S = 20.0
HONEST = {"mx-a": "203.0.113.201", "mx-b": "203.0.113.202"}  # each host's own extra address
ADMIN_BLOCK = IPNetwork("192.0.2.0/24")
INSERT = ("INSERT INTO blocks (netblock, family, first, last, prefixlen, reason, source, created, expires, reblocks) "
          "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")


def as_role(dsn: str, role: str) -> str:
    return dsn.replace("user=postgres", f"user={role}")


def policy_row(net: str, source: str = "policy", expires_in: int = 3600) -> tuple:
    t = int(time.time())
    return (*_net_cols(IPNetwork(net)), "evil", source, t, t + expires_in, 0)


class Host:
    def __init__(self, host_id: str, scene, directory, dsn: str, admin_dsn: str):
        self.id = host_id
        self.scene = scene
        self.dir = directory
        self.dsn = dsn
        self.admin_dsn = admin_dsn
        (directory / "logs").mkdir()
        log = directory / "logs" / "mail.log"
        log.touch()
        self.conf = directory / "netblock.toml"
        self.conf.write_text(daemon_toml(f"{directory}/run/netblock.lock", [log], tick=f"{TICK_S}s", backend="nftables",
                                         host_id=host_id, db=dsn, daemon=f'spool = "{directory}/state/spool.db"'))
        self.err = open(directory / "daemon.err", "w+")
        nsexec(scene.server, "ip", "addr", "add", f"{HONEST[host_id]}/32", "dev", "lo")
        self.proc = start_daemon(scene.server, self.conf, self.err)

    def run(self, *args: str, db: str | None = None) -> subprocess.CompletedProcess:
        return netblock_in(self.scene.server, self.conf, *args, expect=None,
                           env=clean_env(**({"NETBLOCK_DB": db} if db else {})))

    def kernel(self) -> set[IPNetwork]:
        return {IPNetwork(e) for e in nft_elements(self.scene.server)}

    def log(self) -> str:
        self.err.flush()
        return (self.dir / "daemon.err").read_text()

    def stop(self) -> str:
        stop_daemon(self.proc, WAIT_S)
        self.err.close()
        return (self.dir / "daemon.err").read_text()


def covered(ip: str, kernel) -> bool:
    return any(IPNetwork(ip) in e for e in kernel)


@pytest.fixture(scope="module")
def fleet(pg_server, tmp_path_factory):  # noqa: F811
    owner = pg_server.new_database("hostile")
    stores.open(owner, host_id="owner").close()
    env = clean_env(NETBLOCK_DB=owner, NETBLOCK_CONFIG=os.devnull)
    for args in (("init-admin",), ("add-host", "mx-a"), ("add-host", "mx-b"), ("add-host", "mx-evil")):
        r = subprocess.run([NETBLOCK, "fleet", *args], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
    hosts: list[Host] = []
    try:
        for host_id in HONEST:
            scene = build_scene("fh")
            hosts.append(Host(host_id, scene, tmp_path_factory.mktemp(host_id),
                              as_role(owner, "netblock_" + host_id.replace("-", "_")),
                              as_role(owner, "netblock_admin")))
        for h in hosts:
            assert wait_for(lambda h=h: "netblock" in nsexec(h.scene.server, "nft", "list", "tables").stdout,
                            timeout=WAIT_S)
        evil = psycopg.connect(as_role(owner, "netblock_mx_evil"), autocommit=True)
        yield {"hosts": hosts, "owner": owner, "evil": evil}
        evil.close()
    finally:
        logs = {h.id: h.stop() for h in hosts}
        for h in hosts:
            h.scene.close()
    for host_id, text in logs.items():
        assert "Traceback" not in text, (host_id, text)


def good(hosts) -> bool:
    """What every honest kernel must hold throughout: the admin's block and the policy's decision."""
    return all(ADMIN_BLOCK in h.kernel() and covered("203.0.113.50", h.kernel()) for h in hosts)


def test_admin_blocks_and_peer_decisions_reach_every_honest_kernel(fleet):
    a = fleet["hosts"][0]
    r = a.run("add", str(ADMIN_BLOCK), "--reason", "by the admin", db=a.admin_dsn)
    assert r.returncode == 0, r.stderr
    fleet["evil"].execute(INSERT, policy_row("203.0.113.50/32"))  # a legitimate-looking decision is a decision
    assert wait_for(lambda: good(fleet["hosts"]), timeout=WAIT_S)


def test_the_evil_host_is_refused_at_the_database(fleet):
    evil = fleet["evil"]
    attacks = [
        (INSERT, policy_row("0.0.0.0/1")),  # wider than the policy's /16
        (INSERT, policy_row("203.0.113.60/32", source="cli")),  # the admin's source
        (INSERT, policy_row("203.0.113.61/32", expires_in=10 * 365 * 86400)),  # longer than any class's ttl
        ("DELETE FROM blocks", None),
        ("UPDATE blocks SET expires = 1 WHERE netblock = '203.0.113.50/32'", None),  # shortening a decision
        ("INSERT INTO allowlist (netblock, family, first, last, prefixlen, comment, created) "
         "VALUES (%s, %s, %s, %s, %s, 'off', 0)", _net_cols(IPNetwork("0.0.0.0/0"))),
        ("INSERT INTO state VALUES ('mx-a', 'journal', 'x')", None),
        ("INSERT INTO host_addresses VALUES ('mx-evil', '192.0.2.0/24')", None),  # a network as "its address"
        (INSERT, ("203.0.113.0/40", 4, b"\0" * 16, b"\0" * 16, 40, "x", "policy", 0, 60, 0)),
    ]
    for sql, params in attacks:
        with pytest.raises(psycopg.Error) as err:
            evil.execute(sql, params)
        assert err.value.sqlstate in ("42501", "23514"), (sql, err.value)
    # what row-level security hides from it, it cannot change either
    assert evil.execute("UPDATE blocks SET expires = 1 WHERE netblock = %s", (str(ADMIN_BLOCK),)).rowcount == 0
    assert evil.execute("DELETE FROM observations WHERE host <> 'mx-evil'").rowcount == 0
    time.sleep(TICK_S + 1)
    assert good(fleet["hosts"])


def test_peers_protect_each_other(fleet):
    a, b = fleet["hosts"]
    with stores.open(a.dsn, host_id="mx-a") as st:  # each daemon published its own addresses
        assert wait_for(lambda: {str(n.ip) for n in st.peer_addresses()} >= set(HONEST.values()), timeout=WAIT_S)
    # the evil host gets mx-b's address "blocked": no kernel drops it, mx-a's included
    fleet["evil"].execute(INSERT, policy_row(f"{HONEST['mx-b']}/32"))
    fleet["evil"].execute(INSERT, policy_row("203.0.113.51/32"))
    assert wait_for(lambda: all(covered("203.0.113.51", h.kernel()) for h in (a, b)), timeout=WAIT_S)
    for h in (a, b):
        assert not covered(HONEST["mx-b"], h.kernel()), h.id
        assert not covered(HONEST["mx-a"], h.kernel()), h.id


def test_rows_no_role_may_write_are_skipped_on_receipt_and_counted(fleet, pg_server):  # noqa: F811
    a, b = fleet["hosts"]
    owner = fleet["owner"]
    # The admin may write a /0 (it passes the schema): the floors still keep it out of every kernel.
    r = a.run("add", "0.0.0.0/0", "--force", "--reason", "fat finger", db=a.admin_dsn)
    # (the CLI's own floor may refuse it first; either way it must never be installed)
    with psycopg.connect(owner, autocommit=True) as c:
        if r.returncode:
            c.execute(INSERT, (*_net_cols(IPNetwork("0.0.0.0/0")), "fat finger", "cli", int(time.time()),
                               None, 0))
        # rows an older netblock or the owner's password could leave behind: the schema is bypassed
        c.execute("ALTER TABLE blocks DROP CONSTRAINT blocks_sane")
        c.execute("ALTER TABLE observations DROP CONSTRAINT observations_sane")
        c.execute(INSERT, ("198.51.100.0/40", 4, b"\0" * 16, b"\0" * 16, 40, "x", "policy", 0, None, 0))
        c.execute(INSERT, ("203.0.113.77/32", 4, *_net_cols(IPNetwork("203.0.113.77/32"))[2:], "x", "imported",
                           0, None, 0))
        c.execute("INSERT INTO observations (host, time, ip, cls, mta, source, position) "
                  "VALUES ('mx-b', %s, 'not-an-ip', 'dnsbl:zen.example', 'postfix', '', 0)", (int(time.time()),))
    try:
        bad = {"0.0.0.0/0", "198.51.100.0/40", "203.0.113.77/32"}
        for h in (a, b):  # each daemon logs each skipped row once, and keeps ticking
            assert wait_for(lambda h=h: all(f"({k})" in h.log() for k in bad), timeout=WAIT_S), h.log()
        time.sleep(2 * TICK_S)
        for h in (a, b):
            assert h.proc.poll() is None
            text = h.log()
            for k in bad:
                assert text.count(f"skipped a blocks row from the store ({k})") == 1, (h.id, k, text)
            assert "tick failed" not in text, text
        assert good([a, b])
        for h in (a, b):
            assert not covered("203.0.113.77", h.kernel()) and not covered("198.51.100.1", h.kernel())
            assert len(h.kernel()) < 10, sorted(map(str, h.kernel()))
        # `sync` warns and installs the rest; `status` and the metrics count the skipped rows
        r = a.run("sync")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert all(k in r.stderr for k in bad), r.stderr
        r = a.run("status", "--json")
        assert r.returncode == 0, r.stderr
        keys = {row["key"] for row in json.loads(r.stdout)["rejected_rows"] if row["table"] == "blocks"}
        assert keys == bad
        r = a.run("export")
        assert r.returncode == 0, r.stderr
        assert 'netblock_rejected_rows{host="mx-a",table="blocks"} 3.0' in r.stdout, r.stdout
        r = a.run("run-once")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    finally:
        with psycopg.connect(owner, autocommit=True) as c:
            c.execute("DELETE FROM blocks WHERE netblock IN ('0.0.0.0/0', '198.51.100.0/40', '203.0.113.77/32')")
            c.execute("DELETE FROM observations WHERE ip = 'not-an-ip'")


def _reconciles(owner: str) -> int:
    """Reads of the fleet's address list: one per sync of any host (PostgreSQL's table statistics)."""
    with psycopg.connect(owner, autocommit=True) as c:
        return c.execute("SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                         "WHERE relname = 'host_addresses'").fetchone()[0]


def test_a_notify_storm_costs_at_most_one_reconcile_per_interval(fleet):
    from netblock.run.fleet import COALESCE_MIN_S

    hosts = fleet["hosts"]
    before = _reconciles(fleet["owner"])
    t0 = time.monotonic()
    sent = 0
    while time.monotonic() - t0 < 3.0:
        fleet["evil"].execute("NOTIFY netblock_changes, 'blocks'")
        sent += 1
    storm = time.monotonic() - t0
    time.sleep(2 * TICK_S + 1)  # the backends publish their statistics at their next transactions
    window = time.monotonic() - t0
    done = _reconciles(fleet["owner"]) - before
    # per host: one reconcile per coalesce interval of the storm (plus the one at its start and end),
    # one per tick of the whole window; never one per notification
    bound = len(hosts) * ((storm / COALESCE_MIN_S + 2) + (window / TICK_S + 2))
    print(f"\nNOTIFY storm: {sent} notifications in {storm:.1f} s; {done} reconciles by {len(hosts)} hosts "
          f"(bound {bound:.0f})")
    assert sent > 10 * bound
    assert done <= bound, (done, bound)
    assert good(hosts)
