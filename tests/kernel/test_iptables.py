"""The iptables backend against the real kernel, in namespaces of our own.

What is specific to this backend: the rules are listed by the legacy tools
(iptables-legacy, ip6tables-legacy), the chain holds exactly one
``-s CIDR -j DROP`` rule per netblock, and libiptc's whole-table commit must
carry the counters of unchanged rules over. Every backend call runs in a fresh
forked child inside the server namespace.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta, timezone

import pytest
from netaddr import IPNetwork
from netns import wait_for

from netblock.errors import KernelError, NameClash
from netblock.firewall import Settings, iptables as ipt

pytestmark = pytest.mark.kernel

SYN4, SYN6 = 40, 60
TOOLS = {4: ("iptables-legacy", "iptables-legacy-save"), 6: ("ip6tables-legacy", "ip6tables-legacy-save")}


def call(scene, method, *args, settings: Settings | None = None):
    return scene.in_server(lambda: getattr(ipt.create(settings or Settings()), method)(*args))


def listing(scene, version: int) -> dict[IPNetwork, tuple[int, int]]:
    """Counters as `iptables-legacy -L NETBLOCK -v -x -n` prints them (source column → netblock)."""
    out = scene.server_exec(TOOLS[version][0], "-L", ipt.IPT_CHAIN, "-v", "-x", "-n").stdout
    rows = {}
    for line in out.splitlines()[2:]:
        pkts, nbytes, _target, _prot, _opt, _in, _out, source, *_ = line.split()
        rows[IPNetwork(source)] = (int(pkts), int(nbytes))
    return rows


def saved(scene, version: int, counters: bool = False) -> list[str]:
    """Our chain's lines from `iptables-legacy-save -t filter`, in order."""
    args = (TOOLS[version][1], "-t", "filter") + (("-c",) if counters else ())
    return [line for line in scene.server_exec(*args).stdout.splitlines() if ipt.IPT_CHAIN in line]


def skeleton_lines(settings: Settings) -> list[str]:
    return [line for line in ipt.render(settings).splitlines() if ipt.IPT_CHAIN in line and not line.startswith("#")]


def test_counters_equal_the_legacy_listing_after_real_syns(scene):
    sends = {"198.51.100.7": ("198.51.100.0/24", 5), "198.19.7.7": ("198.19.7.7/32", 3),
             "2001:db8:bad::5": ("2001:db8:bad::/48", 4), "2001:db8:7::7": ("2001:db8:7::7/128", 2)}
    scene.add_client(*sends)
    call(scene, "ensure")
    call(scene, "apply", dict.fromkeys([IPNetwork(n) for n, _ in sends.values()] + [IPNetwork("192.0.2.0/24")]))
    for src, (_, k) in sends.items():
        scene.syn(src, k)
    expected = {IPNetwork(n): (k, k * (SYN6 if ":" in n else SYN4)) for n, k in sends.values()}
    expected[IPNetwork("192.0.2.0/24")] = (0, 0)
    got = wait_for(lambda: (c := call(scene, "counters")) == expected and c, timeout=15) or call(scene, "counters")
    assert got == expected
    assert {**listing(scene, 4), **listing(scene, 6)} == expected
    # What the README tells users to run shows the rules too.
    plain = scene.server_exec("iptables-legacy", "-L", "NETBLOCK", "-v", "-n").stdout
    assert "198.51.100.0/24" in plain and "DROP" in plain
    assert "2001:db8:bad::/48" in scene.server_exec("ip6tables-legacy", "-L", "NETBLOCK", "-v", "-n").stdout


@pytest.mark.parametrize("settings", [Settings(), Settings(ports=(25, 587), verdict="reject")],
                         ids=["drop-25", "reject-25-587"])
def test_kernel_lists_back_the_rules_file_and_exact_rules(scene, settings):
    call(scene, "ensure", settings=settings)
    for version in (4, 6):
        assert saved(scene, version) == skeleton_lines(settings)
    desired = [IPNetwork(n) for n in ("203.0.113.0/24", "198.51.100.7/32", "2001:db8:bad::/48", "2001:db8::5/128")]
    call(scene, "apply", dict.fromkeys(desired), settings=settings)
    for version in (4, 6):
        mine = sorted((n for n in desired if n.version == version), key=lambda n: (n.value, n.prefixlen))
        assert saved(scene, version) == skeleton_lines(settings) + [ipt.rule_line(n, settings) for n in mine]


def test_ensure_twice_changes_nothing_and_keeps_counters(scene):
    scene.add_client("198.51.100.7")
    call(scene, "ensure")
    call(scene, "apply", {IPNetwork("198.51.100.0/24"): None})
    scene.syn("198.51.100.7", 3)
    wait_for(lambda: call(scene, "counters")[IPNetwork("198.51.100.0/24")] == (3, 3 * SYN4), timeout=15)
    before = saved(scene, 4, counters=True), saved(scene, 6, counters=True)
    assert "[3:120] -A INPUT" in before[0][1]
    call(scene, "ensure")
    assert (saved(scene, 4, counters=True), saved(scene, 6, counters=True)) == before


def test_ensure_follows_a_change_of_ports(scene):
    call(scene, "ensure")
    call(scene, "ensure", settings=Settings(ports=(25, 465)))
    assert saved(scene, 4) == skeleton_lines(Settings(ports=(25, 465)))


def test_ten_thousand_rules_one_commit_per_family_and_a_small_change_keeps_counters(scene):
    scene.add_client("198.51.100.7", "2001:db8:bad::5")
    many = {IPNetwork(((10 << 24) + i * 512, 24 if i % 2 else 32), version=4): None for i in range(10_000)}
    many[IPNetwork("198.51.100.0/24")] = None
    many[IPNetwork("2001:db8:bad::/48")] = None

    def apply_counting_commits(desired):
        iptc = ipt._load_iptc()
        commits = []
        original = iptc.Table.commit

        def commit(table):
            commits.append(type(table).__name__)
            return original(table)

        iptc.Table.commit = commit
        change = ipt.create(Settings()).apply(desired)
        return change, commits

    call(scene, "ensure")
    change, commits = scene.in_server(apply_counting_commits, many)
    assert len(change.added) == 10_002 and sorted(commits) == ["Table", "Table6"]
    assert len(saved(scene, 4)) == 2 + 10_001
    scene.syn("198.51.100.7", 6)
    scene.syn("2001:db8:bad::5", 2)
    wait_for(lambda: call(scene, "counters").get(IPNetwork("2001:db8:bad::/48")) == (2, 2 * SYN6), timeout=15)

    smaller = dict(many)
    del smaller[IPNetwork("10.0.2.0/24")]
    change, commits = scene.in_server(apply_counting_commits, smaller)
    assert change.removed == [IPNetwork("10.0.2.0/24")] and not change.added and commits == ["Table"]
    counters = call(scene, "counters")
    assert len(counters) == 10_001
    assert counters[IPNetwork("198.51.100.0/24")] == (6, 6 * SYN4)
    assert counters[IPNetwork("2001:db8:bad::/48")] == (2, 2 * SYN6)
    # The kept rule still counts after the commit.
    scene.syn("198.51.100.7", 1)
    assert wait_for(lambda: call(scene, "counters")[IPNetwork("198.51.100.0/24")] == (7, 7 * SYN4), timeout=15)


def test_reject_answers_with_a_reset(scene):
    scene.add_client("198.51.100.7", "203.0.113.9", "2001:db8:bad::5")
    scene.listen(25)
    settings = Settings(verdict="reject")
    call(scene, "ensure", settings=settings)
    call(scene, "apply", {IPNetwork("198.51.100.0/24"): None, IPNetwork("2001:db8:bad::/48"): None},
         settings=settings)
    # A long timeout costs nothing here: every answer expected is an immediate one.
    assert scene.probe("198.51.100.7", timeout=5) == "refused"
    assert scene.probe("2001:db8:bad::5", timeout=5) == "refused"
    assert scene.probe("203.0.113.9", timeout=5) == "open"
    assert call(scene, "counters", settings=settings)[IPNetwork("198.51.100.0/24")][0] >= 1


def test_installed_reflects_hand_edits_and_apply_repairs_them(scene):
    desired = {IPNetwork("198.51.100.0/24"): None, IPNetwork("192.0.2.0/24"): None,
               IPNetwork("2001:db8:bad::/48"): None}
    call(scene, "ensure")
    call(scene, "apply", desired)
    assert call(scene, "installed") == desired

    scene.server_exec("iptables-legacy", "-F", "NETBLOCK")
    assert call(scene, "installed") == {IPNetwork("2001:db8:bad::/48"): None}

    # A rule of our shape added by hand counts as installed; a stranger's shape does not.
    scene.server_exec("iptables-legacy", "-A", "NETBLOCK", "-s", "203.0.113.0/24", "-j", "DROP")
    scene.server_exec("iptables-legacy", "-A", "NETBLOCK", "-s", "198.51.100.0/24", "-j", "ACCEPT")
    scene.server_exec("ip6tables-legacy", "-D", "NETBLOCK", "-s", "2001:db8:bad::/48", "-j", "DROP")
    assert call(scene, "installed") == {IPNetwork("203.0.113.0/24"): None}

    change = call(scene, "apply", desired)
    assert sorted(map(str, change.added)) == ["192.0.2.0/24", "2001:db8:bad::/48"]
    assert change.updated == [IPNetwork("198.51.100.0/24")] and change.removed == [IPNetwork("203.0.113.0/24")]
    assert call(scene, "installed") == desired
    assert saved(scene, 4)[2:] == [ipt.rule_line(IPNetwork(n), Settings()) for n in ("192.0.2.0/24", "198.51.100.0/24")]


def test_expired_and_other_family_entries_are_not_installed(scene):
    now = datetime.now(timezone.utc)
    settings = Settings(families=("ipv4",))
    call(scene, "ensure", settings=settings)
    call(scene, "apply", {IPNetwork("198.51.100.0/24"): now - timedelta(seconds=1),
                          IPNetwork("192.0.2.0/24"): now + timedelta(hours=1),
                          IPNetwork("2001:db8:bad::/48"): None}, settings=settings)
    assert call(scene, "installed", settings=settings) == {IPNetwork("192.0.2.0/24"): None}
    assert scene.server_exec("ip6tables-legacy", "-L", "NETBLOCK", check=False).returncode != 0


def test_other_rules_and_their_counters_are_untouched(scene):
    scene.add_client("203.0.113.9")
    scene.server_exec("iptables-legacy", "-A", "INPUT", "-s", "203.0.113.9", "-p", "tcp", "-j", "ACCEPT")
    scene.server_exec("iptables-legacy", "-N", "OTHER")
    scene.server_exec("iptables-legacy", "-A", "OTHER", "-s", "192.0.2.1", "-j", "DROP")
    scene.server_exec("ip6tables-legacy", "-A", "INPUT", "-s", "2001:db8::2", "-p", "tcp")
    scene.syn("203.0.113.9", 2)
    scene.syn("2001:db8::2", 3)

    def snapshot():
        return [scene.server_exec(t[1], "-c").stdout for t in TOOLS.values()]

    def unrelated(texts):
        """Everything but our chain; the IPv6 policies' counters are left out because the
        kernel's own router solicitations, MLD reports and neighbour probes keep adding to
        them (checked apart: they only ever grow)."""
        out = []
        for text in texts:
            lines = [line for line in text.splitlines() if not line.startswith("#") and "NETBLOCK" not in line]
            out.append([line.split(" [")[0] if "ip6tables" in text and line.startswith((":OUTPUT", ":INPUT"))
                        else line for line in lines])
        return out

    def v6_input_policy(texts):
        line = next(x for x in texts[1].splitlines() if x.startswith(":INPUT"))
        return tuple(int(n) for n in line.split("[")[1].rstrip("]").split(":"))

    # The RSTs the server answers with count on OUTPUT's policy and the SYNs on INPUT's:
    # libiptc on its own zeroes policy counters on every commit.
    before = wait_for(lambda: (s := snapshot()) and ":OUTPUT ACCEPT [2:80]" in s[0]
                      and ":INPUT ACCEPT [3:180]" in s[1] and s, timeout=15) or snapshot()
    assert "[2:80] -A INPUT -s 203.0.113.9/32 -p tcp -j ACCEPT" in before[0]
    assert ":OUTPUT ACCEPT [2:80]" in before[0]
    assert ":INPUT ACCEPT [3:180]" in before[1] and "[3:180] -A INPUT -s 2001:db8::2/128 -p tcp" in before[1]

    call(scene, "ensure")
    call(scene, "apply", {IPNetwork("198.51.100.0/24"): None, IPNetwork("2001:db8:bad::/48"): None})
    call(scene, "apply", {IPNetwork("192.0.2.0/24"): None})
    assert unrelated(snapshot()) == unrelated(before)
    call(scene, "remove")
    call(scene, "remove")
    after = snapshot()
    assert unrelated(after) == unrelated(before)
    assert v6_input_policy(after) >= v6_input_policy(before) >= (3, 180)  # never zeroed by a commit
    assert all("NETBLOCK" not in text for text in after)
    assert call(scene, "installed") == {} and call(scene, "counters") == {}


def test_a_strangers_chain_is_a_name_clash_and_left_alone(scene):
    scene.server_exec("ip6tables-legacy", "-N", "NETBLOCK")
    scene.server_exec("ip6tables-legacy", "-A", "NETBLOCK", "-s", "2001:db8:bad::/48", "-j", "DROP")
    with pytest.raises(NameClash, match="ip6tables-legacy: chain NETBLOCK"):
        call(scene, "ensure")
    # Nothing half-done in the other family: the clash was found before anything changed.
    assert saved(scene, 4) == []
    with pytest.raises(NameClash):
        call(scene, "apply", {IPNetwork("198.51.100.0/24"): None}, settings=Settings(families=("ipv6",)))
    assert call(scene, "installed") == {}
    call(scene, "remove")
    assert saved(scene, 6) == [":NETBLOCK - [0:0]", "-A NETBLOCK -s 2001:db8:bad::/48 -j DROP"]


def test_apply_without_skeleton_is_a_clear_error(scene):
    with pytest.raises(KernelError, match="ensure"):
        call(scene, "apply", {IPNetwork("198.51.100.0/24"): None})


@pytest.mark.parametrize("dropped", ["net_admin", "net_raw"])
def test_missing_capability_is_permission_denied(scene, dropped):
    code = (
        "import sys\n"
        "from netblock.errors import NetblockError\n"
        "from netblock.firewall import Settings, iptables\n"
        "try:\n"
        "    iptables.create(Settings()).ensure()\n"
        "except NetblockError as e:\n"
        "    print(type(e).__name__); print(e); sys.exit(3)\n"
    )
    r = scene.server_exec("setpriv", "--inh-caps=-all", f"--bounding-set=-{dropped}", sys.executable, "-c", code,
                          check=False, env={**os.environ})
    assert r.returncode == 3, r.stderr
    kind, message = r.stdout.splitlines()[:2]
    assert kind == "PermissionDenied" and "CAP_NET_RAW" in message
    assert "Traceback" not in r.stderr
    assert saved(scene, 4) == []


def test_a_held_xtables_lock_is_busy_and_changes_nothing(scene, tmp_path):
    lockfile = tmp_path / "xtables.lock"
    call(scene, "ensure")

    def apply_while_locked():
        import fcntl

        os.environ["XTABLES_LOCKFILE"] = str(lockfile)
        ipt.LOCK_WAIT_S = 0.2
        holder = os.open(lockfile, os.O_CREAT | os.O_RDWR)
        fcntl.flock(holder, fcntl.LOCK_EX)  # flock locks are per open file: our own open waits too
        try:
            ipt.create(Settings()).apply({IPNetwork("198.51.100.0/24"): None})
        except Exception as exc:  # noqa: BLE001 - the type is what the test checks
            return type(exc).__name__, str(exc)
        return None

    kind, message = scene.in_server(apply_while_locked)
    assert kind == "Busy" and str(lockfile) in message
    assert call(scene, "installed") == {}
