"""Reaction time: from the write of a rejection line to the kernel dropping its sender.

netblock and fail2ban, measured in the same run on the same kernel with the
same log lines, one tool at a time (so neither takes CPU from the other).

Each phase: a fresh log file that the tool follows, in a server network
namespace of our own; a writer appends Postfix RBL rejection lines for NEW
offender addresses at a fixed rate (10, 100, 1,000 offenders per second).
Every offender gets two lines (the policy threshold is 2), the second one
``--gap`` seconds after the first; the second line is the threshold-crossing
one, and its write() is the start of the clock.

The end of the clock is the kernel's own announcement: a process in the
server namespace listens on the nf_tables netlink multicast group, on which
the kernel reports every set element a transaction added, when that
transaction commits (the moment the element starts matching packets). So the
measurement costs the tools nothing (no dumps, no polling), its resolution
is the wake-up latency of that listener (well under a millisecond when a
core is free), and it also counts the transactions each tool committed.
Both clocks are CLOCK_MONOTONIC, shared by all namespaces.
At the end of each phase a few offenders knock with a real TCP connect from
the client namespace, to confirm an announced element really drops.

Per-address reaction is measured: density widening is off in netblock's
configuration (1,000 new offenders a second in a /15 would otherwise be
widened to /24s and /16s within the first second, and later offenders would
find their prefix already dropped). ``--widen`` runs netblock with the
default widening rules instead; an offender then counts as dropped when the
first element holding it is committed, its own or a widened prefix's (the
listener pairs each announced interval start with its end), and one dropped
before its crossing line was written counts as 0 ms. netblock's tick is set
beyond the run (``--tick``), so what is measured is the event path alone:
a full tick during a storm costs what policy.decide() costs over all
offenders in the window, which this path exists to avoid.

fail2ban (the Debian package): the stock postfix jail and filter (its default
mode matches these rejections) with ``banaction = nftables-multiport`` on port
25 and ``blocktype = drop``, the pyinotify backend, maxretry 2, findtime 1h; fail2ban-server runs in the foreground
in the server namespace with its configuration copied from /etc/fail2ban into
a temporary directory (its socket, pid file and database there too).
fail2ban may not keep up at 1,000/s: its phase is bounded (writing time plus
``--grace``), and what it banned by then is reported.

CPU: utime+stime (+ that of waited-for children: fail2ban runs a shell and
nft per ban) from /proc/PID/stat, from the first write to the end of the
phase, as a fraction of one core.

Run (root): .venv/bin/python -m bench.bench_reaction [--duration 30] [--quick] [--rates 10,100,1000]
           [--tools netblock,fail2ban] [--widen] [--tick 1h] [--grace 30] [--installed 100000]
Needs the Debian packages fail2ban and python3-pyinotify for the fail2ban rows.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bench.common import NETBLOCK, Notify, daemon_toml, dnsbl_policy, dnsbl_reject, start_daemon, stop_daemon
from netblock.demo.lab import SERVER4, build_scene, nsexec, probe, run_in_netns

CLK_TCK = os.sysconf("SC_CLK_TCK")
POOL_FIRST = 0xC6120000 + 256  # 198.18.1.0: 198.18.0.0/24 holds the server and client addresses
POOL_SIZE = (1 << 17) - 256  # the rest of 198.18.0.0/15
NFNLGRP_NFTABLES = 7
NETLINK_ADD_MEMBERSHIP = 1
SOL_NETLINK = 270
NFT_MSG_NEWGEN = 15
NFT_MSG_NEWSETELEM = 12
NFT_SET_ELEM_INTERVAL_END = 1


# ---------------------------------------------------------------- the kernel's announcements

def monitor(out_path: str) -> None:
    """Record every IPv4 set element the kernel announces as added: "time table first last" lines.

    Runs in the server namespace until SIGTERM; a "commit" line per
    transaction (NEWGEN) names the tables it touched. The receive buffer
    is large so a storm of announcements is not lost; a loss (ENOBUFS) is
    recorded as a "lost" line.
    """
    from netblock.firewall.netlink import nftables as nl

    stop = False

    def on_term(_s, _f):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nl.NETLINK_NETFILTER)
    s.setsockopt(socket.SOL_SOCKET, nl.SO_RCVBUFFORCE, 256 << 20)
    s.bind((0, 0))
    s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    s.settimeout(0.2)
    records: list[str] = []
    touched: set[str] = set()
    seen: dict[str, set[str]] = {}
    open_start: dict[str, int] = {}  # table -> record of an interval start still waiting for its end
    next_count = 0.0
    print("ready", flush=True)
    while not stop:
        if time.monotonic() >= next_count:  # progress for the bench's wait, off the measured path
            Path(out_path + ".count").write_text("".join(f"{t} {len(a)}\n" for t, a in seen.items()))
            next_count = time.monotonic() + 0.25
        try:
            data = s.recv(1 << 20)
        except socket.timeout:
            continue
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno == 105:  # ENOBUFS: announcements were dropped
                records.append(f"{time.monotonic():.6f} lost -")
                continue
            raise
        now = time.monotonic()
        pos = 0
        while pos + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, pos)
            if length < 16:
                break
            subsys, msg = kind >> 8, kind & 0xFF
            if subsys == nl.NFNL_SUBSYS_NFTABLES and msg == NFT_MSG_NEWSETELEM:
                attrs = nl.parse_attrs(data, pos + 20, pos + length)
                table = attrs.get(nl.NFTA_SET_ELEM_LIST_TABLE, b"").rstrip(b"\0").decode()
                touched.add(table)
                for key, is_end in _added_keys(attrs.get(nl.NFTA_SET_ELEM_LIST_ELEMENTS, b"")):
                    if len(key) != 4:
                        continue
                    if is_end:  # closes the interval whose start was announced just before
                        k = open_start.pop(table, None)
                        if k is not None:
                            last = socket.inet_ntoa((int.from_bytes(key, "big") - 1).to_bytes(4, "big"))
                            records[k] = records[k][:-1] + last
                        continue
                    addr = socket.inet_ntoa(key)
                    open_start[table] = len(records)
                    records.append(f"{now:.6f} {table} {addr} -")
                    seen.setdefault(table, set()).add(addr)
            elif subsys == nl.NFNL_SUBSYS_NFTABLES and msg == NFT_MSG_NEWGEN:
                open_start.clear()
                records.append(f"{now:.6f} commit {','.join(sorted(touched)) or '-'}")
                touched.clear()
            pos += (length + 3) & ~3
    Path(out_path).write_text("\n".join(records) + "\n")


def _added_keys(elements: bytes):
    """(key, is an interval end) of each element in one announcement, in order.

    The kernel announces an interval as its start element, then its end
    element (flagged), each in a message of its own; a plain set, bare keys.
    """
    from netblock.firewall.netlink import nftables as nl

    pos = 0
    while pos + 4 <= len(elements):
        length, _kind = struct.unpack_from("=HH", elements, pos)
        if length < 4:
            return
        elem = nl.parse_attrs(elements, pos + 4, pos + length)
        flags = int.from_bytes(elem.get(nl.NFTA_SET_ELEM_FLAGS, b"\0\0\0\0"), "big")
        key = nl.parse_attrs(elem.get(nl.NFTA_SET_ELEM_KEY, b"")).get(nl.NFTA_DATA_VALUE)
        if key is not None:
            yield key, bool(flags & NFT_SET_ELEM_INTERVAL_END)
        pos += (length + 3) & ~3


@dataclass
class Announced:
    first: dict[str, float] = field(default_factory=dict)  # address -> first time announced (exactly)
    ranges: list[tuple[float, int, int]] = field(default_factory=list)  # (time, first, last) of wider elements
    commits: int = 0
    lost: int = 0

    def dropped_at(self, offenders: list[str]) -> dict[str, float]:
        """{offender: when the first element holding it was committed}: its own, or a widened prefix."""
        at = {ip: self.first[ip] for ip in offenders if ip in self.first}
        if self.ranges:
            ints = sorted((struct.unpack("!I", socket.inet_aton(ip))[0], ip) for ip in offenders)
            keys = [k for k, _ in ints]
            for t, first, last in self.ranges:
                for _k, ip in ints[bisect_left(keys, first):bisect_right(keys, last)]:
                    if t < at.get(ip, math.inf):
                        at[ip] = t
        return at


def read_announcements(path: Path, table: str) -> Announced:
    out = Announced()
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        t, what, rest = float(parts[0]), parts[1], parts[2]
        if what == "lost":
            out.lost += 1
        elif what == "commit":
            out.commits += table in rest.split(",")
        elif what == table:
            last = parts[3] if len(parts) > 3 else "-"
            if last in ("-", rest):
                out.first.setdefault(rest, t)
            else:
                out.ranges.append((t, struct.unpack("!I", socket.inet_aton(rest))[0],
                                   struct.unpack("!I", socket.inet_aton(last))[0]))
    return out


# ---------------------------------------------------------------- the log writer

def reject_line(ip: str) -> str:
    return dnsbl_reject(ip) + "\n"


def write_log(path: Path, offenders: list[str], rate: float, gap: float) -> dict[str, float]:
    """Append two lines per offender on schedule; {address: monotonic time its second line was written}.

    Offender i offends at start + i/rate and again ``gap`` seconds later.
    Lines that fall due together go out in one write(), as an MTA's logger
    flushes them; the loop is bounded by the schedule's length.
    """
    events = sorted([(i / rate, 0, ip) for i, ip in enumerate(offenders)]
                    + [(i / rate + gap, 1, ip) for i, ip in enumerate(offenders)])
    crossed: dict[str, float] = {}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        start = time.monotonic()
        k = 0
        while k < len(events):
            due = start + events[k][0]
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
                now = time.monotonic()
            chunk, second = [], []
            while k < len(events) and start + events[k][0] <= now:
                _, which, ip = events[k]
                chunk.append(reject_line(ip))
                if which:
                    second.append(ip)
                k += 1
            os.write(fd, "".join(chunk).encode())
            written = time.monotonic()
            for ip in second:
                crossed[ip] = written
    finally:
        os.close(fd)
    return crossed


# ---------------------------------------------------------------- the tools

def cpu_seconds(pid: int, children: bool) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


class Netblock:
    name = "netblock"
    table = "netblock"
    children = False

    def __init__(self, ns: str, work: Path, log: Path, opts):
        self.ns, self.work, self.log = ns, work, log
        conf = netblock_conf(work, log, opts)
        notify = Notify(work / "notify", 600 if opts.installed else 60)  # the first tick syncs in full
        self.err = open(work / "netblock.err", "w")
        command = [NETBLOCK]
        if os.environ.get("BENCH_PROFILE"):  # where the daemon's time goes: a cProfile file per phase
            command = [sys.executable, "-m", "cProfile", "-o", os.environ["BENCH_PROFILE"] + f".{log.parent.name}",
                       "-m", "netblock"]
        self.proc = start_daemon(ns, conf, self.err, db=work / "nb.db", notify=notify, command=command)
        try:
            if not notify.ready():
                raise RuntimeError("netblock daemon did not say READY")
        finally:
            notify.close()

    @staticmethod
    def preload(ns: str, work: Path, log: Path, opts) -> None:
        """--installed N: N netblocks in the store and the kernel before the phase (and its listener) starts.

        Alternately /24 and /32, each in its own /23 of 240.0.0.0/4 (reserved,
        never routed; no packet is sent to them), one day's TTL.
        """
        from datetime import timedelta

        from netaddr import IPNetwork

        from netblock.model import Block
        from netblock.store.sqlite import Store

        conf = netblock_conf(work, log, opts)
        now = datetime.now(timezone.utc)
        with Store.open(str(work / "nb.db")) as st:
            st.put_blocks(Block(IPNetwork((0xF0000000 + (i << 9), 24 if i % 2 else 32), version=4), "preload", "list",
                                now, now + timedelta(days=1)) for i in range(opts.installed))
        nsexec(ns, NETBLOCK, "--config", str(conf), "--db", str(work / "nb.db"), "sync", timeout=1800)

    def stop(self) -> None:
        stop_daemon(self.proc, 30)
        self.err.close()


def netblock_conf(work: Path, log: Path, opts) -> Path:
    conf = work / "netblock.toml"
    conf.write_text(daemon_toml(f"{work}/run/netblock.lock", [log], tick=opts.tick, backend="nftables",
                                policy=dnsbl_policy(widen=opts.widen, min_count=None)))  # --widen: the default rules
    return conf


class Fail2ban:
    name = "fail2ban"
    table = "f2b-table"
    children = True

    def __init__(self, ns: str, work: Path, log: Path, opts):
        self.ns, self.work = ns, work
        conf = work / "f2b"
        shutil.copytree("/etc/fail2ban", conf)
        for extra in (conf / "jail.d").iterdir():
            extra.unlink()  # Debian's defaults enable sshd: only our jail runs
        (conf / "fail2ban.local").write_text(
            f"[Definition]\nloglevel = NOTICE\nlogtarget = {work}/f2b.log\n"
            f"socket = {work}/f2b.sock\npidfile = {work}/f2b.pid\ndbfile = {work}/f2b.sqlite3\n")
        (conf / "action.d" / "nftables-common.local").write_text("[Init]\nblocktype = drop\n")
        (conf / "jail.local").write_text(f"""
[DEFAULT]
banaction = nftables-multiport
backend = pyinotify
bantime = 1d
findtime = 1h
maxretry = 2
ignoreself = false

[postfix]
enabled = true
port = smtp
logpath = {log}
""")
        self.sock = work / "f2b.sock"
        self.err = open(work / "f2b.err", "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "fail2ban-server", "-f", "-x", "-c", str(conf), "-s", str(self.sock),
             "-p", str(work / "f2b.pid")], stdout=self.err, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            r = subprocess.run(["fail2ban-client", "-c", str(conf), "-s", str(self.sock), "status", "postfix"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"fail2ban did not start: {r.stderr.strip()}")
            time.sleep(0.2)
        self.conf = conf

    def stop(self) -> None:
        stop_daemon(self.proc, 60)
        self.err.close()


# ---------------------------------------------------------------- one phase

@dataclass
class Phase:
    tool: str
    rate: int
    offenders: int
    installed: int
    latencies: list[float]
    cpu: float
    commits: int
    lost: int
    span: float
    knocks: str
    rss: float  # MB resident at the end of the phase
    early: int = 0  # dropped (by a widened prefix) before their threshold-crossing line


def run_phase(scene, tool_cls, rate: int, opts, offenders: list[str], work: Path) -> Phase:
    work.mkdir()
    log = work / "mail.log"
    log.touch()
    nsexec(scene.server, "nft", "flush", "ruleset")
    if opts.installed and hasattr(tool_cls, "preload"):
        tool_cls.preload(scene.server, work, log, opts)
    out = work / "announced"
    mon = subprocess.Popen(["ip", "netns", "exec", scene.server, sys.executable, "-c",
                            "import sys; from bench.bench_reaction import monitor; monitor(sys.argv[1])", str(out)],
                           stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert mon.stdout.readline().strip() == "ready"
        tool = tool_cls(scene.server, work, log, opts)
        try:
            cpu0, t0 = cpu_seconds(tool.proc.pid, tool.children), time.monotonic()
            crossed = write_log(log, offenders, rate, opts.gap)
            wanted = set(offenders)
            deadline = time.monotonic() + opts.grace
            while time.monotonic() < deadline and _announced(out, tool.table) < len(wanted):
                time.sleep(0.25)
            t1 = time.monotonic()
            cpu = (cpu_seconds(tool.proc.pid, tool.children) - cpu0) / (t1 - t0)
            rss = _rss_mb(tool.proc.pid)
            knocks = _knock(scene, offenders)
        finally:
            tool.stop()
    finally:
        mon.send_signal(signal.SIGTERM)
        mon.wait(timeout=30)
    ann = read_announcements(out, tool_cls.table)
    at = ann.dropped_at(offenders)
    if os.environ.get("BENCH_SLOWEST"):  # which offenders were slowest, by their place in the schedule
        order = sorted(((at[ip] - crossed[ip], i) for i, ip in enumerate(offenders) if ip in at), reverse=True)
        print(f"{tool_cls.name} {rate}/s slowest (s, index):", [(round(t, 3), i) for t, i in order[:8]],
              file=sys.stderr)
    # With widening, a prefix may be dropped before an offender's threshold-crossing line: that is 0 ms late.
    early = sum(at[ip] < crossed[ip] for ip in offenders if ip in at)
    lat = sorted(max(0.0, at[ip] - crossed[ip]) for ip in offenders if ip in at)
    return Phase(tool_cls.name, rate, len(offenders), len(lat), lat, cpu, ann.commits, ann.lost, t1 - t0, knocks,
                 rss, early)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _announced(out: Path, table: str) -> int:
    """How many addresses the listener has seen announced for ``table`` so far (its progress file)."""
    try:
        counts = dict(line.split() for line in Path(str(out) + ".count").read_text().splitlines())
    except (OSError, ValueError):
        return 0
    return int(counts.get(table, 0))


def _knock(scene, offenders: list[str]) -> str:
    """Real TCP connects from three offenders: "timeout" means the kernel dropped the SYN."""
    sample = [offenders[0], offenders[len(offenders) // 2], offenders[-1]]
    scene.add_client(*sample)
    got = [run_in_netns(scene.client, probe, ip, SERVER4, 25, 0.3) for ip in sample]
    return "/".join(got)


# ---------------------------------------------------------------- report

def pct(sorted_values: list[float], total: int, q: float) -> str:
    """The q-quantile over all ``total`` offenders; one never dropped counts as infinitely late."""
    k = max(0, math.ceil(q * total) - 1)
    if k >= len(sorted_values):
        return "   never"
    return f"{sorted_values[k] * 1000:8.0f}"


def report(phases: list[Phase], duration: float, gap: float, grace: float, tick: str, widen: bool) -> None:
    print()
    print(f"Reaction time: write of the threshold-crossing line -> element committed in the kernel "
          f"(ms; {duration:g} s per rate, second line {gap:g} s after the first, grace {grace:g} s; "
          f"netblock tick {tick}, widening {'on' if widen else 'off'}; CPU in cores)")
    print(f"{'tool':<9} {'rate/s':>6} {'dropped':>13} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} "
          f"{'commits':>8} {'CPU':>6} {'RSS MB':>7}  knocks")
    for p in phases:
        mx = f"{p.latencies[-1] * 1000:8.0f}" if p.installed == p.offenders and p.latencies else "   never"
        print(f"{p.tool:<9} {p.rate:>6} {p.installed:>6}/{p.offenders:<6} {pct(p.latencies, p.offenders, .5)} "
              f"{pct(p.latencies, p.offenders, .9)} {pct(p.latencies, p.offenders, .99)} {mx} "
              f"{p.commits:>8} {p.cpu:>6.2f} {p.rss:>7.0f}  {p.knocks}"
              + (f"  ({p.lost} announcement losses)" if p.lost else "")
              + (f"  ({p.early} dropped before their crossing line, by a widened prefix)" if p.early else ""))
    by = {(p.tool, p.rate): p for p in phases}
    for rate in sorted({p.rate for p in phases}):
        a, b = by.get(("netblock", rate)), by.get(("fail2ban", rate))
        if a and b and 2 * a.installed > a.offenders and 2 * b.installed > b.offenders:
            ra = a.latencies[len(a.latencies) // 2]
            rb = b.latencies[len(b.latencies) // 2]
            print(f"  at {rate}/s: fail2ban's median is {rb / ra:.1f}x netblock's")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of writing per rate (default 30)")
    ap.add_argument("--rates", default="10,100,1000", help="new offenders per second, comma-separated")
    ap.add_argument("--quick", action="store_true", help="5 s per rate")
    ap.add_argument("--gap", type=float, default=0.2, help="seconds between an offender's two lines")
    ap.add_argument("--grace", type=float, default=30.0, help="seconds after the last write to wait for drops")
    ap.add_argument("--tick", default="1h", help="netblock's [daemon] tick (default beyond the run)")
    ap.add_argument("--tools", default="netblock,fail2ban")
    ap.add_argument("--widen", action="store_true",
                    help="netblock with density widening (default rules): an offender counts as dropped "
                    "when an element holding it (its own or a widened prefix) is committed")
    ap.add_argument("--seed", type=int, default=25)
    ap.add_argument("--installed", type=int, default=0,
                    help="netblocks netblock holds in its store and the kernel before each of its phases "
                    "(e.g. 100000; from 240.0.0.0/4, never sent to)")
    args = ap.parse_args(argv)
    duration = args.duration = 5.0 if args.quick else args.duration
    rates = [int(r) for r in args.rates.split(",")]
    tools = {"netblock": Netblock, "fail2ban": Fail2ban}
    chosen = [tools[t] for t in args.tools.split(",")]
    need = sum(int(r * duration) for r in rates)
    if need > POOL_SIZE:
        raise SystemExit(f"{need} offenders do not fit in 198.18.0.0/15")
    pool = random.Random(args.seed).sample(range(POOL_SIZE), need)
    work = Path(tempfile.mkdtemp(prefix="nbreact."))
    scene = build_scene("rx")
    phases = []
    try:
        scene.listen()
        taken = 0
        for rate in rates:
            n = int(rate * duration)
            offenders = [socket.inet_ntoa(struct.pack("!I", POOL_FIRST + k)) for k in pool[taken:taken + n]]
            taken += n
            for tool in chosen:
                print(f"{tool.name}: {rate}/s for {duration:g} s ...", file=sys.stderr, flush=True)
                phases.append(run_phase(scene, tool, rate, args, offenders, work / f"{tool.name}-{rate}"))
    finally:
        scene.close()
        shutil.rmtree(work, ignore_errors=True)
    report(phases, duration, args.gap, args.grace, args.tick, args.widen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
