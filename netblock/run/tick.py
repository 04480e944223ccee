"""The tick: sources → store → policy → sync, shared by the daemon and run-once.

``Runner.tick()`` is the whole job once: read what the logs and the journal
have added since the saved positions, store the observations (with the new
positions, in one transaction per batch), decide, record, sync, sample, prune.
``run-once`` (the systemd timer mode) calls it once; the daemon
(run/daemon.py) calls it every ``daemon.tick`` and, between ticks, calls
``Runner.react()`` to block what just crossed a threshold at once.

Failure rules: a kernel or store failure in one tick is one line on stderr
and is retried by the next tick. Lines are only committed after their
observations are stored, so a failing store loses nothing, and the kernel is
only a cache of the store, so a failing sync is repaired by the next one.

Why this module is long: one tick is many steps (sources, store, decide,
the event path's small push, sync with its drift and expiry lines, sampling,
pruning), each with its own failure line, and they share the Runner's memory
of what the kernel holds; split, that memory would travel between modules.
"""

from __future__ import annotations

import os
import sys
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping

from netaddr import IPNetwork

from netblock import limits
from netblock.decide import policy
from netblock.decide.tracker import Tracker
from netblock.errors import NetblockError
from netblock.model import NOT_OFFENCES, Block, Observation
from netblock.printable import printable
from netblock.run import fleet
from netblock.run.daemonlog import Log
from netblock.sources import follow, journal
from netblock.system import hostaddrs

SMALL_JOIN, JOIN_SAVE_S = 1000, 5.0  # open transactions saved with every batch up to SMALL_JOIN
MAX_BATCHES_PER_WAKE = 20  # then look at signals and the clock before reading on
FULL_SYNC_KEY = "full_sync"  # state key: when run-once last synced in full
SAMPLED_KEY = "counters_sampled"  # state key: when run-once last read the counters
CARRIED_KEY = "expiries_carried"  # state key: up to when run-once carried expiries as a change


def failure(exc: BaseException) -> str:
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
    skipped: bool = False  # no full sync: nothing new and the kernel proven unchanged (Runner._quiet)
    expired: int = 0  # blocks that ran out, carried to the kernel as a change instead of a full sync
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class Runner:
    """The shared tick, with the sources it reads (followed files and the journal)."""

    def __init__(self, config, store, backend: Callable, *, clock: Callable[[], datetime],
                 follow_mode: bool = True, stderr=None, log_level: str | None = None):
        self.config = config
        self.store = store
        self._backend_factory = backend
        self.clock = clock
        self.follow_mode = follow_mode
        self.stderr = stderr or sys.stderr
        self.followers: dict[str, follow.Follower] = {}
        self.journal: journal.Journal | None = None
        # What the last good sync left in the kernel, with expiries: the next one tells expiries from it.
        self.applied: dict[IPNetwork, datetime | None] | None = None
        self.applied_v4: int | None = None  # IPv4 addresses it covers (the coverage cap, limits.py)
        self._notes: list[str] = []  # store blocks the last sync left out, as logged
        self._refused: dict[str, str | None] = {}  # source path -> why it is not read, as logged
        self.last_tick: datetime | None = None
        self.last_result = TickResult()
        self.tracker: Tracker | None = None  # the daemon's in-memory view of recent offences
        self.own: list[IPNetwork] | None = None  # this host's addresses, read again every tick
        self.spool = None  # the daemon's on a fleet store: observations kept while that store is away
        self.follower: Any = None  # fleet.Follower: the shared block list's change feed (fleet mode)
        self.rejections_logged: set = set()  # store rows skipped on receipt, logged once each (fleet.log_rejected)
        self.join: Any = None  # sources.join.Join: messages whose acceptance is not proven yet
        self._join_saved = float("-inf")
        self.logger = Log(self.stderr, log_level or config.daemon.log_level)
        self.choice: journal.Choice | None = None  # the sources open_sources() chose
        self._said_sources: str | None = None
        self.full_at: datetime | None = None  # the last full sync by this process
        self.carried_to: datetime | None = None  # expiries up to here went to the kernel as changes (_carry)
        self.sampled_at: datetime | None = None  # the last counter read by this process
        self._counted: dict | None = None  # that read as arrays (the daemon's, see _sample_changed)

    def log(self, message: str) -> None:
        """Something went wrong, or needs the operator's eye (store outage, drift, a cut line)."""
        self.logger.warning(message)

    # -- sources -----------------------------------------------------------
    @property
    def fmt(self) -> str:
        return self.config.sources.format

    @property
    def max_line(self) -> int:
        return int(self.config.sources.max_line)

    def choose_sources(self) -> journal.Choice:
        """Which sources to read: the configured files, and the journal if set or auto-detected."""
        files = [os.path.abspath(p) for p in self.config.sources.files]
        units = tuple(self.config.sources.journal_units)
        setting = self.config.sources.journal
        return journal.choose(files, setting, units, lambda: journal.detect(units, now=self.clock()))

    def open_sources(self) -> None:
        """Followers for the configured files (from their saved positions), and the journal."""
        if self.join is None:
            from netblock.sources import join

            self.join = join.Join()
            self.join.load(fleet.saved_state(self, join.STATE_KEY))
        choice = self.choice = self.choose_sources()
        if choice.reason != self._said_sources:
            self._said_sources = choice.reason
            (self.logger.info if choice.mode != "none" else self.logger.warning)(f"sources: {choice.reason}")
            warning = journal.file_source_forgery_warning(choice)
            if warning:  # info: run-once (every minute, at warning level) leaves it to `status`
                self.logger.info(warning)
        files = list(choice.files)
        for path in list(self.followers):
            if path not in files:
                self.followers.pop(path).close()
        for path in files:
            if path in self.followers:
                self.followers[path].max_line = self.max_line
                continue
            saved = follow.Position.parse(fleet.saved_state(self, follow.state_key(path)))
            self.followers[path] = follow.Follower(path, saved, max_line=self.max_line)
            where = "from its start" if saved is None else f"from byte {saved.offset} (saved position)"
            missing = "" if os.path.exists(path) else " (it does not exist yet: read once it appears)"
            self.logger.info(f"following {path} {where}{missing}")
        want_journal = choice.journal
        units = tuple(self.config.sources.journal_units)
        if self.journal is not None and (not want_journal or self.journal.units != units):
            self.journal.stop()
            self.journal = None
        if want_journal and self.journal is None:
            cursor = fleet.saved_state(self, journal.STATE_KEY)
            since = None if cursor else self.clock() - self.config.policy.window
            self.journal = journal.Journal(units, cursor=cursor, follow=self.follow_mode, since=since)
            where = "from the saved cursor" if cursor else f"since {since:%Y-%m-%d %H:%M:%S}Z"
            self.logger.info(f"reading the journal of {', '.join(units)} {where}")

    def close_sources(self) -> None:
        for f in self.followers.values():
            f.close()
        if self.journal is not None:
            self.journal.stop()

    def _parse(self, text: str, source: str, position: int, now: datetime) -> Observation | None:
        from netblock import sources

        return sources.parse_line(text, fmt=self.fmt, source=source, position=position, now=now, marks=True)

    def _settle(self, obs: list[Observation], state: dict[str, str]) -> list[Observation]:
        """Markers paired into "delivered" (sources.join); the open ones saved with the positions."""
        from netblock.sources import join

        if self.join is None:
            self.join = join.Join()
        obs = self.join.observations(obs)
        if self.join.changed:
            # Written with the positions, so a restart resumes both together; a
            # storm of unfinished transactions is written at most every few
            # seconds (a pair lost then only withholds one protection).
            now = time.monotonic()
            if len(self.join.open) <= SMALL_JOIN or now - self._join_saved >= JOIN_SAVE_S:
                state[join.STATE_KEY] = self.join.dump()
                self._join_saved = now
        return obs

    def read_files(self, *, limit: int | None = None) -> tuple[int, list[Observation], bool]:
        """Store what the followed files have added: (observations, offences, more pending)."""
        limit = MAX_BATCHES_PER_WAKE if limit is None else limit
        total, offenders = 0, []
        for path, fol in self.followers.items():
            for _ in range(limit):
                batch = fol.read()
                if batch.refused != self._refused.get(path):  # one line when it starts, not every wake
                    if batch.refused:
                        self.log(f"{batch.refused} (the other sources go on)")
                    self._refused[path] = batch.refused
                if not batch.lines and batch.after == fol.position:
                    break
                now = self.clock()
                obs = [o for line in batch.lines
                       if (o := self._parse(line.text, path, line.position, now)) is not None]
                state = {} if batch.after is None else {fol.key: batch.after.dump()}
                obs = self._settle(obs, state)
                fleet.store_batch(self, obs, state)
                fol.commit(batch)
                if batch.overlong:
                    self.log(f"{path}: {batch.overlong} over-long line(s) cut to {fol.max_line} bytes")
                if batch.restarted:
                    self.log(f"{path}: file was truncated (copytruncate); reading it again from the start")
                total += len(obs)
                offenders += self._offences(obs)
            else:
                return total, offenders, True
        return total, offenders, False

    def _offences(self, stored: list[Observation]) -> list[Observation]:
        """The offences among observations just stored, handed to the tracker (if the daemon keeps one)."""
        found = [o for o in stored if o.cls not in NOT_OFFENCES]
        if self.tracker is not None and found:
            self.tracker.feed(found)
        return found

    def read_journal(self, *, wait: bool = False, limit: int | None = None) -> tuple[int, list[Observation], bool]:
        limit = MAX_BATCHES_PER_WAKE if limit is None else limit
        if self.journal is None:
            return 0, [], False
        from netblock import sources

        total, offenders = 0, []
        for _ in range(limit):
            batch = self.journal.read(wait=wait)
            obs = []
            for e in batch.entries:
                o = sources.parse_message(e.program, e.message, e.time, fmt=self.fmt, marks=True)
                if o is not None:
                    obs.append(Observation(o.time, o.ip, o.cls, o.mta, "journal", o.position))
            state = {journal.STATE_KEY: batch.cursor} if batch.cursor else {}
            obs = self._settle(obs, state)
            try:
                fleet.store_batch(self, obs, state)
            except BaseException:
                self.journal.rewind()
                raise
            self.journal.commit(batch)
            total += len(obs)
            offenders += self._offences(obs)
            if batch.eof or (not batch.entries and not batch.ignored):
                if batch.eof and self.follow_mode:
                    self.log("journalctl exited; starting it again from the saved cursor next tick")
                    self.journal.stop()
                return total, offenders, False
        return total, offenders, True

    def read_some(self, limit: int | None = None) -> tuple[int, list[Observation], bool]:
        """Up to ``limit`` batches per source: (observations, offences, more pending)."""
        limit = MAX_BATCHES_PER_WAKE if limit is None else limit
        if limit <= 0:
            return 0, [], True
        n_files, ips_files, more_files = self.read_files(limit=limit)
        n_journal, ips_journal, more_journal = self.read_journal(wait=not self.follow_mode, limit=limit)
        return n_files + n_journal, ips_files + ips_journal, more_files or more_journal

    def read_all(self) -> tuple[int, list[Observation]]:
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
        self.own = None  # addresses come and go: read them again once per tick
        if self.choice is not None and self.choice.detected and not self.choice.journal:
            try:  # auto mode found no MTA in the journal yet: look again
                self.open_sources()
            except TRANSIENT as exc:
                result.errors.append(f"opening sources: {failure(exc)}")
        try:
            fleet.publish(self)  # a fleet's hosts carve each other's addresses out
        except TRANSIENT as exc:
            result.errors.append(f"publishing this host's addresses: {failure(exc)}")
        try:
            fleet.flush(self)  # what an outage left in the spool, even if the logs are quiet now
            if read_limit is None:
                result.observations, _ = self.read_all()
            else:
                result.observations, _, result.backlog = self.read_some(read_limit)
        except TRANSIENT as exc:
            result.errors.append(f"reading logs: {failure(exc)}")
        now = self.clock()
        self._decide(now, result)
        if self.tracker is not None and not result.errors:
            self.tracker.settled(now)  # the full decision covered whatever was pending
        quiet = self._quiet(now, result)
        if quiet is not None:
            result.skipped = True
            if quiet.ran_out:
                self._carry(quiet, now, result)
        if not result.skipped:
            self._sync(now, result)
            if self.follow_mode:
                _give_back_memory()  # a full sync at 100k builds and drops about a million objects
        self._sample(now, result)
        self._prune(now, result)
        try:
            result.blocks = self.store.count_blocks(now)
        except TRANSIENT as exc:
            result.errors.append(f"counting blocks: {failure(exc)}")
        for err in result.errors:
            self.log(f"tick failed: {err} (retrying next tick)")
        self.logger.debug(f"tick: {result.observations} observations, {result.decided} decided, {result.blocks} "
                          f"active; kernel +{result.added} -{result.removed} ~{result.updated}")
        self.logger.flush()
        self.last_tick = now
        self.last_result = result
        return result

    def react(self) -> TickResult:
        """Block what crossed a threshold since the last look, at once (between ticks).

        With a tracker (the daemon) only the addresses that just crossed are
        decided, and, when the backend can add to what the kernel holds
        without reading it all back, only they are sent to the kernel: the
        cost follows the burst, not the number of blocks already in place.
        Anything else (a widened prefix, an own address, a backend without
        ``add``) takes the full sync, like a tick.
        """
        result = TickResult()
        now = self.clock()
        if self.tracker is None:
            self._decide(now, result)
            if result.decided and not result.errors:
                self._sync(now, result)
        else:
            changed = self._decide_new(self.tracker, now, result)
            if changed and not result.errors:
                self._push(changed, now, result)
        for err in result.errors:
            self.log(f"event handling failed: {err} (retrying next tick)")
        return result

    def _decide_new(self, tracker: Tracker, now: datetime, result: TickResult) -> list[Block]:
        try:
            blocks = tracker.decide(self.store, self.config, now)
            if not blocks:
                return []
            with self.store.transaction():
                changed = policy.record(self.store, blocks, now)
        except TRANSIENT as exc:
            result.errors.append(f"policy: {failure(exc)}")
            return []
        result.decided = len(changed)
        self.announce(changed, now)
        return changed

    def _push(self, blocks: list[Block], now: datetime, result: TickResult) -> None:
        """Add ``blocks`` to the kernel as one small transaction, or fall back to a full sync."""
        from netblock.system.lock import kernel_lock

        try:
            change = None
            own = self.own_addresses()
            room = self.applied_v4 is not None and self.applied_v4 + len(blocks) <= limits.MAX_V4_ADDRESSES
            if room and all(b.netblock.prefixlen == (32 if b.netblock.version == 4 else 128)
                            and b.netblock not in own for b in blocks):
                with kernel_lock(self.config.lock_file):
                    change = self.backend().add({b.netblock: b.expires for b in blocks})
        except TRANSIENT as exc:
            result.errors.append(f"adding to the kernel: {failure(exc)}")
            return
        if change is None:  # not expressible as plain additions: make the kernel equal to the store
            self._sync(now, result)
            return
        result.added = len(change.added)
        if self.applied is not None:
            expiries = {b.netblock: b.expires for b in blocks}
            self.applied.update((n, expiries.get(n)) for n in change.added)
        if self.applied_v4 is not None:
            self.applied_v4 += len(change.added)  # at most: an IPv6 address counts for nothing

    def own_addresses(self) -> set[IPNetwork]:
        if self.own is None:
            self.own = list(hostaddrs.own_addresses())
        return set(self.own)

    def _decide(self, now: datetime, result: TickResult) -> None:
        try:
            with self.store.transaction():
                changed = policy.record(self.store, policy.decide(self.store, self.config, now), now)
            result.decided = len(changed)
        except TRANSIENT as exc:
            result.errors.append(f"policy: {failure(exc)}")
            return
        self.announce(changed, now)

    def announce(self, blocks: list[Block], now: datetime) -> None:
        """One line per decision with its reason (rate-limited in a storm)."""
        for b in blocks:
            net = b.netblock.cidr
            reason = b.reason
            if reason.endswith(f" in {net}"):  # "widened: 4 offenders in 198.18.5.0/24"
                reason = reason[: -len(str(net))] + f"the /{net.prefixlen}"
            until = "permanently" if b.expires is None else f"until {b.expires:%Y-%m-%d %H:%M}Z"
            if b.created < now - timedelta(seconds=1):
                verb = "extended"
            elif b.reblocks:
                verb = f"re-blocked (time {b.reblocks + 1})"
            else:
                verb = "blocked"
            self.logger.event("blocked", str(net), f"{verb} {net} {until}: {reason}", noun="netblocks decided")

    def _stored_time(self, key: str) -> datetime | None:
        """A time run-once left in the store's state (each run-once is a new process)."""
        if self.follow_mode:
            return None  # the daemon trusts only what it did itself: its first tick syncs in full
        try:
            value = self.store.get_state(key)
            return None if value is None else datetime.fromtimestamp(float(value), timezone.utc)
        except (*TRANSIENT, ValueError):
            return None

    def _quiet(self, now: datetime, result: TickResult) -> Quiet | None:
        """Whether this tick may leave the kernel as it is but for the blocks that ran out; None: sync in full.

        Quiet only when nothing was read or decided, the last full sync is
        younger than ``[daemon] reconcile_every`` (what catches a
        deliverer's protection running out, or any store change made
        without a sync), the store is this host's own (a fleet's peers
        write to it), and the backend proves that the kernel still holds
        what netblock last wrote (nftables: the ruleset generation): a
        hand edit always takes the full sync. Blocks that ran out since are
        carried as a change of their netblocks (_carry), once the kernel
        has surely timed their elements out (delta.LAPSE_GRACE); the ones
        closer to their expiry wait for the next tick.
        """
        from netblock.run.delta import LAPSE_GRACE

        if result.observations or result.decided or result.errors:
            return None
        if self.store.fleet:
            return None
        last = self.full_at or self._stored_time(FULL_SYNC_KEY)
        every = self.config.daemon.reconcile_every
        if last is None or not timedelta(0) <= now - last < every:
            return None
        carried = self.carried_to or self._stored_time(CARRIED_KEY)
        since = max(last, carried) if carried is not None and carried <= now else last
        until = now - timedelta(seconds=LAPSE_GRACE)
        try:
            expired = self.store.next_expiry(since)
            ran_out = []
            if expired is not None and expired <= until:
                ran_out = self.store.expired_between(since, until)
            view = self.backend().region_view(whole=True)
            if view is None or not view.exact:  # ipset's view vouches for the zone of a change only
                return None
        except TRANSIENT:
            return None
        return Quiet(ran_out, until)

    def _carry(self, quiet: Quiet, now: datetime, result: TickResult) -> None:
        """Carry the blocks that ran out to the kernel as a change of their netblocks (netblock/run/delta.py).

        What would make a full sync of 100k netblocks cost seconds of CPU
        for each expiry costs what the change costs; whenever the change
        path cannot prove itself, the full sync runs after all.
        """
        from netblock.run.delta import sync_change

        try:
            res = sync_change(self.store, self.backend(), self.config, [b.netblock for b in quiet.ran_out],
                              now=now, full=lambda: None)
        except TRANSIENT as exc:
            self.logger.debug(f"expiries: {failure(exc)}; syncing in full")  # which says so if it fails too
            res = None
        if res is None:
            result.skipped = False  # the full sync it is
            return
        result.expired = len(quiet.ran_out)
        change = res.change
        result.added, result.removed, result.updated = len(change.added), len(change.removed), len(change.updated)
        self.logger.debug(f"expiries: {result.expired} blocks ran out; kernel +{result.added} -{result.removed} "
                          f"~{result.updated} ({res.count} netblocks)")
        if self.applied is not None:
            self._say_gone(res.before, res.after, now)
            for net in res.before:
                self.applied.pop(net, None)
            self.applied.update(res.after)
        if self.applied_v4 is not None:
            self.applied_v4 += limits.v4_addresses(res.after, disjoint=True) - limits.v4_addresses(res.before,
                                                                                                   disjoint=True)
        self.carried_to = quiet.until
        if not self.follow_mode:
            try:
                self.store.set_state(CARRIED_KEY, str(quiet.until.timestamp()))
            except TRANSIENT:
                pass  # the next run-once carries them again: a change already made changes nothing

    def sync_now(self) -> list[str]:
        """Make the kernel equal to the store at once, outside a tick; the errors, if any."""
        result = TickResult()
        self._sync(self.clock(), result)
        return result.errors

    def _sync(self, now: datetime, result: TickResult) -> None:
        from netblock.run.sync import sync

        fleet.before_sync(self)
        try:
            res = sync(self.store, self.backend(), self.config, now=now)
        except TRANSIENT as exc:
            result.errors.append(f"sync: {failure(exc)}")
            return
        fleet.after_sync(self, res)
        fleet.log_rejected(self)
        self.full_at = now
        if not self.follow_mode:
            try:
                self.store.set_state(FULL_SYNC_KEY, str(now.timestamp()))
            except TRANSIENT:
                pass  # the next run-once syncs in full again
        change = res.change
        result.added, result.removed, result.updated = len(change.added), len(change.removed), len(change.updated)
        if change:
            self.logger.debug(f"kernel: +{len(change.added)} -{len(change.removed)} ~{len(change.updated)} "
                              f"({len(res.desired)} netblocks)")
        if self.applied is not None:
            self._say_gone(self.applied, res.desired, now)
            # An element the kernel's own timeout took a moment before the store's expiry is no drift.
            soon = now + timedelta(seconds=5)
            vanished = [n for n in self.applied if n in res.desired and n not in res.installed_before
                        and ((expires := res.desired[n]) is None or expires > soon)]
            if vanished:
                result.restored = len(vanished)
                shown = ", ".join(str(n) for n in sorted(vanished, key=lambda n: (n.version, n.first))[:5])
                more = f" and {len(vanished) - 5} more" if len(vanished) > 5 else ""
                self.log(f"drift repaired: restored {len(vanished)} netblock(s) missing from the kernel "
                         f"({shown}{more})")
        self.applied = dict(res.desired)
        self.applied_v4 = limits.v4_addresses(res.desired, disjoint=True)
        if res.notes != self._notes:  # said once, not every tick
            for note in res.notes:
                self.log(note)
            self._notes = res.notes

    def _say_gone(self, before: dict, after: Mapping, now: datetime) -> None:
        """A line per netblock whose addresses left the kernel: expired, or deleted/allowed in the store.

        A netblock that only merged into a wider one (or was split around a
        still-blocked part) is not news; what is no longer covered at all is.
        """
        gone = [(net, expires) for net, expires in before.items() if net not in after]
        if not gone:
            return
        spans = sorted((n.version, n.first, n.last) for n in after)
        starts = [(v, first) for v, first, _ in spans]
        for net, expires in gone:
            covered = 0
            k = max(0, bisect_right(starts, (net.version, net.first)) - 1)
            while k < len(spans) and spans[k][:2] <= (net.version, net.last):
                v, first, last = spans[k]
                if v == net.version and last >= net.first:
                    covered += min(last, net.last) - max(first, net.first) + 1
                k += 1
            if covered >= net.size:
                continue
            if covered:
                text = f"unblocked {net.size - covered} of the {net.size} addresses of {net} (expired or deleted)"
            elif expires is not None and expires <= now:
                text = f"expired {net}"
            else:
                text = f"unblocked {net} (deleted or allowed in the store)"
            self.logger.event("expired", str(net), text, noun="netblocks expired or unblocked")

    # ---- sampling hook (reports engineer) ---------------------------------
    # Every tick reads the kernel's counters into the store here, after sync,
    # so the report's time series has one point per tick.
    def _sample(self, now: datetime, result: TickResult) -> None:
        try:
            from netblock.run import sampling
        except ImportError:
            return
        last = self.sampled_at or self._stored_time(SAMPLED_KEY)
        every = self.config.daemon.sample_every
        if last is None or not timedelta(0) <= now - last < every:
            try:
                if not (self.follow_mode and self._sample_changed(now)):
                    sampling.sample(self.store, self.backend(), now)
            except TRANSIENT as exc:
                self._counted = None
                result.errors.append(f"sampling: {failure(exc)}")
                return
            self.sampled_at = now
            if self.follow_mode:
                _give_back_memory()  # the counters of 100k elements were read as as many objects
            else:
                try:
                    self.store.set_state(SAMPLED_KEY, str(now.timestamp()))
                except TRANSIENT:
                    pass
        try:  # what `netblock export` shows as netblock_last_tick_timestamp_seconds
            self.store.set_state("last_tick", str(now.timestamp()))
        except TRANSIENT as exc:
            result.errors.append(f"recording the tick: {failure(exc)}")
        retention = self.config.report.retention
        if retention:
            try:
                sampling.thin_if_due(self.store, now, retention)
            except TRANSIENT as exc:
                result.errors.append(f"thinning samples: {failure(exc)}")
    # ---- end of sampling hook ---------------------------------------------

    def _sample_changed(self, now: datetime) -> bool:
        """sampling.sample() for the daemon: only counters that moved since its own last read reach the store.

        The store writes only changed counters anyway, but comparing 100k
        of them with their latest rows costs seconds every sample_every;
        the daemon keeps its last read as arrays and hands on what differs
        (everything, on its first read). False when the backend reads no columns: sample() it is.
        """
        import numpy as np

        from netblock.run import sampling

        cols = self.backend().counter_columns()
        if cols is None:
            return False
        previous = self._counted or {}
        changed = {}
        for version, (keys, packets, nbytes) in cols.items():
            pick = np.ones(len(keys), dtype=bool)
            old = previous.get(version)
            if old is not None and len(old[0]) and len(keys):
                pos = np.minimum(np.searchsorted(old[0], keys), len(old[0]) - 1)
                same = (old[0][pos] == keys) & (old[1][pos] == packets) & (old[2][pos] == nbytes)
                pick = ~np.asarray(same, dtype=bool)
            for i in np.flatnonzero(pick).tolist():
                k = int(keys[i])
                changed[IPNetwork((k >> 8, k & 255), version=version)] = (int(packets[i]), int(nbytes[i]))
        sampling.record(self.store, changed, now)
        self._counted = cols
        return True

    def _prune(self, now: datetime, result: TickResult) -> None:
        keep = self.config.daemon.observation_retention
        if not keep:
            return
        try:
            self.store.prune_observations(now - keep)
        except TRANSIENT as exc:
            result.errors.append(f"pruning observations: {failure(exc)}")

    def status(self) -> str:
        r = self.last_result
        when = "never" if self.last_tick is None else f"{self.last_tick:%Y-%m-%d %H:%M:%S}Z"
        state = "ok" if r.ok else "failed: " + r.errors[0]
        counting = self.config.firewall.verdict == "count"
        counting = "counting only (nothing dropped), " if counting else ""
        return printable(f"{counting}{r.blocks} blocks, last tick {when} {state}")  # one line for sd_notify's STATUS=


@dataclass
class Quiet:
    """A tick that needs no full sync: the blocks that ran out in (the last look, ``until``]."""

    ran_out: list[Block]
    until: datetime


def _give_back_memory() -> None:
    """Return the heap a full sync freed to the system, so an idle daemon's RSS is what it keeps."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc
