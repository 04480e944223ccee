"""put_blocks' IPv4 shortcut writes the very columns net_cols() writes."""

from __future__ import annotations

import random

from netaddr import IPNetwork

from netblock.store._sql import net_cols
from netblock.store.sqlite import _v4_net_cols


def test_v4_shortcut_is_net_cols():
    rng = random.Random(7)
    nets = [IPNetwork(t) for t in ("0.0.0.0/0", "0.0.0.0/4", "255.255.255.255/32", "198.18.0.0/15",
                                   "198.18.3.4/24", "::ffff:198.18.3.0/120", "2001:db8::/32")]
    for _ in range(5000):
        plen = rng.randrange(33)
        nets.append(IPNetwork((rng.getrandbits(32) >> (32 - plen) << (32 - plen) if plen else 0, plen), version=4))
    for net in nets:
        assert _v4_net_cols(net) == net_cols(net), net
