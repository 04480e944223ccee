"""`netblock demo`: a spam storm, end to end, on the real kernel, in throwaway namespaces.

The demo writes a synthetic but realistic Postfix log of a storm, runs the
real `netblock` commands inside a server namespace (ingest → policy →
aggregation → kernel), makes the zombies knock again with real SYNs from a
client namespace, samples the kernel's counters and prints the wrap-up.
The host's own namespace and ruleset are never touched; every namespace is
deleted afterwards, also on Ctrl-C or error (unless --keep).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from netblock.demo import lab
from netblock.errors import NetblockError, PermissionDenied, ToolMissing

MX = "mx1.example.org"
LEGIT = ("198.18.5.200", "198.51.100.10", "198.19.44.44")  # deliver real mail; two sit inside zombie ranges


@dataclass
class Storm:
    """The synthetic log and the truth the demo checks its result against."""

    lines: list[str] = field(default_factory=list)
    zombies: dict[str, str] = field(default_factory=dict)  # ip -> group
    legit: tuple[str, ...] = LEGIT


def _ts(when: datetime) -> str:
    return when.strftime("%b %e %H:%M:%S")


def storm_log(now: datetime, seed: int = 25) -> Storm:
    """A storm in the last 50 minutes: two dense /24s, a sparse /16, scattered singles."""
    rng = random.Random(seed)
    storm = Storm()
    groups = {
        "dense /24 (DNSBL)": [f"198.18.5.{h}" for h in rng.sample(range(2, 199), 40)],
        "dense /24 (dynamic, bad HELO)": [f"198.18.77.{h}" for h in rng.sample(range(2, 254), 25)],
        "sparse /16": [f"198.19.{n}.{rng.randrange(2, 254)}" for n in rng.sample(range(0, 256), 70) if n != 44],
        "single": ["192.0.2.10", "192.0.2.77", "192.0.2.200", "198.51.100.23", "198.51.100.99",
                   "203.0.113.5", "203.0.113.66", "203.0.113.201"],
    }
    reasons = {
        "dense /24 (DNSBL)": ("dnsbl", "no-rdns"),
        "dense /24 (dynamic, bad HELO)": ("dynamic", "bad-helo"),
        "sparse /16": ("dnsbl", "unknown-user", "bad-helo"),
        "single": ("dnsbl", "bad-helo", "unknown-user", "no-rdns"),
    }
    events: list[tuple[datetime, str]] = []
    pid = 4000
    for group, ips in groups.items():
        for ip in ips:
            storm.zombies[ip] = group
            kind = rng.choice(reasons[group])
            tries = 12 if kind == "unknown-user" else rng.randint(5, 8)
            for _ in range(tries):
                t = now - timedelta(seconds=rng.randint(60, 50 * 60))
                pid += 1
                events += _rejected(t, pid, ip, kind, rng)
    # One-off rejections that stay below every threshold: not blocked.
    for ip in ("198.18.200.1", "198.18.201.7"):
        t = now - timedelta(seconds=rng.randint(60, 3000))
        events += _rejected(t, 9000, ip, "no-rdns", rng)[:2]
    for n, ip in enumerate(LEGIT * 3):
        t = now - timedelta(seconds=rng.randint(60, 3000))
        events += _delivered(t, 7000 + n, ip, f"4B{n:03X}C2D{n:02X}")
    events.sort(key=lambda e: e[0])
    storm.lines = [f"{_ts(t)} {MX} {rest}" for t, rest in events]
    return storm


def _rejected(t: datetime, pid: int, ip: str, kind: str, rng: random.Random) -> list[tuple[datetime, str]]:
    name = "unknown"
    helo = rng.choice(("localhost", f"[{ip}]", "user-pc", "WIN-3KJ2L")) if kind == "bad-helo" else f"host{pid}.example"
    frm = f"from=<{rng.choice(('info', 'sales', 'noreply'))}@example.net> to=<{rng.choice(('alice', 'bob', 'x9f2'))}" \
          f"@example.org> proto=ESMTP helo=<{helo}>"
    reply = {
        "dnsbl": f"554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org; "
                 f"https://www.spamhaus.org/query/ip/{ip}",
        "no-rdns": f"450 4.7.25 Client host rejected: cannot find your hostname, [{ip}]",
        "dynamic": "550 5.7.1 Client host rejected: dynamic IP address, use your provider's relay",
        "bad-helo": f"504 5.5.2 <{helo}>: Helo command rejected: need fully-qualified hostname",
        "unknown-user": "550 5.1.1 <x9f2@example.org>: Recipient address rejected: User unknown in local "
                        "recipient table",
    }[kind]
    if kind == "dynamic":
        name = f"dyn-{ip.replace('.', '-')}.pool.example.net"
    s = f"postfix/smtpd[{pid}]:"
    return [
        (t, f"{s} connect from {name}[{ip}]"),
        (t + timedelta(seconds=1), f"{s} NOQUEUE: reject: RCPT from {name}[{ip}]: {reply}; {frm}"),
        (t + timedelta(seconds=2), f"{s} disconnect from {name}[{ip}] ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4"),
    ]


def _delivered(t: datetime, pid: int, ip: str, qid: str) -> list[tuple[datetime, str]]:
    name = f"mail{pid}.partner.example"
    s = f"postfix/smtpd[{pid}]:"
    return [
        (t, f"{s} connect from {name}[{ip}]"),
        (t + timedelta(seconds=1), f"{s} {qid}: client={name}[{ip}]"),
        (t + timedelta(seconds=1), f"postfix/cleanup[{pid + 1}]: {qid}: message-id=<{qid}@partner.example>"),
        (t + timedelta(seconds=1), f"postfix/qmgr[900]: {qid}: from=<news@partner.example>, size=4242, nrcpt=1 "
                                   "(queue active)"),
        (t + timedelta(seconds=2), f"postfix/local[{pid + 2}]: {qid}: to=<alice@example.org>, relay=local, "
                                   "delay=0.2, delays=0.1/0/0/0.1, dsn=2.0.0, status=sent (delivered to mailbox)"),
        (t + timedelta(seconds=2), f"{s} disconnect from {name}[{ip}] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5"),
        (t + timedelta(seconds=3), f"postfix/qmgr[900]: {qid}: removed"),
    ]


def _preflight() -> None:
    if os.geteuid() != 0:
        raise PermissionDenied("netblock demo builds network namespaces: run it as root")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            raise ToolMissing(f"netblock demo needs `{tool}` (Debian: apt-get install iproute2 nftables)")


def run(backend: str = "nftables", keep: bool = False, out=sys.stdout, seed: int = 25) -> int:
    """Build the lab, run the storm through netblock, print the wrap-up."""
    _preflight()
    started = time.monotonic()
    netblock = lab_binary()
    tmp = tempfile.mkdtemp(prefix="netblock-demo-")
    os.chmod(tmp, 0o700)
    log = os.path.join(tmp, "mail.log")
    conf = os.path.join(tmp, "netblock.toml")
    db = os.path.join(tmp, "netblock.db")
    with open(conf, "w") as f:
        f.write(f'db = "{db}"\nbackend = "{backend}"\nlock_file = "{tmp}/netblock.lock"\n'
                f'[sources]\nfiles = ["{log}"]\n')
    now = datetime.now(timezone.utc)
    storm = storm_log(now, seed)
    with open(log, "w") as f:
        f.write("\n".join(storm.lines) + "\n")

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    sc = lab.build_scene("demo")
    try:
        def nb(*args: str, check: bool = True) -> subprocess.CompletedProcess:
            r = sc.server_exec(netblock, "--config", conf, *args, check=False)
            if check and r.returncode != 0:
                raise NetblockError(f"`netblock {' '.join(args)}` failed in the demo: {r.stderr.strip()}")
            return r

        say(f"netblock demo: {len(storm.lines)} lines of a Postfix storm log, {len(storm.zombies)} zombies, "
            f"{len(storm.legit)} legitimate senders; backend {backend}; namespaces {sc.server} (MX) "
            f"and {sc.client} (the Internet)")
        nb("ingest", log)
        blocks = json.loads(nb("list", "--json").stdout)
        status = json.loads(nb("status", "--json").stdout)

        # The zombies knock again: every one of them, plus an address that never
        # attacked inside the widened /16, plus the legitimate senders.
        knockers = sorted(storm.zombies) + ["198.19.250.9"]
        sc.add_client(*knockers, *storm.legit)
        sc.listen(25)
        rng = random.Random(seed)
        sent = {}
        for ip in knockers:
            k = {"dense /24 (DNSBL)": 60, "dense /24 (dynamic, bad HELO)": 45}.get(storm.zombies.get(ip, ""), 20)
            k += rng.randint(0, 20)
            sent[ip] = sc.syn(ip, k)
        admitted = {ip: sc.probe(ip) for ip in storm.legit}
        nb("sample")
        say()
        say(nb("report", "--since", "1d", "--top", "10").stdout.rstrip())
        for extra in (("report", "classes", "--since", "1d"), ("report", "summary", "--since", "1d")):
            r = nb(*extra, check=False)
            if r.returncode == 0:
                say()
                say(r.stdout.rstrip())
        say()
        elements = status["installed"]
        say(f"What happened: {len(storm.zombies)} abusive IPs in the log became {len(blocks)} blocks in the store "
            f"and {elements} netblocks in the kernel (dense ranges widened, the rest merged).")
        say(f"The zombies knocked again with {sum(sent.values())} SYNs to port 25; the kernel dropped and counted "
            f"them per netblock (table above), including {sent['198.19.250.9']} from 198.19.250.9, which never "
            f"attacked but sits in the widened /16.")
        say("Legitimate senders: " + ", ".join(f"{ip} {'admitted' if v == 'open' else v.upper()}"
                                               for ip, v in admitted.items())
            + " (carved out of the blocked ranges: they delivered mail).")
        say(f"Done in {time.monotonic() - started:.1f} s; your own firewall was not touched.")
        return 0 if all(v == "open" for v in admitted.values()) else 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        if keep:
            say(f"--keep: namespaces left for poking around: `ip netns exec {sc.server} nft list ruleset`; "
                f"remove them with: ip netns del {sc.server}; ip netns del {sc.client}; rm -r {tmp}")
            if sc._listener is not None:
                sc._listener.kill()
        else:
            sc.close()
            shutil.rmtree(tmp, ignore_errors=True)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def lab_binary() -> str:
    from netblock.system.units import netblock_path

    return netblock_path()
