"""Whole `netblock` processes against a store and a kernel holding N netblocks, beside their peers.

What a postmaster runs is a process: Python start-up, imports, the store,
the kernel. Each row times whole processes (wall clock, from exec to exit,
median of --runs with the spread min..max) in a network namespace this
bench creates (netblock.demo.lab) and deletes afterwards; the host's ruleset is
never touched and no packet is sent.

Rows per backend (nftables, ipset), after `netblock add -` of N netblocks:
one change (`add 198.18.16.0/24`, `del` of it, `allow add` of an address
inside an installed /24), `status`, `sync` with nothing to do,
`sync --dry-run`, `run-once` with no news, `sample`; restore after a flush
(`nft flush ruleset` / `ipset flush`) by `netblock sync`; `add -` of the N
into an empty store and kernel. Peers, timed in the same run against a set
of their own holding the same N elements: `nft -f` / `ipset restore` of
all of them, `nft add element` / `ipset add` of one. The iptables backend
gets its one-change rows at --iptables-n rules (a rule per netblock).
Then the idle daemon at N: CPU share over --idle-minutes and its RSS.

netblock's bytecode is compiled before anything is timed, as an installed
package has it (dh_python3, pip): a source tree run with
PYTHONDONTWRITEBYTECODE=1 would otherwise recompile each module in each
process timed, about 0.08 s of every row.

Input: N netblocks, alternately /24 and /32, IPv4, none adjacent (each in
its own /23), one day's TTL. 100k such entries do not fit into the
documentation/benchmark ranges, so they come from 240.0.0.0/4 (reserved,
never routed), inside the namespace of our own.

Run: .venv/bin/python -m bench.bench_scale [--n 100000] [--runs 5] [--idle-minutes 10]
(root). Quick: --runs 3 --idle-minutes 2. Only the N-element rows (`add -`, the
restore after a flush): --bulk-only --idle-minutes 0 --iptables-n 0.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import NETBLOCK
from netblock.demo.lab import run_in_netns, scene

BASE = 0xF0000000  # 240.0.0.0
NEW = "198.18.16.0/24"
PEER_TABLE = "nbpeer"


def cidrs(n: int) -> list[str]:
    out = []
    for i in range(n):
        v = BASE + (i << 9)
        ip = f"{v >> 24}.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}"
        out.append(f"{ip}/24" if i % 2 else ip)
    return out


def inside_24() -> str:
    """An address inside the first installed /24 (i = 1): what `allow add` carves."""
    v = BASE + (1 << 9) + 7
    return f"{v >> 24}.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}"


# ---------------------------------------------------------------- timing inside the namespace

def _run(argv, stdin_path=None, env=None) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+system) of one whole process (run in the namespace child).

    The CPU time is what the process itself cost, whatever else the machine
    was doing; on a shared machine the wall time also holds the waits for a core.
    """
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        r = subprocess.run(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        dt = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        if stdin_path:
            stdin.close()
    if r.returncode != 0:
        raise RuntimeError(f"{argv!r} exited {r.returncode}: {r.stderr.decode(errors='replace')[-500:]}")
    return dt, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _steps(steps):
    """[(timed?, argv, stdin path)] run in order; the timed ones' seconds."""
    out = []
    for timed, argv, stdin_path in steps:
        dt = _run(argv, stdin_path)
        if timed:
            out.append(dt)
    return out


class Bench:
    def __init__(self, ns: str, work: Path, backend: str, n: int):
        self.ns, self.work, self.backend, self.n = ns, work, backend, n
        self.conf = work / f"{backend}.toml"
        self.db = work / f"{backend}.db"
        self.log = work / "mail.log"
        self.log.touch()
        self.conf.write_text(f'lock_file = "{work}/run/netblock.lock"\n'
                             f'[sources]\nfiles = ["{self.log}"]\n'
                             f'[daemon]\nspool = "{work}/spool.db"\n'
                             f'[export]\nlisten = ""\n')
        self.list_file = work / "targets.txt"
        self.rows: list[tuple[str, list[float], str, list[float] | None]] = []

    def nb(self, *args: str) -> list[str]:
        return [NETBLOCK, "--config", str(self.conf), "--db", str(self.db), "--backend", self.backend, *args]

    def steps(self, steps) -> list[float]:
        return run_in_netns(self.ns, _steps, steps)

    def row(self, what: str, ours: list[float], peer_what: str = "", peer: list[float] | None = None) -> None:
        self.rows.append((what, ours, peer_what, peer))
        print(fmt_row(self.backend, what, ours, peer_what, peer), flush=True)


def fmt_times(runs: list[tuple[float, float]] | None) -> str:
    """Wall median (min..max, n) and the median CPU seconds."""
    if not runs:
        return "-"
    xs = [w for w, _ in runs]
    med = statistics.median(xs)
    return f"{med:7.3f} s ({min(xs):.3f}..{max(xs):.3f}, n={len(xs)}) cpu {statistics.median(c for _, c in runs):.3f}"


def fmt_row(backend, what, ours, peer_what, peer) -> str:
    ratio = ""
    if peer:
        wall = statistics.median(w for w, _ in ours) / statistics.median(w for w, _ in peer)
        cpu_peer = statistics.median(c for _, c in peer)
        cpu = statistics.median(c for _, c in ours) / cpu_peer if cpu_peer else float("nan")
        ratio = f"  = {wall:.2f}x wall, {cpu:.2f}x cpu"
    return f"{backend:9} {what:34} {fmt_times(ours):44} {peer_what:20} {fmt_times(peer)}{ratio}"


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------- peers

def nft_peer_file(work: Path, nets: list[str], with_table: bool) -> Path:
    path = work / f"peer-{'table' if with_table else 'elements'}.nft"
    body = ",\n".join(f"{n} timeout 1d" for n in nets)
    head = ""
    if with_table:
        head = (f"table inet {PEER_TABLE} {{\n set block4 {{ type ipv4_addr; flags interval, timeout; counter; }}\n}}\n")
    path.write_text(head + f"add element inet {PEER_TABLE} block4 {{\n{body}\n}}\n")
    return path


def ipset_peer_file(work: Path, nets: list[str]) -> Path:
    path = work / "peer.ipset"
    lines = ["create nbpeer4 hash:net family inet maxelem 1048576 timeout 0 counters"]
    lines += [f"add nbpeer4 {n} timeout 86400" for n in nets]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- the rows

def bench_backend(b: Bench, runs: int, bulk_runs: int, idle_only: bool = False, bulk_only: bool = False,
                  expiry_only: bool = False) -> None:
    nets = cidrs(b.n)
    b.list_file.write_text("\n".join(nets) + "\n")
    nft, ipset = shutil.which("nft") or "nft", shutil.which("ipset") or "ipset"

    # add - of the N into an empty store and kernel (the store file removed between runs, untimed)
    bulk = []
    for _ in range(bulk_runs):
        run_in_netns(b.ns, _reset, b.backend, str(b.db), b.nb("remove-rules"))
        bulk += b.steps([(True, b.nb("add", "--ttl", "1d", "-"), str(b.list_file))])
    # The peer loads into the ruleset netblock's runs met, one without netblock's table (nft reads the
    # whole ruleset before it writes): the table goes for the peer's runs and comes back after (untimed).
    b.steps([(False, b.nb("remove-rules"), None)])
    if b.backend == "nftables":
        peer_all = nft_peer_file(b.work, nets, with_table=True)
        peer = b.steps([s for _ in range(bulk_runs) for s in (
            (False, ["sh", "-c", f"{nft} delete table inet {PEER_TABLE} 2>/dev/null; true"], None),
            (True, [nft, "-f", str(peer_all)], None))])
        b.row(f"add - of {b.n}", bulk, "nft -f", peer)
    else:
        peer_all = ipset_peer_file(b.work, nets)
        peer = b.steps([s for _ in range(bulk_runs) for s in (
            (False, ["sh", "-c", f"{ipset} destroy nbpeer4 2>/dev/null; true"], None),
            (True, [ipset, "restore", "-f", str(peer_all)], None))])
        b.row(f"add - of {b.n}", bulk, "ipset restore", peer)
    b.steps([(False, b.nb("sync"), None)])
    if idle_only:
        return
    if expiry_only:
        bench_expiry(b, runs)
        return
    if not bulk_only:
        bench_changes(b, runs)
    bench_restore(b, bulk_runs, peer_all)


def bench_changes(b: Bench, runs: int) -> None:
    """The one-change, status, sync, run-once and sample rows, with the N installed."""
    nft, ipset = shutil.which("nft") or "nft", shutil.which("ipset") or "ipset"

    # one change: add, then del of the same block (alternating, so the state returns)
    add_del = b.steps([s for _ in range(runs) for s in (
        (True, b.nb("add", "--ttl", "1d", NEW), None), (True, b.nb("del", NEW), None))])
    if b.backend == "nftables":
        peer = b.steps([s for _ in range(runs) for s in (
            (True, [nft, f"add element inet {PEER_TABLE} block4 {{ {NEW} timeout 1d }}"], None),
            (True, [nft, f"delete element inet {PEER_TABLE} block4 {{ {NEW} }}"], None))])
        peer_what = ("nft add element", "nft delete element")
    else:
        peer = b.steps([s for _ in range(runs) for s in (
            (True, [ipset, "add", "nbpeer4", NEW, "timeout", "86400"], None),
            (True, [ipset, "del", "nbpeer4", NEW], None))])
        peer_what = ("ipset add", "ipset del")
    b.row(f"add {NEW}", add_del[0::2], peer_what[0], peer[0::2])
    b.row("del of it", add_del[1::2], peer_what[1], peer[1::2])

    allow = b.steps([s for _ in range(runs) for s in (
        (True, b.nb("allow", "add", inside_24()), None), (False, b.nb("allow", "del", inside_24()), None))])
    b.row(f"allow add {inside_24()}", allow, peer_what[0], peer[0::2])

    for what, argv in (("status", b.nb("status")), ("sync, nothing to do", b.nb("sync")),
                       ("sync --dry-run", b.nb("sync", "--dry-run")), ("run-once, no news", b.nb("run-once")),
                       ("sample", b.nb("sample"))):
        b.row(what, b.steps([(True, argv, None)] * runs))
    bench_expiry(b, runs)


def bench_restore(b: Bench, bulk_runs: int, peer_all: Path) -> None:
    """Restore after a flush: netblock sync beside the peer's load of the same elements."""
    nft, ipset = shutil.which("nft") or "nft", shutil.which("ipset") or "ipset"

    # restore after a flush: netblock sync vs the peer's load of the same elements
    if b.backend == "nftables":
        ours = b.steps([s for _ in range(bulk_runs) for s in (
            (False, [nft, "flush", "ruleset"], None), (True, b.nb("sync"), None))])
        peer = b.steps([s for _ in range(bulk_runs) for s in (
            (False, [nft, "flush", "ruleset"], None), (True, [nft, "-f", str(peer_all)], None))])
        b.row("restore after nft flush ruleset", ours, "nft -f", peer)
        b.steps([(False, b.nb("sync"), None)])
    else:
        ours = b.steps([s for _ in range(bulk_runs) for s in (
            (False, ["sh", "-c", f"{ipset} list -n | grep -v nbpeer | xargs -rn1 {ipset} flush"], None),
            (True, b.nb("sync"), None))])
        peer = b.steps([s for _ in range(bulk_runs) for s in (
            (False, ["sh", "-c", f"{ipset} destroy nbpeer4 2>/dev/null; true"], None),
            (True, [ipset, "restore", "-f", str(peer_all)], None))])
        b.row("restore after ipset flush", ours, "ipset restore", peer)


def bench_expiry(b: Bench, runs: int) -> None:
    """`run-once` in the tick after one block ran out: what every expiry costs the timer (and the daemon).

    Untimed before each: a one-second block outside the N, then a wait past its end and the kernel's
    grace (netblock/run/delta.py LAPSE_GRACE, 5 s).
    """
    target = expiring(1)[0]
    steps = []
    for _ in range(runs):
        steps += [(False, b.nb("add", "--ttl", "1s", target), None), (False, ["sleep", "7"], None),
                  (True, b.nb("run-once"), None)]
    b.row("run-once, a block ran out", b.steps([(False, b.nb("run-once"), None), *steps]))


def _reset(backend: str, db: str, remove_argv: list[str]) -> None:
    """An empty store and no kernel objects (untimed)."""
    subprocess.run(remove_argv, capture_output=True)
    for suffix in ("", "-wal", "-shm"):
        Path(db + suffix).unlink(missing_ok=True)


def bench_iptables(ns: str, work: Path, n: int, runs: int) -> None:
    b = Bench(ns, work, "iptables", n)
    nets = cidrs(n)
    b.list_file.write_text("\n".join(nets) + "\n")
    run_in_netns(ns, _reset, "iptables", str(b.db), b.nb("remove-rules"))
    b.steps([(False, b.nb("add", "--ttl", "1d", "-"), str(b.list_file))])
    add_del = b.steps([s for _ in range(runs) for s in (
        (True, b.nb("add", "--ttl", "1d", NEW), None), (True, b.nb("del", NEW), None))])
    # The peer edits the table that holds the N rules: the legacy filter table, which libiptc reads and
    # replaces whole (plain `iptables` here is iptables-nft, another table altogether).
    ipt = shutil.which("iptables-legacy") or "iptables-legacy"
    peer = b.steps([s for _ in range(runs) for s in (
        (True, [ipt, "-I", "INPUT", "-s", NEW, "-p", "tcp", "--dport", "25", "-j", "DROP"], None),
        (True, [ipt, "-D", "INPUT", "-s", NEW, "-p", "tcp", "--dport", "25", "-j", "DROP"], None))])
    b.row(f"add {NEW} ({n} rules)", add_del[0::2], "iptables-legacy -I", peer[0::2])
    b.row(f"del of it ({n} rules)", add_del[1::2], "iptables-legacy -D", peer[1::2])
    run_in_netns(ns, _reset, "iptables", str(b.db), b.nb("remove-rules"))


# ---------------------------------------------------------------- the idle daemon

def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem(pid: int) -> tuple[float, float]:
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            vals[key] = int(value.split()[0]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def expiring(k: int) -> list[str]:
    """K addresses outside the N (198.18.0.0/15, the benchmark range), for blocks that run out while idle."""
    return [f"198.18.{200 + i // 250}.{1 + i % 250}" for i in range(k)]


def bench_idle(b: Bench, minutes: float, settle: float = 90.0, expire: int = 0) -> None:
    """The daemon at N, no log traffic: CPU share over ``minutes`` after ``settle`` s, and RSS.

    ``expire`` more blocks are added first, whose TTLs run out one after the other, evenly over the
    measured minutes: what an idle daemon meets every day as its week-old blocks expire.
    """
    if expire:
        start = time.monotonic()
        targets = expiring(expire)
        for i, ip in enumerate(targets):
            ttl = settle + (i + 1) * minutes * 60 / (expire + 1) - (time.monotonic() - start)
            b.steps([(False, b.nb("add", "--ttl", f"{max(1, round(ttl))}s", ip), None)])
    proc = subprocess.Popen(["ip", "netns", "exec", b.ns, *b.nb("daemon")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(settle)
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode}")
        c0, t0 = _proc_cpu(proc.pid), time.monotonic()
        time.sleep(minutes * 60)
        c1, t1 = _proc_cpu(proc.pid), time.monotonic()
        rss, hwm = proc_mem(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    share = 100 * (c1 - c0) / (t1 - t0)
    what = f", {expire} blocks expiring" if expire else ""
    line = (f"{b.backend:9} idle daemon, {minutes:g} min at {b.n}{what}: {share:.2f}% of a core "
            f"({c1 - c0:.1f} s CPU), RSS {rss:.0f} MB (high-water {hwm:.0f} MB)")
    print(line, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5, help="runs per one-change/status row (median, spread)")
    ap.add_argument("--bulk-runs", type=int, default=3, help="runs of the N-element rows")
    ap.add_argument("--backends", default="nftables,ipset")
    ap.add_argument("--iptables-n", type=int, default=2000, help="rules for the iptables rows (0: skip)")
    ap.add_argument("--idle-minutes", type=float, default=10.0, help="0: skip the idle daemon")
    ap.add_argument("--idle-expiring", type=int, default=0, metavar="K",
                    help="K more blocks in the idle run, running out evenly over its minutes (default 0)")
    ap.add_argument("--expiry-only", action="store_true",
                    help="of the per-backend rows only `add -` and `run-once` after a block ran out")
    ap.add_argument("--idle-only", action="store_true",
                    help="of the per-backend rows only `add -` (the load the idle daemon needs), then the idle daemon")
    ap.add_argument("--bulk-only", action="store_true",
                    help="of the per-backend rows only the N-element ones: `add -` and the restore after a flush")
    opts = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_scale: needs root (network namespaces)", file=sys.stderr)
        return 2
    # An installed netblock has its bytecode (dh_python3 and pip compile it at install); a source
    # tree run with PYTHONDONTWRITEBYTECODE=1 would recompile every module in every process timed.
    import compileall

    import netblock
    compileall.compile_dir(os.path.dirname(netblock.__file__), quiet=1)
    print(f"# bench_scale: n={opts.n} runs={opts.runs} bulk-runs={opts.bulk_runs} "
          f"python={sys.version.split()[0]} cores={os.cpu_count()} load {load_avg()}", flush=True)
    print(f"{'backend':9} {'netblock command (whole process)':34} {'wall median (min..max, n) cpu median':44} "
          f"{'peer':20} peer", flush=True)
    with scene("sc") as sc, tempfile.TemporaryDirectory(prefix="nbscale") as tmp:
        work = Path(tmp)
        (work / "run").mkdir()
        floor = run_in_netns(sc.server, _steps, [(True, [sys.executable, "-c", "pass"], None)] * opts.runs
                             + [(True, [NETBLOCK, "--version"], None)] * opts.runs)
        print(fmt_row("-", "python -c pass (the floor)", floor[:opts.runs], "", None), flush=True)
        print(fmt_row("-", "netblock --version", floor[opts.runs:], "", None), flush=True)
        for backend in opts.backends.split(","):
            b = Bench(sc.server, work, backend, opts.n)
            bench_backend(b, opts.runs, opts.bulk_runs, opts.idle_only, opts.bulk_only, opts.expiry_only)
            if opts.idle_minutes > 0:
                bench_idle(b, opts.idle_minutes, expire=opts.idle_expiring)
            run_in_netns(sc.server, _reset, backend, str(b.db), b.nb("remove-rules"))
            print(f"# load {load_avg()}", flush=True)
        if opts.iptables_n:
            bench_iptables(sc.server, work, opts.iptables_n, opts.runs)
    print(f"# done, load {load_avg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
