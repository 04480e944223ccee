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

from netblock.limits import MAX_V4_ADDRESSES
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
        self.tables: set[str] = set()  # what the notifications since the last take_tables() named
        self._connected_at = float("inf")
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
            self._connected_at = time.monotonic()
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
        if found:
            self.tables.add("?")
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
                    # Only a hint (anyone may NOTIFY anything): "blocks" lets the follower read the
                    # change feed; anything else asks for the full reconcile.
                    self.tables.add(note.extra.decode(errors="replace")[:64] if note.extra else "?")
        except Exception as exc:
            self._drop(f"reading notifications failed: {exc}")
            self.tables.add("?")
            return True
        return found

    def take_tables(self) -> set[str]:
        found, self.tables = self.tables, set()
        return found

    @property
    def missed(self) -> bool:
        """Connected anew, and no full reconcile has run since: one is due at once, not at the next notification."""
        return self._missed and self._conn is not None

    def covered_by(self, started: float) -> None:
        """A full reconcile that started at ``started`` (monotonic) read the store: if this connection was
        listening by then, nothing before it is missed and what was noted before is covered."""
        if self._conn is not None and self._connected_at <= started:
            self._missed = False
            self.tables.clear()

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
    if not store.fleet:
        return None
    return Listener(store.dsn, own_pid=store.backend_pid, log=runner.log, marker=marker_path(runner.config))


COALESCE_MIN_S = 0.2  # a fleet reconcile reads every block: storms get at least this gap


class Coalescer:
    """At most one reconcile per interval, whatever the number of notifications (a peer, or anyone
    with the DSN, can NOTIFY the channel in a loop). The interval runs from the end of the last
    reconcile. A full reconcile (every block read again) also waits, after the last full one, as
    long as that one took: a storm forcing them keeps them to half a core at most, while a change
    the feed can follow still goes through after one interval."""

    def __init__(self, interval: float):
        self.interval = max(interval, COALESCE_MIN_S)
        self.due: float | None = None
        self._last_end = float("-inf")
        self._full_end = float("-inf")
        self._full_gap = self.interval

    def note(self, now: float) -> None:
        """A notification arrived: one reconcile is due, at once or an interval after the last one."""
        if self.due is None:
            self.due = max(now, self._last_end + self.interval)

    def ready(self, now: float) -> bool:
        return self.due is not None and now >= self.due

    def full_allowed(self, now: float) -> bool:
        return now >= self._full_end + self._full_gap

    def defer(self) -> None:
        """The reconcile due needs the full path, which must wait: due again when it may run."""
        self.due = self._full_end + self._full_gap

    def done(self, now: float, took: float = 0.0, *, full: bool = True) -> None:
        """A reconcile (this one, or a tick's) just ended, having taken ``took`` seconds: what was
        noted before it is covered."""
        self.due = None
        self._last_end = now
        if full:
            self._full_end = now
            self._full_gap = max(self.interval, took)


def publish(runner) -> None:
    """Put this host's own addresses in the fleet's list, for the peers to carve out (SQLite: nobody to tell)."""
    runner.store.publish_addresses(runner.own_addresses())


def log_rejected(runner) -> None:
    """One log line per store row skipped on receipt, the first time this daemon meets it."""
    from netblock.store.receipt import log_new

    log_new(runner.store, runner.rejections_logged, runner.log)


def follow_change(runner, tables: set[str] | None = None, *, full_allowed: bool = True) -> str:
    """Another host changed the shared block list: bring this kernel up to date now.

    When the notifications named only blocks and the follower knows what the
    last full reconcile installed, the change feed is read and new single
    addresses are added to the kernel as one small transaction: the cost
    follows the change, not the 100k blocks. Anything else (a removal, an
    expiry change, a prefix, the allowlist or the fleet's addresses, a
    feed too old) takes the full reconcile, as the tick does, unless
    ``full_allowed`` is False: then nothing is done. Returns what was done:
    "followed", "full" or "deferred".
    """
    follower = runner.follower
    if tables == {"blocks"} and follower is not None:
        try:
            if follower.follow(runner):
                return "followed"
        except Exception as exc:  # any failure: the full reconcile decides, and logs if it fails too
            follower.forget()
            runner.log(f"fleet: following the change feed failed: {exc}; reconciling in full")
    if not full_allowed:
        return "deferred"
    for err in runner.sync_now():
        runner.log(f"fleet: sync after a change failed: {err} (retrying next tick)")
    return "full"


FEED_MAX_AGE_S = 3600.0  # deleted keys stay in blocks_gone for a day; a follower this stale reconciles instead


class Follower:
    """What the last full reconcile installed and where the change feed stood before it read the
    store, so another host's new blocks can be added without reading every block again."""

    def __init__(self):
        self.forget()

    def forget(self) -> None:
        self.desired: dict | None = None
        self.mark: int | None = None
        self._pending: int | None = None
        self._at = 0.0
        self._wide: dict[int, tuple[list[int], list[int], list]] = {}
        self._v4_total = 0

    def before_sync(self, store) -> None:
        """Called before a full reconcile reads the store: changes after this point are followed."""
        try:
            self._pending = store.change_mark()
        except Exception:
            self._pending = None

    def after_sync(self, desired: dict) -> None:
        """The full reconcile installed ``desired``."""
        self.desired = dict(desired)
        self.mark, self._pending = self._pending, None
        self._at = time.monotonic()
        wide: dict[int, list] = {}
        v4 = 0
        for net, exp in self.desired.items():
            version, plen = net.version, net.prefixlen
            if version == 4:
                v4 += 1 << (32 - plen)
            if plen < (32 if version == 4 else 128):
                wide.setdefault(version, []).append((net.first, net.last, exp))
        self._v4_total = v4
        self._wide = {}
        for fam, items in wide.items():
            items.sort()
            self._wide[fam] = ([a for a, _, _ in items], [z for _, z, _ in items], [e for _, _, e in items])

    def _covering_expiry(self, net):
        """(covered, expiry) of the widest-matching installed prefix covering ``net``."""
        from bisect import bisect_right

        firsts, lasts, exps = self._wide.get(net.version, ((), (), ()))
        k = bisect_right(firsts, net.first) - 1
        if k >= 0 and lasts[k] >= net.last:
            return True, exps[k]
        return False, None

    def follow(self, runner) -> bool:
        """Apply what the feed says since the last mark if it is plain additions; False: reconcile in full."""
        from netblock.decide.protect import for_sync as protected
        from netblock.system.lock import kernel_lock

        store = runner.store
        if self.desired is None or self.mark is None or time.monotonic() - self._at > FEED_MAX_AGE_S:
            return False
        backend = runner.backend()
        written, gone, mark, skipped = store.changes_since(self.mark)
        if gone or skipped:
            return False  # a removal (its counters are sampled first) or a bad row (logged there): the full path
        now = runner.clock()
        guard = _Guard(protected(store, runner.config, now=now).all())
        additions = {}
        for b in written:
            net = b.netblock
            if net.prefixlen != (32 if net.version == 4 else 128):
                return False
            if b.expires is not None and b.expires <= now:
                if net in self.desired:
                    return False
                continue
            if guard.covers(net):
                continue
            have = self.desired.get(net, _ABSENT)
            if have is _ABSENT:
                covered, have = self._covering_expiry(net)
                if not covered:
                    additions[net] = b.expires
                    continue
            if have is not None and (b.expires is None or b.expires > have):
                return False  # an element to extend: replaced by the full path, counters first
        v4 = sum(1 for n in additions if n.version == 4)
        if v4 and self._v4_total + v4 > MAX_V4_ADDRESSES:
            return False  # the full path applies the coverage cap
        if additions:
            with kernel_lock(runner.config.lock_file):
                change = backend.add(additions)
            if change is None:
                return False
            self.desired.update(additions)
            self._v4_total += v4
            if runner.applied is not None:
                runner.applied.update(additions)
        self.mark = mark
        return True


_ABSENT = object()


class _Guard:
    """Protected prefixes, for "does one of them cover this address" by bisection."""

    def __init__(self, nets):
        from netblock.aggregate import span

        spans: dict[int, list[tuple[int, int]]] = {}
        for n in nets:
            fam, first, last = span(n)
            spans.setdefault(fam, []).append((first, last))
        self._spans = {}
        for fam, items in spans.items():
            items.sort()
            merged: list[list[int]] = []
            for a, z in items:
                if merged and a <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], z)
                else:
                    merged.append([a, z])
            self._spans[fam] = ([a for a, _ in merged], [z for _, z in merged])

    def covers(self, net) -> bool:
        from bisect import bisect_right

        from netblock.aggregate import span

        fam, first, last = span(net)
        firsts, lasts = self._spans.get(fam, ((), ()))
        k = bisect_right(firsts, first) - 1
        return k >= 0 and lasts[k] >= first


def view_host(store, config, host_id: str) -> None:
    """Make the store's reports show one host (``report --host``); refuse an id the fleet does not know."""
    from netblock.errors import BadInput

    if not store.fleet:  # SQLite: one host, which is this one
        if host_id != config.host_id:
            raise BadInput(f"--host {host_id}: this store (SQLite) holds only this host's data "
                           f"({config.host_id}); a fleet needs a postgresql:// store")
        return
    known = store.hosts()
    if host_id not in known:
        raise BadInput(f"--host {host_id}: no such host in the fleet (known: {', '.join(known) or 'none'})")
    store.view_host = host_id


def own_view(store, host_id: str):
    """The store seen as this host only (a fleet's store; SQLite is that already): metrics labelled
    host=ID must count this host's rejections, as Prometheus sums the hosts itself."""
    if store.fleet:
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
    from netblock.store import is_dsn
    from netblock.store.postgres import mask_dsn

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
    if not runner.store.fleet:
        return None
    from netblock.store.sqlite import Spool

    return Spool.open(spool_path(runner.config))


def _unreachable(store) -> bool:
    return store.unreachable_since is not None


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


def before_sync(runner) -> None:
    follower = runner.follower
    if follower is not None:
        follower.before_sync(runner.store)


def after_sync(runner, result) -> None:
    follower = runner.follower
    if follower is not None:
        follower.after_sync(result.desired)
