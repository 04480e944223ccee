"""What the tests set up again and again, written once: configs, log files, a Runner, a daemon process.

``tests/`` is on sys.path (conftest.py), so a test says ``from helpers import
...``; the benches import the same module (bench/common.py), so a bench
measures the set-up the tests prove. Log lines are in loglines.py, the fake
backend in fakes.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

NETBLOCK = shutil.which("netblock", path=os.path.dirname(sys.executable)) or "netblock"

# The caller's NETBLOCK_* settings (NETBLOCK_NOW, NETBLOCK_DB, ...) and systemd's
# notify and watchdog variables never leak into a netblock the tests start.
FOREIGN = ("NETBLOCK_", "NOTIFY_", "WATCHDOG_")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without netblock's and systemd's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    env.update(extra)
    return env


def append(path, *lines: str) -> None:
    """Append whole lines to a log file, as an MTA writes them."""
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in lines))


def dnsbl_policy(*, threshold: int = 2, widen: bool = True, min_count: int | None = 3,
                 density: bool | None = None, rules: str | None = None) -> str:
    """The tests' policy as TOML: ``threshold`` DNSBL rejects within an hour block for a day; with
    ``widen``, the /24 is blocked once ``min_count`` of its addresses are (None: [widen]'s default rules),
    or as ``rules`` (a TOML array of [widen] rules) says. ``density`` False turns [widen] off while the
    class still feeds routed widening.

    >>> print(dnsbl_policy(threshold=1, widen=False, min_count=None), end="")
    [policy.classes.dnsbl]
    threshold = 1
    window = "1h"
    ttl = "1d"
    widen = false
    [widen]
    enabled = false
    """
    flag = "true" if widen else "false"
    enabled = flag if density is None else ("true" if density else "false")
    text = (f'[policy.classes.dnsbl]\nthreshold = {threshold}\nwindow = "1h"\nttl = "1d"\nwiden = {flag}\n'
            f"[widen]\nenabled = {enabled}\n")
    if rules is not None:
        text += f"rules = {rules}\n"
    elif min_count is not None:
        text += f"rules = [{{family = 4, prefixlen = 24, min_count = {min_count}}}]\n"
    return text


def daemon_toml(lock_file, files=(), *, tick: str | None = None, backend: str | None = None,
                host_id: str | None = None, db: str | None = None, daemon: str = "", policy: str = "",
                extra: str = "") -> str:
    """A config as TOML: the top-level keys, [sources] files, [daemon] (``tick`` and the ``daemon``
    lines), then ``policy`` (see dnsbl_policy) and ``extra``, TOML sections of the caller's own.

    >>> print(daemon_toml("/run/l", ["/var/log/mail.log"], tick="1s", backend="nftables"), end="")
    lock_file = "/run/l"
    backend = "nftables"
    [sources]
    files = ["/var/log/mail.log"]
    [daemon]
    tick = "1s"
    """
    lines = [f'host_id = "{host_id}"'] if host_id else []
    lines += [f'db = "{db}"'] if db else []
    lines.append(f'lock_file = "{lock_file}"')
    lines += [f'backend = "{backend}"'] if backend else []
    if files:
        lines += ["[sources]", f"files = {json.dumps([str(f) for f in files])}"]
    section = ([f'tick = "{tick}"'] if tick else []) + ([daemon.strip("\n")] if daemon else [])
    if section:
        lines += ["[daemon]", *section]
    return "\n".join(lines) + "\n" + policy + extra


def runner(cfg, store, backend=None, *, factory=None, clock, follow_mode: bool = False, stderr=None,
           open_sources: bool = True):
    """A Runner over ``store`` that syncs into ``backend`` (one object for every sync) or into what
    ``factory`` makes at each, its sources opened; stderr goes to a StringIO unless given."""
    import io

    from netblock.run.tick import Runner

    r = Runner(cfg, store, factory or (lambda: backend), clock=clock, follow_mode=follow_mode,
               stderr=io.StringIO() if stderr is None else stderr)
    if open_sources:
        r.open_sources()
    return r


def netblock_in(ns: str, conf, *args: str, db=None, input: str | None = None, expect: int | None = 0,
                timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``netblock --config CONF [--db DB] ARGS`` in namespace ``ns`` with a clean environment (or
    ``env``); asserts its exit status is ``expect`` (None: any). The timeout guards against a hang."""
    argv = [NETBLOCK, "--config", str(conf), *(["--db", str(db)] if db else []), *args]
    r = subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, capture_output=True, text=True,
                       timeout=timeout, env=clean_env() if env is None else env)
    if expect is not None:
        assert r.returncode == expect, (args, r.returncode, r.stdout, r.stderr)
    return r


def run_daemon(daemon, driver, join_s: float = 10) -> int:
    """``daemon.run()`` in this thread, the main one, where signals are delivered, while ``driver``
    (which ends by signalling the daemon to stop) runs in another; the daemon's exit status."""
    import threading

    t = threading.Thread(target=driver)
    t.start()
    try:
        return daemon.run()
    finally:
        t.join(join_s)


class Notify:
    """A bound sd_notify socket at ``path``: a path socket is reachable from a namespace (abstract ones are not)."""

    def __init__(self, path, timeout: float):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(timeout)

    def ready(self) -> bool:
        """Whether the next message is READY=1 (the daemon's start-up tick is over)."""
        return self.sock.recv(4096).startswith(b"READY=1")

    def close(self) -> None:
        self.sock.close()


def start_daemon(ns: str, conf, stderr, *, db=None, notify: Notify | None = None, command=None,
                 args=()) -> subprocess.Popen:
    """``netblock daemon`` in namespace ``ns`` with a clean environment (NOTIFY_SOCKET: ``notify``'s)."""
    env = clean_env(**({"NOTIFY_SOCKET": notify.path} if notify is not None else {}))
    argv = [*(command or [NETBLOCK]), "--config", str(conf), *(["--db", str(db)] if db else []), *args, "daemon"]
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def stop_daemon(proc: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> int | None:
    """Send ``sig`` and wait; kill what does not exit within ``timeout``. Its exit status, None if killed."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def nft_elements(ns: str, set_name: str = "block4") -> dict[str, int]:
    """{element as text (address or prefix): packets} of one of netblock's nftables sets ({} without it)."""
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "set", "inet", "netblock", set_name],
                       capture_output=True, text=True)
    if r.returncode:
        return {}
    out = {}
    for item in json.loads(r.stdout or '{"nftables": []}')["nftables"]:
        for e in item.get("set", {}).get("elem", []):
            e = e["elem"] if isinstance(e, dict) and "elem" in e else {"val": e}
            val = e["val"]
            key = f"{val['prefix']['addr']}/{val['prefix']['len']}" if isinstance(val, dict) else str(val)
            out[key] = (e.get("counter") or {}).get("packets", 0)
    return out
