"""How fast `netblock ingest --dry-run` reads a busy Postfix log, against fail2ban-regex; and its memory.

Generates a deterministic 1M-line Postfix log (about 70% rejections of several
classes -- DNSBL, no rDNS, unknown user, relay, HELO, SASL, lost connections,
pipelining, postscreen -- the rest connects, disconnects, deliveries and queue
chatter; benchmark/documentation addresses only), then times each tool as a
whole process on it (start-up, reading, parsing, output) and prints lines per
second and the ratio.  Absolute speeds mean little across machines; the ratio
is the figure.

    .venv/bin/python bench/bench_ingest.py [--lines 1000000] [--fail2ban-lines N] [--repeat 3]
                                           [--rss-lines 1000000] [--rss-ips 100000]

Both tools read the whole file, taking turns, best of --repeat runs each
(fail2ban-regex takes about 20 s per run of 1M lines); best wall-clock and
best CPU time are taken separately.  --fail2ban-lines gives
fail2ban-regex only the first N lines, for a quicker look; its start-up
(about 0.3 s) then weighs more on its rate, which flatters netblock.

Memory: `netblock ingest` (not a dry run: into a fresh store, then policy and
sync) of a log with --rss-lines rejections from --rss-ips distinct addresses,
run inside a network namespace this script creates and deletes (the sync
works there, never on the host); its peak RSS is printed.  With the default
policy every address crosses the DNSBL threshold (10 rejections each), so the
run decides 100,000 blocks, widens them and installs the result.
--rss-lines 0 skips it.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable

NETBLOCK = [os.path.join(os.path.dirname(PY), "netblock")]
if not os.path.exists(NETBLOCK[0]):
    NETBLOCK = [PY, "-m", "netblock"]
FAIL2BAN_FILTER = "/etc/fail2ban/filter.d/postfix.conf"

MONTH_DAY = "Nov 27"
ZONES = ("zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org", "dnsbl.sorbs.net")


def _ip(rng: random.Random) -> str:
    # 198.18.0.0/15: benchmark addresses, clustered like zombie networks
    net = rng.choice(range(0, 512, 3))
    return f"198.{18 + (net >> 8)}.{net & 255}.{rng.randrange(1, 255)}"


def generate(path: Path, n: int, seed: int = 25) -> None:
    rng = random.Random(seed)
    qid = 0x1A2B3C
    out = []
    for i in range(n):
        sec = i * 86400 // n
        stamp = f"{MONTH_DAY} {sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d} mx1"
        pid = 1000 + rng.randrange(5000)
        ip = _ip(rng)
        name = "unknown" if rng.random() < 0.6 else f"host-{ip.replace('.', '-')}.example.net"
        r = rng.random()
        sd = f"{stamp} postfix/smtpd[{pid}]: "
        tail = f"from=<u{i % 977}@example.org> to=<rcpt{i % 313}@example.com> proto=ESMTP helo=<{name}>"
        if r < 0.16:
            z = rng.choice(ZONES)
            line = (f"{sd}NOQUEUE: reject: RCPT from {name}[{ip}]: 554 5.7.1 Service unavailable; Client host "
                    f"[{ip}] blocked using {z}; https://www.example.org/lookup?ip={ip}; {tail}")
        elif r < 0.24:
            line = (f"{sd}NOQUEUE: reject: RCPT from unknown[{ip}]: 450 4.7.1 Client host rejected: cannot find "
                    f"your reverse hostname, [{ip}]; {tail}")
        elif r < 0.33:
            line = (f"{sd}NOQUEUE: reject: RCPT from {name}[{ip}]: 550 5.1.1 <rcpt{i % 313}@example.com>: "
                    f"Recipient address rejected: User unknown in local recipient table; {tail}")
        elif r < 0.38:
            line = (f"{sd}NOQUEUE: reject: RCPT from {name}[{ip}]: 454 4.7.1 <x{i % 91}@example.net>: "
                    f"Relay access denied; {tail}")
        elif r < 0.43:
            line = (f"{sd}NOQUEUE: reject: RCPT from {name}[{ip}]: 504 5.5.2 <WIN-{i % 9999:04d}>: Helo command "
                    f"rejected: need fully-qualified hostname; {tail}")
        elif r < 0.52:
            line = f"{sd}warning: {name}[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6"
        elif r < 0.58:
            line = f"{sd}lost connection after {rng.choice(('CONNECT', 'EHLO', 'AUTH'))} from {name}[{ip}]"
        elif r < 0.61:
            line = f"{sd}improper command pipelining after EHLO from {name}[{ip}]: QUIT\\r\\n"
        elif r < 0.66:
            line = f"{stamp} postfix/postscreen[{pid}]: DNSBL rank {rng.randrange(2, 9)} for [{ip}]:{rng.randrange(1024, 65535)}"
        elif r < 0.70:
            line = f"{stamp} postfix/postscreen[{pid}]: PREGREET 14 after 0.{rng.randrange(10, 99)} from [{ip}]:{rng.randrange(1024, 65535)}: EHLO ylmf-pc\\r\\n"
        elif r < 0.79:
            line = f"{sd}connect from {name}[{ip}]"
        elif r < 0.87:
            line = f"{sd}disconnect from {name}[{ip}] ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4"
        elif r < 0.91:
            qid += 1
            line = f"{sd}{qid:X}: client={name}[{ip}]"
        elif r < 0.94:
            line = f"{stamp} postfix/qmgr[900]: {qid:X}: from=<u{i % 977}@example.org>, size={rng.randrange(900, 90000)}, nrcpt=1 (queue active)"
        elif r < 0.97:
            line = (f"{stamp} postfix/smtp[{pid}]: {qid:X}: to=<r{i % 51}@example.net>, relay=mx.example.net"
                    f"[198.51.100.25]:25, delay=0.9, delays=0.1/0/0.3/0.5, dsn=2.0.0, status=sent (250 2.0.0 Ok)")
        else:
            line = f"{sd}Anonymous TLS connection established from {name}[{ip}]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"
        out.append(line)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def timed(cmd: list[str], repeat: int, env: dict | None = None) -> tuple[float, float, str]:
    """Best wall-clock and best CPU (user+sys) seconds of `repeat` runs, and the output.

    CPU time is printed too because on a shared machine the wall clock mostly
    measures the other tenants.
    """
    best, best_cpu, text = float("inf"), float("inf"), ""
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        best = min(best, time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best_cpu = min(best_cpu, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        text = proc.stdout
    return best, best_cpu, text


def generate_distinct(path: Path, n: int, distinct: int) -> None:
    """`n` DNSBL rejections within one hour from `distinct` addresses of 198.18.0.0/15, each equally often."""
    assert distinct <= 131_000
    step = 7919  # prime, so i * step walks every residue
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            k = (i * step) % distinct + 1
            ip = f"198.{18 + (k >> 16)}.{(k >> 8) & 255}.{k & 255}"
            sec = i * 3600 // n
            f.write(f"Nov 27 10:{sec // 60:02d}:{sec % 60:02d} mx1 postfix/smtpd[{1000 + i % 5000}]: NOQUEUE: reject: "
                    f"RCPT from unknown[{ip}]: 554 5.7.1 Service unavailable; Client host [{ip}] blocked using "
                    f"zen.spamhaus.org; from=<u{i % 977}@example.org> to=<r@example.com> proto=ESMTP helo=<x>\n")


RSS_CHILD = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
if proc.returncode:
    sys.exit(proc.stderr.strip() or proc.returncode)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, proc.stdout.strip())
"""


def peak_rss(tmp: Path, lines: int, distinct: int) -> None:
    log = tmp / "distinct.log"
    generate_distinct(log, lines, distinct)
    conf = tmp / "netblock.toml"
    # Default policy: every address offends 10 times, so all of them cross the
    # DNSBL threshold and density widening turns the crowd into prefixes.
    conf.write_text(f'lock_file = "{tmp}/lock"\nhost_id = "bench"\n')
    ns = f"nbbenchingest{os.getpid()}"
    env = dict(os.environ, TZ="UTC", NETBLOCK_NOW="2026-11-27T11:00:00+00:00")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        cmd = ["ip", "netns", "exec", ns, PY, "-c", RSS_CHILD, *NETBLOCK, "--config", str(conf),
               "--db", str(tmp / "nb.db"), "ingest", str(log)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            raise SystemExit(f"netblock ingest failed: {proc.stderr.strip()}")
        out = proc.stdout.split(None, 1)
        took = time.perf_counter() - t
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    rss_mb = int(out[0]) / 1024
    print(f"memory: `netblock ingest` (store, policy, sync) of {lines:,} observations from {distinct:,} distinct "
          f"addresses: peak RSS {rss_mb:.0f} MB, {took:.1f} s wall ({out[1].strip() if len(out) > 1 else ''})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--fail2ban-lines", type=int, default=0, help="0: the whole file")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rss-lines", type=int, default=1_000_000)
    ap.add_argument("--rss-ips", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nb-bench-ingest-") as tmp:
        log = Path(tmp) / "mail.log"
        generate(log, args.lines)
        env = dict(os.environ, NETBLOCK_NOW="2026-11-28T00:00:00+00:00")
        f2b = shutil.which("fail2ban-regex")
        if f2b is None:
            print("fail2ban-regex not installed (apt-get install -y fail2ban): no ratio")
            return 1
        part = log
        if 0 < args.fail2ban_lines < args.lines:
            part = Path(tmp) / "head.log"
            with log.open(encoding="utf-8") as src, part.open("w", encoding="utf-8") as dst:
                for _, line in zip(range(args.fail2ban_lines), src):
                    dst.write(line)
        n_f2b = min(args.fail2ban_lines or args.lines, args.lines)
        # The two take turns, so that a busy spell on a shared machine falls on both.
        nb_runs, f2b_runs = [], []
        for _ in range(args.repeat):
            nb_runs.append(timed([*NETBLOCK, "ingest", "--dry-run", str(log)], 1, env))
            f2b_runs.append(timed([f2b, str(part), FAIL2BAN_FILTER], 1))
        nb_time, nb_cpu, nb_out = min(r[0] for r in nb_runs), min(r[1] for r in nb_runs), nb_runs[0][2]
        f2b_time, f2b_cpu, f2b_out = min(r[0] for r in f2b_runs), min(r[1] for r in f2b_runs), f2b_runs[0][2]
        nb_rate, nb_cpu_rate = args.lines / nb_time, args.lines / nb_cpu
        print(f"netblock ingest --dry-run: {args.lines:,} lines in {nb_time:.2f} s wall = {nb_rate:,.0f} lines/s; "
              f"{nb_cpu:.2f} s CPU = {nb_cpu_rate:,.0f} lines/CPU-s ({nb_out.splitlines()[0]})")
        f2b_rate, f2b_cpu_rate = n_f2b / f2b_time, n_f2b / f2b_cpu
        matched = next((ln.strip() for ln in f2b_out.splitlines() if ln.startswith("Lines:")), "")
        what = "the same file" if n_f2b == args.lines else f"first {n_f2b:,} lines of the same file"
        print(f"fail2ban-regex ({FAIL2BAN_FILTER}): {what} in {f2b_time:.2f} s wall = "
              f"{f2b_rate:,.0f} lines/s; {f2b_cpu:.2f} s CPU = {f2b_cpu_rate:,.0f} lines/CPU-s ({matched})")
        print(f"ratio netblock / fail2ban-regex: {nb_rate / f2b_rate:.1f}x lines per wall second, "
              f"{nb_cpu_rate / f2b_cpu_rate:.1f}x lines per CPU second")
        print(f"load average during the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
              f"on {os.cpu_count()} CPUs")
        log.unlink()
        if args.rss_lines:
            peak_rss(Path(tmp), args.rss_lines, args.rss_ips)
    return 0


if __name__ == "__main__":
    sys.exit(main())
