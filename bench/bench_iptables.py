"""The iptables backend against the legacy iptables tools, in a namespace of its own.

    .venv/bin/python bench/bench_iptables.py [--sizes 1000,10000] [--repeat 3]

Rows (best of --repeat, each measured inside the namespace):

* apply() from empty of N netblocks  vs  `iptables-legacy-restore --noflush` of
  the same N `-A NETBLOCK -s CIDR -j DROP` lines into the empty chain;
* a one-element change at the largest N  vs  one `iptables-legacy -A` process;
* counters() of N rules  vs  `iptables-legacy -L NETBLOCK -v -x -n` (output discarded).

Then it prints how apply() grows from the smallest to the largest N: every
commit rewrites the whole filter table and every packet walks the chain, the
O(n) layout that makes sets the default. There is no 100k row for iptables.

Ours is timed in-process after python-iptables is loaded (a daemon's steady
state); the peers are whole processes, as a shell script would run them.

Input: N IPv4 netblocks, alternating /24 and /32, none adjacent: rule i sits at
10.0.0.0 + 512*i (the /32s at +263). 10k non-adjacent netblocks do not fit in
the documentation ranges, so this uses 10.0.0.0/8, which is safe because the
namespace has no interfaces but loopback and sends no traffic at all. Absolute
times vary between machines; the ratios are the figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from netaddr import IPNetwork

from netblock.demo.lab import run_in_netns, sh
from netblock.firewall import Settings, iptables as backend
from netblock.firewall.names import IPT_CHAIN

BASE = int(IPNetwork("10.0.0.0/32").value)
MAX_N = 10_000


def netblocks(n: int) -> list[str]:
    out = []
    for i in range(n):
        a = BASE + 512 * i
        if i % 2:
            out.append(f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.0/24")
        else:
            a += 263
            out.append(f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}/32")
    return out


def restore_text(nets: list[IPNetwork], settings: Settings) -> str:
    return "*filter\n" + "".join(backend.rule_line(n, settings) + "\n" for n in nets) + "COMMIT\n"


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        best = min(best, fn())
    return best


def _in_namespace(sizes: tuple[int, ...], repeat: int) -> list[dict]:
    """Runs inside the benchmark namespace (a forked child)."""
    settings = Settings(families=("ipv4",))
    backend._load_iptc()
    rows = []
    for n in sizes:
        desired = dict.fromkeys(IPNetwork(t) for t in netblocks(n))
        peer_input = restore_text(list(desired), settings)

        def ours_apply() -> float:
            b = backend.create(settings)
            b.remove()
            b.ensure()
            t = time.perf_counter()
            change = b.apply(desired)
            took = time.perf_counter() - t
            assert len(change.added) == n
            return took

        def peer_restore() -> float:
            b = backend.create(settings)
            b.remove()
            b.ensure()
            t = time.perf_counter()
            subprocess.run(["iptables-legacy-restore", "--noflush"], input=peer_input, text=True, check=True)
            took = time.perf_counter() - t
            assert len(b.installed()) == n
            return took

        rows.append(dict(backend="iptables", op="apply() from empty", n=n, ours_s=_best(ours_apply, repeat),
                         peer="iptables-legacy-restore --noflush", peer_s=_best(peer_restore, repeat)))

        b = backend.create(settings)
        b.remove()
        b.ensure()
        b.apply(desired)

        def ours_counters() -> float:
            t = time.perf_counter()
            got = b.counters()
            took = time.perf_counter() - t
            assert len(got) == n
            return took

        def peer_list() -> float:
            t = time.perf_counter()
            subprocess.run(["iptables-legacy", "-L", IPT_CHAIN, "-v", "-x", "-n"], stdout=subprocess.DEVNULL,
                           check=True)
            return time.perf_counter() - t

        rows.append(dict(backend="iptables", op="counters()", n=n, ours_s=_best(ours_counters, repeat),
                         peer=f"iptables-legacy -L {IPT_CHAIN} -v -x -n", peer_s=_best(peer_list, repeat)))

        if n == max(sizes):
            extra = IPNetwork("198.18.0.0/24")
            one_more = {**desired, extra: None}

            def ours_change() -> float:
                b.apply(desired)
                t = time.perf_counter()
                change = b.apply(one_more)
                took = time.perf_counter() - t
                assert change.added == [extra] and not change.removed
                return took

            def peer_add() -> float:
                b.apply(desired)
                t = time.perf_counter()
                subprocess.run(["iptables-legacy", "-A", IPT_CHAIN, "-s", str(extra), "-j", "DROP"], check=True)
                return time.perf_counter() - t

            rows.append(dict(backend="iptables", op="apply() of a 1-element change", n=n,
                             ours_s=_best(ours_change, repeat), peer="iptables-legacy -A",
                             peer_s=_best(peer_add, repeat)))
        b.remove()
    return rows


def run(sizes=(1000, 10000, 100000), repeat: int = 3) -> list[dict]:
    sizes = tuple(n for n in sizes if n <= MAX_N)
    ns = f"nbbenchiptables{os.getpid()}"
    sh("ip", "netns", "add", ns)
    try:
        return run_in_netns(ns, _in_namespace, sizes, repeat)
    finally:
        sh("ip", "netns", "del", ns, check=False)


def growth(rows: list[dict]) -> str | None:
    """How apply() from empty scales between the smallest and largest N measured."""
    applies = sorted((r["n"], r["ours_s"], r["peer_s"]) for r in rows if r["op"] == "apply() from empty")
    if len(applies) < 2:
        return None
    (n0, ours0, peer0), (n1, ours1, peer1) = applies[0], applies[-1]
    return (f"apply() from empty, {n0} -> {n1} rules ({n1 / n0:.0f}x): netblock {ours1 / ours0:.1f}x slower, "
            f"iptables-legacy-restore {peer1 / peer0:.1f}x slower")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    rows = run(tuple(int(s) for s in a.sizes.split(",")), a.repeat)
    print(f"{'backend':<8} {'operation':<30} {'N':>7} {'netblock':>10} {'peer':>10}  {'ratio':>6}  peer tool")
    for r in rows:
        ratio = f"{r['ours_s'] / r['peer_s']:.2f}x" if r["peer_s"] else "-"
        print(f"{r['backend']:<8} {r['op']:<30} {r['n']:>7} {r['ours_s'] * 1000:>7.1f} ms {r['peer_s'] * 1000:>7.1f} ms"
              f"  {ratio:>6}  {r['peer'] or ''}")
    if line := growth(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
