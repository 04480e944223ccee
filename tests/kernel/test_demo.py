"""`netblock demo`: the main job in one command, and it always cleans up."""

import os
import re
import signal
import subprocess
import sys

import pytest
from netns import sh

pytestmark = pytest.mark.kernel

NETBLOCK = os.path.join(os.path.dirname(sys.executable), "netblock")


def namespaces_of(pid: int) -> list[str]:
    prefix = f"nbdemo{pid % 100000}x"
    return [line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line.startswith(prefix)]


def run_demo(*args):
    proc = subprocess.Popen([NETBLOCK, "demo", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    return proc, out, err


def test_demo_blocks_the_storm_and_spares_legitimate_senders():
    proc, out, err = run_demo()
    assert proc.returncode == 0, out + err
    assert "Host/Mask            Packets  Bytes" in out
    rows = re.findall(r"^(\d+\.\d+\.\d+\.\d+(?:/\d+)?\*?)\s+(\d+)\s+(\S+)\s+\S+\s+(?:#\d+|new)$", out, re.M)
    assert len(rows) == 10
    # one row per block as decided: the widened ranges whole, their carve-outs footnoted
    names = [r[0] for r in rows]
    assert "198.19.0.0/16*" in names and "198.18.5.0/24*" in names
    assert not any(n.startswith("198.19.") and n != "198.19.0.0/16*" for n in names)
    assert "* 198.19.0.0/16 except 198.19.44.44" in out and "* 198.18.5.0/24 except 198.18.5.200" in out
    packets = [int(p) for _, p, _ in rows]
    assert packets == sorted(packets, reverse=True) and packets[0] > 0
    # The widened /16 dropped an address that never attacked.
    m = re.search(r"including (\d+) from 198\.19\.250\.9", out)
    assert m and int(m.group(1)) > 0
    assert re.search(r"198\.18\.5\.200 admitted, 198\.51\.100\.10 admitted, 198\.19\.44\.44 admitted", out)
    assert "class bl-zen.spamhaus.org" in out
    m = re.search(r"(\d+) abusive IPs in the log became (\d+) blocks in the store and (\d+) netblocks", out)
    assert m and int(m.group(1)) == 143
    assert namespaces_of(proc.pid) == []


def test_demo_cleans_up_on_ctrl_c():
    proc = subprocess.Popen([NETBLOCK, "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first.startswith("netblock demo:")
    assert namespaces_of(proc.pid), "the demo's namespaces exist while it runs"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert namespaces_of(proc.pid) == []


def test_demo_keep_leaves_namespaces_and_says_how_to_remove_them():
    proc, out, err = run_demo("--keep")
    try:
        assert proc.returncode == 0, err
        left = namespaces_of(proc.pid)
        assert len(left) == 2
        for ns in left:
            assert f"ip netns del {ns}" in out
        table = sh("ip", "netns", "exec", left[0] if left[0].endswith("s") else left[1], "nft", "list", "table",
                   "inet", "netblock").stdout
        assert "block4" in table
    finally:
        for ns in namespaces_of(proc.pid):
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)
        m = re.search(r"rm -r (\S+)", out)
        if m and m.group(1).startswith("/tmp/netblock-demo-"):
            sh("rm", "-r", m.group(1), check=False)


@pytest.mark.parametrize("backend", ["ipset", "iptables"])
def test_demo_on_the_other_backends(backend):
    proc, out, err = run_demo("--backend", backend)
    assert proc.returncode == 0, out + err
    assert f"backend {backend}" in out.splitlines()[0]
    assert re.search(r"including ([1-9]\d*) from 198\.19\.250\.9", out)
    assert "198.18.5.200 admitted" in out
    assert namespaces_of(proc.pid) == []
