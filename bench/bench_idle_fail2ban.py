"""fail2ban's idle CPU with N bans, measured as bench_scale.py measures netblock's idle daemon.

The peer row for "the idle daemon at 100k": Debian's fail2ban (the
distribution's package, run as installed; nothing of it is copied here), one
jail on a quiet Postfix log with the nftables (or iptables-ipset) banaction,
N addresses banned through `fail2ban-client set JAIL banip` in batches, then
fail2ban-server's CPU share (its own user+system time, and its reaped
children's) over --idle-minutes after --settle seconds, and its RSS.

Everything runs inside a network namespace this bench creates
(netblock.demo.lab) and deletes afterwards, with its configuration, socket,
database and log in a temporary directory: the host's ruleset and its
fail2ban (if any) are never touched, no packet is sent.

Banning costs fail2ban one action process per address (`nft add element` or
`ipset add`), so loading 100k bans takes many minutes; the load is untimed.

Run: .venv/bin/python -m bench.bench_idle_fail2ban [--n 100000] [--idle-minutes 10] [--banaction nftables]
(root; apt-get install fail2ban).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_scale import load_avg, proc_mem
from netblock.demo.lab import scene

BASE = 0xF0000000  # 240.0.0.0/4: reserved, never routed, inside our own namespace
JAIL = "nbbench"


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
    r = subprocess.run(["ip", "netns", "exec", ns, "fail2ban-client", "-c", str(conf), *args],
                       capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"fail2ban-client {' '.join(args[:3])}: {r.stderr.strip()[-300:]}")
    return r.stdout


def banned(ns: str, conf: Path) -> int:
    for line in client(ns, conf, "status", JAIL).splitlines():
        if "Currently banned:" in line:
            return int(line.rsplit(":", 1)[1])
    return -1


def _proc_cpu(pid: int) -> tuple[float, float]:
    """(own user+system seconds, reaped children's) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tck, (int(fields[13]) + int(fields[14])) / tck


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--idle-minutes", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=90.0, help="seconds after the last ban before measuring")
    ap.add_argument("--batch", type=int, default=1000, help="addresses per `banip` call")
    ap.add_argument("--banaction", default="nftables", help="nftables (default) or iptables-ipset")
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
    with scene("f2b") as sc, tempfile.TemporaryDirectory(prefix="nbf2b") as tmp:
        work = Path(tmp)
        conf = write_config(work, opts.banaction)
        server = subprocess.Popen(["ip", "netns", "exec", sc.server, "fail2ban-server", "-f", "-x", "-c", str(conf)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while client(sc.server, conf, "ping", check=False) == "" and time.monotonic() < deadline:
                time.sleep(0.5)
            t = time.monotonic()
            ips = addresses(opts.n)
            for i in range(0, len(ips), opts.batch):
                client(sc.server, conf, "set", JAIL, "banip", *ips[i:i + opts.batch])
            count = banned(sc.server, conf)
            print(f"# {count} banned in {time.monotonic() - t:.0f} s (untimed load), load {load_avg()}", flush=True)
            if count != opts.n:
                raise RuntimeError(f"fail2ban holds {count} bans, not {opts.n}")
            time.sleep(opts.settle)
            if server.poll() is not None:
                raise RuntimeError(f"fail2ban-server exited with {server.returncode}")
            (own0, kids0), t0 = _proc_cpu(server.pid), time.monotonic()
            time.sleep(opts.idle_minutes * 60)
            (own1, kids1), t1 = _proc_cpu(server.pid), time.monotonic()
            rss, hwm = proc_mem(server.pid)
        finally:
            client(sc.server, conf, "stop", check=False)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    share = 100 * (own1 - own0) / (t1 - t0)
    kids = 100 * (kids1 - kids0) / (t1 - t0)
    print(f"fail2ban  idle server, {opts.idle_minutes:g} min at {opts.n} bans ({opts.banaction}): {share:.2f}% of a core "
          f"({own1 - own0:.1f} s CPU; its action processes {kids:.2f}%), RSS {rss:.0f} MB (high-water {hwm:.0f} MB)",
          flush=True)
    print(f"# done, load {load_avg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
