"""`netblock ingest`: finished mail log files read once, then one decision and one sync.

The daemon's tick (run/tick.py) follows the configured sources and keeps
their positions; ingest reads the files it is given from the start (plain,
gzip or stdin) and keeps none, so a file ingested twice counts twice. One
sources.join runs over all the files in the order given: a message whose
client line is in mail.log.1 and whose acceptance is in mail.log still pairs.
Then the same steps as a tick: the policy decides over the store, sync makes
the kernel equal to it (run/sync.py).

A dry run stores nothing: it counts the observations per class, or hands
each one as a JSON line to the caller; big plain files are then parsed in
pieces on every CPU at once and joined in file order.
"""

from __future__ import annotations

import gc
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from netblock.sources import follow

STORE_BATCH = 5000  # observations per store write

# Below PARALLEL_MIN bytes, starting the workers of a dry run costs more than it saves.
PARALLEL_MIN = 32 << 20
PIECE = 8 << 20


@dataclass
class Reading:
    """What reading the files found."""

    lines: int = 0
    observations: int = 0
    overlong: int = 0  # lines cut to max_line
    by_class: Counter = field(default_factory=Counter)  # a dry run that shows no lines counts these
    ambiguous: int = 0  # lines with more than one reading, read neither way


def input_size(files: list[str]) -> int:
    """Bytes to read, for the progress bar (stdin and compressed files count what can be known)."""
    return sum(follow.input_size(p) for p in files)


def read(files: list[str], *, fmt: str, now: datetime, max_line: int, store=None,
         show: Callable[[str], object] | None = None, on_bytes: Callable[[int], object] | None = None) -> Reading:
    """Read ``files`` in order into ``store``; with no store (a dry run), count per class, or, with
    ``show``, hand it one JSON line per observation (time, ip, class, mta, line) in file order."""
    from netblock.sources.join import Join

    reading = Reading()
    join = Join()
    pending: list = []

    def flush() -> None:
        if pending and store is not None:
            store.add_observations(pending)
        pending.clear()

    # The loop makes no reference cycles, but it makes a great many objects
    # that live for one block: each collection would walk the parsers' caches
    # again (a quarter of the run time on a big log).
    collecting = gc.isenabled()
    gc.disable()
    try:
        for path in files:
            source = "stdin" if path == "-" else path
            jobs = parallel_jobs(path, fmt, now, max_line, show is not None) if store is None else None
            if jobs:
                _read_parallel(jobs, join, reading, show, on_bytes)
                continue
            for n, cut, hits, text, base in _hits(path, fmt, now, max_line, on_bytes):
                reading.lines += n
                reading.overlong += cut
                if not hits:
                    continue
                hits = join.tuples(hits)
                if not hits:
                    continue
                reading.observations += len(hits)
                if store is not None:
                    pending.extend(_observations(hits, text, base, source))
                    if len(pending) >= STORE_BATCH:
                        flush()
                elif show is not None:
                    _show_observations(show, hits, text)
                else:
                    reading.by_class.update([h[2] for h in hits])
    finally:
        if collecting:
            gc.enable()
    flush()
    if store is not None:
        from netblock.sources import batch

        batch.forget()
        gc.collect()
    reading.ambiguous = join.ambiguous
    return reading


def decide(store, config, now: datetime, *, names: bool = False) -> tuple[int, list[str] | None]:
    """The policy over the store, recorded: (blocks new or extended, their netblocks if ``names``).

    A storm decides 100k blocks, and sync loads them all again from the
    store: only the count (and the names asked for) is kept, so the two sets
    never coexist.
    """
    from netblock.decide import policy  # numpy: loaded only by the commands that decide

    with store.transaction():
        decided = policy.record(store, policy.decide(store, config, now), now)
    count = len(decided)
    nets = [str(b.netblock) for b in decided] if names else None
    del decided
    gc.collect()
    return count, nets


def _hits(path: str, fmt: str, now, max_line: int, on_bytes, start: int = 0, stop: int | None = None):
    """(lines, over-long lines, observation tuples, their text, its byte offset) per piece of a file.

    Whole blocks go through one regex search (sources.batch); the few
    over-long lines come one by one, and parse_line caps them.  The tuples
    are sources.batch's: (time, ip, cls, mta, index of the line in the text),
    markers included (sources.join settles them).
    """
    from netblock import sources
    from netblock.sources import batch

    for item in follow.read_blocks(path, max_line=max_line, block_line=sources.MAX_LINE, on_bytes=on_bytes,
                                   start=start, stop=stop):
        if isinstance(item, follow.Line):
            obs = sources.parse_line(item.text, fmt=fmt, now=now, marks=True)
            hits = [] if obs is None else [(obs.time, obs.ip, obs.cls, obs.mta, 0)]
            yield 1, int(item.truncated), hits, item.text + "\n", item.position
        else:
            yield item.lines, 0, batch.scan(item.text, fmt=fmt, now=now, marks=True), item.text, item.position


def parallel_jobs(path: str, fmt: str, now, max_line: int, as_json: bool) -> list[tuple] | None:
    """The pieces of a dry run over ``path``, one job each, or None when it is read in one go."""
    try:
        workers = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        workers = os.cpu_count() or 1
    if workers < 2 or follow.input_size(path) < PARALLEL_MIN:
        return None
    ranges = follow.pieces(path, PIECE)
    if not ranges or len(ranges) < 2:
        return None
    return [(start, stop, path, fmt, now, max_line, as_json, workers) for start, stop in ranges]


def _read_parallel(jobs: list[tuple], join, reading: Reading, show, on_bytes) -> None:
    """A dry run over the pieces of one file, the results joined in file order."""
    for (start, stop, *_), (n, cut, seen, counts, segments) in _run_parallel(jobs):
        reading.lines += n
        reading.overlong += cut
        reading.observations += seen
        reading.by_class.update(counts)
        for shown, mark in segments:
            if show is not None:
                show(shown)
            if mark is None:
                continue
            when, ip, cls, mta, line = mark
            delivered = join.mark(when, ip, cls, mta)
            if delivered is None:
                continue
            reading.observations += 1
            if show is not None:
                _show_observations(show, [(when, delivered, "delivered", mta, 0)], line)
            else:
                reading.by_class["delivered"] += 1
        if on_bytes is not None:
            on_bytes(stop - start)


def _run_parallel(jobs: list[tuple]):
    """(job, result of _dry_piece) per job, in order, from one worker process per CPU."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(jobs[0][-1]) as pool:
        yield from zip(jobs, pool.imap(_dry_piece, jobs))


def _dry_piece(job: tuple) -> tuple[int, int, int, Counter, list[tuple]]:
    """A dry run over one piece of a file: lines, over-long lines, observations, per class, segments.

    The segments are (JSON text, marker or None) in file order: the parent
    writes each text, then pairs the marker (time, ip, cls, mta, line) with
    its own sources.join, so pairs across pieces come out as in a serial run.
    """
    from netblock.sources import batch
    from netblock.sources.fields import MARK

    start, stop, path, fmt, now, max_line, as_json, _ = job
    lines = cut = seen = 0
    counts: Counter = Counter()
    out: list[str] = []
    segments: list[tuple] = []
    for n, c, hits, text, _base in _hits(path, fmt, now, max_line, None, start, stop):
        lines += n
        cut += c
        for h in hits:
            if h[2][0] == MARK:
                segments.append(("".join(out), (*h[:4], batch.line_at(text, h[4]) + "\n" if as_json else "")))
                out.clear()
                continue
            seen += 1
            if as_json:
                _show_observations(out.append, [h], text)
            else:
                counts[h[2]] += 1
    segments.append(("".join(out), None))
    return lines, cut, seen, counts, segments


def _observations(hits: list[tuple], text, base: int, source: str):
    """Observations of batch tuples found in ``text``, which starts at byte ``base`` of ``source``."""
    from netblock import sources
    from netblock.sources import batch

    starts = [h[4] for h in hits]
    if isinstance(text, str) and not text.isascii():
        starts = batch.byte_offsets(text, starts)
    make = sources.make_observation
    return [make(h[0], h[1], h[2], h[3], source, base + at) for h, at in zip(hits, starts)]


def _show_observations(write, hits, text) -> None:
    """One JSON object per observation: the time, address and class, and the line they came from."""
    from netblock.sources import batch

    dumps = json.dumps
    for when, ip, cls, mta, start in hits:
        stamp = when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        write(dumps({"time": stamp, "ip": str(ip), "class": cls, "mta": mta,
                     "line": batch.line_at(text, start)}) + "\n")
