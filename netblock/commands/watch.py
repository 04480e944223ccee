"""Commands that read the mail logs: ingest, daemon, run-once, why.

All of them go through the same steps as the daemon's tick (netblock.run.daemon):
observations into the store, policy, sync. ``ingest`` reads finished files
once (plain or gzip, or stdin) and keeps no position; ``run-once`` continues
from the positions the daemon saves, for the systemd timer mode.
"""

from __future__ import annotations

import gc
import json
import os
from collections import Counter
from datetime import timezone

from netblock.errors import BadInput, NetblockError, NotARegularFile
from netblock.printable import printable
from netblock.sources import follow

FORMATS = ("auto", "postfix", "exim", "sendmail")
STORE_BATCH = 5000


def register(sub) -> None:
    p = sub.add_parser("ingest", help="read mail log files once into the store, then decide and sync",
                       description="Read mail log files (plain, .gz, or - for stdin) once: observations go "
                       "into the store, then the policy decides and the kernel is synced. No position is "
                       "kept, so a file ingested twice counts twice.")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="log format (default: `sources.format` from the config, auto)")
    p.add_argument("--dry-run", action="store_true",
                   help="only count the observations per class (with --json: show each one); "
                   "change neither the store nor the kernel (default: off)")
    p.add_argument("--json", action="store_true",
                   help="JSON output; with --dry-run one object per line and observation "
                   "(time, ip, class, mta, line) (default: text)")
    p.add_argument("files", nargs="+", metavar="FILE", help="log file, .gz file, or - for stdin")
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser("daemon", help="follow the logs and keep the kernel in step (foreground; for systemd)",
                       description="Follow the configured log files and the journal, decide every tick and "
                       "at once when an address crosses its threshold, and sync. SIGHUP reloads the "
                       "configuration; SIGTERM exits 0 and leaves the kernel rules in place.")
    p.add_argument("--count-only", dest="daemon_count_only", action="store_true",
                   help="counting-only mode: the same sets and elements, counted per netblock, nothing dropped "
                   "(as [firewall] verdict = \"count\"; kept across SIGHUP; default: the config's verdict)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log more: -v adds debug lines (each sync, each source batch); default: "
                   "[daemon] log_level, info")
    p.set_defaults(handler=cmd_daemon)

    p = sub.add_parser("run-once", help="one daemon tick from the saved positions (systemd timer mode)",
                       description="Run one tick of the daemon from the saved log positions and journal "
                       "cursor: read what is new, decide, sync, sample, expire. netblock-run.timer runs "
                       "this every minute for sites that want no resident daemon.")
    p.add_argument("--json", action="store_true", help="print the tick's result as JSON (default: one line of text)")
    p.set_defaults(handler=cmd_run_once)

    p = sub.add_parser("why", help="explain why an address or prefix is (not) blocked",
                       description="Show the observations, the rule per class that blocked it or did not, "
                       "the widening that covers it, or what protects it.")
    p.add_argument("target", metavar="IP|PREFIX")
    p.add_argument("--json", action="store_true", help="machine-readable output (default: text)")
    p.set_defaults(handler=cmd_why)


# ---------------------------------------------------------------- ingest

def _format(args, ctx) -> str:
    if args.format:
        return args.format
    return ctx.config.sources.format


def _max_line(ctx) -> int:
    return ctx.config.sources.max_line


def _check_files(files: list[str]) -> None:
    if files.count("-") > 1:
        raise BadInput("- (stdin) given more than once")
    for path in files:
        if path == "-":
            continue
        if not os.path.exists(path):
            raise BadInput(f"{path}: no such file")
        why = follow.not_regular(path, os.stat(path).st_mode)
        if why:
            raise NotARegularFile(why)
        if not os.access(path, os.R_OK):
            raise BadInput(f"{path}: not readable")


def cmd_ingest(args, ctx) -> int:
    _check_files(args.files)
    fmt = _format(args, ctx)
    max_line = _max_line(ctx)
    now = ctx.now()
    store = None if args.dry_run else ctx.store()
    lines_read = observed = overlong = 0
    by_class: Counter = Counter()
    pending: list = []
    from netblock.sources.join import Join

    # One join over all the files, in the order given: a message whose client
    # line is in mail.log.1 and whose acceptance is in mail.log still pairs.
    join = Join()

    def flush() -> None:
        if pending and store is not None:
            store.add_observations(pending)
        pending.clear()

    total = sum(follow.input_size(p) for p in args.files)
    # The loop makes no reference cycles, but it makes a great many objects
    # that live for one block: each collection would walk the parsers' caches
    # again (a quarter of the run time on a big log).
    collecting = gc.isenabled()
    gc.disable()
    try:
        with ctx.progress(total, "reading") as bar:
            for path in args.files:
                source = "stdin" if path == "-" else path
                jobs = _parallel_jobs(path, fmt, now, max_line, args) if args.dry_run else None
                if jobs:
                    for (start, stop, *_), (n, cut, seen, counts, segments) in _run_parallel(jobs):
                        lines_read += n
                        overlong += cut
                        observed += seen
                        by_class.update(counts)
                        for shown, mark in segments:
                            ctx.stdout.write(shown)
                            if mark is None:
                                continue
                            when, ip, cls, mta, line = mark
                            delivered = join.mark(when, ip, cls, mta)
                            if delivered is None:
                                continue
                            observed += 1
                            if args.json:
                                _show_observations(ctx.stdout.write, [(when, delivered, "delivered", mta, 0)], line)
                            else:
                                by_class["delivered"] += 1
                        bar.advance(stop - start)
                    continue
                for n, cut, hits, text, base in _hits(path, fmt, now, max_line, bar.advance):
                    lines_read += n
                    overlong += cut
                    if not hits:
                        continue
                    hits = join.tuples(hits)
                    if not hits:
                        continue
                    observed += len(hits)
                    if not args.dry_run:
                        pending.extend(_observations(hits, text, base, source))
                        if len(pending) >= STORE_BATCH:
                            flush()
                    elif args.json:
                        _show_observations(ctx.stdout.write, hits, text)
                    else:
                        by_class.update([h[2] for h in hits])
    finally:
        if collecting:
            gc.enable()
    flush()
    if store is not None:
        from netblock.sources import batch

        batch.forget()
        gc.collect()
    if overlong:
        ctx.warn(f"{overlong} over-long line(s) cut to {max_line} bytes")
    if args.dry_run:
        if not args.json:
            ctx.print(f"{lines_read} lines, {observed} observations (dry run: nothing stored)")
            for cls, n in sorted(by_class.items(), key=lambda kv: (-kv[1], kv[0])):
                ctx.print(f"  {n:>10}  {printable(cls)}")
            if join.ambiguous:
                # Lines with more than one reading of the client field or the
                # reply: read neither way, shown so an operator can look.
                ctx.print(f"  {join.ambiguous:>10}  ambiguous (not counted)")
        return 0
    with store.transaction():
        from netblock.decide import policy  # numpy: loaded only by the commands that decide

        decided = policy.record(store, policy.decide(store, ctx.config, now), now)
    # A storm decides 100k blocks, and sync loads them all again from the
    # store: keep only what the summary prints, so the two sets never coexist.
    n_decided = len(decided)
    decided_nets = [str(b.netblock) for b in decided] if args.json else None
    del decided
    gc.collect()
    from netblock.run.sync import sync

    try:
        result = sync(store, ctx.backend(), ctx.config, now=now)
    except NetblockError as exc:
        raise type(exc)(f"{exc} (the observations and decisions are stored; `netblock sync` retries)") from None
    for note in result.notes:
        ctx.warn(note)
    c = result.change
    if args.json:
        ctx.print_json({"lines": lines_read, "observations": observed, "overlong": overlong,
                        "decided": decided_nets, "kernel": len(result.desired),
                        "added": len(c.added), "removed": len(c.removed), "updated": len(c.updated)})
        return 0
    ctx.print(f"{lines_read} lines, {observed} observations, {n_decided} blocks decided; "
              f"kernel: {len(result.desired)} netblocks (+{len(c.added)} -{len(c.removed)} ~{len(c.updated)})")
    return 0


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


# A dry run only counts or prints, so pieces of a big plain file can be parsed
# on every CPU at once and their results joined in file order.  Below
# PARALLEL_MIN, starting the workers costs more than it saves.
PARALLEL_MIN = 32 << 20
PIECE = 8 << 20


def _parallel_jobs(path: str, fmt: str, now, max_line: int, args) -> list[tuple] | None:
    try:
        workers = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        workers = os.cpu_count() or 1
    if workers < 2 or follow.input_size(path) < PARALLEL_MIN:
        return None
    ranges = follow.pieces(path, PIECE)
    if not ranges or len(ranges) < 2:
        return None
    return [(start, stop, path, fmt, now, max_line, args.json, workers) for start, stop in ranges]


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


# ---------------------------------------------------------------- daemon, run-once

def _runner(ctx, *, follow_mode: bool, log_level: str | None = None):
    from netblock.run.daemon import Runner

    if ctx.config.routed.enabled:
        # A routing table that cannot be read would stop every decision of every
        # tick; refuse to start instead, with the one-line reason.
        from netblock.decide import asn

        asn.from_config(ctx.config)
    return Runner(ctx.config, ctx.store(), ctx.backend, clock=ctx.now, follow_mode=follow_mode,
                  stderr=ctx.stderr, log_level=log_level)


def cmd_daemon(args, ctx) -> int:
    from netblock.run.daemon import Daemon

    runner = _runner(ctx, follow_mode=True)
    return Daemon(runner, reload_config=ctx.reload_config, verbose=args.verbose).run()


def cmd_run_once(args, ctx) -> int:
    # The summary below says what the tick did; stderr keeps to what went wrong.
    runner = _runner(ctx, follow_mode=False, log_level="warning")
    runner.open_sources()
    try:
        result = runner.tick()
    finally:
        runner.close_sources()
    if args.json:
        ctx.print_json({"observations": result.observations, "decided": result.decided,
                        "blocks": result.blocks, "added": result.added, "removed": result.removed,
                        "updated": result.updated, "restored": result.restored, "errors": result.errors})
    else:
        ctx.print(f"{result.observations} observations, {result.decided} blocks decided, "
                  f"{result.blocks} active; kernel +{result.added} -{result.removed} ~{result.updated}")
    return 0 if result.ok else 1


# ---------------------------------------------------------------- why

def cmd_why(args, ctx) -> int:
    from netblock.decide.targets import parse_target

    parsed = parse_target(args.target, any_width=True)
    if parsed.warning:
        ctx.warn(parsed.warning)
    target = parsed.netblock
    own = []
    try:
        from netblock.system import hostaddrs

        own = hostaddrs.own_addresses()
    except (NetblockError, OSError, ImportError):
        own = []  # own addresses are extra detail here, not a reason to fail
    from netblock.decide import explain

    ex = explain.explain(ctx.store(), ctx.config, target, ctx.now(), own=own)
    if args.json:
        ctx.print_json(ex.to_dict())
    else:
        for line in explain.render(ex):  # one line each: a newline inside a field is escaped with the rest
            ctx.print(printable(line))
    return 0
