"""Carve-out amplification: kernel elements of a widened block with many protected senders inside.

    .venv/bin/python bench/bench_carve.py [--protected 1000]

Offenders dense enough to widen a prefix, and ``--protected`` senders that
delivered mail inside it, go through the policy and sync as in a tick. Prints
the kernel elements sync would install without an element budget (the
behaviour before [policy] max_elements_per_block existed: the prefix is
carved around every deliverer) and with the default budget (the prefix falls
back to its offenders). No kernel is touched.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common import dnsbl_policy
from netaddr import IPAddress

from netblock import config as config_mod
from netblock.decide import policy
from netblock.model import Observation
from netblock.run.sync import plan
from netblock.store.sqlite import Store

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)

SCENES = {
    # name: (offender addresses, deliverer address for index i)
    "IPv6 /48": ([f"2001:db8:48:{k:x}::7" for k in range(1, 9)],
                 lambda i: f"2001:db8:48:{0x100 + i:x}::{i % 7 + 1:x}"),
    "IPv4 /16": ([f"198.18.{k}.7" for k in range(1, 65)],
                 lambda i: f"198.18.{70 + i // 6}.{(i % 6) * 40 + 3}"),
}

RULES = ("[{family = 4, prefixlen = 16, min_count = 64, unit_prefixlen = 24}, "
         "{family = 6, prefixlen = 48, min_count = 8, unit_prefixlen = 64}]")


def elements(tmp: Path, offenders: list[str], deliverers: list[str], budget: int) -> tuple[int, list[str]]:
    cfg = config_mod.loads(f"[policy]\nmax_elements_per_block = {budget}\n" + dnsbl_policy(threshold=1, rules=RULES))
    with Store.open(tmp / f"nb-{budget}.db") as store:
        t = NOW - timedelta(minutes=5)
        store.add_observations([Observation(t, IPAddress(ip), "dnsbl:zen.example", "postfix") for ip in offenders])
        store.add_observations([Observation(NOW - timedelta(days=1), IPAddress(ip), "delivered", "postfix")
                                for ip in deliverers])
        decided = policy.decide(store, cfg, NOW)
        policy.record(store, decided, NOW)
        planned = plan(store, cfg, now=NOW, own=[])
        wide = [str(b.netblock) for b in decided if b.netblock.size > 1]
        return len(planned.desired), wide


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protected", type=int, default=1000)
    a = ap.parse_args()
    print(f"{'scene':<10} {'protected':>9} {'offenders':>9} {'elements before':>16} {'elements after':>15}")
    with tempfile.TemporaryDirectory() as d:
        for name, (offenders, deliverer) in SCENES.items():
            deliverers = [deliverer(i) for i in range(a.protected)]
            tmp = Path(d) / name.replace(" ", "").replace("/", "_")
            tmp.mkdir()
            before, wide_before = elements(tmp, offenders, deliverers, 1_000_000)
            after, wide_after = elements(tmp, offenders, deliverers, 64)
            assert wide_before and not wide_after, (wide_before, wide_after)
            print(f"{name:<10} {a.protected:>9} {len(offenders):>9} {before:>16} {after:>15}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
