"""`netblock sample`, `report` and `wrapup`: parse, call reports/drops.py (the data), print.

The kernel's counters become the weekly table there; this module reads the
arguments, picks the rows and writes them as a table, JSON, CSV, a chart or a page.
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone

from netblock.errors import BadInput
from netblock.printable import printable
from netblock.reports import drops, tables as rep


def register(sub) -> None:
    p = sub.add_parser("sample", help="read the kernel's per-netblock counters into the store",
                       description="Read counters() from the backend and store one sample per netblock "
                       "(time, packets, bytes). The daemon and run-once do this every tick.")
    p.add_argument("--json", action="store_true", help="print the counters read as JSON (default: a count)")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("report", help="the top-N Host/Mask Packets Bytes table from the kernel's counters",
                       description="Netblocks by packets dropped in the window (default: the past 7 days), "
                       "from the counter samples in the store. Numbers are in iptables' own units "
                       "(plain below 100000, then K, M, G) unless --exact.")
    p.add_argument("kind", nargs="?", default="top", choices=("top", "classes", "summary", "asn"),
                   help="top: blocks by drops (default); classes: rejections by class; "
                   "summary: the week in numbers; asn: distinct rejected IPs per origin AS, or with "
                   "--by packets/bytes dropped packets and bytes per origin AS (needs [report] asn_file)")
    p.add_argument("--since", metavar="DURATION", help="window ending now, e.g. 7d, 24h (default 7d)")
    p.add_argument("--from", dest="from_", metavar="TIME", help="window start, ISO 8601 (UTC if no zone; default: --to minus 7d)")
    p.add_argument("--to", metavar="TIME", help="window end, ISO 8601 (default: now)")
    p.add_argument("--top", type=int, default=None, metavar="N", help="rows to show (default: [report] top, 10)")
    p.add_argument("--by", choices=("packets", "bytes"), default=None,
                   help="rank by (default packets); `report asn --by packets|bytes`: drops per origin AS")
    p.add_argument("--exact", action="store_true", help="raw integers instead of K/M/G (default: off)")
    p.add_argument("--no-compare", action="store_true",
                   help="leave out the comparison with the previous window of the same length (default: "
                   "each row's previous rank and packets, new entries, those that dropped out, each "
                   "class's change)")
    p.add_argument("--host", metavar="ID", help="fleet mode (PostgreSQL store): one MX host's drops and "
                   "rejections only (default: the whole fleet, packets summed over hosts)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON rows: netblock (the block as decided), packets, "
                     "bytes, first_seen, last_seen, reason, except (its carve-outs) and, with the comparison, "
                     "previous_rank, previous_packets, new, dropped_out (the rows that left the top follow the "
                     "shown ones) (default: a table)")
    fmt.add_argument("--csv", action="store_true", help="CSV with the same columns as --json (default: a table)")
    p.add_argument("--plot", metavar="FILE", help="also draw the top-N as bars and the drops per day as a line "
                   "into FILE.png or FILE.svg (needs matplotlib: pip install 'netblock[plot]'; default: no chart)")
    p.add_argument("--html", metavar="FILE", help="also write the wrap-up (top-N, classes, summary, charts as "
                   "SVG when matplotlib is installed) as one self-contained HTML page (default: none)")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("wrapup", help="the weekly wrap-up: top netblocks, classes, summary into a file",
                       description="Write the top-N table, the rejection classes and the summary for the "
                       "window into DIR/YYYY-Www.txt (ISO week of the window's end) and print it, so the "
                       "journal keeps a copy too. netblock-report.timer runs this on Saturdays 23:00.")
    p.add_argument("--dir", default="/var/lib/netblock/reports", help="directory (default: %(default)s)")
    p.add_argument("--since", metavar="DURATION", default="7d", help="window ending now (default: 7d)")
    p.add_argument("--top", type=int, default=None, metavar="N", help="rows in the top table (default 10)")
    p.add_argument("--no-compare", action="store_true",
                   help="leave out the comparison with the previous window (default: compared)")
    p.set_defaults(handler=cmd_wrapup)


def cmd_sample(args, ctx) -> int:
    from netblock.run import sampling

    store, backend = ctx.store(), ctx.backend()
    counters = backend.counters()
    written = sampling.record(store, counters, ctx.now())
    if args.json:
        ctx.print_json([{"netblock": str(n.cidr), "packets": p, "bytes": b} for n, (p, b) in sorted(
            counters.items(), key=lambda kv: (kv[0].version, kv[0].first))])
    else:
        ctx.print(f"sampled {len(counters)} netblocks, {written} changed")
    return 0


def _time(text: str, what: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(f"{what}: {text!r} is not an ISO 8601 time like 2026-11-21 or 2026-11-21T23:00") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def window(args, now: datetime) -> tuple[datetime, datetime]:
    from netblock.decide.targets import parse_duration

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


def cmd_report(args, ctx) -> int:
    if args.top is not None and args.top < 1:
        raise BadInput(f"--top: {args.top} must be at least 1")
    if args.plot:
        from netblock.reports import plot

        plot.check_target(args.plot)
    since, until = window(args, ctx.now())
    store, config = ctx.store(), ctx.config
    if args.host is not None:
        from netblock.run.fleet import view_host

        view_host(store, config, args.host)
    n = args.top or config.report.top
    compare = not args.no_compare
    args.by_asn, args.by = args.by, args.by or "packets"
    if args.plot or args.html:
        _files(args, store, config, since, until, n, compare)
    if args.kind == "asn" and args.by_asn is not None:
        origins = drops.asn_drops_ranked(store, config, since, until, n, args.by)
        records: list[dict] = [{"asn": o.asn, "owner": o.owner, "packets": o.packets, "bytes": o.bytes,
                                "blocks": [str(b.cidr) for b in o.blocks]} for o in origins]
        return _emit(args, ctx, records, lambda: rep.origin_table(origins, exact=args.exact),
                     fields=["asn", "owner", "packets", "bytes", "blocks"])
    if args.kind == "asn":
        from netblock.decide.asn import render_counts

        rows = drops.asn_rows(store, config, since, until)[:n]
        records = [{"ips": r.ips, "asn": r.asn, "owner": r.owner} for r in rows]
        return _emit(args, ctx, records, lambda: render_counts(rows), fields=["ips", "asn", "owner"])
    if args.kind == "classes":
        rows = drops.classes_rows(store, config, since, until, compare)
        records = [{"class": r.cls, "label": r.label, "count": r.count, "dead": r.dead} for r in rows]
        if compare:
            for rec, r in zip(records, rows):
                rec.update(previous=r.previous, change=r.count - (r.previous or 0))
        return _emit(args, ctx, records, lambda: rep.classes_table(rows, since, until),
                     fields=list(records[0]) if records else ["class", "label", "count", "dead"])
    if args.kind == "summary":
        s = drops.summary_of(store, config, since, until)
        record = dict(vars(s), since=since, until=until)
        return _emit(args, ctx, [record], lambda: rep.summary_table(s, since, until), single=True)
    rows, gone = drops.top_rows(store, config, since, until, n, args.by, compare)
    records = [drops.row_record(r, compare) for r in rows]
    if args.json and args.host is None and store.fleet:  # a fleet: which MX dropped what
        from netblock.run.fleet import per_host_packets

        for rec, hosts in zip(records, drops.packets_by_host(rows, per_host_packets(store, since, until))):
            rec["hosts"] = hosts
    if gone is not None:  # compare
        records += [drops.row_record(r, True, dropped_out=True) for r in gone]
    fields = ["netblock", "packets", "bytes", "first_seen", "last_seen", "reason", "except"]
    if compare:
        fields += ["previous_rank", "previous_packets", "new", "dropped_out"]
    return _emit(args, ctx, records, lambda: rep.table(rows, exact=args.exact, dropped_out=gone), fields=fields)


def _files(args, store, config, since, until, n, compare) -> None:
    """--plot and --html: written before anything is printed, so a failure leaves stdout empty."""
    from netblock.reports.export import write_atomically

    rows, gone = drops.top_rows(store, config, since, until, n, args.by, compare)
    daily = store.daily_drops(since, until)
    if args.plot:
        from netblock.reports import plot

        plot.write(args.plot, rows, daily, since, until, by=args.by)
    if args.html:
        write_atomically(args.html, drops.html_page(store, config, since, until, n, compare, rows, gone, daily))


def _emit(args, ctx, records: list[dict], text, fields=None, single=False) -> int:
    if args.json:
        ctx.print_json(records[0] if single else records)
    elif args.csv:
        w = csv.DictWriter(ctx.stdout, fieldnames=fields or (list(records[0]) if records else []))
        w.writeheader()
        for r in records:
            w.writerow({k: _cell(v) for k, v in r.items()})
    else:
        ctx.print(text())
    return 0


def _cell(v):
    """A CSV cell: times in ISO 8601, lists (the carve-outs, an AS's blocks) space-separated."""
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, list):
        return printable(" ".join(map(str, v)))
    return printable(v) if isinstance(v, str) else v


def cmd_wrapup(args, ctx) -> int:
    import os

    from netblock.decide.targets import parse_duration
    from netblock.reports.export import write_atomically

    until = ctx.now()
    since = until - parse_duration(args.since)
    n = args.top or ctx.config.report.top
    text = drops.wrapup_text(ctx.store(), ctx.config, since, until, n, not args.no_compare)
    text = printable(text, keep_newlines=True)
    year, week, _ = until.isocalendar()
    os.makedirs(args.dir, mode=0o700, exist_ok=True)
    path = os.path.join(args.dir, f"{year}-W{week:02d}.txt")
    write_atomically(path, text)
    ctx.stdout.write(text)
    return 0
