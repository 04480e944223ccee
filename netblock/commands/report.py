"""`netblock sample` and `netblock report`: kernel counters into the weekly table."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone

from netblock import report as rep
from netblock.errors import BadInput


def register(sub) -> None:
    p = sub.add_parser("sample", help="read the kernel's per-netblock counters into the store",
                       description="Read counters() from the backend and store one sample per netblock "
                       "(time, packets, bytes). The daemon and run-once do this every tick.")
    p.add_argument("--json", action="store_true", help="print the counters read as JSON")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("report", help="the top-N Host/Mask Packets Bytes table from the kernel's counters",
                       description="Netblocks by packets dropped in the window (default: the past 7 days), "
                       "from the counter samples in the store. Numbers are in iptables' own units "
                       "(plain below 100000, then K, M, G) unless --exact.")
    p.add_argument("kind", nargs="?", default="top", choices=("top",), help="report kind (default: top)")
    p.add_argument("--since", metavar="DURATION", help="window ending now, e.g. 7d, 24h (default 7d)")
    p.add_argument("--from", dest="from_", metavar="TIME", help="window start, ISO 8601 (UTC if no zone)")
    p.add_argument("--to", metavar="TIME", help="window end, ISO 8601 (default: now)")
    p.add_argument("--top", type=int, default=None, metavar="N", help="rows to show (default: [report] top, 10)")
    p.add_argument("--by", choices=("packets", "bytes"), default="packets", help="rank by (default packets)")
    p.add_argument("--exact", action="store_true", help="raw integers instead of K/M/G")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON rows: netblock, packets, bytes, first_seen, "
                     "last_seen, reason")
    fmt.add_argument("--csv", action="store_true", help="CSV with the same columns as --json")
    p.set_defaults(handler=cmd_report)


def cmd_sample(args, ctx) -> int:
    store, backend = ctx.store(), ctx.backend()
    now = ctx.now()
    counters = backend.counters()
    if counters:
        store.add_samples(now, counters)
    if args.json:
        ctx.print_json([{"netblock": str(n), "packets": p, "bytes": b} for n, (p, b) in sorted(
            counters.items(), key=lambda kv: (kv[0].version, kv[0].first))])
    else:
        ctx.print(f"sampled {len(counters)} netblocks")
    return 0


def _time(text: str, what: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(f"{what}: {text!r} is not an ISO 8601 time like 2026-11-21 or 2026-11-21T23:00") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def window(args, now: datetime) -> tuple[datetime, datetime]:
    from netblock.targets import parse_duration

    if args.since and args.from_:
        raise BadInput("--since and --from exclude each other")
    until = _time(args.to, "--to") if args.to else now
    if args.from_:
        since = _time(args.from_, "--from")
    else:
        since = until - (parse_duration(args.since) if args.since else timedelta(days=7))
    if since >= until:
        raise BadInput(f"empty window: {since.isoformat()} is not before {until.isoformat()}")
    return since, until


def top_rows(store, since: datetime, until: datetime, n: int, by: str = "packets") -> list[rep.Row]:
    samples = store.samples(until=until)
    rows = rep.drops(samples, since, until)
    last = max((s.time for s in samples), default=None)
    final = [s.netblock for s in samples if s.time == last]
    rows = rep.rollup(rows, final)
    reasons = {b.netblock: b.reason for b in store.blocks()}
    for row in rows.values():
        row.reason = reasons.get(row.netblock) or next(
            (reasons[n] for n in row.rolled_up if n in reasons), "")
    return rep.top(rows.values(), n, by)


def cmd_report(args, ctx) -> int:
    if args.top is not None and args.top < 1:
        raise BadInput(f"--top: {args.top} must be at least 1")
    since, until = window(args, ctx.now())
    n = args.top or getattr(getattr(ctx.config, "report", None), "top", 10)
    rows = top_rows(ctx.store(), since, until, n, args.by)
    records = [{"netblock": str(r.netblock.cidr), "packets": r.packets, "bytes": r.bytes,
                "first_seen": r.first_seen, "last_seen": r.last_seen, "reason": r.reason} for r in rows]
    if args.json:
        ctx.print_json(records)
    elif args.csv:
        w = csv.DictWriter(ctx.stdout, fieldnames=list(records[0]) if records else
                           ["netblock", "packets", "bytes", "first_seen", "last_seen", "reason"])
        w.writeheader()
        for r in records:
            w.writerow({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()})
    else:
        ctx.print(rep.table(rows, exact=args.exact))
    return 0
