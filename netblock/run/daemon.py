"""The daemon: the event loop around the tick (run/tick.py), and fleet follow.

The loop calls ``Runner.tick()`` every ``daemon.tick`` and, between ticks,
reacts to new lines at once: when a new offence puts an address over its
threshold, it is blocked right away, and event transactions are at least
``daemon.coalesce`` apart, so whatever crosses in between goes to the kernel
as one. On a fleet's PostgreSQL store, other hosts' changes wake it too.

SIGTERM/SIGINT end the loop between steps (positions are already saved) and
leave the kernel rules in place; SIGHUP reloads the configuration.
"""

from __future__ import annotations

import os
import select
import signal
import time
from typing import Callable

from netblock.decide.tracker import Tracker
from netblock.model import Observation
from netblock.run import fleet, tick
from netblock.run.tick import TRANSIENT, Runner, failure
from netblock.sources import follow
from netblock.system.sdnotify import Notifier


class Daemon:
    """The event loop around a Runner: inotify, journalctl's pipe, signals, the tick timer."""

    def __init__(self, runner: Runner, *, reload_config: Callable[[], object],
                 notifier: Notifier | None = None, verbose: int = 0):
        self.runner = runner
        self.verbose = verbose  # -v: levels below [daemon] log_level, kept across reloads
        self._set_level()
        self.reload_config = reload_config
        self.notifier = notifier or Notifier()
        self.inotify = follow.Inotify()
        self._stop = False
        self._reload = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.fleet = fleet.listener_for(runner)  # PostgreSQL store: other hosts' changes wake us
        self.fleet_due = fleet.Coalescer(self._interval("coalesce"))
        runner.follower = fleet.Follower() if self.fleet is not None else None
        runner.spool = fleet.spool_for(runner)
        # The store refused the last read (e.g. the fleet's PostgreSQL is away): new lines wait for
        # the tick instead of each one costing a failed attempt and a log line.
        self._reads_failed = False

    @property
    def config(self):
        return self.runner.config

    def _interval(self, name: str) -> float:
        return getattr(self.config.daemon, name).total_seconds()

    def _set_level(self) -> None:
        from netblock.run.daemonlog import LEVELS, lower

        level = lower(self.config.daemon.log_level, self.verbose)
        self.runner.logger.level = LEVELS[level]

    def _say_started(self) -> None:
        from netblock import __version__

        runner = self.runner
        try:
            backend = runner.backend()
            verdict = backend.settings.verdict
            what = f"backend {backend.name}, verdict {verdict}"
            if verdict == "count":
                what += " (COUNTING ONLY: nothing is dropped)"
        except TRANSIENT as exc:
            what = f"backend unavailable: {failure(exc)}"
        runner.logger.info(f"netblock {__version__} daemon started (pid {os.getpid()}): {what}; "
                           f"store {runner.store.path}; tick {self._interval('tick'):g}s")

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
            if self.fleet is not None:
                self.fleet.close()
            if self.runner.spool is not None:
                self.runner.spool.close()
                self.runner.spool = None

    def _loop(self) -> int:
        runner = self.runner
        self._say_started()
        runner.open_sources()
        self._track()
        self._watch_sources()
        if runner.journal is not None:
            runner.journal.start()
        if self.fleet is not None:
            self.fleet.fileno()  # listening before the first reconcile reads the store: nothing falls between
        started = time.monotonic()
        runner.tick(read_limit=0)  # the kernel equals the store before anything else
        if self.fleet is not None:
            self.fleet.covered_by(started)
        self.notifier.ready(runner.status())
        tick_every = self._interval("tick")
        next_tick = time.monotonic() + tick_every
        react_at: float | None = None
        last_react = float("-inf")  # when the last event transaction started
        watchdog = self.notifier.watchdog_interval
        next_watchdog = time.monotonic() if watchdog else None
        backlog = True  # whatever the logs gained while netblock was down
        while not self._stop:
            if self._reload:
                self._reload = False
                self._do_reload()
                tick_every = self._interval("tick")
                next_tick = min(next_tick, time.monotonic() + tick_every)
            now_m = time.monotonic()
            if next_watchdog is not None and now_m >= next_watchdog:
                assert watchdog is not None  # next_watchdog is set only with it
                self.notifier.watchdog()
                next_watchdog = now_m + watchdog
            if now_m >= next_tick:
                self._reads_failed = False
                started = time.monotonic()
                backlog = runner.tick(read_limit=tick.MAX_BATCHES_PER_WAKE).backlog
                if self.fleet is not None:
                    self.fleet.covered_by(started)  # what was noted before the tick's reconcile is covered
                done = time.monotonic()
                self.fleet_due.done(done, done - started)
                self.notifier.status(runner.status())
                react_at = None
                next_tick = time.monotonic() + tick_every
                continue
            if self.fleet is not None and self.fleet_due.ready(now_m):  # only the listener notes one due
                tables = self.fleet.take_tables()
                did = fleet.follow_change(runner, tables, full_allowed=self.fleet_due.full_allowed(now_m))
                if did == "deferred":
                    self.fleet.tables |= tables
                    self.fleet_due.defer()
                    continue
                done = time.monotonic()
                self.fleet_due.done(done, done - now_m, full=did == "full")
                continue
            if react_at is not None and now_m >= react_at:
                react_at = None
                last_react = now_m
                runner.react()
                continue
            deadlines = [next_tick] + [d for d in (react_at, next_watchdog, self.fleet_due.due) if d is not None]
            timeout = 0 if backlog else max(0.0, min(deadlines) - time.monotonic())
            fds = [self.inotify.fileno(), self._wake_r]
            jfd = runner.journal.fileno() if runner.journal is not None and not self._reads_failed else None
            if jfd is not None:
                fds.append(jfd)
            fleet_fd = self.fleet.fileno() if self.fleet is not None else None
            if self.fleet is not None and fleet_fd is not None and self.fleet.missed and self.fleet.changed():
                self.fleet_due.note(time.monotonic())  # (re)connected: catch up now
                continue
            if fleet_fd is not None:
                fds.append(fleet_fd)
            elif self.fleet is not None:  # reconnecting: look again soon
                timeout = min(timeout, self.fleet.retry_every)
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                ready = []
            if self._wake_r in ready:
                _drain(self._wake_r)
            if self.fleet is not None and fleet_fd is not None and fleet_fd in ready:
                if self.fleet.changed():
                    self.fleet_due.note(time.monotonic())
                ready.remove(fleet_fd)
            if self._stop:
                break
            runner.logger.flush()
            if not (backlog or ready):
                continue
            if self.inotify.fileno() in ready:
                self.inotify.drain()
                self._watch_sources()  # a rotated file is a new inode to watch
            if self._reads_failed:
                continue
            _, backlog = self._read_sources(read_journal=backlog or (jfd is not None and jfd in ready))
            tracker = runner.tracker
            if react_at is None and tracker is not None and (tracker.pending or tracker.pending_widen):
                # At once if the kernel was left alone for a coalesce interval; else what arrives
                # until then joins one transaction at its end.
                react_at = max(time.monotonic(), last_react + self._interval("coalesce"))
        self.notifier.stopping()
        runner.logger.flush(force=True)
        runner.logger.info("stopping: the rules stay in the kernel (`netblock remove-rules` takes them out)")
        return 0

    def _track(self) -> None:
        """A tracker for the current configuration, seeded from the store; without one, events use the tick's path."""
        runner = self.runner
        try:
            runner.tracker = Tracker(self.config, runner.store, runner.clock())
        except TRANSIENT as exc:
            runner.tracker = None
            runner.log(f"reading recent offences failed: {failure(exc)} (events wait for the tick)")

    def _read_sources(self, *, read_journal: bool) -> tuple[list[Observation], bool]:
        runner = self.runner
        offenders: list[Observation] = []
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
            runner.log(f"reading logs failed: {failure(exc)} (retrying next tick)")
            self._reads_failed = True
            return offenders, False
        return offenders, more

    def _do_reload(self) -> None:
        runner = self.runner
        try:
            config = self.reload_config()
        except TRANSIENT as exc:
            runner.log(f"reload failed, keeping the old configuration: {failure(exc)}")
            return
        runner.config = config
        self._set_level()
        runner.full_at = None  # the new configuration may want another kernel state
        self._track()
        try:
            runner.open_sources()
            self._watch_sources()
            if runner.journal is not None and runner.journal.fileno() is None:
                runner.journal.start()
        except TRANSIENT as exc:
            runner.log(f"reload: reopening sources failed: {failure(exc)}")
        runner.logger.info("configuration reloaded")
        self._apply_verdict()

    def _apply_verdict(self) -> None:
        """A changed verdict (count <-> drop) goes to the kernel at once: only the rule changes.

        No decision is made again and no element is touched, so every
        per-netblock counter carries on; the sync is the tick's own.
        """
        runner = self.runner
        from netblock.firewall import installed_verdict

        try:
            backend = runner.backend()
            before = installed_verdict(backend)
        except TRANSIENT as exc:
            runner.log(f"reload: reading the kernel's verdict failed: {failure(exc)}")
            return
        wanted = backend.settings.verdict
        if before == wanted:
            return
        errors = runner.sync_now()
        if errors:
            runner.log(f"reload: changing the verdict to {wanted} failed: {errors[0]} (retrying next tick)")
            return
        state = "COUNTING ONLY: nothing is dropped" if wanted == "count" else "enforcing"
        runner.logger.info(f"verdict {before or 'none'} -> {wanted} ({state}): the rule changed, "
                           f"{len(runner.applied or ())} netblocks and their counters stay")


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
