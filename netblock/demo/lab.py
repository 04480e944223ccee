"""Throwaway network namespaces: a server and a client joined by veth.

Used by `netblock demo` and by the kernel tests. Everything here happens
inside namespaces this module creates and deletes; the
host's own namespace and ruleset are never entered. Addresses come only from
the ranges DESIGN.md allows (198.18.0.0/15, 192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24, 2001:db8::/32). Every loop that sends traffic is bounded.

Code that must run inside a namespace (a backend call, a raw SYN) runs in a
forked child that joins the namespace with setns(2) and sends its result back
pickled, so the test process itself never leaves the host namespace and no
netlink socket opened in one namespace is reused in another.
"""

from __future__ import annotations

import ctypes
import ipaddress
import itertools
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
SERVER4 = "198.18.0.1"
CLIENT4 = "198.18.0.2"
SERVER6 = "2001:db8::1"
CLIENT6 = "2001:db8::2"
ALLOWED = [ipaddress.ip_network(n) for n in (
    "198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]

_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()


def check_allowed(addr: str) -> None:
    """Refuse any address outside the documentation/benchmark ranges."""
    ip = ipaddress.ip_address(addr)
    if not any(ip in n for n in ALLOWED):
        raise AssertionError(f"{addr} is outside the test ranges; refusing to use it")


def sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, input=input)


def nsexec(ns: str, *args: str, check: bool = True, input: str | None = None,
           env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command inside namespace ``ns`` (``ip netns exec``)."""
    return subprocess.run(("ip", "netns", "exec", ns) + args, check=check, capture_output=True,
                          text=True, input=input, env=env, timeout=timeout)


class ChildError(Exception):
    """An exception raised inside a namespace child, with its traceback text."""


def run_in_netns(ns: str, fn, *args, **kwargs):
    """Call ``fn(*args, **kwargs)`` in a forked child inside namespace ``ns``.

    The return value (or exception) comes back pickled. If joining the
    namespace fails the child raises before calling ``fn``, so nothing can
    ever run against the host's own ruleset.
    """
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        status = 0
        try:
            os.close(r)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            os.close(fd)
            try:
                payload = pickle.dumps(("ok", fn(*args, **kwargs)))
            except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
                try:
                    payload = pickle.dumps(("exc", exc, traceback.format_exc()))
                except Exception:
                    payload = pickle.dumps(("exc", ChildError(repr(exc)), traceback.format_exc()))
        except BaseException:  # noqa: BLE001
            payload = pickle.dumps(("exc", ChildError("namespace child failed"), traceback.format_exc()))
            status = 1
        view = memoryview(payload)
        while view:
            n = os.write(w, view)
            view = view[n:]
        os.close(w)
        os._exit(status)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 1 << 20):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    result = pickle.loads(b"".join(chunks))
    if result[0] == "ok":
        return result[1]
    err, tb = result[1], result[2]
    if hasattr(err, "add_note"):
        err.add_note("in namespace child:\n" + tb)
    raise err


# ---------------------------------------------------------------- raw SYNs

def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _tcp_syn(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    if ":" in src:
        return header  # the kernel fills the checksum (IPV6_CHECKSUM)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header))
    csum = _checksum(pseudo + header)
    return header[:16] + struct.pack("!H", csum) + header[18:]


def send_syns(src: str, dst: str, dport: int = 25, count: int = 1) -> int:
    """Send exactly ``count`` bare TCP SYNs from ``src`` (call inside the client namespace).

    A raw socket sends each SYN once: no retransmission, so the kernel's
    counters on the other side can be compared with ``count`` exactly.
    """
    check_allowed(src)
    check_allowed(dst)
    if not 0 <= count <= 100_000:
        raise ValueError("count out of bounds")
    v6 = ":" in src
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    try:
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, 7, 16)  # IPV6_CHECKSUM at the TCP checksum offset
            s.bind((src, 0, 0, 0))
        else:
            s.bind((src, 0))
        for i in range(count):
            pkt = _tcp_syn(src, dst, 40000 + (i % 20000), dport, 1000 + i)
            s.sendto(pkt, (dst, 0, 0, 0) if v6 else (dst, 0))
    finally:
        s.close()
    return count


def probe(src: str, dst: str, port: int = 25, timeout: float = 0.5) -> str:
    """Try a real TCP connect: "open", "refused" (RST came back) or "timeout" (dropped)."""
    check_allowed(src)
    check_allowed(dst)
    v6 = ":" in src
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        s.connect((dst, port))
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except (socket.timeout, TimeoutError):
        return "timeout"
    finally:
        s.close()


# ---------------------------------------------------------------- the scene

@dataclass
class Scene:
    """A server namespace and a client namespace joined by one veth pair."""

    server: str
    client: str
    client_addresses: list[str] = field(default_factory=list)
    _listener: subprocess.Popen | None = None

    def add_client(self, *addrs: str) -> None:
        """Give the client namespace more source addresses (and the server a route back)."""
        for a in addrs:
            check_allowed(a)
            if a in self.client_addresses or a in (CLIENT4, CLIENT6):
                continue
            plen = 128 if ":" in a else 32
            extra = ("nodad",) if ":" in a else ()
            nsexec(self.client, "ip", "addr", "add", f"{a}/{plen}", "dev", "veth0", *extra)
            if ":" not in a and ipaddress.ip_address(a) not in ipaddress.ip_network("198.18.0.0/15"):
                nsexec(self.server, "ip", "route", "replace", f"{a}/32", "dev", "veth0")
            self.client_addresses.append(a)

    def syn(self, src: str, count: int = 1, dport: int = 25) -> int:
        dst = SERVER6 if ":" in src else SERVER4
        return run_in_netns(self.client, send_syns, src, dst, dport, count)

    def probe(self, src: str, port: int = 25, timeout: float = 0.5) -> str:
        dst = SERVER6 if ":" in src else SERVER4
        return run_in_netns(self.client, probe, src, dst, port, timeout)

    def in_server(self, fn, *args, **kwargs):
        return run_in_netns(self.server, fn, *args, **kwargs)

    def server_exec(self, *args: str, check: bool = True, input: str | None = None, env=None,
                    timeout: float = 300) -> subprocess.CompletedProcess:
        return nsexec(self.server, *args, check=check, input=input, env=env, timeout=timeout)

    def listen(self, port: int = 25) -> None:
        """Run a dual-stack listener on ``port`` in the server namespace (accept, close)."""
        code = (
            "import socket\n"
            "s=socket.socket(socket.AF_INET6,socket.SOCK_STREAM)\n"
            "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            "s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)\n"
            f"s.bind(('::',{port}));s.listen(128)\n"
            "print('ready',flush=True)\n"
            "while True:\n c,_=s.accept();c.close()\n"
        )
        self._listener = subprocess.Popen(["ip", "netns", "exec", self.server, sys.executable, "-c", code],
                                          stdout=subprocess.PIPE, text=True)
        assert self._listener.stdout is not None  # stdout=PIPE
        assert self._listener.stdout.readline().strip() == "ready"

    def close(self) -> None:
        if self._listener is not None:
            self._listener.kill()
            self._listener.wait()
        for ns in (self.server, self.client):
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)


def _settle(ns: str) -> None:
    for key, value in (("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.default.rp_filter", "0"),
                       ("net.ipv6.conf.all.accept_dad", "0"), ("net.ipv6.conf.default.accept_dad", "0")):
        nsexec(ns, "sysctl", "-qw", f"{key}={value}", check=False)
    nsexec(ns, "ip", "link", "set", "lo", "up")


def build_scene(tag: str = "t") -> Scene:
    """Create a server/client pair of namespaces; the caller must close() it."""
    n = next(_counter)
    base = f"nb{tag}{os.getpid() % 100000}x{n}"
    sc = Scene(server=f"{base}s", client=f"{base}c")
    try:
        for ns in (sc.server, sc.client):
            sh("ip", "netns", "add", ns)
            _settle(ns)
        sh("ip", "link", "add", "veth0", "netns", sc.server, "type", "veth", "peer", "name", "veth0", "netns", sc.client)
        for ns, a4, a6 in ((sc.server, SERVER4, SERVER6), (sc.client, CLIENT4, CLIENT6)):
            nsexec(ns, "ip", "addr", "add", f"{a4}/15", "dev", "veth0")
            nsexec(ns, "ip", "addr", "add", f"{a6}/32", "dev", "veth0", "nodad")
            nsexec(ns, "ip", "link", "set", "veth0", "up")
        # Resolve neighbours both ways before any counted packet is sent.
        nsexec(sc.client, "ping", "-c1", "-W2", SERVER4, check=False)
        nsexec(sc.client, "ping", "-c1", "-W2", SERVER6, check=False)
    except BaseException:
        sc.close()
        raise
    return sc


@contextmanager
def scene(tag: str = "t"):
    """Create a server/client pair of namespaces; always deleted afterwards."""
    sc = build_scene(tag)
    try:
        yield sc
    finally:
        sc.close()


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
