"""plan_keys() is plan() in integers: the same kernel elements and expiries, the same blocks left out."""

from __future__ import annotations

import math
import os
import random
import sqlite3
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from netaddr import IPAddress, IPNetwork

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from fakes import fake_config  # noqa: E402

from netblock.limits import v4_addresses  # noqa: E402
from netblock.model import AllowEntry, Block, Observation  # noqa: E402
from netblock.run import sync  # noqa: E402
from netblock.run.sync import plan, plan_keys, plan_objects  # noqa: E402
from netblock.store.sqlite import Store  # noqa: E402
from netblock.system import hostaddrs  # noqa: E402

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
OWN = [IPNetwork("198.18.7.25/32"), IPNetwork("2001:db8:25::1/128")]


def keyed(desired) -> dict[tuple[int, int], float]:
    return {(n.version, n.first << 8 | n.prefixlen): math.nan if e is None else e.timestamp()
            for n, e in desired.items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)


def random_blocks(rng: random.Random, n: int) -> list[Block]:
    """Blocks crowded into a few /20s and a /48, so that they overlap, nest and touch."""
    out: dict[IPNetwork, Block] = {}
    for _ in range(n):
        if rng.random() < 0.8:
            plen = rng.choice([32, 32, 31, 30, 29, 28, 26, 25, 24, 23])
            value = 0xC6120000 + rng.randrange(0, 1 << 13)  # 198.18.0.0/19
            net = IPNetwork((value >> (32 - plen) << (32 - plen), plen), version=4)
        else:
            plen = rng.choice([128, 127, 64, 63, 56])
            value = 0x20010DB8000000000000000000000000 + (rng.randrange(0, 1 << 10) << 64) + rng.randrange(4)
            net = IPNetwork((value >> (128 - plen) << (128 - plen), plen), version=6)
        expires = None if rng.random() < 0.1 else NOW + timedelta(seconds=rng.randrange(-3600, 86400 * 3))
        source = rng.choice(["cli", "list", "policy", "policy"])
        out[net] = Block(net, "t", source, NOW - timedelta(hours=1), expires)
    return list(out.values())


def _random_setup(tmp_path, monkeypatch, seed: int):
    """(rng, config) of a random plan test: this host's addresses, a tight element budget, a config allow."""
    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: list(OWN))
    config = fake_config(str(tmp_path / "lock"), toml="[policy]\nmax_elements_per_block = 3\n")
    return random.Random(seed), replace(config, blocks=replace(config.blocks, allow=("198.18.3.128/26",)))


@pytest.mark.parametrize("seed", range(40))
def test_plan_keys_is_plan(tmp_path, monkeypatch, seed):
    rng, config = _random_setup(tmp_path, monkeypatch, seed)
    with Store.open(tmp_path / "nb.db") as store:
        store.put_blocks(random_blocks(rng, rng.choice([5, 60, 400])))
        store.allow_add([AllowEntry(IPNetwork("198.18.9.0/27"), "partner", NOW)])
        store.add_observations([Observation(NOW - timedelta(minutes=5), IPAddress(f"198.18.{rng.randrange(32)}.{i}"),
                                            "delivered", "postfix") for i in range(0, 250, 37)])
        slow = plan_objects(store, config, now=NOW)
        fast = plan_keys(store, config, now=NOW)
        assert fast is not None
        assert same(fast.desired, keyed(slow.desired))
        assert sorted(str(b.netblock) for b in fast.too_wide) == sorted(str(b.netblock) for b in slow.too_wide)
        assert sorted((str(b.netblock), c) for b, c in fast.over_budget) == \
            sorted((str(b.netblock), c) for b, c in slow.over_budget)
        got = plan(store, config, now=NOW)  # plan() takes the keys and gives plan_objects()' answer
        assert replace(got, v4=None) == slow and got.v4 == v4_addresses(slow.desired, disjoint=True)


@pytest.mark.parametrize("seed", range(20))
def test_lone_ipv4_keys_found_in_arrays_as_one_by_one(tmp_path, monkeypatch, seed):
    """_alone_v4() (plan_keys() from ALONE_IN_ARRAYS IPv4 keys) keeps and leaves what the loop does, in its order."""
    rng, config = _random_setup(tmp_path, monkeypatch, seed)
    with Store.open(tmp_path / "nb.db") as store:
        blocks = random_blocks(rng, rng.choice([5, 60, 400]))
        blocks += [Block(IPNetwork((0xC6130000 + (i << 9), 24), version=4), "t", "list", NOW - timedelta(hours=1),
                         rng.choice([None, NOW + timedelta(days=1)])) for i in range(rng.choice([0, 30]))]
        store.put_blocks(blocks)
        store.allow_add([AllowEntry(IPNetwork(f"198.19.{rng.randrange(40)}.0/27"), "partner", NOW)])
        monkeypatch.setattr(sync, "ALONE_IN_ARRAYS", 10 ** 9)
        loop = plan_keys(store, config, now=NOW)
        monkeypatch.setattr(sync, "ALONE_IN_ARRAYS", 1)
        arrays = plan_keys(store, config, now=NOW)
        assert loop is not None and arrays is not None
        assert list(loop.desired) == list(arrays.desired) and same(loop.desired, arrays.desired)
        assert all(type(e) is float for e in arrays.desired.values())
        assert [str(b.netblock) for b in loop.too_wide] == [str(b.netblock) for b in arrays.too_wide]
        assert [(str(b.netblock), c) for b, c in loop.over_budget] == \
            [(str(b.netblock), c) for b, c in arrays.over_budget]


def test_isolated_blocks_stay_integers_and_a_bad_row_is_recorded_as_plan_records_it(tmp_path, monkeypatch):
    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: list(OWN))
    config = fake_config(str(tmp_path / "lock"))
    with Store.open(tmp_path / "nb.db") as store:
        store.put_blocks([Block(IPNetwork(f"198.18.{i * 2}.0/24"), "t", "list", NOW, NOW + timedelta(days=1))
                          for i in range(20)])
    with sqlite3.connect(tmp_path / "nb.db") as hand:  # a hand-edited row
        hand.execute("UPDATE blocks SET reblocks = -1 WHERE netblock = '198.18.4.0/24'")
    with Store.open(tmp_path / "nb.db") as store:
        fast = plan_keys(store, config, now=NOW)
        fast_rejected = dict(store.rejected)
        slow = plan_objects(store, config, now=NOW)
        assert fast is not None and same(fast.desired, keyed(slow.desired)) and len(fast.desired) == 19
        assert fast_rejected == store.rejected and len(fast_rejected) == 1
