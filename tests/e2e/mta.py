"""The e2e scene: a real MTA, a real DNS server and the real netblock daemon in one namespace.

The server namespace of a lab scene (netblock/demo/lab.py) gets dnsmasq on
127.0.0.1 (reverse and forward records of the legitimate senders, NXDOMAIN for
every other name, and the DNSBL zone), Postfix (plain smtpd, or postscreen in
front of it) or Exim on 198.18.0.1:25, each with its own configuration
rendered from tests/e2e/files/, and `netblock daemon` following the MTA's log.
The client namespace holds every sender address and speaks real SMTP
(smtplib, bound to the sender's address) or sends raw SYNs.

Every process started here runs in its own session, so `close()` can kill
whole process groups; the namespaces are deleted by the lab scene. Nothing is
started in, or sent to, the host's own namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import socket
import string
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from helpers import NETBLOCK, clean_env
from netaddr import IPAddress, IPNetwork, iprange_to_cidrs
from netns import SERVER4, build_scene, check_allowed, nsexec, run_in_netns, wait_for

FILES = Path(__file__).resolve().parent / "files"
EXIM = os.environ.get("NETBLOCK_E2E_EXIM", "/opt/netblock-e2e/exim/usr/sbin/exim4")
POSTFIX = shutil.which("postfix", path="/usr/sbin:/sbin") or "/usr/sbin/postfix"
ZONE = "bl.e2e.test"
DOMAIN = "e2e.test"
WAIT_S = 30.0  # bound on every wait for a daemon or the MTA
CONNECT_TIMEOUT = 0.5  # below the kernel's 1 s initial SYN retransmission timeout: one SYN per attempt


# ------------------------------------------------------------------ the senders

@dataclass(frozen=True)
class Sender:
    """One client address and what it does to the MTA."""

    ip: str
    role: str  # legit, dnsbl, no-rdns, bad-helo, dictionary
    name: str = ""  # forward-confirmed reverse name ("" = no PTR)
    listed: bool = False  # in the DNSBL zone


LEGIT = Sender("198.51.100.200", "legit", "mail.sender.test")
LEGIT2 = Sender("192.0.2.60", "legit", "relay.other.test")
DENSE_A = [Sender(f"198.51.100.{i}", "dnsbl", listed=True) for i in range(10, 16)]
DENSE_B = [Sender(f"203.0.113.{i}", "no-rdns") for i in range(30, 36)]
SPARSE = [Sender(f"198.19.{i}.77", "dnsbl", listed=True) for i in range(1, 6)]
SINGLES = [
    Sender("192.0.2.10", "bad-helo", "host10.zombie.test"),
    Sender("198.18.77.20", "dnsbl", listed=True),
    Sender("198.18.88.30", "no-rdns"),
    Sender("192.0.2.40", "dictionary", "host40.zombie.test"),
]
BELOW = Sender("192.0.2.50", "bad-helo", "host50.zombie.test")  # one rejection: never blocked
DENSE_A_NET, DENSE_B_NET, SPARSE_NET = (IPNetwork(n) for n in ("198.51.100.0/24", "203.0.113.0/24", "198.19.0.0/16"))
ZOMBIES = DENSE_A + DENSE_B + SPARSE
EVERYONE = [LEGIT, LEGIT2, *ZOMBIES, *SINGLES, BELOW]


# ------------------------------------------------------------------ SMTP in the client namespace

class _SMTP(smtplib.SMTP):
    """smtplib with a short connect timeout (one SYN when dropped) but patience for the greeting."""

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), CONNECT_TIMEOUT, self.source_address)
        sock.settimeout(10)
        return sock


def _session(src: str, helo: str, rcpts: list[str], data: bool, pregreet: bool) -> list:
    """One SMTP session from ``src``: the reply code of each RCPT (and of DATA), or a failure word."""
    check_allowed(src)
    if pregreet:
        s = socket.create_connection((SERVER4, 25), CONNECT_TIMEOUT, source_address=(src, 0))
        try:
            s.sendall(f"EHLO {helo}\r\n".encode())  # before the greeting: what bots do
            got = b""
            deadline = time.monotonic() + 2.5  # past postscreen's greet wait
            try:
                while (left := deadline - time.monotonic()) > 0 and b"220 " not in got:
                    s.settimeout(left)
                    chunk = s.recv(4096)
                    if not chunk:
                        return ["closed"]
                    got += chunk
            except (socket.timeout, TimeoutError):
                pass
            s.sendall(b"QUIT\r\n")
            s.settimeout(2)
            try:
                while s.recv(4096):
                    pass
            except (socket.timeout, TimeoutError, ConnectionResetError):
                pass
            return ["pregreet"]
        finally:
            s.close()
    try:
        smtp = _SMTP(SERVER4, 25, local_hostname=helo, timeout=10, source_address=(src, 0))
    except (socket.timeout, TimeoutError):
        return ["timeout"]
    codes = []
    try:
        smtp.ehlo_or_helo_if_needed()
        smtp.mail("sender@" + (helo if "." in helo else "spam.test"))
        for r in rcpts:
            codes.append(smtp.rcpt(r)[0])
        if data and any(c == 250 for c in codes):
            codes.append(smtp.data(f"From: <sender@{helo}>\r\nTo: <{rcpts[0]}>\r\nSubject: e2e\r\n\r\nhello\r\n")[0])
        smtp.quit()
    except smtplib.SMTPException as e:
        codes.append(type(e).__name__)
    finally:
        smtp.close()
    return codes


def _sessions(specs: list[tuple], workers: int) -> list[list]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda spec: _session(*spec), specs))


def _connect_attempts(srcs: list[str]) -> dict[str, str]:
    """One TCP connect per source to port 25: "open" or "timeout" (exactly one SYN each when dropped)."""
    out = {}
    for src in srcs:
        check_allowed(src)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.bind((src, 0))
            s.connect((SERVER4, 25))
            out[src] = "open"
        except (socket.timeout, TimeoutError):
            out[src] = "timeout"
        finally:
            s.close()
    return out


# ------------------------------------------------------------------ the scene

def _render(template: Path, dest: Path, **values) -> None:
    dest.write_text(string.Template(template.read_text()).substitute(**values))


def _start(ns: str, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """A process in ``ns``, in its own session (so its whole group can be killed)."""
    with open(log, "ab") as out:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)


def _kill_group(proc: subprocess.Popen | None, sig: int = signal.SIGKILL) -> None:
    if proc is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


@dataclass
class MailScene:
    """Server namespace with DNS + MTA + netblock daemon; client namespace with every sender."""

    mta: str  # postfix, postscreen, exim
    backend: str
    root: Path
    lab: object = None
    procs: dict = field(default_factory=dict)
    netns_etc: Path | None = None
    daemon_starts: int = 0

    # -- paths
    @property
    def log(self) -> Path:
        return self.root / ("log/mainlog" if self.mta == "exim" else "log/mail.log")

    @property
    def config(self) -> Path:
        return self.root / "netblock.toml"

    @property
    def db(self) -> Path:
        return self.root / "nb.db"

    # -- building
    def build(self) -> None:
        self.lab = build_scene("e2e")
        for s in EVERYONE:
            self.lab.add_client(s.ip)
        self.root.chmod(0o755)
        for d in ("log", "data", "mail", "run"):
            (self.root / d).mkdir()
        self._dns()
        if self.mta == "exim":
            self._exim()
        else:
            self._postfix()
        self._netblock_config()

    def _dns(self) -> None:
        """dnsmasq on 127.0.0.1 of the server namespace; /etc/netns/NS/resolv.conf points there."""
        lines = ["no-resolv", "no-hosts", "listen-address=127.0.0.1", "bind-interfaces", "port=53",
                 "local=/test/", "local=/in-addr.arpa/", "user=root", "group=root",
                 f"pid-file={self.root}/run/dnsmasq.pid"]
        for s in EVERYONE:
            if s.name:
                lines.append(f"host-record={s.name},{s.ip}")
            if s.listed:
                lines.append(f"address=/{'.'.join(reversed(s.ip.split('.')))}.{ZONE}/127.0.0.2")
        conf = self.root / "dnsmasq.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.netns_etc = Path("/etc/netns") / self.lab.server
        self.netns_etc.mkdir(parents=True, exist_ok=True)
        (self.netns_etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        self.procs["dns"] = _start(self.lab.server, ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}"],
                                   self.root / "dnsmasq.out")
        ok = wait_for(lambda: self._resolves(f"{LEGIT.name}") == LEGIT.ip, timeout=WAIT_S, interval=0.1)
        assert ok, "dnsmasq did not answer in the server namespace: " + (self.root / "dnsmasq.out").read_text()

    def _resolves(self, name: str) -> str:
        r = nsexec(self.lab.server, sys.executable, "-c",
                   f"import socket;print(socket.gethostbyname({name!r}))", check=False)
        return r.stdout.strip()

    def _postfix(self) -> None:
        conf = self.root / "postfix"
        conf.mkdir()
        (self.root / "queue").mkdir()
        if self.mta == "postscreen":
            services = ("smtp      inet  n       -       n       -       1       postscreen\n"
                        "smtpd     pass  -       -       n       -       -       smtpd\n"
                        "dnsblog   unix  -       -       n       -       0       dnsblog\n"
                        "tlsproxy  unix  -       -       n       -       0       tlsproxy")
        else:
            services = "smtp      inet  n       -       n       -       -       smtpd"
        values = dict(server=SERVER4, root=self.root, conf=conf, log=self.log, zone=ZONE, smtp_services=services)
        for name in ("main.cf", "master.cf", "helo_access.pcre", "vmailbox", "header_checks.pcre"):
            _render(FILES / "postfix" / name, conf / name, **values)
        shutil.chown(self.root / "mail", "nobody", "nogroup")
        shutil.chown(self.root / "data", "postfix", "postfix")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MAIL_CONFIG": str(conf), "LANG": "C"}
        self.procs["mta"] = _start(self.lab.server, [POSTFIX, "-c", str(conf), "start-fg"],
                                   self.root / "postfix.out", env=env)
        self._wait_listening()

    def _exim(self) -> None:
        for d in ("spool", "log"):
            (self.root / d).mkdir(exist_ok=True)
            shutil.chown(self.root / d, "Debian-exim", "Debian-exim")
        shutil.chown(self.root / "mail", "Debian-exim", "Debian-exim")
        conf = self.root / "exim.conf"
        _render(FILES / "exim" / "exim.conf", conf, server=SERVER4, root=self.root, zone=ZONE, exim=EXIM)
        conf.chmod(0o644)
        self.procs["mta"] = _start(self.lab.server, [EXIM, "-C", str(conf), "-bdf", "-q30m"], self.root / "exim.out")
        self._wait_listening()

    def _wait_listening(self) -> None:
        def up():
            r = nsexec(self.lab.server, "ss", "-Hltn", "sport = :25", check=False)
            return SERVER4 in r.stdout
        assert wait_for(up, timeout=WAIT_S, interval=0.1), f"{self.mta} is not listening: " + self.mta_output()

    def mta_output(self) -> str:
        texts = []
        for name in ("postfix.out", "exim.out", "log/mail.log", "log/mainlog", "log/paniclog"):
            p = self.root / name
            if p.exists():
                texts.append(f"--- {name}\n" + p.read_text()[-3000:])
        return "\n".join(texts)

    def _netblock_config(self) -> None:
        """Default thresholds; the /16 rule needs 4 distinct /24s instead of 64 (a few dozen zombies)."""
        self.config.write_text(f"""
lock_file = "{self.root}/run/netblock.lock"
backend = "{self.backend}"
[firewall]
families = ["ipv4"]
[sources]
files = ["{self.log}"]
format = "{'exim' if self.mta == 'exim' else 'postfix'}"
[daemon]
tick = "1s"
[widen]
rules = [{{family = 4, prefixlen = 24, min_count = 4}},
         {{family = 4, prefixlen = 16, min_count = 4, unit_prefixlen = 24}}]
""")

    # -- the daemon
    def start_daemon(self) -> None:
        env = clean_env()
        self.daemon_starts += 1
        self.procs["daemon"] = _start(
            self.lab.server, [NETBLOCK, "--config", str(self.config), "--db", str(self.db), "daemon"],
            self.root / f"daemon{self.daemon_starts}.err", env=env)

    def stop_daemon(self) -> int:
        proc = self.procs.pop("daemon")
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise

    def daemon_errors(self) -> str:
        return "".join(p.read_text() for p in sorted(self.root.glob("daemon*.err")))

    def netblock(self, *args: str, expect: int = 0) -> str:
        env = clean_env()
        r = nsexec(self.lab.server, NETBLOCK, "--config", str(self.config), "--db", str(self.db), *args,
                   check=False, env=env)
        assert r.returncode == expect, (args, r.returncode, r.stdout, r.stderr)
        return r.stdout

    # -- traffic
    def sessions(self, specs: list[tuple], workers: int = 8) -> list[list]:
        """Run SMTP sessions (src, helo, rcpts, data, pregreet) from the client namespace."""
        return run_in_netns(self.lab.client, _sessions, specs, workers)

    def connect_attempts(self, srcs: list[str]) -> dict[str, str]:
        return run_in_netns(self.lab.client, _connect_attempts, srcs)

    def syn(self, src: str, count: int) -> int:
        return self.lab.syn(src, count)

    def deliver(self, sender: Sender) -> list:
        """Real mail from a legitimate sender to a real mailbox; the reply codes of RCPT and DATA."""
        return self.sessions([(sender.ip, sender.name, [f"alice@{DOMAIN}"], True, False)])[0]

    def mailbox(self) -> int:
        """Messages the MTA has delivered into the scene's maildirs."""
        return sum(1 for p in (self.root / "mail").glob("**/new/*") if p.is_file())

    def rotate_log(self) -> None:
        """Rename the MTA's log (logrotate's `create` way) and make the MTA write a new one."""
        os.rename(self.log, str(self.log) + ".1")
        if self.mta != "exim":
            # What `postfix logrotate` does after its rename: reload, so postlogd reopens the file.
            nsexec(self.lab.server, POSTFIX, "-c", str(self.root / "postfix"), "reload")
            # The new file appears with postlogd's next record; the master's own line confirms the reload.
            assert wait_for(lambda: "reload -- version" in self.log_text(), timeout=WAIT_S, interval=0.05), \
                self.mta_output()
        # Exim checks before each write whether its log was renamed, and opens a new one.

    def log_text(self) -> str:
        parts = [Path(str(self.log) + ".1"), self.log]
        return "".join(p.read_text() for p in parts if p.exists())

    # -- the kernel
    def installed(self) -> set[IPNetwork]:
        """The IPv4 netblocks in the kernel, read with the kernel tools themselves."""
        if self.backend == "ipset":
            r = nsexec(self.lab.server, "ipset", "list", "netblock4", check=False)
            if r.returncode != 0:
                return set()  # not created yet
            members = r.stdout.split("Members:", 1)[1].splitlines()  # "CIDR timeout N packets N bytes N"
            return {IPNetwork(m.split()[0]) for m in members if m.strip()}
        r = nsexec(self.lab.server, "nft", "-j", "list", "set", "inet", "netblock", "block4", check=False)
        if r.returncode != 0:
            return set()  # not created yet
        data = json.loads(r.stdout)
        nets = set()
        for item in data["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                val = elem["elem"]["val"] if isinstance(elem, dict) and "elem" in elem else elem
                if isinstance(val, dict) and "prefix" in val:
                    nets.add(IPNetwork(f"{val['prefix']['addr']}/{val['prefix']['len']}"))
                elif isinstance(val, dict) and "range" in val:
                    lo, hi = val["range"]
                    nets.update(iprange_to_cidrs(lo, hi))
                else:
                    nets.add(IPNetwork(f"{val}/32"))
        return nets

    def close(self) -> None:
        for name in ("daemon", "mta", "dns"):
            proc = self.procs.pop(name, None)
            if name == "mta" and proc is not None and self.mta != "exim":
                _kill_group(proc, signal.SIGTERM)  # master stops its children itself
            _kill_group(proc)
        if self.lab is not None:
            self.lab.close()  # kills whatever is left in the namespaces, then deletes them
        if self.netns_etc is not None:
            shutil.rmtree(self.netns_etc, ignore_errors=True)


def make_root() -> Path:
    """A world-traversable work directory: the MTAs' unprivileged users must reach their queues."""
    return Path(tempfile.mkdtemp(prefix="nbe2e-", dir="/tmp"))


def covering(nets: set[IPNetwork], ip: str) -> IPNetwork | None:
    addr = IPAddress(ip)
    for n in nets:
        if addr in n:
            return n
    return None
