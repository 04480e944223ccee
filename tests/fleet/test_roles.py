"""A hostile host role against the fleet's PostgreSQL: every attack of issue 18 fails at the database.

The roles are made by `netblock fleet init-admin` / `add-host` with the owner's
DSN (the test server's superuser). The throwaway server trusts local
connections, so each role connects by name; what is tested is what the role
may do once connected, which is the same whatever authenticated it.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from helpers import NETBLOCK, clean_env
from netaddr import IPNetwork

from netblock import store as stores
from netblock.errors import StoreError
from netblock.model import AllowEntry, Block, Observation
from netblock.store import postgres as store_pg
from netblock.store.sqlite import _net_cols

NOW = datetime.now(timezone.utc).replace(microsecond=0)
T = int(NOW.timestamp())


def nb(dsn: str, *args: str, config: str | None = None) -> subprocess.CompletedProcess:
    env = clean_env()
    env["NETBLOCK_DB"] = dsn
    env["NETBLOCK_CONFIG"] = config or os.devnull
    return subprocess.run([NETBLOCK, *args], capture_output=True, text=True, env=env, timeout=120)


def as_role(dsn: str, role: str) -> str:
    return dsn.replace("user=postgres", f"user={role}")


@pytest.fixture(scope="module")
def fleet_db(pg_server):  # noqa: F811
    owner = pg_server.new_database("roles")
    stores.open(owner, host_id="owner").close()
    for args in (("init-admin",), ("add-host", "mx-a"), ("add-host", "mx-evil")):
        r = nb(owner, "fleet", *args, "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["passfile_line"].split(":")[3] == out["role"]
    return owner


def raw(dsn: str):
    return psycopg.connect(dsn, autocommit=True)


def block_row(net: str, source: str = "policy", expires: int | None = T + 3600, reason: str = "r",
              created: int = T) -> tuple:
    return (*_net_cols(IPNetwork(net)), reason, source, created, expires, 0)


INSERT = ("INSERT INTO blocks (netblock, family, first, last, prefixlen, reason, source, created, expires, reblocks) "
          "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")


def refused(conn, sql: str, params=None) -> str:
    """The error the database answers ``sql`` with (the test fails if it is accepted)."""
    with pytest.raises(psycopg.Error) as err:
        conn.execute(sql, params)
    return err.value.sqlstate


def test_the_roles_are_what_fleet_show_lists(fleet_db, tmp_path):
    r = nb(fleet_db, "fleet", "show", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert {(x["role"], x["host"]) for x in info["roles"]} == {
        ("netblock_admin", None), ("netblock_mx_a", "mx-a"), ("netblock_mx_evil", "mx-evil")}
    assert info["limits"]["max_prefix_v4"] == 16 and info["limits"]["permanent"] is False
    # a host role may not hand out roles
    conf = tmp_path / "nb.toml"
    conf.write_text('host_id = "mx-evil"\n')
    r = nb(as_role(fleet_db, "netblock_mx_evil"), "fleet", "add-host", "mx-z", config=str(conf))
    assert r.returncode == 1 and "owner" in r.stderr and "Traceback" not in r.stderr


def test_a_host_role_cannot_write_the_admins_blocks_or_the_allowlist(fleet_db):
    admin = stores.open(as_role(fleet_db, "netblock_admin"), host_id="admin-desk")
    admin.put_blocks([Block(IPNetwork("192.0.2.0/24"), "by hand", "cli", NOW, NOW + timedelta(days=1))])
    admin.allow_add([AllowEntry(IPNetwork("198.51.100.0/24"), "partner", NOW)])
    with raw(as_role(fleet_db, "netblock_mx_evil")) as evil:
        assert refused(evil, INSERT, block_row("203.0.113.0/24", source="cli")) == "42501"
        assert refused(evil, INSERT, block_row("203.0.113.0/24", source="list")) == "42501"
        # an active admin block is invisible to a host role's UPDATE: nothing changes (checked below)
        assert evil.execute("UPDATE blocks SET expires = %s WHERE netblock = '192.0.2.0/24'", (T + 1,)).rowcount == 0
        assert refused(evil, INSERT + " ON CONFLICT (netblock) DO UPDATE SET expires = excluded.expires",
                       block_row("192.0.2.0/24")) == "42501"
        assert refused(evil, "DELETE FROM blocks") == "42501"
        assert refused(evil, "TRUNCATE blocks") == "42501"
        assert refused(evil, "INSERT INTO allowlist (netblock, family, first, last, prefixlen, comment, created) "
                             "VALUES (%s, %s, %s, %s, %s, 'all', %s)", (*_net_cols(IPNetwork("0.0.0.0/0")), T)) \
            == "42501"
        assert refused(evil, "DELETE FROM allowlist") == "42501"
        assert refused(evil, "UPDATE fleet_limits SET max_prefix_v4 = 4") == "42501"
        assert refused(evil, "INSERT INTO fleet_roles VALUES ('netblock_mx_evil', NULL)") == "42501"
        assert refused(evil, "ALTER TABLE blocks DISABLE ROW LEVEL SECURITY") == "42501"
    with stores.open(fleet_db, host_id="owner") as owner:
        b = owner.get_block("192.0.2.0/24")
        assert b.source == "cli" and b.expires == NOW + timedelta(days=1)
        assert [str(e.netblock) for e in owner.allowlist()] == ["198.51.100.0/24"]
    admin.close()


def test_a_host_role_decides_only_within_the_policys_limits(fleet_db):
    with raw(as_role(fleet_db, "netblock_mx_evil")) as evil:
        evil.execute(INSERT, block_row("203.0.113.9/32"))  # an ordinary decision is fine
        assert refused(evil, INSERT, block_row("10.0.0.0/8")) == "42501"  # wider than /16
        assert refused(evil, INSERT, block_row("2001:db8::/32")) == "42501"  # wider than /48
        assert refused(evil, INSERT, block_row("203.0.113.10/32", expires=None)) == "42501"  # permanent
        assert refused(evil, INSERT, block_row("203.0.113.11/32", expires=T + 400 * 86400)) == "42501"
        # it may extend an active policy block, never shorten or end it
        evil.execute("UPDATE blocks SET expires = %s WHERE netblock = '203.0.113.9/32'", (T + 7200,))
        assert refused(evil, "UPDATE blocks SET expires = %s WHERE netblock = '203.0.113.9/32'", (T,)) == "42501"
        assert refused(evil, "UPDATE blocks SET source = 'cli' WHERE netblock = '203.0.113.9/32'") == "42501"


def test_the_schema_refuses_rows_no_reader_could_use(fleet_db):
    with raw(fleet_db) as owner:  # constraints hold for everyone, even the owner
        for row in (("203.0.113.0/40", 4, b"\0" * 16, b"\0" * 16, 40),
                    ("not-a-net", 4, b"\0" * 16, b"\0" * 16, 24),
                    ("203.0.113.0/24", 5, *_net_cols(IPNetwork("203.0.113.0/24"))[2:4], 24),
                    ("203.0.113.0/24", 4, *_net_cols(IPNetwork("0.0.0.0/0"))[2:4], 24),  # bytes disagree
                    ("203.0.113.1/24", 4, *_net_cols(IPNetwork("203.0.113.0/24"))[2:4], 24)):  # host bits
            assert refused(owner, INSERT, (*row, "r", "policy", T, T + 60, 0)) == "23514", row
        assert refused(owner, INSERT, block_row("203.0.113.0/24", source="elsewhere")) == "23514"
        assert refused(owner, INSERT, block_row("203.0.113.0/24", reason="\x1b]2;owned\x07")) == "23514"
        assert refused(owner, INSERT, block_row("203.0.113.0/24", reason="\x9b2J")) == "23514"  # C1 CSI
        assert refused(owner, INSERT, block_row("203.0.113.0/24", expires=10**15)) == "23514"
        assert refused(owner, "INSERT INTO observations (host, time, ip, cls, mta, source, position) "
                              "VALUES ('mx-a', %s, 'not-an-ip', 'dnsbl', 'postfix', '', 0)", (T,)) == "23514"
        assert refused(owner, "INSERT INTO observations (host, time, ip, cls, mta, source, position) "
                              "VALUES ('mx-a', %s, '203.0.113.0/24', 'dnsbl', 'postfix', '', 0)", (T,)) == "23514"
        assert refused(owner, "INSERT INTO host_addresses VALUES ('mx-a', '203.0.113.0/24')") == "23514"


def test_a_host_role_writes_only_its_own_rows(fleet_db):
    with stores.open(as_role(fleet_db, "netblock_mx_a"), host_id="mx-a") as a:
        a.add_observations([Observation(NOW, IPNetwork("203.0.113.5/32").ip, "dnsbl:x", "postfix")])
        a.set_state("file:/var/log/mail.log", "1234")
        a.publish_addresses([IPNetwork("203.0.113.201/32")])
    with raw(as_role(fleet_db, "netblock_mx_evil")) as evil:
        for sql in ("INSERT INTO observations (host, time, ip, cls, mta, source, position) "
                    "VALUES ('mx-a', 0, '203.0.113.6', 'dnsbl:x', 'postfix', '', 0)",
                    "INSERT INTO state VALUES ('mx-a', 'file:/var/log/mail.log', '0')",
                    "INSERT INTO host_addresses VALUES ('mx-a', '203.0.113.66')",
                    "INSERT INTO samples VALUES ('mx-a', 0, '203.0.113.5/32', 0, 0)",
                    "UPDATE state SET host = 'mx-a' WHERE host = 'mx-evil'"):
            try:
                evil.execute(sql)
            except psycopg.Error as exc:
                assert exc.sqlstate == "42501", sql
            else:
                assert sql.startswith("UPDATE"), sql  # no own row to move: nothing happened
        # other hosts' rows are invisible to its UPDATE and DELETE: nothing happens
        for sql in ("UPDATE state SET value = '0' WHERE host = 'mx-a'",
                    "DELETE FROM state WHERE host = 'mx-a'",
                    "DELETE FROM observations", "DELETE FROM host_addresses WHERE host = 'mx-a'"):
            assert evil.execute(sql).rowcount == 0, sql
    with stores.open(as_role(fleet_db, "netblock_mx_a"), host_id="mx-a") as a:
        assert a.get_state("file:/var/log/mail.log") == "1234"
        assert [str(o.ip) for o in a.observations()] == ["203.0.113.5"]
        assert [str(n) for n in a.peer_addresses()] == ["203.0.113.201/32"]
    # a host role cannot pose as another host
    with pytest.raises(StoreError, match="is fleet host mx-evil"):
        stores.open(as_role(fleet_db, "netblock_mx_evil"), host_id="mx-a")


def test_the_root_cli_with_a_host_dsn_is_refused_in_one_line(fleet_db, tmp_path):
    conf = tmp_path / "nb.toml"
    conf.write_text('host_id = "mx-a"\n')
    r = nb(as_role(fleet_db, "netblock_mx_a"), "add", "203.0.113.44", config=str(conf))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "admin role" in r.stderr, r.stderr


# -- the migration of an existing database with bad rows -------------------------------------------


def test_bad_rows_of_an_existing_database_go_to_quarantine_and_the_rest_stays(pg_server, monkeypatch):  # noqa: F811
    dsn = pg_server.new_database("old")
    monkeypatch.setattr(store_pg, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(store_pg, "MIGRATIONS", store_pg.MIGRATIONS[:2])
    stores.open(dsn, host_id="mx-a").close()
    with raw(dsn) as c:
        c.execute(INSERT, block_row("192.0.2.0/24", source="cli", reason="tab\there"))
        c.execute(INSERT, ("198.51.100.0/40", 4, b"\0" * 16, b"\0" * 16, 40, "r", "policy", T, None, 0))
        c.execute(INSERT, block_row("203.0.113.0/24", source="imported"))
        c.execute("INSERT INTO observations (host, time, ip, cls, mta, source, position) "
                  "VALUES ('mx-a', %s, 'not-an-ip', 'dnsbl', 'postfix', '', 0), "
                  "('mx-a', %s, '203.0.113.9', 'dnsbl', 'postfix', '', 0)", (T, T))
    monkeypatch.undo()
    with stores.open(dsn, host_id="mx-a") as st:
        assert st.schema_version() == store_pg.SCHEMA_VERSION
        assert [(str(b.netblock), b.reason) for b in st.blocks()] == [("192.0.2.0/24", "tab?here")]
        assert [str(o.ip) for o in st.observations()] == ["203.0.113.9"]
        moved = st._all("SELECT tbl, row->>'netblock', row->>'ip' FROM quarantine ORDER BY id")
        assert sorted(moved, key=str) == sorted([("blocks", "198.51.100.0/40", None),
                                                 ("blocks", "203.0.113.0/24", None),
                                                 ("observations", None, "not-an-ip")], key=str)
