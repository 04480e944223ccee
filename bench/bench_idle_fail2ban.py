"""fail2ban's idle CPU with N bans, measured as bench_scale.py measures netblock's idle daemon.

The peer row for "the idle daemon at 100k": Debian's fail2ban (the
distribution's package, run as installed; nothing of it is copied here), one
jail on a quiet Postfix log, N addresses banned through
`fail2ban-client set JAIL banip` in batches of --batch, then
fail2ban-server's CPU share (its own user+system time, and its reaped
children's) over --idle-minutes after --settle seconds, and its RSS.

Everything runs inside a network namespace this bench creates
(netblock.demo.lab) and deletes afterwards, with its configuration, socket,
database and log in a temporary directory: the host's ruleset and its
fail2ban (if any) are never touched, no packet is sent.

Which banaction, and why the load goes through `banip`: fail2ban runs its
banaction's `actionban` once per address, as a shell command forked by
fail2ban-server (utils.py: subprocess.Popen with preexec_fn=os.setsid).
`--banaction nftables` (the default, the peer of netblock's nftables row)
runs `nft add element inet f2b-table addr-set-JAIL { IP }` into a plain
(non-interval) set, which nft 1.0.6 does in a few milliseconds whatever the
set holds: 100k loaded in 1177 s, 85 bans/s at nice 19 on a shared 2-core
machine (load 2-5), about as fast at the end as at the start (106 bans/s
over the first 10k, 95 over the last); so the whole run takes about 33
minutes. `iptables-ipset` runs `ipset -exist add f2b-JAIL IP
timeout 0` and is as quick per ban, but the set it creates has ipset's
default maxelem 65536: past that every ban fails in the kernel ("Hash is
full"), fail2ban retries it after an actioncheck and still counts the
address as banned, so its count said 100000 while the set held 66323, and
the load slowed to 25 bans/s (1604 s in all); this bench stops there, having
compared both counts. fail2ban's other way in, restoring bans from its
database at start (Jail.restoreCurrentBans), puts each row back through the
same Actions.__checkBan and so runs `actionban` once per ticket as well
(only actions marked `norestored` skip it); it saves nothing over `banip`,
so this bench uses the path a user would type.

The load is heavy and its speed is not the measurement: fail2ban-server (and
so every action process it forks) starts at nice 19 and idle I/O class, so it
does not disturb other benchmarks on the machine; before the settle period
every thread of the server is put back to nice 0 and the default I/O class,
so the idle figure is fail2ban as a user runs it. The load time is printed.

Run: .venv/bin/python -m bench.bench_idle_fail2ban [--n 100000] [--idle-minutes 10] [--banaction nftables]
     [--lock /work/wt/notes/bench.lock]
(root; apt-get install fail2ban).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.bench_scale import load_avg, proc_mem
from netblock.demo.lab import scene

BASE = 0xF0000000  # 240.0.0.0/4: reserved, never routed, inside our own namespace
JAIL = "nbbench"
LOAD_NICE = ["nice", "-n", "19", "ionice", "-c", "3"]


def addresses(n: int) -> list[str]:
    out = []
    for i in range(n):
        v = BASE + (i << 9) + 1
        out.append(f"{v >> 24}.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}")
    return out


def write_config(work: Path, banaction: str) -> Path:
    """A private copy of /etc/fail2ban with one jail and every path in ``work``."""
    conf = work / "conf"
    shutil.copytree("/etc/fail2ban", conf)
    for extra in (conf / "jail.d").glob("*"):
        extra.unlink()  # Debian's defaults enable sshd on the journal
    (work / "mail.log").touch()
    (conf / "fail2ban.local").write_text(
        "[Definition]\n"
        f"logtarget = {work}/fail2ban.log\n"
        f"socket = {work}/fail2ban.sock\n"
        f"pidfile = {work}/fail2ban.pid\n"
        f"dbfile = {work}/fail2ban.sqlite3\n"
        "loglevel = NOTICE\n")
    (conf / "jail.local").write_text(
        "[DEFAULT]\n"
        f"banaction = {banaction}\n"
        "bantime = 1d\n"
        "[sshd]\nenabled = false\n"
        f"[{JAIL}]\n"
        "enabled = true\n"
        "filter = postfix\n"
        f"logpath = {work}/mail.log\n"
        "backend = auto\n"
        "port = smtp\n"
        "maxretry = 5\n")
    return conf


def client(ns: str, conf: Path, *args: str, check: bool = True) -> str:
    r = subprocess.run([*LOAD_NICE, "ip", "netns", "exec", ns, "fail2ban-client", "-c", str(conf), *args],
                       capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"fail2ban-client {' '.join(args[:3])}: {r.stderr.strip()[-300:]}")
    return r.stdout


def banned(ns: str, conf: Path) -> int:
    for line in client(ns, conf, "status", JAIL).splitlines():
        if "Currently banned:" in line:
            return int(line.rsplit(":", 1)[1])
    return -1


def kernel_count(ns: str, banaction: str) -> int:
    """How many addresses the kernel's set holds: fail2ban's own count is not proof of the drop rules."""
    if banaction.startswith("iptables-ipset"):
        out = subprocess.run(["ip", "netns", "exec", ns, "ipset", "list", f"f2b-{JAIL}", "-terse"],
                             capture_output=True, text=True).stdout
        m = re.search(r"Number of entries: (\d+)", out)
        return int(m.group(1)) if m else -1
    if banaction.startswith("nftables"):
        out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "set", "inet", "f2b-table",
                              f"addr-set-{JAIL}"], capture_output=True, text=True).stdout
        return len(re.findall(r"\d+\.\d+\.\d+\.\d+", out))
    return -1


def renice_all(pid: int) -> None:
    """Every thread of ``pid`` back to nice 0 and the default I/O class (nice is per thread on Linux)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        tid = int(task.name)
        os.setpriority(os.PRIO_PROCESS, tid, 0)
        subprocess.run(["ionice", "-c", "0", "-p", str(tid)], check=False)


def _proc_cpu(pid: int) -> tuple[float, float]:
    """(own user+system seconds, reaped children's) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tck, (int(fields[13]) + int(fields[14])) / tck


@dataclass
class Idle:
    """What the idle window saw: the server's CPU seconds (own, its reaped children's) over ``seconds``."""
    cpu_s: float
    kids_s: float
    seconds: float
    rss_mb: float
    hwm_mb: float
    kernel: int
    load0: str


def measure(opts: argparse.Namespace) -> Idle:
    """Load N bans, settle, and watch the server idle; RuntimeError when a step does not hold."""
    with scene("f2b") as sc, tempfile.TemporaryDirectory(prefix="nbf2b") as tmp:
        work = Path(tmp)
        conf = write_config(work, opts.banaction)
        server = subprocess.Popen([*LOAD_NICE, "ip", "netns", "exec", sc.server,
                                   "fail2ban-server", "-f", "-x", "-c", str(conf)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while client(sc.server, conf, "ping", check=False) == "" and time.monotonic() < deadline:
                time.sleep(0.5)
            t = time.monotonic()
            ips = addresses(opts.n)
            for i in range(0, len(ips), opts.batch):
                client(sc.server, conf, "set", JAIL, "banip", *ips[i:i + opts.batch])
                done = i + len(ips[i:i + opts.batch])
                if done % 10_000 == 0:
                    el = time.monotonic() - t
                    print(f"# ... {done} banned, {el:.0f} s, {done / el:.0f} bans/s, load {load_avg()}", flush=True)
            load_s = time.monotonic() - t
            own_l, kids_l = _proc_cpu(server.pid)
            count, kernel = banned(sc.server, conf), kernel_count(sc.server, opts.banaction)
            print(f"# load: {count} banned in {load_s:.0f} s ({opts.n / load_s:.0f} bans/s, server at nice 19); "
                  f"kernel set holds {kernel}; server CPU {own_l:.0f} s, its action processes {kids_l:.0f} s; "
                  f"load {load_avg()}", flush=True)
            if count != opts.n or kernel != opts.n:
                raise RuntimeError(f"fail2ban holds {count} bans and the kernel {kernel}, not {opts.n}")
            renice_all(server.pid)
            time.sleep(opts.settle)
            if server.poll() is not None:
                raise RuntimeError(f"fail2ban-server exited with {server.returncode}")
            with contextlib.ExitStack() as held:
                if opts.lock:
                    waited = time.monotonic()
                    fcntl.flock(held.enter_context(open(opts.lock, "a")), fcntl.LOCK_EX)
                    print(f"# took {opts.lock} after {time.monotonic() - waited:.0f} s", flush=True)
                (own0, kids0), t0, load0 = _proc_cpu(server.pid), time.monotonic(), load_avg()
                time.sleep(opts.idle_minutes * 60)
                (own1, kids1), t1 = _proc_cpu(server.pid), time.monotonic()
            rss, hwm = proc_mem(server.pid)
            kernel = kernel_count(sc.server, opts.banaction)
        finally:
            client(sc.server, conf, "stop", check=False)
            try:
                server.wait(120)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return Idle(own1 - own0, kids1 - kids0, t1 - t0, rss, hwm, kernel, load0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--idle-minutes", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=90.0, help="seconds after the last ban before measuring")
    ap.add_argument("--batch", type=int, default=1000, help="addresses per `banip` call")
    ap.add_argument("--lock", type=Path, help="flock this file around the idle measurement only (not the load)")
    ap.add_argument("--banaction", default="nftables",
                    help="nftables (default: one `nft add element` per ban) or iptables-ipset (one `ipset add` "
                         "per ban, but its set stops at ipset's default 65536 elements)")
    opts = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_idle_fail2ban: needs root (network namespaces)", file=sys.stderr)
        return 2
    if not shutil.which("fail2ban-server"):
        print("bench_idle_fail2ban: fail2ban is not installed (apt-get install fail2ban)", file=sys.stderr)
        return 2
    version = subprocess.run(["fail2ban-server", "--version"], capture_output=True, text=True).stdout.split()
    print(f"# bench_idle_fail2ban: fail2ban {version[-1] if version else '?'} banaction={opts.banaction} "
          f"n={opts.n} cores={os.cpu_count()} load {load_avg()}", flush=True)
    try:
        idle = measure(opts)
    except RuntimeError as e:
        print(f"bench_idle_fail2ban: {e}", file=sys.stderr)
        return 1
    print(f"fail2ban  idle server, {opts.idle_minutes:g} min at {opts.n} bans ({opts.banaction}): "
          f"{100 * idle.cpu_s / idle.seconds:.2f}% of a core ({idle.cpu_s:.1f} s CPU; its action processes "
          f"{100 * idle.kids_s / idle.seconds:.2f}%), RSS {idle.rss_mb:.0f} MB (high-water {idle.hwm_mb:.0f} MB, "
          f"the load included); kernel set still {idle.kernel}", flush=True)
    print(f"# done, load at start of idle {idle.load0}, now {load_avg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
