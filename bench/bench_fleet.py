"""Fleet at scale: 10 MX hosts on one PostgreSQL, 100k shared blocks, one change at a time.

Setup: a throwaway PostgreSQL (scripts/pg-test-server.sh, Unix socket only,
with pg_stat_statements loaded), the roles of issue 18 (`netblock fleet
init-admin`, `add-host mx-0` ... `mx-9`), and 100,000 blocks written by the
admin role: 65,000 IPv4 single addresses (every other address of
198.18.2.0-198.19.255.255, so aggregation merges none of them) and 35,000
IPv6 /128s in 2001:db8::/32. Ten server namespaces (netblock/lab.py) each
run the real `netblock daemon` as its own host role, nftables backend, tick
1 h (so what is measured is the LISTEN/NOTIFY path alone); each host's
READY (sd_notify) comes after its first full reconcile installed the 100k.

Propagation: the bench commits one new IPv4 block at a time as the admin
role (one transaction, as `netblock add` makes), timed from the return of
its COMMIT, and a listener on the nf_tables netlink multicast group in every
namespace (bench_reaction's monitor) timestamps the kernel's announcement of
the element. Both clocks are CLOCK_MONOTONIC. Latency = announcement - commit,
per host per change; p50/p90/p99/max over all of them.

Reconcile load: with the fleet idle, pg_stat_statements is reset and one
host's full reconcile is run as that host's role in its namespace (`netblock
sync`, the reconcile every tick runs; then `netblock run-once`, the whole tick:
logs, policy, reconcile, counter sampling of 100k elements), three times
each; the statements, rows and server execution milliseconds of that role are
read back, with the command's wall time.

Run (root; several minutes; heavy on two cores):
    .venv/bin/python -m bench.bench_fleet [--hosts 10] [--blocks 100000] [--changes 100] [--pace 1.5]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from netaddr import IPNetwork

from bench.bench_reaction import read_announcements
from bench.common import NETBLOCK, ROOT, Notify, PgServer, clean_env, daemon_toml, start_daemon, stop_daemon
from netblock import store as stores
from netblock.demo.lab import build_scene, nsexec
from netblock.model import Block

V4_FIRST = int(ipaddress.IPv4Address("198.18.2.0"))
V4_END = int(ipaddress.IPv4Address("198.19.255.255"))
V6_BASE = int(ipaddress.IPv6Address("2001:db8:1::"))
CHANGES_FROM = [f"203.0.113.{i}" for i in range(1, 255)] + [f"198.51.100.{i}" for i in range(1, 255)]


def the_blocks(n: int, now: datetime) -> list[Block]:
    v4 = min(n * 65 // 100, (V4_END - V4_FIRST) // 2)
    expires = now + timedelta(days=30)
    nets = [IPNetwork((V4_FIRST + 2 * i, 32), 4) for i in range(v4)]
    nets += [IPNetwork((V6_BASE + (i << 16) + 1, 128), 6) for i in range(n - v4)]
    return [Block(net, "bench", "cli", now, expires) for net in nets]


def role_dsn(owner: str, role: str) -> str:
    return owner.replace("user=postgres", f"user={role}")


class Host:
    def __init__(self, i: int, owner: str, work: Path):
        self.id = f"mx-{i}"
        self.role = f"netblock_mx_{i}"
        self.work = work
        work.mkdir()
        (work / "logs").mkdir()
        log = work / "logs" / "mail.log"
        log.touch()
        self.conf = work / "netblock.toml"
        self.conf.write_text(daemon_toml(f"{work}/run/netblock.lock", [log], tick="1h", backend="nftables",
                                         host_id=self.id, db=role_dsn(owner, self.role),
                                         daemon=f'spool = "{work}/spool.db"'))
        self.scene = build_scene("fb")
        self.err = open(work / "daemon.err", "w")
        self.notify = Notify(work / "notify", 60)
        self.proc = start_daemon(self.scene.server, self.conf, self.err, notify=self.notify)
        self.mon = None

    def wait_ready(self, timeout: float) -> None:
        self.notify.sock.settimeout(timeout)
        while not self.notify.ready():
            pass
        self.notify.close()

    def start_monitor(self) -> None:
        self.out = self.work / "announced"
        self.mon = subprocess.Popen(["ip", "netns", "exec", self.scene.server, sys.executable, "-c",
                                     "import sys; from bench.bench_reaction import monitor; monitor(sys.argv[1])",
                                     str(self.out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.mon.stdout.readline().strip() == "ready"

    def stop_monitor(self) -> None:
        self.mon.send_signal(signal.SIGTERM)
        self.mon.wait(timeout=60)

    def run(self, *args: str) -> tuple[float, subprocess.CompletedProcess]:
        t0 = time.monotonic()
        r = nsexec(self.scene.server, NETBLOCK, "--config", str(self.conf), *args, check=False, env=clean_env(),
                   timeout=600)
        return time.monotonic() - t0, r

    def stop(self) -> None:
        if self.mon is not None and self.mon.poll() is None:
            self.stop_monitor()
        stop_daemon(self.proc, 60)
        self.err.close()
        self.scene.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(hosts: list[Host], quiet: float = 3.0, timeout: float = 900.0) -> float:
    """Until no daemon used CPU for ``quiet`` seconds (the startup's reconciles, each host's publication
    of its addresses and the others' reconciles after it, are over); seconds waited."""
    t0 = time.monotonic()
    last = [cpu_seconds(h.proc.pid) for h in hosts]
    calm_since = time.monotonic()
    while time.monotonic() - t0 < timeout:
        time.sleep(0.5)
        now = [cpu_seconds(h.proc.pid) for h in hosts]
        if any(b - a > 0.02 for a, b in zip(last, now)):
            calm_since = time.monotonic()
        last = now
        if time.monotonic() - calm_since >= quiet:
            break
    return time.monotonic() - t0


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, int(round(q * len(values))) - 1))]


def load_of(server: PgServer, db: str, role: str) -> tuple[int, int, float]:
    """(statements, rows, server execution ms) of ``role`` since the last reset."""
    out = server.psql("SELECT coalesce(sum(calls), 0), coalesce(sum(rows), 0), coalesce(sum(total_exec_time), 0) "
                      f"FROM pg_stat_statements WHERE userid = (SELECT oid FROM pg_roles WHERE rolname = '{role}')",
                      db=db)
    calls, rows, ms = out.split("|")
    return int(calls), int(rows), float(ms)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--blocks", type=int, default=100_000)
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--pace", type=float, default=1.5, help="seconds between two changes (default: 1.5)")
    opts = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_fleet: needs root (namespaces, nftables)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="nbfleet-"))
    server = PgServer(tempfile.mkdtemp(prefix="nbpg-", dir="/tmp"))
    hosts: list[Host] = []
    try:
        server.start()
        server.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        server.stop()
        server.start()
        owner = server.new_database("fleetbench")
        db = owner.split("/")[3].split("?")[0]
        server.psql("CREATE EXTENSION pg_stat_statements", db=db)
        stores.open(owner, host_id="owner").close()
        env = clean_env(NETBLOCK_DB=owner, NETBLOCK_CONFIG=os.devnull)
        for args in [("init-admin",)] + [("add-host", f"mx-{i}") for i in range(opts.hosts)]:
            subprocess.run([NETBLOCK, "fleet", *args], check=True, env=env, stdout=subprocess.DEVNULL, timeout=60)
        now = datetime.now(timezone.utc).replace(microsecond=0)
        admin = stores.open(role_dsn(owner, "netblock_admin"), host_id="bench-admin")
        t0 = time.monotonic()
        admin.put_blocks(the_blocks(opts.blocks, now))
        print(f"{opts.blocks} blocks written by the admin role in {time.monotonic() - t0:.1f} s "
              f"(constraints and row-level security checked per row)", flush=True)

        t0 = time.monotonic()
        for i in range(opts.hosts):
            hosts.append(Host(i, owner, work / f"mx-{i}"))
        for h in hosts:
            h.wait_ready(timeout=1800)
        print(f"{opts.hosts} daemons started and installed {opts.blocks} elements each in "
              f"{time.monotonic() - t0:.1f} s (all at once, {os.cpu_count()} cores)", flush=True)
        print(f"fleet idle after another {wait_idle(hosts):.1f} s (each host's addresses published, the others "
              f"reconciled once more for them)", flush=True)
        for h in hosts:
            h.start_monitor()

        committed: dict[str, float] = {}
        for k in range(opts.changes):
            ip = CHANGES_FROM[k % len(CHANGES_FROM)]
            admin.put_blocks([Block(IPNetwork(ip), "bench change", "cli", now, now + timedelta(days=1))])
            committed[ip] = time.monotonic()
            time.sleep(opts.pace)
        time.sleep(5)
        for h in hosts:
            h.stop_monitor()
        lat: list[float] = []
        missing = 0
        per_host: dict[str, float] = {}
        for h in hosts:
            ann = read_announcements(h.out, "netblock")
            at = ann.dropped_at(list(committed))
            missing += sum(ip not in at for ip in committed)
            mine = [at[ip] - t for ip, t in committed.items() if ip in at]
            lat += mine
            per_host[h.id] = max(mine) if mine else float("nan")
        lat.sort()
        n = len(committed) * len(hosts)
        if missing or os.environ.get("BENCH_LOGS"):
            for h in hosts:
                print(f"{h.id} daemon log:\n{(h.work / 'daemon.err').read_text()[-3000:]}")
        if not lat:
            print("no change arrived in any kernel")
            return 1
        print(f"\npropagation of one new block (admin commit -> kernel announcement), {len(committed)} changes x "
              f"{len(hosts)} hosts = {n} ({missing} never arrived), {opts.blocks} blocks shared:")
        print(f"    p50 {pct(lat, 0.5) * 1000:.0f} ms   p90 {pct(lat, 0.9) * 1000:.0f} ms   "
              f"p99 {pct(lat, 0.99) * 1000:.0f} ms   max {lat[-1] * 1000:.0f} ms   "
              f"(p99 <= 1 s: {'yes' if pct(lat, 0.99) <= 1.0 and not missing else 'NO'})")
        print("    slowest per host: " + ", ".join(f"{k} {v * 1000:.0f}" for k, v in per_host.items()) + " ms")

        probe = hosts[0]
        print(f"\nfull reconcile load on PostgreSQL, host {probe.id} (role {probe.role}), fleet idle, "
              f"{opts.blocks} blocks; three runs each:")
        print(f"    {'command':<22}{'statements':>11}{'rows':>10}{'server ms':>11}{'wall ms':>10}")
        for command in (("sync",), ("run-once",)):
            for _ in range(3):
                server.psql("SELECT pg_stat_statements_reset()", db=db)
                took, r = probe.run(*command)
                if r.returncode:
                    print(f"    netblock {' '.join(command)} failed: {r.stderr.strip()}")
                    break
                calls, rows, ms = load_of(server, db, probe.role)
                print(f"    {'netblock ' + ' '.join(command):<22}{calls:>11}{rows:>10}{ms:>11.0f}{took * 1000:>10.0f}")
        for h in hosts:
            text = (h.work / "daemon.err").read_text()
            if "Traceback" in text or "failed" in text:
                print(f"{h.id} daemon log:\n{text}")
        admin.close()
    finally:
        for h in hosts:
            try:
                h.stop()
            except Exception as exc:  # keep tearing down the others
                print(f"stopping {h.id}: {exc}", file=sys.stderr)
        server.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
