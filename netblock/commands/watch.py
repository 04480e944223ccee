"""Commands that read the mail logs: ingest, daemon, run-once, why.

Parse, call, print: ``ingest`` calls run/ingest.py (finished files read once,
then the policy and sync), ``run-once`` the tick in run/tick.py (it
continues from the positions the daemon saves, for the systemd timer mode),
``daemon`` the loop around that tick in run/daemon.py, ``why``
decide/explain.py.
"""

from __future__ import annotations

import os

from netblock.errors import BadInput, NetblockError, NotARegularFile
from netblock.printable import printable
from netblock.sources import follow

FORMATS = ("auto", "postfix", "exim", "sendmail")


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
    from netblock.run import ingest

    _check_files(args.files)
    fmt = args.format or ctx.config.sources.format
    max_line = ctx.config.sources.max_line
    now = ctx.now()
    store = None if args.dry_run else ctx.store()
    show = ctx.stdout.write if args.dry_run and args.json else None
    with ctx.progress(ingest.input_size(args.files), "reading") as bar:
        got = ingest.read(args.files, fmt=fmt, now=now, max_line=max_line, store=store, show=show,
                          on_bytes=bar.advance)
    if got.overlong:
        ctx.warn(f"{got.overlong} over-long line(s) cut to {max_line} bytes")
    if store is None:
        if not args.json:
            ctx.print(f"{got.lines} lines, {got.observations} observations (dry run: nothing stored)")
            for cls, n in sorted(got.by_class.items(), key=lambda kv: (-kv[1], kv[0])):
                ctx.print(f"  {n:>10}  {printable(cls)}")
            if got.ambiguous:
                # Lines with more than one reading of the client field or the
                # reply: read neither way, shown so an operator can look.
                ctx.print(f"  {got.ambiguous:>10}  ambiguous (not counted)")
        return 0
    n_decided, decided_nets = ingest.decide(store, ctx.config, now, names=args.json)
    from netblock.run.sync import sync

    try:
        result = sync(store, ctx.backend(), ctx.config, now=now)
    except NetblockError as exc:
        raise type(exc)(f"{exc} (the observations and decisions are stored; `netblock sync` retries)") from None
    for note in result.notes:
        ctx.warn(note)
    c = result.change
    if args.json:
        ctx.print_json({"lines": got.lines, "observations": got.observations, "overlong": got.overlong,
                        "decided": decided_nets, "kernel": len(result.desired),
                        "added": len(c.added), "removed": len(c.removed), "updated": len(c.updated)})
        return 0
    ctx.print(f"{got.lines} lines, {got.observations} observations, {n_decided} blocks decided; "
              f"kernel: {len(result.desired)} netblocks (+{len(c.added)} -{len(c.removed)} ~{len(c.updated)})")
    return 0


# ---------------------------------------------------------------- daemon, run-once

def _runner(ctx, *, follow_mode: bool, log_level: str | None = None):
    from netblock.run.tick import Runner

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
                        "updated": result.updated, "restored": result.restored, "errors": result.errors,
                        "synced": not result.skipped,  # False: the kernel was proven as netblock left it
                        "expired": result.expired})  # blocks that ran out, carried as a change (not synced)
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
