"""Reports over a year of samples, and `netblock sample` of 100k elements against `nft -j list set`.

Part 1 -- what "a year of samples for 10k netblocks" means here. The daemon
samples every minute, but sampling is change-only (netblock/run/sampling.py): a
row is written for a netblock only in a minute its counters moved. Unthinned,
"one row a minute" would be 10k x 525,600 = 5.3e9 rows; retention (400 days)
does not thin a year at all, so change-only sampling is what keeps it small,
and the honest size of a year is the number of minutes with drops. The model:
10k netblocks blocked all year, netblock i drops 7000/(i+1) packets a week
(Zipf: the top one as busy as the seed's top row, about 68k packets a week in
all), as a Poisson process per minute; one reboot (all counters back to 0) in
the middle of the year; SYN sizes 40 or 60 bytes. That is about 3 million
rows. Timed: `netblock report` (7-day window, top 10) and the same for the
whole year, both in-process and as the real command (interpreter start
included). The target is <= 1 s. Whole days of a window are read from the
per-day roll-up (drops_daily), which sampling keeps; the bench writes its rows
straight into the samples table, so it builds the roll-up once afterwards
(Store.rebuild_daily, the migration's backfill) and reports its size.

Part 2 -- `netblock sample` (the real command, in a namespace of our own, the
nftables backend) of 100k elements against `nft -j list set` of the same set,
each run three times interleaved, medians compared. Two sample runs are
timed: the first sight of 100k elements (100k rows written) and a repeat with
nothing changed (what every daemon tick costs). The elements come from
240.0.0.0/4 (reserved, never routed), as in bench_nftables; the namespace
sends no traffic and is deleted afterwards.

Run: .venv/bin/python -m bench.bench_report   (root; prints a table)
"""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

import numpy as np

from bench.bench_nftables import netblocks
from bench.common import NETBLOCK, clean_env
from netblock import cli
from netblock.model import Block
from netblock.store.sqlite import Store

YEAR_MINUTES = 365 * 24 * 60
END = datetime(2026, 11, 28, tzinfo=timezone.utc)
START = END - timedelta(minutes=YEAR_MINUTES)


def build_year(path: str, n: int = 10_000, seed: int = 5) -> int:
    """The year of change-only samples described in the module docstring; returns rows written."""
    rng = np.random.default_rng(seed)
    nets = netblocks(n)
    texts = [str(net.cidr) for net in nets]
    reboot = YEAR_MINUTES // 2
    t0 = int(START.timestamp())
    times, owners, packets, nbytes = [], [], [], []
    for i in range(n):
        rate = 7000 / (i + 1) / (7 * 24 * 60)  # packets per minute
        active = rng.binomial(YEAR_MINUTES, -np.expm1(-rate))
        minutes = np.unique(rng.integers(1, YEAR_MINUTES, size=active))
        count = 1 + rng.poisson(rate, size=minutes.size)
        size = np.where(rng.random(minutes.size) < 0.8, 40, 60) * count
        minutes = np.concatenate(([0], minutes))
        count = np.concatenate(([0], count))
        size = np.concatenate(([0], size))
        after = minutes >= reboot
        cp, cb = np.cumsum(count * ~after), np.cumsum(size * ~after)
        rp, rb = np.cumsum(count * after), np.cumsum(size * after)
        times.append(t0 + minutes * 60)
        owners.append(np.full(minutes.size, i))
        packets.append(np.where(after, rp, cp))
        nbytes.append(np.where(after, rb, cb))
    t, o, p, b = (np.concatenate(x) for x in (times, owners, packets, nbytes))
    order = np.lexsort((o, t))
    with Store.open(path) as store:
        store.put_blocks(Block(net, "bench", "policy", START, None) for net in nets)
        with store.transaction():
            store._conn.executemany(
                "INSERT INTO samples (time, netblock, packets, bytes) VALUES (?, ?, ?, ?)",
                ((int(t[k]), texts[o[k]], int(p[k]), int(b[k])) for k in order))
        store.rebuild_daily()  # the rows went in behind add_changed_samples, which keeps the roll-up
    return int(t.size)


def _in_process(db: str, conf: str, *argv: str) -> tuple[float, str]:
    out = io.StringIO()
    args = cli.build_parser().parse_args(["--config", conf, "--db", db, *argv])
    ctx = cli.Context(args, stdout=out)
    start = time.perf_counter()
    try:
        args.handler(args, ctx)
    finally:
        ctx.close()
    return time.perf_counter() - start, out.getvalue()


def _command(db: str, conf: str, *argv: str, ns: str | None = None) -> float:
    env = clean_env()
    env["NETBLOCK_NOW"] = END.isoformat()
    cmd = [NETBLOCK, "--config", conf, "--db", db, *argv]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=600)
    return time.perf_counter() - start


def report_rows(workdir: str) -> list[dict]:
    db, conf = os.path.join(workdir, "year.db"), os.path.join(workdir, "netblock.toml")
    with open(conf, "w") as f:
        f.write(f'lock_file = "{workdir}/lock"\n')
    t = time.perf_counter()
    rows = build_year(db)
    built = time.perf_counter() - t
    size = os.path.getsize(db) / 1e6
    with Store.open(db) as store:
        daily = store._all("SELECT count(*) FROM drops_daily")[0][0]
    print(f"# a year of change-only samples: {rows:,} rows for 10k netblocks "
          f"(built in {built:.0f} s, {size:.0f} MB); one row a minute would be {10_000 * YEAR_MINUTES:,}; "
          f"the per-day roll-up holds {daily:,} rows",
          file=sys.stderr)
    os.environ["NETBLOCK_NOW"] = END.isoformat()
    out = []
    try:
        for label, argv in (("report (7 days, top 10)", ("report",)),
                            ("report --since 365d", ("report", "--since", "365d")),
                            ("report summary (7 days)", ("report", "summary"))):
            _in_process(db, conf, *argv)  # warm the page cache once, as a weekly timer's run would not be cold
            inner = min(_in_process(db, conf, *argv)[0] for _ in range(3))
            whole = min(_command(db, conf, *argv) for _ in range(3))
            out.append({"op": label, "n": rows, "in_process_s": inner, "command_s": whole})
        print(_in_process(db, conf, "report")[1], file=sys.stderr)
    finally:
        del os.environ["NETBLOCK_NOW"]
    return out


def sample_rows(workdir: str, n: int = 100_000) -> list[dict]:
    from bench.bench_nftables import _apply_in_ns, _fresh
    from netblock.demo.lab import run_in_netns

    ns = f"nbh9rep{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    db, conf = os.path.join(workdir, "sample.db"), os.path.join(workdir, "netblock.toml")
    try:
        nets = netblocks(n)
        expiry = datetime.now(timezone.utc) + timedelta(hours=2)
        _fresh(ns)
        run_in_netns(ns, _apply_in_ns, {net: expiry for net in nets})
        listing = ["nft", "-j", "list", "set", "inet", "netblock", "block4"]
        first, repeat, peer = [], [], []
        for k in range(3):
            if os.path.exists(db):
                os.unlink(db)
            peer.append(_tool(ns, listing))
            first.append(_command(db, conf, "--backend", "nftables", "sample", ns=ns))
            peer.append(_tool(ns, listing))
            repeat.append(_command(db, conf, "--backend", "nftables", "sample", ns=ns))
        with Store.open(db) as store:
            assert len(store.samples()) == n, "the repeat wrote rows although nothing changed"
        p = statistics.median(peer)
        return [{"op": "netblock sample, first sight (100k rows written)", "n": n,
                 "ours_s": statistics.median(first), "peer_s": p},
                {"op": "netblock sample, nothing changed (a tick)", "n": n,
                 "ours_s": statistics.median(repeat), "peer_s": p}]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _tool(ns: str, argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="nb-bench-report-") as workdir:
        reports = report_rows(workdir)
        print(f"{'op':32} {'rows':>10} {'in-process s':>13} {'command s':>10} {'target s':>9}")
        for r in reports:
            print(f"{r['op']:32} {r['n']:>10,} {r['in_process_s']:>13.3f} {r['command_s']:>10.3f} {1.0:>9.1f}")
        print()
        samples = sample_rows(workdir)
        print(f"{'op':50} {'n':>7} {'ours s':>7} {'nft -j list set s':>18} {'ratio':>6} {'target':>7}")
        for r in samples:
            print(f"{r['op']:50} {r['n']:>7} {r['ours_s']:>7.3f} {r['peer_s']:>18.3f} "
                  f"{r['ours_s'] / r['peer_s']:>6.2f} {1.3:>7.2f}")


if __name__ == "__main__":
    main()
