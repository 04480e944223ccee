"""Kernel counters into `netblock report`, exactly: real SYNs in a test namespace, each backend.

7, 5 and 3 SYNs from three blocked netblocks and none from a fourth; the
report shows exactly those packets, and bytes equal to what the kernel's own
tool lists. Then two blocks are merged into a wider one (their kernel
elements are replaced) and more SYNs are sent: nothing is lost or counted
twice. Then the ruleset is flushed behind netblock's back (a reboot): after
`sync` the report has no negative or doubled numbers.
"""

from __future__ import annotations

import json
import re

import pytest
from helpers import NETBLOCK, clean_env
from netaddr import IPNetwork

pytestmark = pytest.mark.kernel

A, B, C, D = "198.51.100.0/26", "198.51.100.128/26", "2001:db8:5::/48", "203.0.113.0/24"
SRC = {A: "198.51.100.10", B: "198.51.100.130", C: "2001:db8:5::7"}
MERGED = "198.51.100.0/24"


class Cli:
    def __init__(self, scene, tmp_path, backend: str):
        self.scene, self.backend = scene, backend
        self.db = tmp_path / "nb.db"
        self.conf = tmp_path / "netblock.toml"
        self.conf.write_text(f'lock_file = "{tmp_path}/run/netblock.lock"\n')

    def __call__(self, *args: str) -> str:
        env = clean_env()
        r = self.scene.server_exec(NETBLOCK, "--config", str(self.conf), "--db", str(self.db),
                                   "--backend", self.backend, *args, check=False, env=env)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    def report(self) -> list[dict]:
        return json.loads(self("report", "--json", "--exact"))


def kernel_listing(scene, backend: str) -> dict[str, tuple[int, int]]:
    """{netblock: (packets, bytes)} as nft, ipset or iptables itself lists them."""
    out: dict[str, tuple[int, int]] = {}
    if backend == "nftables":
        for name in ("block4", "block6"):
            doc = json.loads(scene.server_exec("nft", "-j", "list", "set", "inet", "netblock", name).stdout)
            for item in doc["nftables"]:
                for elem in item.get("set", {}).get("elem", []):
                    e = elem["elem"]
                    val = e["val"]
                    net = f"{val['prefix']['addr']}/{val['prefix']['len']}" if isinstance(val, dict) else val
                    out[str(IPNetwork(net).cidr)] = (e["counter"]["packets"], e["counter"]["bytes"])
    elif backend == "ipset":
        for name in ("netblock4", "netblock6"):
            text = scene.server_exec("ipset", "list", name).stdout
            for m in re.finditer(r"^(\S+) .*?packets (\d+) bytes (\d+)", text.split("Members:", 1)[1], re.M):
                out[str(IPNetwork(m[1]).cidr)] = (int(m[2]), int(m[3]))
    else:
        for tool in ("iptables-legacy", "ip6tables-legacy"):
            text = scene.server_exec(tool, "-L", "NETBLOCK", "-v", "-x", "-n").stdout
            for line in text.splitlines()[2:]:
                f = line.split()
                if len(f) >= 8 and f[2] in ("DROP", "REJECT"):
                    src = next(x for x in f[3:] if "/" in x)  # -n prints the source with its mask
                    out[str(IPNetwork(src).cidr)] = (int(f[0]), int(f[1]))
    return out


def damage(scene, backend: str) -> None:
    """A reboot, as far as the counters go: netblock's kernel objects emptied behind its back."""
    if backend == "nftables":
        scene.server_exec("nft", "flush", "ruleset")
    elif backend == "ipset":
        scene.server_exec("ipset", "flush")
    else:
        for tool in ("iptables-legacy", "ip6tables-legacy"):
            scene.server_exec(tool, "-F", "NETBLOCK")


def send(scene, counts: dict[str, int]) -> None:
    for net, n in counts.items():
        if n:
            assert scene.syn(SRC[net], n) == n


def rows(report: list[dict]) -> list[tuple[str, int]]:
    return [(r["netblock"], r["packets"]) for r in report]


@pytest.mark.parametrize("backend", ["nftables", "ipset", "iptables"])
def test_report_is_exact_across_merge_and_reboot(scene, tmp_path, backend):
    nb = Cli(scene, tmp_path, backend)
    scene.add_client(*SRC.values(), "203.0.113.5")
    nb("add", A, B, C, D, "--reason", "kernel report test")
    nb("sample")

    send(scene, {A: 7, B: 5, C: 3})
    nb("sample")
    first = kernel_listing(scene, backend)
    assert {k: v[0] for k, v in first.items()} == {A: 7, B: 5, C: 3, D: 0}
    report = nb.report()
    assert rows(report) == [(A, 7), (B, 5), (C, 3)]  # D dropped nothing: no row (and none dropped out)
    assert {r["netblock"]: r["bytes"] for r in report} == {k: first[k][1] for k in (A, B, C)}
    assert all(r["reason"] == "kernel report test" for r in report)

    # re-aggregation: the covering /24 replaces both /26 elements in the kernel
    nb("add", MERGED, "--reason", "merged")
    nb("del", A, B)
    merged = kernel_listing(scene, backend)
    assert set(merged) == {MERGED, C, D} and merged[MERGED] == (0, 0)
    send(scene, {A: 2, B: 1, C: 4})
    nb("sample")
    second = kernel_listing(scene, backend)
    assert second[MERGED][0] == 3 and second[C][0] == 7
    report = nb.report()
    assert rows(report) == [(MERGED, 15), (C, 7)]
    bytes_of = {r["netblock"]: r["bytes"] for r in report}
    assert bytes_of[MERGED] == first[A][1] + first[B][1] + second[MERGED][1]
    assert bytes_of[C] == second[C][1]

    # a reboot: the kernel forgets everything, the store does not
    damage(scene, backend)
    if backend == "nftables":
        assert "netblock" not in scene.server_exec("nft", "list", "tables").stdout
    else:
        assert kernel_listing(scene, backend) == {}
    nb("sync")
    assert {k: v[0] for k, v in kernel_listing(scene, backend).items()} == {MERGED: 0, C: 0, D: 0}
    nb("sample")
    assert rows(nb.report()) == [(MERGED, 15), (C, 7)]  # the zeros are a reset, not -15
    send(scene, {A: 1, C: 2})
    nb("sample")
    third = kernel_listing(scene, backend)
    report = nb.report()
    assert rows(report) == [(MERGED, 16), (C, 9)]
    bytes_of = {r["netblock"]: r["bytes"] for r in report}
    assert bytes_of[MERGED] == first[A][1] + first[B][1] + second[MERGED][1] + third[MERGED][1]
    assert bytes_of[C] == second[C][1] + third[C][1]


# ---------------------------------------------------------------- one row per block as decided

WIDE, KEEP = "198.19.0.0/16", "198.19.7.7"
SENDERS = {"198.19.1.5": 4, "198.19.200.9": 3, "198.19.7.8": 2}  # three pieces around the carve-out


@pytest.mark.parametrize("backend", ["nftables", "ipset", "iptables"])
def test_the_pieces_around_a_carve_out_are_one_row_and_one_series(scene, tmp_path, backend):
    import time
    from datetime import datetime, timedelta, timezone

    nb = Cli(scene, tmp_path, backend)
    scene.add_client(*SENDERS)
    nb("add", WIDE, "--force", "--reason", "widened by hand")
    nb("allow", "add", KEEP)
    nb("sample")
    pieces = kernel_listing(scene, backend)
    assert len(pieces) == 16 and WIDE not in pieces  # a /16 less one address
    for src, n in SENDERS.items():
        assert scene.syn(src, n) == n
    nb("sample")
    first = kernel_listing(scene, backend)
    hit = {net: pb for net, pb in first.items() if pb[0]}
    assert len(hit) == 3 and sum(p for p, _ in hit.values()) == 9  # three pieces really counted
    first_bytes = sum(b for _, b in first.values())
    report = nb.report()
    assert [(r["netblock"], r["packets"], r["bytes"], r["reason"], r["except"]) for r in report] == [
        (WIDE, 9, first_bytes, "widened by hand", [f"{KEEP}/32"])]
    table = nb("report", "--exact", "--no-compare")
    assert table.splitlines()[1].split() == [f"{WIDE}*", "9", str(first_bytes)]
    assert f"* {WIDE} except {KEEP}" in table
    series = [line for line in nb("export").splitlines() if line.startswith("netblock_dropped_packets_total{")]
    assert len(series) == 1 and f'netblock="{WIDE}"' in series[0] and series[0].endswith(" 9.0"), series

    # the carve-out ends: the kernel holds the /16 as one element, counting from zero; still one row
    time.sleep(1.1)  # the samples before and after `middle` fall in different seconds
    middle = datetime.now(timezone.utc)
    time.sleep(1.1)
    nb("allow", "del", KEEP)
    assert set(kernel_listing(scene, backend)) == {WIDE}
    assert scene.syn("198.19.7.8", 5) == 5
    nb("sample")
    second = kernel_listing(scene, backend)[WIDE]
    assert second[0] == 5
    report = nb.report()
    assert [(r["netblock"], r["packets"], r["bytes"], r["except"]) for r in report] == [
        (WIDE, 14, first_bytes + second[1], [])]
    # against the previous window of the same length: 9 packets then, rank 1
    end = middle + timedelta(hours=1)
    rows = json.loads(nb("report", "--json", "--exact", "--from", middle.isoformat(), "--to", end.isoformat()))
    assert [(r["netblock"], r["packets"], r["previous_rank"], r["previous_packets"], r["new"]) for r in rows] == [
        (WIDE, 5, 1, 9, False)]
