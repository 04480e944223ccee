"""Commands that read the mail logs: ingest, daemon, run-once, why.

All of them go through the same steps as the daemon's tick (netblock.daemon):
observations into the store, policy, sync. ``ingest`` reads finished files
once (plain or gzip, or stdin) and keeps no position; ``run-once`` continues
from the positions the daemon saves, for the systemd timer mode.
"""

from __future__ import annotations

import json
import os
from datetime import timezone

from netblock import follow
from netblock.errors import BadInput, NetblockError

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
                   help="only show the observations; change neither the store nor the kernel")
    p.add_argument("--json", action="store_true",
                   help="JSON output; with --dry-run one object per line and observation "
                   "(time, ip, class, mta, line)")
    p.add_argument("files", nargs="+", metavar="FILE", help="log file, .gz file, or - for stdin")
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser("daemon", help="follow the logs and keep the kernel in step (foreground; for systemd)",
                       description="Follow the configured log files and the journal, decide every tick and "
                       "at once when an address crosses its threshold, and sync. SIGHUP reloads the "
                       "configuration; SIGTERM exits 0 and leaves the kernel rules in place.")
    p.set_defaults(handler=cmd_daemon)

    p = sub.add_parser("run-once", help="one daemon tick from the saved positions (systemd timer mode)")
    p.add_argument("--json", action="store_true", help="print the tick's result as JSON")
    p.set_defaults(handler=cmd_run_once)

    p = sub.add_parser("why", help="explain why an address or prefix is (not) blocked",
                       description="Show the observations, the rule per class that blocked it or did not, "
                       "the widening that covers it, or what protects it.")
    p.add_argument("target", metavar="IP|PREFIX")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_why)


# ---------------------------------------------------------------- ingest

def _format(args, ctx) -> str:
    if args.format:
        return args.format
    sources = getattr(ctx.config, "sources", None)
    return getattr(sources, "format", None) or "auto"


def _max_line(ctx) -> int:
    sources = getattr(ctx.config, "sources", None)
    return int(getattr(sources, "max_line", None) or follow.DEFAULT_MAX_LINE)


def _check_files(files: list[str]) -> None:
    if files.count("-") > 1:
        raise BadInput("- (stdin) given more than once")
    for path in files:
        if path == "-":
            continue
        if not os.path.exists(path):
            raise BadInput(f"{path}: no such file")
        if os.path.isdir(path):
            raise BadInput(f"{path}: is a directory")
        if not os.access(path, os.R_OK):
            raise BadInput(f"{path}: not readable")


def cmd_ingest(args, ctx) -> int:
    from netblock import sources

    _check_files(args.files)
    fmt = _format(args, ctx)
    max_line = _max_line(ctx)
    now = ctx.now()
    store = None if args.dry_run else ctx.store()
    lines_read = observed = overlong = 0
    pending = []

    def flush() -> None:
        if pending and store is not None:
            store.add_observations(pending)
        pending.clear()

    total = sum(follow.input_size(p) for p in args.files)
    with ctx.progress(total, "reading") as bar:
        for path in args.files:
            source = "stdin" if path == "-" else path
            for line in follow.read_lines(path, max_line=max_line, on_bytes=bar.advance):
                lines_read += 1
                overlong += line.truncated
                obs = sources.parse_line(line.text, fmt=fmt, source=source, position=line.position, now=now)
                if obs is None:
                    continue
                observed += 1
                if args.dry_run:
                    _show_observation(ctx, obs, line.text, as_json=args.json)
                    continue
                pending.append(obs)
                if len(pending) >= STORE_BATCH:
                    flush()
    flush()
    if overlong:
        ctx.warn(f"{overlong} over-long line(s) cut to {max_line} bytes")
    if args.dry_run:
        if not args.json:
            ctx.print(f"{lines_read} lines, {observed} observations (dry run: nothing stored)")
        return 0
    with store.transaction():
        from netblock import policy  # numpy: loaded only by the commands that decide

        decided = policy.record(store, policy.decide(store, ctx.config, now), now)
    from netblock.sync import sync

    result = sync(store, ctx.backend(), ctx.config, now=now)
    c = result.change
    if args.json:
        ctx.print_json({"lines": lines_read, "observations": observed, "overlong": overlong,
                        "decided": [str(b.netblock) for b in decided], "kernel": len(result.desired),
                        "added": len(c.added), "removed": len(c.removed), "updated": len(c.updated)})
        return 0
    ctx.print(f"{lines_read} lines, {observed} observations, {len(decided)} blocks decided; "
              f"kernel: {len(result.desired)} netblocks (+{len(c.added)} -{len(c.removed)} ~{len(c.updated)})")
    return 0


def _show_observation(ctx, obs, text: str, *, as_json: bool) -> None:
    when = obs.time.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if as_json:
        ctx.stdout.write(json.dumps({"time": when, "ip": str(obs.ip), "class": obs.cls,
                                     "mta": obs.mta, "line": text}) + "\n")
    else:
        ctx.print(f"{when}  {str(obs.ip):<39}  {obs.cls:<24}  {obs.mta}")


# ---------------------------------------------------------------- daemon, run-once

def _runner(ctx, *, follow_mode: bool):
    from netblock.daemon import Runner

    if ctx.config.routed.enabled:
        # A routing table that cannot be read would stop every decision of every
        # tick; refuse to start instead, with the one-line reason.
        from netblock import asn

        asn.from_config(ctx.config)
    return Runner(ctx.config, ctx.store(), ctx.backend, clock=ctx.now, follow_mode=follow_mode,
                  stderr=ctx.stderr)


def cmd_daemon(args, ctx) -> int:
    from netblock.daemon import Daemon

    runner = _runner(ctx, follow_mode=True)
    return Daemon(runner, reload_config=ctx.reload_config).run()


def cmd_run_once(args, ctx) -> int:
    runner = _runner(ctx, follow_mode=False)
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
    from netblock.targets import parse_target

    parsed = parse_target(args.target, force=True)
    if parsed.warning:
        ctx.warn(parsed.warning)
    target = parsed.netblock
    own = []
    try:
        from netblock import hostaddrs

        own = hostaddrs.own_addresses()
    except (NetblockError, OSError, ImportError):
        own = []  # own addresses are extra detail here, not a reason to fail
    from netblock import policy

    ex = policy.explain(ctx.store(), ctx.config, target, ctx.now(), own=own)
    if args.json:
        ctx.print_json(ex.to_dict())
    else:
        for line in policy.render(ex):
            ctx.print(line)
    return 0
