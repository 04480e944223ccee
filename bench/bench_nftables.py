"""nftables backend vs the nft tool, measured in the same run on the same kernel.

Rows: apply() from empty vs `nft -f` of the same elements; a one-element
change to a 100k set vs `nft add element` (three ways: apply() when its
snapshot of the last apply is still valid, apply() when it must read the set
back from the kernel first, and the netlink transaction alone); counters()
vs `nft -j list set`.

Timings are wall-clock seconds; apply from empty, the change trusting the
snapshot and counters() (taking turns with the peer) are the best of three
runs each; the other 100k-set rows are single runs (each reads 100k elements
back).

Input: N netblocks, alternately /24 and /32, IPv4, none adjacent (each in
its own /23), each with a one-hour timeout. 100k such entries do not fit
into the documentation/benchmark ranges, so they are taken from 240.0.0.0/4
(reserved, never routed) inside a namespace of our own that sends no
traffic at all; the namespace is deleted afterwards.

Run: .venv/bin/python -m bench.bench_nftables   (root; prints a table)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

from netaddr import IPNetwork

from netblock.demo.lab import nsexec, run_in_netns
from netblock.firewall import Settings, nftables
from netblock.firewall.netlink import nftables as nl

BASE = 0xF0000000  # 240.0.0.0
REPEATS = 3  # apply from empty: best of three, for ours and for nft alike


def netblocks(n: int, offset: int = 0) -> list[IPNetwork]:
    return [IPNetwork((BASE + ((i + offset) << 9), 24 if i % 2 else 32), version=4) for i in range(n)]


def _elements_file(nets: list[IPNetwork]) -> str:
    body = ",\n".join(f"{n} timeout 1h" if n.prefixlen < 32 else f"{n.ip} timeout 1h" for n in nets)
    return f"add element inet netblock block4 {{\n{body}\n}}\n"


def _timed(fn, *args):
    t = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t, result


def _fresh(ns: str) -> None:
    def reset():
        b = nftables.create(Settings())
        b.remove()
        b.ensure()

    run_in_netns(ns, reset)


def _apply_in_ns(desired):
    b = nftables.create(Settings())
    return _timed(b.apply, desired)[0]


def _change_in_ns(n: int, added: list[int]):
    """apply() of netblocks(n) plus those at the ``added`` offsets, the dict built where apply() runs.

    As in the daemon, which keeps its desired set in its own memory: a dict
    built in the parent and handed through the fork would make the timed
    call pay the kernel's copy-on-write of 100k objects instead.
    """
    expiry = datetime.now(timezone.utc) + timedelta(hours=1)
    desired = {net: expiry for net in netblocks(n)}
    for offset in added:
        desired[netblocks(1, offset=offset)[0]] = expiry
    return _apply_in_ns(desired)


def _counters_in_ns():
    b = nftables.create(Settings())
    seconds, counters = _timed(b.counters)
    return seconds, len(counters)


def _one_element_batch(net: IPNetwork) -> float:
    """What apply() sends for a one-element diff, without the read of the set that precedes it."""
    elements = nftables._network_elements(net.first, net.prefixlen, 32, time.time() + 3600)
    with nl.Nfnl("netblock") as sock:
        return _timed(sock.batch, [nl.SetOp("block4", False, elements)])[0]


def _tool(ns: str, *args: str, input: str | None = None) -> float:
    t = time.perf_counter()
    nsexec(ns, *args, input=input, timeout=600)
    return time.perf_counter() - t


def run(sizes=(1000, 10000, 100000)) -> list[dict]:
    ns = f"nbh1bench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    rows: list[dict] = []
    try:
        for n in sizes:
            nets = netblocks(n)
            with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as f:
                f.write(_elements_file(nets))
            ours_runs, peer_runs = [], []
            try:
                for _ in range(REPEATS):
                    expiry = datetime.now(timezone.utc) + timedelta(hours=1)
                    _fresh(ns)
                    ours_runs.append(run_in_netns(ns, _apply_in_ns, {net: expiry for net in nets}))
                    _fresh(ns)
                    peer_runs.append(_tool(ns, "nft", "-f", f.name))
            finally:
                os.unlink(f.name)
            rows.append({"backend": "nftables", "op": "apply from empty", "n": n, "ours_s": min(ours_runs),
                         "peer": "nft -f FILE", "peer_s": min(peer_runs)})

        n = max(sizes)
        nets = netblocks(n)
        expiry = datetime.now(timezone.utc) + timedelta(hours=1)
        desired = {net: expiry for net in nets}
        _fresh(ns)
        run_in_netns(ns, _apply_in_ns, desired)
        # Best of three: three applies, each adding one more element than the last, trusting the snapshot.
        ours = min(run_in_netns(ns, _change_in_ns, n, list(range(n + 10, n + 11 + k))) for k in range(REPEATS))
        extra = netblocks(1, offset=n + 1)[0]
        peer = _tool(ns, "nft", "add", "element", "inet", "netblock", "block4", f"{{ {extra.ip} timeout 1h }}")
        rows.append({"backend": "nftables", "op": "1-element change: apply, snapshot", "n": n,
                     "ours_s": ours, "peer": "nft add element", "peer_s": peer})
        # The `nft add element` above moved the ruleset generation on: this apply must dump the set
        # (its desired set lacks n + 12, the element the last of those applies added).
        ours = run_in_netns(ns, _change_in_ns, n, [n + 10, n + 11, n + 1])  # drops n + 12
        rows.append({"backend": "nftables", "op": "1-element change: apply, read set", "n": n,
                     "ours_s": ours, "peer": "nft add element", "peer_s": peer})

        ours = run_in_netns(ns, _one_element_batch, netblocks(1, offset=n + 2)[0])
        rows.append({"backend": "nftables", "op": "1-element change: netlink batch", "n": n,
                     "ours_s": ours, "peer": "nft add element", "peer_s": peer})

        # The kernel's set walk varies a lot from one dump to the next: best of
        # three, taking turns so both see the same conditions.
        ours = peer = float("inf")
        for _ in range(3):
            seconds, count = run_in_netns(ns, _counters_in_ns)
            assert count >= n, count
            ours = min(ours, seconds)
            peer = min(peer, _tool(ns, "nft", "-j", "list", "set", "inet", "netblock", "block4"))
        rows.append({"backend": "nftables", "op": "counters()", "n": n, "ours_s": ours,
                     "peer": "nft -j list set", "peer_s": peer})
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'op':36} {'n':>7} {'ours s':>8} {'peer':>18} {'peer s':>8} {'ratio':>6}")
    for r in rows:
        ratio = f"{r['ours_s'] / r['peer_s']:.2f}" if r["peer_s"] else "-"
        peer_s = f"{r['peer_s']:.3f}" if r["peer_s"] is not None else "-"
        print(f"{r['op']:36} {r['n']:>7} {r['ours_s']:>8.3f} {r['peer'] or '-':>18} {peer_s:>8} {ratio:>6}")


if __name__ == "__main__":
    sizes = tuple(int(a) for a in sys.argv[1:]) or (1000, 10000, 100000)
    print_rows(run(sizes))
