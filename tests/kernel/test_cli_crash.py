"""kill -9 in the middle of a 100k-target `netblock add -`, then `netblock sync`:
the store lost nothing it had committed, holds all or none of the list, and the
kernel equals the aggregated store again.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sqlite3
import subprocess
import threading

import pytest
from helpers import NETBLOCK, clean_env
from netns import wait_for

from netblock.aggregate import aggregate_lines

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

BASELINE = ["198.19.255.0/24", "2001:db8:ffff::/48"]


def targets(n: int = 100_000) -> list[str]:
    """n distinct hosts that do not merge: every other address of 198.18.0.0/15, then IPv6.

    Even addresses only, so the server's own 198.18.0.1 is not among them and
    aggregation cannot fold them into a few prefixes: the kernel gets ~n elements.
    """
    v4 = int(ipaddress.ip_address("198.18.0.0"))
    v6 = int(ipaddress.ip_address("2001:db8:1::"))
    out = [str(ipaddress.ip_address(v4 + 2 * i)) for i in range(min(n, 65_000))]
    out += [str(ipaddress.ip_address(v6 + 2 * i)) for i in range(n - len(out))]
    return out


def kernel_elements(scene) -> set[str]:
    """The sets' elements as `nft -j` shows them (hosts bare, prefixes as CIDR): independent of our backend."""
    out = set()
    for name in ("block4", "block6"):
        listing = json.loads(scene.server_exec("nft", "-j", "list", "set", "inet", "netblock", name).stdout)
        for item in listing["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                val = elem["elem"]["val"] if isinstance(elem, dict) and "elem" in elem else elem
                if isinstance(val, str):
                    out.add(val)
                else:
                    assert "prefix" in val, val  # netblock installs CIDRs only, never ranges
                    out.add(f"{val['prefix']['addr']}/{val['prefix']['len']}")
    return out


class Env:
    def __init__(self, scene, tmp_path):
        self.scene = scene
        self.db = tmp_path / "nb.db"
        self.conf = tmp_path / "netblock.toml"
        self.conf.write_text(f'lock_file = "{tmp_path}/run/netblock.lock"\n')
        self.env = clean_env()

    def argv(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.scene.server, NETBLOCK, "--config", str(self.conf),
                "--db", str(self.db), "--backend", "nftables", *args]

    def run(self, *args: str) -> subprocess.CompletedProcess:
        r = subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env, timeout=300)
        assert r.returncode == 0, (args, r.stderr)
        return r

    def stored(self) -> set[str]:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            return {row[0] for row in con.execute("SELECT netblock FROM blocks")}
        finally:
            con.close()

    def start_add(self, text: str) -> tuple[subprocess.Popen, threading.Event]:
        """`netblock add -` with ``text`` on stdin; the event is set once stdin is all written."""
        proc = subprocess.Popen(self.argv("add", "-", "--reason", "crash test"), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env)
        fed = threading.Event()

        def feed():
            try:
                proc.stdin.write(text.encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            fed.set()

        threading.Thread(target=feed, daemon=True).start()
        return proc, fed


def kill9(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=60)


def test_kill_during_add_then_sync_repairs(scene, tmp_path):
    env = Env(scene, tmp_path)
    env.run("add", *BASELINE, "--permanent")
    baseline = {str(ipaddress.ip_network(n)) for n in BASELINE}
    assert env.stored() == baseline
    text = "\n".join(targets()) + "\n"
    full = baseline | {f"{t}/{128 if ':' in t else 32}" for t in targets()}

    # 1. Killed while still reading and checking its input: nothing was written.
    proc, fed = env.start_add(text)
    assert fed.wait(timeout=120)
    assert kill9(proc) == -signal.SIGKILL
    assert env.stored() == baseline
    assert kernel_elements(scene) == {"198.19.255.0/24", "2001:db8:ffff::/48"}

    # 2. Killed as soon as its one transaction is committed, i.e. while it syncs the kernel.
    proc, fed = env.start_add(text)
    committed = wait_for(lambda: proc.poll() is not None or len(env.stored()) > len(baseline),
                         timeout=240, interval=0.02)
    rc = kill9(proc)
    assert committed and rc == -signal.SIGKILL, proc.stderr.read()
    assert env.stored() == full  # all of the list or none of it; here all: it had committed

    env.run("sync")
    status = json.loads(env.run("status", "--json").stdout)
    assert status["in_sync"] is True and status["blocks_active"] == len(full)
    kernel = kernel_elements(scene)
    assert kernel == set(aggregate_lines(sorted(env.stored())))
    assert len(kernel) == len(full)
