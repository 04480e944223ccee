"""Validation on receipt, whatever the store: bad rows are skipped and recorded, the rest is installed.

SQLite here (a hand-edited file, or one written by an older netblock); the
same rows through PostgreSQL are in test_hostile.py. sync() runs against the
in-memory fake backend: what is checked is what reaches apply().
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from fakes import FakeBackend, fake_config
from netaddr import IPNetwork

from netblock.model import Block
from netblock.run.sync import desired_for, sync
from netblock.store import receipt
from netblock.store.sqlite import Store, _net_cols
from netblock.system import hostaddrs

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
T = int(NOW.timestamp())
INSERT = ("INSERT INTO blocks (netblock, family, first, last, prefixlen, reason, source, created, expires, reblocks) "
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: [])
    path = tmp_path / "nb.db"
    store = Store.open(path)
    store.put_blocks([Block(IPNetwork("192.0.2.0/24"), "good", "cli", NOW, NOW + timedelta(days=1))])
    yield store, sqlite3.connect(path), FakeBackend(), fake_config(lock_file=str(tmp_path / "lock"))
    store.close()


def row(net: str, **kw) -> tuple:
    cols = dict(zip(("netblock", "family", "first", "last", "prefixlen"), _net_cols(IPNetwork(net))))
    cols |= {"reason": "r", "source": "cli", "created": T, "expires": T + 3600, "reblocks": 0} | kw
    return tuple(cols.values())


def test_unparseable_rows_are_skipped_and_recorded_and_the_rest_installed(env):
    store, raw, backend, config = env
    with raw:
        raw.execute(INSERT, row("198.51.100.0/24", prefixlen=40))  # issue 18: prefix length 40
        raw.execute(INSERT, row("198.51.100.1/32", family=5))
        raw.execute(INSERT, row("198.51.100.2/32", first=b"\xff" * 16))  # not an IPv4 address
        raw.execute(INSERT, row("198.51.100.3/32", first=b"\x00"))
        raw.execute(INSERT, row("198.51.100.4/32", source="evil"))
        raw.execute(INSERT, row("198.51.100.5/32", created=-1))
        raw.execute(INSERT, row("198.51.100.6/32", expires=10**15))
        raw.execute(INSERT, row("198.51.100.7/32", reblocks=-3))
        raw.execute(INSERT, row("198.51.100.8/30", first=_net_cols(IPNetwork("198.51.100.9/32"))[2], prefixlen=30))
        raw.execute(INSERT, row("0.0.0.0/0", netblock="::ffff:0:0/96", family=6,  # all of IPv4, as IPv6
                                first=(0xFFFF_0000_0000).to_bytes(16, "big"), prefixlen=96))
        raw.execute(INSERT, row("203.0.113.9/32", reason="\x1b]2;owned\x07\x1b[2J"))
        raw.execute("INSERT INTO observations (time, ip, cls, mta, source, position) "
                    "VALUES (?, 'not-an-ip', 'dnsbl:x', 'postfix', '', 0)", (T,))
        raw.execute("INSERT INTO allowlist (netblock, family, first, last, prefixlen, comment, created) "
                    "VALUES ('x', 4, x'00', x'00', 99, 'bad', 0)")
    result = sync(store, backend, config, now=NOW)
    assert set(backend.elements) == {IPNetwork("192.0.2.0/24"), IPNetwork("203.0.113.9/32")}
    assert result.desired == backend.elements
    keys = {k for (table, k) in store.rejected if table == "blocks"}
    assert keys == {f"198.51.100.{i}/{p}" for i, p in ((0, 24), (1, 32), (2, 32), (3, 32), (4, 32), (5, 32), (6, 32),
                                                        (7, 32), (8, 30))} | {"::ffff:0:0/96"}
    assert any(t == "allowlist" for t, _ in store.rejected)
    # peer-written text is kept as written (JSON shows it exactly) and reaches no terminal as escapes
    from netblock.printable import printable

    assert store.get_block("203.0.113.9/32").reason == "\x1b]2;owned\x07\x1b[2J"
    assert printable(store.get_block("203.0.113.9/32").reason) == "\\x1b]2;owned\\x07\\x1b[2J"
    # the policy's reads of the observations skip the bad one instead of failing
    assert store.offender_stats(NOW - timedelta(days=1)) == {}
    assert store.delivered_since(NOW - timedelta(days=1)) == set() and store.observations() == []
    assert ("observations", "not-an-ip") in store.rejected
    logged: list[str] = []
    receipt.log_new(store, seen := set(), logged.append)
    receipt.log_new(store, seen, logged.append)
    assert len(logged) == len(store.rejected)  # once per key, however often it is read


def test_floors_skip_what_is_too_wide_and_the_cap_keeps_the_narrowest(env):
    store, raw, backend, config = env
    with raw:
        raw.execute(INSERT, row("0.0.0.0/0"))
        raw.execute(INSERT, row("0.0.0.0/3"))
        raw.execute(INSERT, row("2000::/15", family=6))
        raw.execute(INSERT, row("2000::/16", family=6))  # at the floor: kept
        for i in range(17):  # 17 /8s = 17 * 2^24 addresses: one more than the cap of 2^28
            raw.execute(INSERT, row(f"{100 + i}.0.0.0/8"))
    desired = desired_for(store, config, now=NOW)
    wide = {k: why for (t, k), why in store.rejected.items() if t == "blocks"}
    # under the cap the /24 goes first, then the /8s by address: 15 of them fit beside it
    assert set(wide) == {"0.0.0.0/0", "0.0.0.0/3", "2000::/15", "115.0.0.0/8", "116.0.0.0/8"}, wide
    assert "cap" in wide["116.0.0.0/8"] and "floor" in wide["0.0.0.0/3"]
    v4 = sum(n.size for n in desired if n.version == 4)
    assert v4 <= 2**28 and IPNetwork("192.0.2.0/24") in desired  # the narrow block survives the cap
    assert IPNetwork("2000::/16") in desired
    # once the wide rows are deleted, they are no longer counted
    store.delete_blocks(["0.0.0.0/0", "0.0.0.0/3", "2000::/15", "115.0.0.0/8", "116.0.0.0/8"])
    desired_for(store, config, now=NOW)
    assert not [k for k in store.rejected if k[0] == "blocks"]
