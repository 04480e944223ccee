"""How fast netblock's routing table loads and answers, against pyasn measured in the same run.

Loads the real RouteViews table of 2014-05-13 (512,621 IPv4 prefixes, gzip, read in place from
../shared/data/asn/pyasn) and looks up 100k random IPv4 addresses (deterministic seed), checking
that both give the same origin AS and prefix for every address. Each timing is the best of
--repeat rounds, the tools taking turns, so a machine busy with other work slows both alike;
the ratios are the figures, the absolute times mean little across machines.

    .venv/bin/python bench/bench_asn.py [--n 100000] [--repeat 3]

pyasn (a C radix tree; `pip install pyasn`, bench-only) looks addresses up one dotted string at a
time, its only API; netblock answers a whole batch with numpy. Both are timed from the same
dotted strings (netblock's time includes turning them into integers), and netblock's batch on
integers is printed beside it. Without pyasn the peer is a naive lookup built on netaddr (one
dict per prefix length, probed longest first), what a script without a radix tree would do.
"""

from __future__ import annotations

import argparse
import gc
import random
import socket
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from netblock.decide import asn  # noqa: E402

DATA = REPO / "../shared/data/asn/pyasn"
TABLE = str((DATA / "ipasn_20140513.dat.gz").resolve())


class NaiveNetaddr:
    """The peer when pyasn is missing: netaddr parsing, a dict per prefix length, longest first."""

    def __init__(self, path: str):
        import gzip

        from netaddr import IPNetwork

        self.by_len: dict[int, dict[int, int]] = {}
        with gzip.open(path, "rt") as f:
            for line in f:
                if line.startswith(";") or not line.strip():
                    continue
                prefix, origin = line.split("\t")
                net = IPNetwork(prefix)
                self.by_len.setdefault(net.prefixlen, {}).setdefault(net.first >> (32 - net.prefixlen), int(origin))
        self.lengths = sorted(self.by_len, reverse=True)

    def lookup(self, ip: str):
        from netaddr import IPAddress

        value = int(IPAddress(ip))
        for length in self.lengths:
            origin = self.by_len[length].get(value >> (32 - length))
            if origin is not None:
                net = IPAddress(value >> (32 - length) << (32 - length), 4)
                return origin, f"{net}/{length}"
        return None, None


def best(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def netblock_load():
    asn._cache.clear()  # measure the parse, not the cache
    return asn.load(TABLE)


def to_ints(ips: list[str]) -> np.ndarray:
    packed = b"".join(socket.inet_aton(ip) for ip in ips)
    return np.frombuffer(packed, dtype=">u4").astype(np.int64)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="addresses to look up (default 100000)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per timing, best shown (default 3)")
    args = ap.parse_args()
    try:
        import pyasn

        peer, make_peer = "pyasn", pyasn.pyasn
    except ImportError:
        print("pyasn is not installed (.venv/bin/pip install pyasn, bench-only): comparing with a naive "
              "netaddr lookup instead", file=sys.stderr)
        peer, make_peer = "netaddr", NaiveNetaddr

    rng = random.Random(2014)
    ips = [socket.inet_ntoa(rng.getrandbits(32).to_bytes(4, "big")) for _ in range(args.n)]

    t_nb_load = t_py_load = float("inf")
    for _ in range(args.repeat):  # take turns
        t, table = best(netblock_load, 1)
        t_nb_load = min(t_nb_load, t)
        t, ref = best(lambda: make_peer(TABLE), 1)
        t_py_load = min(t_py_load, t)

    ints = to_ints(ips)
    t_nb_str = t_nb_int = t_py = float("inf")
    for _ in range(args.repeat):
        t, (origin, plen) = best(lambda: table.lookup_v4(to_ints(ips)), 1)
        t_nb_str = min(t_nb_str, t)
        t, _ = best(lambda: table.lookup_v4(ints), 1)
        t_nb_int = min(t_nb_int, t)
        t, theirs = best(lambda: [ref.lookup(ip) for ip in ips], 1)
        t_py = min(t_py, t)

    ours = []
    for ip, a, p in zip(ints.tolist(), origin.tolist(), plen.tolist()):
        if a < 0:
            ours.append((None, None))
        else:
            net = ip & ~((1 << (32 - p)) - 1) & 0xFFFFFFFF
            ours.append((a, f"{socket.inet_ntoa(net.to_bytes(4, 'big'))}/{p}"))
    differ = sum(1 for x, y in zip(ours, theirs) if x != tuple(y))
    routed = sum(1 for x in ours if x[0] is not None)

    print(f"table: {TABLE} ({table.prefixes[4]} IPv4 prefixes); {args.n} random IPv4 addresses, "
          f"{routed} announced; answers differing from {peer}: {differ}")
    print(f"{'':34} {'netblock':>10} {peer:>10} {'ratio':>7}")
    print(f"{'load table (s)':34} {t_nb_load:10.3f} {t_py_load:10.3f} {t_nb_load / t_py_load:6.2f}x")
    print(f"{'lookup from dotted strings (s)':34} {t_nb_str:10.3f} {t_py:10.3f} {t_nb_str / t_py:6.2f}x")
    print(f"{'lookup, integers in (s)':34} {t_nb_int:10.3f} {t_py:10.3f} {t_nb_int / t_py:6.2f}x")
    print(f"ratio = netblock / {peer} time (below 1: netblock is faster)")
    return 0 if differ == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
