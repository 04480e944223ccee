"""The tick: sources → store → policy → sync, shared by the daemon and run-once.

``Runner.tick()`` is the whole job once: read what the logs and the journal
have added since the saved positions, store the observations (with the new
positions, in one transaction per batch), decide, record, sync, sample, prune.
``run-once`` (the systemd timer mode) calls it once; ``Daemon`` calls it every
``daemon.tick`` and, between ticks, reacts to new lines at once: when a new
offence puts an address over its threshold, decisions arriving within
``daemon.coalesce`` are folded into one sync.

Failure rules: a kernel or store failure in one tick is one line on stderr
and is retried by the next tick. Lines are only committed after their
observations are stored, so a failing store loses nothing, and the kernel is
only a cache of the store, so a failing sync is repaired by the next one.
SIGTERM/SIGINT end the loop between steps (positions are already saved) and
leave the kernel rules in place; SIGHUP reloads the configuration.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Iterable

from netaddr import IPAddress, IPNetwork

from netblock import follow, journal, policy
from netblock.errors import NetblockError
from netblock.model import Observation
from netblock.sdnotify import Notifier

NOT_OFFENCES = ("connect", "delivered")
MAX_BATCHES_PER_WAKE = 20  # then look at signals and the clock before reading on


def log(message: str, stream=None) -> None:
    """One line on stderr (journald adds the time)."""
    print(f"netblock: {message}", file=stream or sys.stderr, flush=True)


def _failure(exc: BaseException) -> str:
    """One line: the message of a NetblockError; type, message and the failing line of anything else."""
    if isinstance(exc, NetblockError):
        return str(exc)
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"
    return f"{type(exc).__name__}: {exc}{where}"


# What one tick survives: a binding may raise its own types for a kernel or
# store failure, and the daemon must outlive them all (the next tick retries).
TRANSIENT = (Exception,)


def _setting(config, section: str, name: str, default):
    part = getattr(config, section, None)
    value = getattr(part, name, None) if part is not None else None
    return default if value is None else value


@dataclass
class TickResult:
    observations: int = 0
    decided: int = 0  # blocks new or extended in the store
    blocks: int = 0  # active blocks in the store after the tick
    added: int = 0
    removed: int = 0
    updated: int = 0
    restored: int = 0  # netblocks put back after they vanished from the kernel
    backlog: bool = False  # lines were left for the daemon loop to read
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class Runner:
    """The shared tick, with the sources it reads (followed files and the journal)."""

    def __init__(self, config, store, backend: Callable, *, clock: Callable[[], datetime],
                 follow_mode: bool = True, stderr=None):
        self.config = config
        self.store = store
        self._backend_factory = backend
        self.clock = clock
        self.follow_mode = follow_mode
        self.stderr = stderr or sys.stderr
        self.followers: dict[str, follow.Follower] = {}
        self.journal: journal.Journal | None = None
        self.applied: set[IPNetwork] | None = None  # what the last good sync left in the kernel
        self.last_tick: datetime | None = None
        self.last_result = TickResult()

    def log(self, message: str) -> None:
        log(message, self.stderr)

    # -- sources -----------------------------------------------------------
    @property
    def fmt(self) -> str:
        return _setting(self.config, "sources", "format", "auto")

    @property
    def max_line(self) -> int:
        return int(_setting(self.config, "sources", "max_line", follow.DEFAULT_MAX_LINE))

    def open_sources(self) -> None:
        """Followers for the configured files (from their saved positions), and the journal."""
        files = [os.path.abspath(p) for p in _setting(self.config, "sources", "files", ())]
        for path in list(self.followers):
            if path not in files:
                self.followers.pop(path).close()
        for path in files:
            if path in self.followers:
                self.followers[path].max_line = self.max_line
                continue
            saved = follow.Position.parse(self.store.get_state(follow.state_key(path)))
            self.followers[path] = follow.Follower(path, saved, max_line=self.max_line)
        want_journal = bool(_setting(self.config, "sources", "journal", False))
        units = tuple(_setting(self.config, "sources", "journal_units", journal.DEFAULT_UNITS))
        if self.journal is not None and (not want_journal or self.journal.units != units):
            self.journal.stop()
            self.journal = None
        if want_journal and self.journal is None:
            cursor = self.store.get_state(journal.STATE_KEY)
            since = None if cursor else self.clock() - _setting(self.config, "policy", "window", timedelta(days=1))
            self.journal = journal.Journal(units, cursor=cursor, follow=self.follow_mode, since=since)

    def close_sources(self) -> None:
        for f in self.followers.values():
            f.close()
        if self.journal is not None:
            self.journal.stop()

    def _parse(self, text: str, source: str, position: int, now: datetime) -> Observation | None:
        from netblock import sources

        return sources.parse_line(text, fmt=self.fmt, source=source, position=position, now=now)

    def read_files(self, *, limit: int | None = None) -> tuple[int, list[IPAddress], bool]:
        """Store what the followed files have added: (observations, offending IPs, more pending)."""
        limit = MAX_BATCHES_PER_WAKE if limit is None else limit
        total, offenders = 0, []
        for path, fol in self.followers.items():
            for _ in range(limit):
                batch = fol.read()
                if not batch.lines and batch.after == fol.position:
                    break
                now = self.clock()
                obs = [o for line in batch.lines
                       if (o := self._parse(line.text, path, line.position, now)) is not None]
                with self.store.transaction():
                    self.store.add_observations(obs)
                    if batch.after is not None:
                        self.store.set_state(fol.key, batch.after.dump())
                fol.commit(batch)
                if batch.overlong:
                    self.log(f"{path}: {batch.overlong} over-long line(s) cut to {fol.max_line} bytes")
                if batch.restarted:
                    self.log(f"{path}: file was truncated (copytruncate); reading it again from the start")
                total += len(obs)
                offenders += [o.ip for o in obs if o.cls not in NOT_OFFENCES]
            else:
                return total, offenders, True
        return total, offenders, False

    def read_journal(self, *, wait: bool = False, limit: int | None = None) -> tuple[int, list[IPAddress], bool]:
        limit = MAX_BATCHES_PER_WAKE if limit is None else limit
        if self.journal is None:
            return 0, [], False
        from netblock import sources

        total, offenders = 0, []
        for _ in range(limit):
            batch = self.journal.read(wait=wait)
            obs = []
            for e in batch.entries:
                o = sources.parse_message(e.program, e.message, e.time, fmt=self.fmt)
                if o is not None:
                    obs.append(Observation(o.time, o.ip, o.cls, o.mta, "journal", o.position))
            try:
                with self.store.transaction():
                    self.store.add_observations(obs)
                    if batch.cursor:
                        self.store.set_state(journal.STATE_KEY, batch.cursor)
            except BaseException:
                self.journal.rewind()
                raise
            self.journal.commit(batch)
            total += len(obs)
            offenders += [o.ip for o in obs if o.cls not in NOT_OFFENCES]
            if batch.eof or (not batch.entries and not batch.ignored):
                if batch.eof and self.follow_mode:
                    self.log("journalctl exited; starting it again from the saved cursor next tick")
                    self.journal.stop()
                return total, offenders, False
        return total, offenders, True

    def read_some(self, limit: int | None = None) -> tuple[int, list[IPAddress], bool]:
        """Up to ``limit`` batches per source: (observations, offending IPs, more pending)."""
        limit = MAX_BATCHES_PER_WAKE if limit is None else limit
        if limit <= 0:
            return 0, [], True
        n_files, ips_files, more_files = self.read_files(limit=limit)
        n_journal, ips_journal, more_journal = self.read_journal(wait=not self.follow_mode, limit=limit)
        return n_files + n_journal, ips_files + ips_journal, more_files or more_journal

    def read_all(self) -> tuple[int, list[IPAddress]]:
        """Everything available now, to the end (run-once)."""
        total, offenders, more = 0, [], True
        while more:
            n, ips, more = self.read_some()
            total += n
            offenders += ips
        return total, offenders

    # -- the tick ------------------------------------------------------------
    def backend(self):
        return self._backend_factory()

    def tick(self, *, read_limit: int | None = None) -> TickResult:
        """One full round; each step's failure is reported and the next steps still run.

        ``read_limit`` bounds the batches read per source (the daemon reads a
        large backlog between ticks, so the watchdog and signals are served);
        None reads to the end.
        """
        result = TickResult()
        try:
            if read_limit is None:
                result.observations, _ = self.read_all()
            else:
                result.observations, _, result.backlog = self.read_some(read_limit)
        except TRANSIENT as exc:
            result.errors.append(f"reading logs: {_failure(exc)}")
        now = self.clock()
        self._decide(now, result)
        self._sync(now, result)
        self._sample(now, result)
        self._prune(now, result)
        try:
            result.blocks = self.store.count_blocks(now)
        except TRANSIENT as exc:
            result.errors.append(f"counting blocks: {_failure(exc)}")
        for err in result.errors:
            self.log(f"tick failed: {err} (retrying next tick)")
        self.last_tick = now
        self.last_result = result
        return result

    def react(self) -> TickResult:
        """Decide and, only if something new is to be blocked, sync (between ticks)."""
        result = TickResult()
        now = self.clock()
        self._decide(now, result)
        if result.decided and not result.errors:
            self._sync(now, result)
        for err in result.errors:
            self.log(f"event handling failed: {err} (retrying next tick)")
        return result

    def _decide(self, now: datetime, result: TickResult) -> None:
        try:
            with self.store.transaction():
                changed = policy.record(self.store, policy.decide(self.store, self.config, now), now)
            result.decided = len(changed)
        except TRANSIENT as exc:
            result.errors.append(f"policy: {_failure(exc)}")

    def _sync(self, now: datetime, result: TickResult) -> None:
        from netblock.sync import sync

        try:
            res = sync(self.store, self.backend(), self.config, now=now)
        except TRANSIENT as exc:
            result.errors.append(f"sync: {_failure(exc)}")
            return
        change = res.change
        result.added, result.removed, result.updated = len(change.added), len(change.removed), len(change.updated)
        if self.applied is not None:
            vanished = [n for n in self.applied if n in res.desired and n not in res.installed_before]
            if vanished:
                result.restored = len(vanished)
                shown = ", ".join(str(n) for n in sorted(vanished, key=lambda n: (n.version, n.first))[:5])
                more = f" and {len(vanished) - 5} more" if len(vanished) > 5 else ""
                self.log(f"drift repaired: restored {len(vanished)} netblock(s) missing from the kernel "
                         f"({shown}{more})")
        self.applied = set(res.desired)

    # ---- sampling hook (reports engineer) ---------------------------------
    # Every tick reads the kernel's counters into the store here, after sync,
    # so the report's time series has one point per tick.
    def _sample(self, now: datetime, result: TickResult) -> None:
        try:
            from netblock import sampling
        except ImportError:
            return
        try:
            sampling.sample(self.store, self.backend(), now)
        except TRANSIENT as exc:
            result.errors.append(f"sampling: {_failure(exc)}")
    # ---- end of sampling hook ---------------------------------------------

    def _prune(self, now: datetime, result: TickResult) -> None:
        keep = _setting(self.config, "daemon", "observation_retention", None)
        if not keep:
            return
        try:
            self.store.prune_observations(now - keep)
        except TRANSIENT as exc:
            result.errors.append(f"pruning observations: {_failure(exc)}")

    def status(self) -> str:
        r = self.last_result
        when = "never" if self.last_tick is None else f"{self.last_tick:%Y-%m-%d %H:%M:%S}Z"
        state = "ok" if r.ok else "failed: " + r.errors[0]
        return f"{r.blocks} blocks, last tick {when} {state}"


def newly_crossing(store, config, ips: Iterable[IPAddress], now: datetime) -> bool:
    """Whether one of ``ips`` is over a threshold without an active block: worth a sync now."""
    rules = policy.class_rules(config)
    if not rules:
        return False
    longest = max(r.window for r in rules.values())
    for ip in set(ips):
        block = store.get_block(IPNetwork(ip))
        if block is not None and (block.expires is None or block.expires > now):
            continue
        counts: dict[str, int] = {}
        for o in store.observations(since=now - longest, ip=ip):
            rule = policy.rule_for(rules, o.cls)
            if rule is not None and rule.threshold > 0 and o.time >= now - rule.window:
                counts[rule.name] = counts.get(rule.name, 0) + 1
                if counts[rule.name] >= rule.threshold:
                    return True
    return False


class Daemon:
    """The event loop around a Runner: inotify, journalctl's pipe, signals, the tick timer."""

    def __init__(self, runner: Runner, *, reload_config: Callable[[], object],
                 notifier: Notifier | None = None):
        self.runner = runner
        self.reload_config = reload_config
        self.notifier = notifier or Notifier()
        self.inotify = follow.Inotify()
        self._stop = False
        self._reload = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def config(self):
        return self.runner.config

    def _interval(self, name: str, default: float) -> float:
        value = _setting(self.config, "daemon", name, None)
        if value is None:
            return default
        return value.total_seconds() if isinstance(value, timedelta) else float(value)

    def _on_signal(self, signum, _frame) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    def _watch_sources(self) -> None:
        for fol in self.runner.followers.values():
            self.inotify.watch(fol)

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            return self._loop()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, h in previous.items():
                signal.signal(s, h)
            self.runner.close_sources()
            self.inotify.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.notifier.close()

    def _loop(self) -> int:
        runner = self.runner
        runner.open_sources()
        self._watch_sources()
        if runner.journal is not None:
            runner.journal.start()
        runner.tick(read_limit=0)  # the kernel equals the store before anything else
        self.notifier.ready(runner.status())
        tick_every = self._interval("tick", 30.0)
        next_tick = time.monotonic() + tick_every
        react_at: float | None = None
        watchdog = self.notifier.watchdog_interval
        next_watchdog = time.monotonic() if watchdog else None
        backlog = True  # whatever the logs gained while netblock was down
        while not self._stop:
            if self._reload:
                self._reload = False
                self._do_reload()
                tick_every = self._interval("tick", 30.0)
                next_tick = min(next_tick, time.monotonic() + tick_every)
            now_m = time.monotonic()
            if next_watchdog is not None and now_m >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = now_m + watchdog
            if now_m >= next_tick:
                backlog = runner.tick(read_limit=MAX_BATCHES_PER_WAKE).backlog
                self.notifier.status(runner.status())
                react_at = None
                next_tick = time.monotonic() + tick_every
                continue
            if react_at is not None and now_m >= react_at:
                react_at = None
                runner.react()
                continue
            deadlines = [next_tick] + [d for d in (react_at, next_watchdog) if d is not None]
            timeout = 0 if backlog else max(0.0, min(deadlines) - time.monotonic())
            fds = [self.inotify.fileno(), self._wake_r]
            jfd = runner.journal.fileno() if runner.journal is not None else None
            if jfd is not None:
                fds.append(jfd)
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                ready = []
            if self._wake_r in ready:
                _drain(self._wake_r)
            if self._stop:
                break
            if not (backlog or ready):
                continue
            if self.inotify.fileno() in ready:
                self.inotify.drain()
                self._watch_sources()  # a rotated file is a new inode to watch
            offenders, backlog = self._read_sources(read_journal=backlog or (jfd is not None and jfd in ready))
            if offenders and react_at is None:
                try:
                    crossing = newly_crossing(runner.store, self.config, offenders, runner.clock())
                except TRANSIENT as exc:
                    runner.log(f"event handling failed: {_failure(exc)} (retrying next tick)")
                    crossing = False
                if crossing:
                    react_at = time.monotonic() + self._interval("coalesce", 0.05)
        self.notifier.stopping()
        return 0

    def _read_sources(self, *, read_journal: bool) -> tuple[list[IPAddress], bool]:
        runner = self.runner
        offenders: list[IPAddress] = []
        more = False
        try:
            _, ips, more_files = runner.read_files()
            offenders += ips
            more = more_files
            if read_journal:
                _, ips, more_journal = runner.read_journal()
                offenders += ips
                more = more or more_journal
        except TRANSIENT as exc:
            runner.log(f"reading logs failed: {_failure(exc)} (retrying next tick)")
            return offenders, False
        return offenders, more

    def _do_reload(self) -> None:
        runner = self.runner
        try:
            config = self.reload_config()
        except TRANSIENT as exc:
            runner.log(f"reload failed, keeping the old configuration: {_failure(exc)}")
            return
        runner.config = config
        try:
            runner.open_sources()
            self._watch_sources()
            if runner.journal is not None and runner.journal.fileno() is None:
                runner.journal.start()
        except TRANSIENT as exc:
            runner.log(f"reload: reopening sources failed: {_failure(exc)}")
        runner.log("configuration reloaded")


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
