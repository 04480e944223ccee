"""Backend benchmark: every backend against the kernel's own tools, in one run.

    .venv/bin/python bench/backends.py [--sizes 1000,10000,100000] [--only nftables,ipset,iptables]

Each bench_<backend>.run() works inside a network namespace it creates and
deletes; the host's ruleset is never touched. Prints one table with the
ratio ours/peer for every operation measured.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def fmt_s(x):
    if x is None:
        return "-"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--only", default="nftables,ipset,iptables")
    a = ap.parse_args()
    sizes = tuple(int(s) for s in a.sizes.split(","))
    rows, notes = [], []
    for name in a.only.split(","):
        mod = importlib.import_module(f"bench_{name}")
        mine = mod.run(sizes=tuple(s for s in sizes if name != "iptables" or s <= 10000))
        rows += mine
        if hasattr(mod, "growth") and (note := mod.growth(mine)):
            notes.append(f"{name}: {note}")
        notes += [f"{name} {r['op']} at {r['n']}: {mod.spread(r['samples'])}" for r in mine if "samples" in r]
    print(f"{'backend':<9} {'operation':<34} {'N':>7} {'netblock':>10} {'peer':>10}  {'ratio':>6}  peer tool")
    for r in rows:
        ratio = f"{r['ours_s'] / r['peer_s']:.2f}x" if r.get("peer_s") else "-"
        print(f"{r['backend']:<9} {r['op']:<34} {r['n']:>7} {fmt_s(r['ours_s']):>10} {fmt_s(r.get('peer_s')):>10}"
              f"  {ratio:>6}  {r.get('peer') or ''}")
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
