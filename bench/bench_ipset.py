"""The ipset backend against the ipset tool itself, in a namespace of its own.

    .venv/bin/python bench/bench_ipset.py [--sizes 1000,10000,100000] [--repeat 3]

Rows (best of --repeat, each measured inside the namespace):

* apply() from empty of N netblocks  vs  `ipset restore` of the same N members
  (with its `create` line) into a freshly destroyed set;
* a one-element change at the largest N  vs  one `ipset add` process: first
  with the caller's mapping kept and grown (apply() reuses the keys it
  converted), then with the mapping rebuilt from new objects, as sync() does;
  the table shows the best of CHANGE_CALLS calls, a line under it their spread;
* counters() of N members  vs  `ipset list netblock4` (output discarded).

Input: N IPv4 netblocks, alternating /24 and /32, none adjacent: member i sits
at 10.0.0.0 + 512*i (the /32s at +263). 100k non-adjacent members do not fit
in the documentation ranges, so this uses 10.0.0.0/8 and the /8s after it,
which is safe because the namespace has no interfaces but loopback and sends
no traffic at all. Absolute times vary between machines; the ratios are the
figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

from netaddr import IPNetwork

from netblock.demo.lab import run_in_netns, sh
from netblock.firewall import Settings, ipset as backend
from netblock.firewall.names import IPSET_SET

SET4 = IPSET_SET["ipv4"]
BASE = int(IPNetwork("10.0.0.0/32").value)
CHANGE_CALLS = 20  # calls per one-element-change row (at least): its spread is the figure, not one lucky call


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


def restore_text(nets: list[str], settings: Settings, timeout: int) -> str:
    create = backend.render(settings, "ipv4")[0].strip()
    return create + "\n" + "".join(f"add {SET4} {n} timeout {timeout}\n" for n in nets)


def _best(fn, repeat: int) -> float:
    return min(_samples(fn, repeat))


def _samples(fn, repeat: int) -> list[float]:
    return [fn() for _ in range(repeat)]


def spread(samples: list[float]) -> str:
    """min / median / max of a row's calls, and how many took at most the 50 ms the design asks for."""
    ordered = sorted(samples)
    within = sum(s <= 0.050 for s in ordered)
    return (f"{len(ordered)} calls: min {ordered[0] * 1000:.1f} ms, median {ordered[len(ordered) // 2] * 1000:.1f} ms, "
            f"max {ordered[-1] * 1000:.1f} ms; {within} of {len(ordered)} within 50 ms")


def _in_namespace(sizes: tuple[int, ...], repeat: int) -> list[dict]:
    """Runs inside the benchmark namespace (a forked child)."""
    settings = Settings(families=("ipv4",))
    expiry = datetime.now(timezone.utc) + timedelta(days=1)
    rows = []
    for n in sizes:
        texts = netblocks(n)
        desired = {IPNetwork(t): expiry for t in texts}
        peer_input = restore_text(texts, settings, 86400)

        def ours_apply() -> float:
            b = backend.create(settings)
            b.remove()
            b.ensure()
            t = time.perf_counter()
            b.apply(desired)
            return time.perf_counter() - t

        def peer_restore() -> float:
            b = backend.create(settings)
            b.remove()
            t = time.perf_counter()
            subprocess.run(["ipset", "restore"], input=peer_input, text=True, check=True)
            return time.perf_counter() - t

        rows.append(dict(backend="ipset", op="apply() from empty", n=n, ours_s=_best(ours_apply, repeat),
                         peer="ipset restore", peer_s=_best(peer_restore, repeat)))

        b = backend.create(settings)
        b.remove()
        b.ensure()
        b.apply(desired)
        assert len(b.counters()) == n

        def ours_counters() -> float:
            t = time.perf_counter()
            got = b.counters()
            took = time.perf_counter() - t
            assert len(got) == n
            return took

        def peer_list() -> float:
            t = time.perf_counter()
            subprocess.run(["ipset", "list", SET4], stdout=subprocess.DEVNULL, check=True)
            return time.perf_counter() - t

        rows.append(dict(backend="ipset", op="counters()", n=n, ours_s=_best(ours_counters, repeat),
                         peer=f"ipset list {SET4}", peer_s=_best(peer_list, repeat)))

        if n == max(sizes):
            extra = IPNetwork("198.18.0.0/24")
            one_more = {**desired, extra: expiry}

            def ours_change() -> float:
                b.apply(desired)
                t = time.perf_counter()
                change = b.apply(one_more)
                took = time.perf_counter() - t
                assert change.added == [extra] and not change.removed
                return took

            def peer_add() -> float:
                subprocess.run(["ipset", "del", "-exist", SET4, str(extra)], check=True)
                t = time.perf_counter()
                subprocess.run(["ipset", "add", SET4, str(extra), "timeout", "86400"], check=True)
                return time.perf_counter() - t

            calls = _samples(ours_change, max(repeat, CHANGE_CALLS))
            rows.append(dict(backend="ipset", op="apply() of a 1-element change", n=n, ours_s=min(calls),
                             samples=calls, peer="ipset add", peer_s=_best(peer_add, repeat)))

            def ours_change_rebuilt() -> float:
                # As sync() does each tick: equal networks, but new objects, so nothing converted is reused.
                b.apply(desired)
                rebuilt = {IPNetwork(str(net)): expiry for net in one_more}
                t = time.perf_counter()
                change = b.apply(rebuilt)
                took = time.perf_counter() - t
                assert change.added == [extra] and not change.removed
                return took

            calls = _samples(ours_change_rebuilt, max(repeat, CHANGE_CALLS))
            rows.append(dict(backend="ipset", op="same, mapping rebuilt", n=n, ours_s=min(calls), samples=calls,
                             peer="ipset add", peer_s=_best(peer_add, repeat)))
        b.remove()
    return rows


def run(sizes=(1000, 10000, 100000), repeat: int = 3) -> list[dict]:
    ns = f"nbbenchipset{os.getpid()}"
    sh("ip", "netns", "add", ns)
    try:
        return run_in_netns(ns, _in_namespace, tuple(sizes), repeat)
    finally:
        sh("ip", "netns", "del", ns, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    rows = run(tuple(int(s) for s in a.sizes.split(",")), a.repeat)
    print(f"{'backend':<8} {'operation':<30} {'N':>7} {'netblock':>10} {'peer':>10}  {'ratio':>6}  peer tool")
    for r in rows:
        ratio = f"{r['ours_s'] / r['peer_s']:.2f}x" if r["peer_s"] else "-"
        print(f"{r['backend']:<8} {r['op']:<30} {r['n']:>7} {r['ours_s'] * 1000:>7.1f} ms {r['peer_s'] * 1000:>7.1f} ms"
              f"  {ratio:>6}  {r['peer'] or ''}")
    for r in rows:
        if "samples" in r:
            print(f"ipset {r['op']} at {r['n']}: {spread(r['samples'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
