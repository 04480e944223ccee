"""One change at the cost of the change (netblock/run/delta.py), against the real kernel.

The shortcut must leave exactly what the full sync leaves (checked by asking
sync what it would still change), must not read a set back while the
ruleset generation proves netblock's last state, and must fall back to the
full sync when anyone else touched the ruleset.
"""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from datetime import datetime, timedelta, timezone

import pytest
from helpers import NETBLOCK
from netaddr import IPNetwork

from netblock.model import Block
from netblock.store.sqlite import Store

pytestmark = pytest.mark.kernel



class Cli:
    def __init__(self, scene, tmp_path, backend="nftables", *, mail_log: bool = False):
        """``mail_log``: the config reads an empty tmp_path/mail.log, as run-once needs a source."""
        self.scene, self.db, self.conf = scene, tmp_path / "nb.db", tmp_path / "netblock.toml"
        self.backend = backend
        text = f'lock_file = "{tmp_path}/run/netblock.lock"\n'
        if mail_log:
            (tmp_path / "mail.log").touch()
            text += f'[sources]\nfiles = ["{tmp_path / "mail.log"}"]\n'
        self.conf.write_text(text)

    def argv(self, *args):
        return ["--config", str(self.conf), "--db", str(self.db), "--backend", self.backend, *args]

    def __call__(self, *args):
        """A whole process in the server namespace."""
        r = self.scene.server_exec(NETBLOCK, *self.argv(*args), check=False)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    def counted(self, *args):
        """In one process in the server namespace: (exit status, output, set dumps it took)."""
        return self.scene.in_server(_counting, self.argv(*args), [("netblock.firewall.netlink.nftables", "DUMPS")])

    def listed(self, *args):
        """In one process in the server namespace: (exit status, output, ipset listings it took, of which
        for the counters of removed members)."""
        return self.scene.in_server(_counting, self.argv(*args), [("netblock.firewall.netlink.ipset", "LISTINGS"),
                                                                 ("netblock.firewall.ipset_region", "COUNTER_LISTINGS")])

    def opened(self, *args):
        """In one process in the server namespace: (exit status, output, iptables tables python-iptables opened)."""
        return self.scene.in_server(_counting, self.argv(*args), [("netblock.firewall.iptables", "TABLE_OPENS")])

    def pending(self):
        """What a full sync would still change: nothing, if the shortcut left what sync leaves."""
        return json.loads(self("sync", "--dry-run", "--json"))


def _counting(argv, counters):
    """cli.main(argv) in this process: (exit status, output, how far each (module, counter) moved)."""
    import importlib

    from netblock import cli

    def read():
        return [getattr(importlib.import_module(module), name) for module, name in counters]

    out = io.StringIO()
    before = read()
    with redirect_stdout(out), redirect_stderr(out):
        rc = cli.main(argv)
    return (rc, out.getvalue(), *(now - then for now, then in zip(read(), before)))


def _stored_scale(nb, n4: int, n6: int) -> tuple[list[IPNetwork], list[IPNetwork]]:
    """n4 IPv4 and n6 IPv6 single addresses stored as blocks for a day: every other address from
    198.18.4.0 and of a v6 /48, so none are adjacent and none merge."""
    now = datetime.now(timezone.utc)
    v4 = [IPNetwork((0xC6120400 + 2 * i, 32), version=4) for i in range(n4)]
    v6 = [IPNetwork((0x20010DB8FFFF << 80 | 2 * i, 128), version=6) for i in range(n6)]
    with Store.open(str(nb.db)) as st:
        st.put_blocks(Block(n, "scale", "list", now, now + timedelta(days=1)) for n in v4 + v6)
    return v4, v6


def _scale_changes(v4: list[IPNetwork], v6: list[IPNetwork]):
    """The one-change commands the scale tests run against the stored blocks: add, del, allow, re-time, del."""
    return (("add", "203.0.113.0/24"), ("del", "203.0.113.0/24"), ("allow", "add", str(v4[10].ip)),
            ("add", "--permanent", str(v4[20])), ("del", str(v6[5])))


def _left_to_do(report):
    # (an expiry within the backend's tolerance is left as it is by either path; sync --dry-run flags 5 s)
    return {k: report[k] for k in ("added", "removed") if report.get(k)}


def _random_changes(steps: int):
    """(step, argv) of add, del, allow add and allow del in a random but fixed order over overlapping and
    adjacent netblocks: the walk every backend's change path is compared with the full sync on."""
    rng = random.Random(17)
    pool = [f"198.18.{16 + i // 4}.{(i % 4) * 64}/26" for i in range(16)] + ["198.18.16.0/23", "198.18.20.0/22",
                                                                              "198.18.17.77", "2001:db8:5:1::/64"]
    blocked, allowed = set(), set()
    for step in range(steps):
        op = rng.choice(["add", "add", "del", "allow", "unallow"])
        if op == "add":
            net = rng.choice(pool)
            ttl = rng.choice(["1h", "3h", None])
            yield step, ("add", *(["--ttl", ttl] if ttl else ["--permanent"]), net)
            blocked.add(str(IPNetwork(net).cidr))
        elif op == "del" and blocked:
            net = rng.choice(sorted(blocked))
            blocked.discard(net)
            yield step, ("del", net)
        elif op == "allow" and len(allowed) < 3:
            net = f"198.18.{rng.randrange(16, 24)}.{rng.randrange(256)}"
            allowed.add(net)
            yield step, ("allow", "add", net)
        elif op == "unallow" and allowed:
            net = rng.choice(sorted(allowed))
            allowed.discard(net)
            yield step, ("allow", "del", net)


def test_changes_leave_what_the_full_sync_leaves_and_read_no_set(scene, tmp_path):
    """add, del, allow add and allow del in a random order over overlapping and adjacent netblocks."""
    nb = Cli(scene, tmp_path)
    nb("add", "--ttl", "2h", "198.18.16.0/24", "198.18.18.0/24", "2001:db8:5::/48")
    for step, args in _random_changes(30):
        rc, out, dumps = nb.counted(*args)
        assert rc == 0, out
        assert dumps == 0, (step, args, out)
        assert _left_to_do(nb.pending()) == {}, (step, args, out)


def test_a_hand_edit_makes_the_change_take_the_full_sync(scene, tmp_path):
    nb = Cli(scene, tmp_path)
    nb("add", "198.18.16.0/24")
    scene.server_exec("nft", "add", "element", "inet", "netblock", "block4", "{ 203.0.113.0/24 }")
    rc, out, dumps = nb.counted("add", "198.18.40.0/24")
    assert rc == 0 and dumps > 0, out
    assert "203.0.113.0/24" not in scene.server_exec("nft", "list", "set", "inet", "netblock", "block4").stdout
    assert _left_to_do(nb.pending()) == {}
    rc, out, dumps = nb.counted("del", "198.18.40.0/24")  # netblock's own commit is proven again
    assert rc == 0 and dumps == 0, out


@pytest.mark.slow
def test_at_100k_installed_add_del_allow_read_no_set(scene, tmp_path):
    nb = Cli(scene, tmp_path)
    v4, v6 = _stored_scale(nb, 50_000, 50_000)
    nb("sync")  # the full sync: reads the kernel, installs 100k, leaves its snapshot
    for args in _scale_changes(v4, v6):
        rc, out, dumps = nb.counted(*args)
        assert rc == 0 and dumps == 0, (args, out)
    rc, out, dumps = nb.counted("status")  # the desired set as integers against the proven snapshot
    assert rc == 0 and dumps == 0 and "in sync" in out, out
    installed = subprocess.run(["ip", "netns", "exec", scene.server, "nft", "-j", "list", "set", "inet", "netblock",
                                "block4"], capture_output=True, text=True, check=True).stdout
    assert f'"{v4[10].ip}"' not in installed and f'"{v4[11].ip}"' in installed
    assert _left_to_do(nb.pending()) == {}


def test_run_once_with_no_news_reads_no_set_until_the_ruleset_changes(scene, tmp_path):
    nb = Cli(scene, tmp_path, mail_log=True)
    nb("add", "198.18.16.0/24")
    rc, out, dumps = nb.counted("run-once")  # syncs in full and reads the counters, key by key: `add` proved them
    assert rc == 0 and dumps == 0, out
    rc, out, dumps = nb.counted("run-once")
    assert rc == 0 and dumps == 0, out  # nothing new, the generation proves the kernel, counters read recently
    scene.server_exec("nft", "flush", "set", "inet", "netblock", "block4")
    rc, out, dumps = nb.counted("run-once")
    assert rc == 0 and dumps > 0 and "+1" in out, out  # a hand edit: the full sync repairs it
    assert "198.18.16.0/24" in scene.server_exec("nft", "list", "set", "inet", "netblock", "block4").stdout


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_run_once_carries_expiries_as_a_change_and_reads_no_set(scene, tmp_path, backend):
    """Blocks that ran out go to the kernel as a change of their netblocks: a lapsed element leaves the
    snapshot only (nftables timed it out), a merged one is cut back to what is still blocked; iptables
    rules, which never lapse, are deleted."""
    import time

    from netblock.run.delta import LAPSE_GRACE

    nb = Cli(scene, tmp_path, backend=backend, mail_log=True)

    def kernel() -> str:
        if backend == "nftables":
            return scene.server_exec("nft", "list", "ruleset").stdout
        return "\n".join(_chains(scene))

    def read_back(*args):
        """(exit status, output, kernel reads: set dumps or python-iptables tables opened)."""
        return nb.counted(*args) if backend == "nftables" else nb.opened(*args)

    nb("add", "198.18.70.0/24", "198.18.61.128/25")
    rc, out, _reads = read_back("run-once")  # the full sync the next ticks are measured from
    assert rc == 0, out
    ttl = 4
    nb("add", "--ttl", f"{ttl}s", "198.18.61.0/25", "198.18.62.7", "2001:db8:5::/48")
    sets = kernel()
    assert "198.18.61.0/24" in sets and "198.18.62.7" in sets and "2001:db8:5::/48" in sets, sets
    time.sleep(ttl + LAPSE_GRACE + 1.5)

    rc, out, reads = read_back("run-once", "--json")
    report = json.loads(out)
    assert rc == 0 and reads == 0, out
    removed = 1 if backend == "nftables" else 3  # the lapsed ones left the kernel by themselves
    assert (report["synced"], report["expired"], report["added"], report["removed"]) == (False, 3, 1, removed), report
    sets = kernel()
    assert "198.18.61.128/25" in sets and "198.18.70.0/24" in sets, sets
    assert "198.18.61.0/24" not in sets and "198.18.62.7" not in sets and "2001:db8:5::" not in sets, sets
    assert _left_to_do(nb.pending()) == {}
    rc, out, reads = read_back("run-once", "--json")  # nothing left to carry, the kernel still proven
    report = json.loads(out)
    assert rc == 0 and reads == 0 and (report["synced"], report["expired"]) == (False, 0), out
    rc, out, reads = read_back("status")  # (iptables' status reads its verdict through python-iptables)
    assert rc == 0 and (reads == 0 or backend == "iptables") and "in sync" in out, out


def test_a_change_over_a_lapsed_element_adds_it_anew_and_reads_no_set(scene, tmp_path):
    """The kernel refuses to delete an element it timed out, and may not have collected it yet: the
    change path leaves it out of the snapshot and adds over it, as the full sync would."""
    import time

    from netblock.run.delta import LAPSE_GRACE

    nb = Cli(scene, tmp_path)
    nb("add", "--ttl", "2s", "198.18.72.9", "198.18.73.0/24")
    time.sleep(2 + LAPSE_GRACE + 1)
    rc, out, dumps = nb.counted("add", "198.18.72.9")  # a re-block of the lapsed one
    assert rc == 0 and dumps == 0 and "kernel: 1 netblocks (+1 -0 ~0)" in out, out
    sets = scene.server_exec("nft", "list", "set", "inet", "netblock", "block4").stdout
    assert "198.18.72.9" in sets and "198.18.73.0/24" not in sets, sets
    assert _left_to_do(nb.pending()) == {}


# ---------------------------------------------------------------- the ipset backend's one-change path
#
# ipset has no generation: the path trusts netblock's snapshot while the set headers agree, tests the
# members it touches, and lists a set only to read the counters of members it removes (ipset reads no
# single member's counters). Equality with the full sync is checked against the kernel itself: a full
# `sync` lists the sets and must find nothing to change.

def _removed(out: str) -> int:
    """How many elements the change took out, from its "kernel: N netblocks (+a -r ~u)" line."""
    return int(re.search(r"\(\+\d+ -(\d+) ~\d+\)", out).group(1))


def _ipset_in_sync(nb) -> bool:
    return "(+0 -0 " in nb("sync")


def test_ipset_changes_leave_what_the_full_sync_leaves_and_list_no_set(scene, tmp_path):
    nb = Cli(scene, tmp_path, backend="ipset")
    nb("add", "--ttl", "2h", "198.18.16.0/24", "198.18.18.0/24", "2001:db8:5::/48")
    taken = 0
    for step, args in _random_changes(24):
        rc, out, listings, for_counters = nb.listed(*args)
        assert rc == 0, out
        assert listings == for_counters, (step, args, out)  # no listing but the removed members' counters
        assert for_counters <= 2 and (for_counters == 0 or _removed(out) > 0), (step, args, out)
        taken += 1
        assert _ipset_in_sync(nb), (step, args, out)  # the kernel as the full sync leaves it
    assert taken > 10


def test_ipset_hand_edits_make_the_change_take_the_full_sync_and_the_tick_repairs(scene, tmp_path):
    nb = Cli(scene, tmp_path, backend="ipset", mail_log=True)
    nb("add", "198.18.16.0/24", "198.18.20.0/24")
    rc, out, listings, _ = nb.listed("add", "198.18.40.0/24")
    assert rc == 0 and listings == 0, out
    # A member added by hand changes the set's header: the change syncs in full, which removes it.
    scene.server_exec("ipset", "add", "netblock4", "203.0.113.0/24")
    rc, out, listings, for_counters = nb.listed("add", "198.18.50.0/24")
    assert rc == 0 and listings > for_counters, out
    assert "203.0.113.0" not in scene.server_exec("ipset", "save", "netblock4").stdout
    rc, out, listings, _ = nb.listed("del", "198.18.50.0/24")  # netblock's own write is trusted again
    assert rc == 0 and listings <= 1, out
    # One member swapped for another of the same size by hand can leave the header as it was; a change
    # that touches the swapped member tests it and syncs in full.
    scene.server_exec("ipset", "del", "netblock4", "198.18.16.0/24")
    scene.server_exec("ipset", "add", "netblock4", "203.0.113.0/24")
    rc, out, listings, for_counters = nb.listed("allow", "add", "198.18.16.5")
    assert rc == 0 and listings > for_counters, out
    assert _ipset_in_sync(nb)
    # A swap the change does not touch is repaired by the next tick: ipset's tick always syncs in full.
    scene.server_exec("ipset", "del", "netblock4", "198.18.20.0/24")
    scene.server_exec("ipset", "add", "netblock4", "203.0.113.0/24")
    nb("add", "198.18.70.0/24")
    nb("run-once")
    saved = scene.server_exec("ipset", "save", "netblock4").stdout
    assert "203.0.113.0" not in saved and "198.18.20.0/24" in saved
    assert _ipset_in_sync(nb)


def test_ipset_tick_skips_its_full_sync_only_while_a_listing_proves_every_member(scene, tmp_path):
    nb = Cli(scene, tmp_path, backend="ipset", mail_log=True)
    nb("add", "198.18.16.0/24", "198.18.20.0/24", "2001:db8:5::/48")
    nb("run-once")  # the first tick of this store syncs in full
    quiet = json.loads(nb("run-once", "--json"))
    assert quiet["synced"] is False and quiet["errors"] == []  # nothing new, every member proven
    # A swap of one member for another of the same size can leave the set's header as it was: the
    # tick's listing still sees it, syncs in full and repairs it.
    scene.server_exec("ipset", "del", "netblock4", "198.18.20.0/24")
    scene.server_exec("ipset", "add", "netblock4", "203.0.113.0/24")
    repaired = json.loads(nb("run-once", "--json"))
    assert repaired["synced"] is True and repaired["added"] == 1 and repaired["removed"] == 1, repaired
    saved = scene.server_exec("ipset", "save", "netblock4").stdout
    assert "203.0.113.0" not in saved and "198.18.20.0/24" in saved
    # A member re-timed by hand is no longer what netblock wrote either.
    scene.server_exec("ipset", "add", "-exist", "netblock4", "198.18.16.0/24", "timeout", "5")
    retimed = json.loads(nb("run-once", "--json"))
    assert retimed["synced"] is True and retimed["updated"] == 1, retimed


@pytest.mark.slow
def test_ipset_at_100k_installed_add_del_allow_list_no_set(scene, tmp_path):
    nb = Cli(scene, tmp_path, backend="ipset")
    v4, v6 = _stored_scale(nb, 50_000, 50_000)
    nb("sync")  # the full sync: lists the sets, installs 100k, leaves its snapshot
    for args in _scale_changes(v4, v6):
        rc, out, listings, for_counters = nb.listed(*args)
        assert rc == 0 and listings == for_counters, (args, out)
        assert for_counters == 0 or _removed(out) > 0, (args, out)
    rc, out, listings, _ = nb.listed("add", "203.0.113.0/24")
    assert rc == 0 and listings == 0, out  # a plain addition lists nothing at all
    saved = scene.server_exec("ipset", "save", "netblock4").stdout
    assert f" {v4[10].ip} " not in saved and f" {v4[11].ip} " in saved
    assert _ipset_in_sync(nb)


def test_the_daemons_counter_read_asks_the_proven_keys_and_equals_the_dump(scene, tmp_path):
    nb = Cli(scene, tmp_path)
    nb("add", "198.18.16.0/24", "198.18.20.7", "2001:db8:9::/48")

    def read(hand_edit: bool):
        from netblock import config
        from netblock.firewall import get_backend
        from netblock.firewall.netlink import nftables as nl

        backend = get_backend("nftables", config.load(str(nb.conf)).firewall_settings())
        if hand_edit:
            subprocess.run(["nft", "add", "element", "inet", "netblock", "block4", "{ 198.18.30.0/24 }"], check=True)
        before = nl.DUMPS
        asked = backend.counter_columns()
        asked_dumps = nl.DUMPS - before
        dumped = {v: tuple(col.tolist() for col in cols) for v, cols in backend._counter_columns_dumped().items()}
        assert backend.counters() == backend._counters_dumped()  # `netblock sample`'s form
        return {v: tuple(col.tolist() for col in cols) for v, cols in asked.items()}, dumped, asked_dumps

    asked, dumped, dumps = scene.in_server(read, False)
    assert dumps == 0 and asked == dumped and len(asked[4][0]) == 2 and len(asked[6][0]) == 1
    asked, dumped, dumps = scene.in_server(read, True)  # someone else committed: the keys prove nothing
    assert dumps > 0 and asked == dumped and len(asked[4][0]) == 3


def _chains(scene) -> list[str]:
    """The NETBLOCK chains' rules in chain order, as iptables-legacy -S prints them."""
    return [line for tool in ("iptables-legacy", "ip6tables-legacy")
            for line in scene.server_exec(tool, "-S", "NETBLOCK").stdout.splitlines() if line.startswith("-A ")]


def _source(rule: str) -> IPNetwork:
    return IPNetwork(rule.split(" -s ")[1].split()[0])


def _as_the_full_sync_orders(before: list[str], after: list[str]) -> list[str]:
    """The chain the full sync would leave from ``before`` with ``after``'s rules: survivors in place, new ones
    appended sorted (per family)."""
    out = []
    for version in (4, 6):
        old = [r for r in before if _source(r).version == version]
        new = [r for r in after if _source(r).version == version]
        out += [r for r in old if r in new] + sorted((r for r in new if r not in old),
                                                     key=lambda r: (_source(r).first, _source(r).prefixlen))
    return out


def test_iptables_changes_leave_what_the_full_sync_leaves_and_open_no_table(scene, tmp_path):
    nb = Cli(scene, tmp_path, backend="iptables")
    nb("add", "--ttl", "2h", "198.18.16.0/24", "198.18.18.0/24", "2001:db8:5::/48")
    taken = 0
    for step, args in _random_changes(24):
        before = _chains(scene)
        rc, out, opened = nb.opened(*args)
        assert rc == 0, out
        assert opened == 0, (step, args, out)  # no python-iptables table: the one-change path
        after = _chains(scene)
        assert after == _as_the_full_sync_orders(before, after), (step, args, out)
        taken += 1
        assert "(+0 -0 " in nb("sync"), (step, args, out)  # a following full sync changes nothing...
        assert _chains(scene) == after, (step, args, out)  # ...not even the order
    assert taken > 10
    assert _left_to_do(nb.pending()) == {}


def test_iptables_hand_edits_make_the_change_take_the_full_sync_and_the_tick_repairs(scene, tmp_path):
    nb = Cli(scene, tmp_path, backend="iptables", mail_log=True)
    nb("add", "198.18.16.0/24", "198.18.20.0/24", "2001:db8:7::/48")
    rc, out, opened = nb.opened("add", "198.18.40.0/24")
    assert rc == 0 and opened == 0, out
    hand_edits = [
        ("iptables-legacy", "-A", "NETBLOCK", "-s", "203.0.113.0/24", "-j", "DROP"),  # appended
        ("iptables-legacy", "-I", "NETBLOCK", "1", "-s", "203.0.113.0/24", "-j", "DROP"),  # inserted first
        ("iptables-legacy", "-D", "NETBLOCK", "-s", "198.18.20.0/24", "-j", "DROP"),  # one of ours gone
        ("iptables-legacy", "-R", "NETBLOCK", "1", "-s", "203.0.113.0/24", "-j", "DROP"),  # one swapped
        ("iptables-legacy", "-R", "NETBLOCK", "1", "-s", "198.18.16.0/24", "-j", "ACCEPT"),  # another target
        ("ip6tables-legacy", "-A", "NETBLOCK", "-s", "2001:db8:8::/48", "-j", "DROP"),  # the other family
        ("iptables-legacy", "-F", "NETBLOCK"),  # flushed
    ]
    for i, edit in enumerate(hand_edits):
        scene.server_exec(*edit)
        net = f"198.18.{60 + i}.0/24"
        rc, out, opened = nb.opened("add", net)
        assert rc == 0 and opened > 0, (edit, out)  # the change took the full sync...
        rules = _chains(scene)
        assert not any("203.0.113.0" in r or "2001:db8:8::" in r or "ACCEPT" in r for r in rules), (edit, rules)
        assert any("198.18.20.0/24" in r for r in rules) and any(net in r for r in rules), (edit, rules)
        rc, out, opened = nb.opened("del", net)  # ...and netblock's own write is proven again
        assert rc == 0 and opened == 0, (edit, out)
    # A hand edit no change touches is repaired by the next tick: the digest no longer proves the chain.
    scene.server_exec("iptables-legacy", "-A", "NETBLOCK", "-s", "203.0.113.0/24", "-j", "DROP")
    nb("run-once")
    rules = _chains(scene)
    assert not any("203.0.113.0" in r for r in rules) and any("198.18.40.0/24" in r for r in rules)
    assert "(+0 -0 " in nb("sync")


def test_iptables_change_keeps_the_counters_of_survivors_and_policies_and_samples_the_removed(scene, tmp_path):
    nb = Cli(scene, tmp_path, backend="iptables")
    nb("add", "198.18.16.0/24", "198.18.20.0/24")

    def counted():
        save = scene.server_exec("iptables-legacy-save", "-c", "-t", "filter").stdout
        return {line.split("] ")[1]: line.split("]")[0] for line in save.splitlines() if line.startswith("[")
                and "NETBLOCK -s" in line} | {line.split()[0]: line.split()[2] for line in save.splitlines()
                                              if line.startswith(":INPUT")}

    scene.server_exec("iptables-legacy", "-Z")
    # Counters by hand: packets as the kernel would count them, set through iptables-legacy -c.
    scene.server_exec("iptables-legacy", "-R", "NETBLOCK", "1", "-c", "7", "700", "-s", "198.18.16.0/24", "-j", "DROP")
    scene.server_exec("iptables-legacy", "-R", "NETBLOCK", "2", "-c", "5", "500", "-s", "198.18.20.0/24", "-j", "DROP")
    scene.server_exec("iptables-legacy", "-P", "INPUT", "ACCEPT", "-c", "11", "1100")
    nb("sync")  # the hand-set counters changed no match: the full sync rewrites nothing and records the chain
    rc, out, opened = nb.opened("add", "198.18.40.0/24")
    assert rc == 0 and opened == 0, out
    have = counted()
    assert have["-A NETBLOCK -s 198.18.16.0/24 -j DROP"] == "[7:700"
    assert have["-A NETBLOCK -s 198.18.20.0/24 -j DROP"] == "[5:500"
    assert have[":INPUT"] == "[11:1100]"
    rc, out, opened = nb.opened("del", "198.18.20.0/24")
    assert rc == 0 and opened == 0, out
    with Store.open(str(nb.db)) as st:
        last = st.last_samples(["198.18.20.0/24"])
    assert last["198.18.20.0/24"][1:] == (5, 500)
    assert counted()[":INPUT"] == "[11:1100]"


@pytest.mark.slow
def test_iptables_at_10k_rules_add_del_allow_open_no_table(scene, tmp_path):
    nb = Cli(scene, tmp_path, backend="iptables")
    v4, v6 = _stored_scale(nb, 8_000, 2_000)
    nb("sync")  # the full sync: reads the chains, installs 10k rules, leaves its snapshot
    for args in _scale_changes(v4, v6):
        before = _chains(scene)
        rc, out, opened = nb.opened(*args)
        assert rc == 0 and opened == 0, (args, out)
        after = _chains(scene)
        assert after == _as_the_full_sync_orders(before, after), (args, out)
    rules = _chains(scene)
    assert f"-A NETBLOCK -s {v4[10]} -j DROP" not in rules and f"-A NETBLOCK -s {v4[11]} -j DROP" in rules
    assert not any(f"-s {v6[5]} " in r for r in rules)
    assert "(+0 -0 " in nb("sync") and _chains(scene) == rules
