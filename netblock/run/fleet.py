"""Fleet propagation: a change made on one MX reaches every other MX's kernel within a second.

The PostgreSQL store NOTIFYs ``netblock_changes`` from a trigger whenever
blocks or the allowlist change, whoever changed them (a CLI command, another
host's policy decision, pruning). Each daemon LISTENs on a connection of its
own, puts its socket in the event loop's select(), and on a notification
runs the one sync path; the full reconcile of every tick stays the safety
net, so a notification lost while the connection was down costs at most a
tick.

Notifications caused by this daemon's own store connection are ignored: its
own changes are already followed by its own sync or push.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from netblock.store.postgres import CHANNEL, connect, mask_dsn

RETRY_EVERY_S = 2.0


class Listener:
    """A LISTEN connection that reconnects by itself, at most once per ``retry_every`` seconds."""

    def __init__(self, dsn: str, *, own_pid: Callable[[], int | None] = lambda: None,
                 log: Callable[[str], None] = lambda m: None, retry_every: float = RETRY_EVERY_S,
                 marker: str | None = None):
        self.dsn = dsn
        self.marker = marker  # where `netblock status` learns since when the store is unreachable
        self.own_pid = own_pid
        self.log = log
        self.retry_every = retry_every
        self._conn: Any = None  # a psycopg connection (psycopg loads only for a fleet)
        self._next_try = 0.0
        self._missed = False  # reconnected: what happened meanwhile is unknown, so the next wake syncs
        self._down_logged = False

    def fileno(self) -> int | None:
        """The socket to select() on, connecting first if needed; None while the server is unreachable."""
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._drop("connection lost")
        if self._conn is None:
            now = time.monotonic()
            if now < self._next_try:
                return None
            self._next_try = now + self.retry_every
            try:
                conn = connect(self.dsn)
                conn.execute(f"LISTEN {CHANNEL}")
            except Exception as exc:  # StoreError, or the LISTEN failing on a half-open server
                if self.marker is not None:
                    mark_unreachable(self.marker)
                if not self._down_logged:
                    self.log(f"fleet: cannot listen for changes on {mask_dsn(self.dsn)}: {exc} "
                             f"(retrying; every tick still syncs)")
                    self._down_logged = True
                return None
            if self._down_logged:
                self.log("fleet: listening for changes again")
            self._down_logged = False
            self._conn = conn
            self._missed = True
            if self.marker is not None:
                mark_reachable(self.marker)
        try:
            return self._conn.pgconn.socket
        except Exception:
            self._drop("connection lost")
            return None

    def changed(self) -> bool:
        """Drain what arrived; True if another connection changed blocks or the allowlist (or some may be missed)."""
        found, self._missed = self._missed, False
        if self._conn is None:
            return found
        mine = self.own_pid()
        pgconn = self._conn.pgconn
        try:
            # libpq directly: nothing else runs on this connection, and only
            # consume_input() tells a readable socket at EOF (server gone) apart.
            pgconn.consume_input()
            while (note := pgconn.notifies()) is not None:
                if note.relname.decode() == CHANNEL and note.be_pid != mine:
                    found = True
        except Exception as exc:
            self._drop(f"reading notifications failed: {exc}")
            return True
        return found

    def _drop(self, why: str) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
            self.log(f"fleet: {why}; reconnecting")
            self._down_logged = False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def listener_for(runner) -> Listener | None:
    """A listener when the runner's store is the fleet's PostgreSQL; None for SQLite (one host)."""
    store = runner.store
    dsn = getattr(store, "dsn", None)
    if dsn is None:
        return None
    return Listener(dsn, own_pid=store.backend_pid, log=runner.log, marker=marker_path(runner.config))


def follow_change(runner) -> None:
    """Another host changed the shared block list: make this kernel equal to the store now."""
    for err in runner.sync_now():
        runner.log(f"fleet: sync after a change failed: {err} (retrying next tick)")


def view_host(store, config, host_id: str) -> None:
    """Make the store's reports show one host (``report --host``); refuse an id the fleet does not know."""
    from netblock.errors import BadInput

    if not hasattr(store, "view_host"):  # SQLite: one host, which is this one
        if host_id != getattr(config, "host_id", None):
            raise BadInput(f"--host {host_id}: this store (SQLite) holds only this host's data "
                           f"({getattr(config, 'host_id', '?')}); a fleet needs a postgresql:// store")
        return
    known = store.hosts()
    if host_id not in known:
        raise BadInput(f"--host {host_id}: no such host in the fleet (known: {', '.join(known) or 'none'})")
    store.view_host = host_id


def own_view(store, host_id: str):
    """The store seen as this host only (a fleet's store; SQLite is that already): metrics labelled
    host=ID must count this host's rejections, as Prometheus sums the hosts itself."""
    if hasattr(store, "view_host"):
        store.view_host = host_id
    return store


def per_host_packets(store, since, until) -> dict[str, dict[str, int]]:
    """{netblock text: {host id: packets dropped}} over the window: the per-host column of a fleet report."""
    saved = store.view_host
    out: dict[str, dict[str, int]] = {}
    try:
        for host in store.hosts():
            store.view_host = host
            for net, (packets, _b, _first, _last) in store.sample_drops(since, until).items():
                out.setdefault(net, {})[host] = packets
    finally:
        store.view_host = saved
    return out


# -- "store unreachable since ..." ---------------------------------------------------
#
# The daemon's listener is the one piece that notices an outage whether or not
# anything else is happening, so it keeps a marker file next to the kernel
# lock (under /run: an outage does not outlive a reboot) that `netblock
# status` reads when it cannot reach the store itself.

MARKER_NAME = "store-unreachable"


def marker_path(config) -> str:
    import os

    return os.path.join(os.path.dirname(config.lock_file) or ".", MARKER_NAME)


def mark_unreachable(path: str) -> None:
    import os
    from datetime import datetime, timezone

    if os.path.exists(path):
        return  # keep the first failure's time
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        with open(path, "x") as f:
            f.write(datetime.now(timezone.utc).isoformat(timespec="seconds") + "\n")
    except OSError:
        pass  # a status nicety: never worth failing the daemon for


def mark_reachable(path: str) -> None:
    import os

    try:
        os.unlink(path)
    except OSError:
        pass


def unreachable_since(config) -> str | None:
    try:
        with open(marker_path(config)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def status_unreachable(ctx, exc, *, as_json: bool) -> int:
    """`netblock status` while the fleet's store cannot be reached: what the kernel still holds.

    Only for a PostgreSQL store (anything else re-raises): its hosts keep
    their rules during an outage, which is what the operator wants confirmed.
    """
    from netblock.run.sync import read_installed
    from netblock.store.postgres import is_dsn, mask_dsn

    path = ctx.db_path
    if not is_dsn(path):
        raise exc
    since = unreachable_since(ctx.config)
    backend = ctx.backend()
    installed, missing = read_installed(backend)
    info = {"store": mask_dsn(path), "store_unreachable_since": since, "store_error": str(exc),
            "backend": backend.name, "installed": len(installed),
            "kernel_objects": "missing" if missing else "present"}
    if as_json:
        ctx.print_json(info)
        return 1
    when = since or "now (no daemon has noticed before)"
    for key, value in (("store", f"{info['store']}: store unreachable since {when}"),
                       ("error", str(exc)),
                       ("backend", f"{backend.name} ({backend.description})"),
                       ("kernel", f"{len(installed)} netblocks installed, kept as they are until the store "
                                  "is back" if not missing else f"NOT INSTALLED ({missing})")):
        ctx.print(f"{key + ':':<14}{value}")
    return 1


# -- the local spool: observations kept while the store is away -----------------------
#
# Without it an outage only pauses reading (the lines wait in the log), and a
# log rotated away meanwhile takes its unread lines along. With it the daemon
# keeps reading: each batch and the position it reaches go to the spool in one
# SQLite transaction, and the first write after the store answers again copies
# the spool into it first, so positions never go backwards.



def spool_path(config) -> str:
    """`[daemon] spool`: on disk in the state directory, not in /run, so it survives a reboot."""
    return config.daemon.spool


def spool_for(runner):
    """The spool of a daemon on the fleet's PostgreSQL; None for SQLite (the store is local already)."""
    if getattr(runner.store, "dsn", None) is None:
        return None
    from netblock.store.sqlite import Spool

    return Spool.open(spool_path(runner.config))


def _unreachable(store) -> bool:
    return getattr(store, "unreachable_since", None) is not None


def flush(runner) -> bool:
    """Copy what the spool holds into the store; True when nothing is left waiting.

    Only a store that is unreachable leaves the spool as it is; any other
    failure is raised like any other store write's.
    """
    spool = runner.spool
    if spool is None or not spool.pending():
        return True
    from netblock.errors import StoreError
    from netblock.store.sqlite import flush_spool

    try:
        n = flush_spool(spool, runner.store)
    except StoreError:
        if _unreachable(runner.store):
            return False
        raise
    runner.log(f"fleet: store reachable again; {n} observation(s) kept locally meanwhile are now stored")
    return True


def store_batch(runner, obs, state: dict[str, str]) -> None:
    """Store one batch of observations with the positions it reaches: in the store, or in the spool while it is away."""
    from netblock.errors import StoreError

    store = runner.store
    if flush(runner):
        try:
            with store.transaction():
                store.add_observations(obs)
                for key, value in state.items():
                    store.set_state(key, value)
            return
        except StoreError:
            if runner.spool is None or not _unreachable(store):
                raise
    spool = runner.spool
    first = not spool.pending()
    with spool.transaction():
        spool.add_observations(obs)
        for key, value in state.items():
            spool.set_state(key, value)
    if first:
        runner.log(f"fleet: store unreachable; keeping observations in {spool.path} until it answers")


def saved_state(runner, key: str) -> str | None:
    """A position to resume from: the spool's, newer than the store's while it holds one."""
    if runner.spool is not None:
        value = runner.spool.get_state(key)
        if value is not None:
            return value
    return runner.store.get_state(key)
