"""`netblock sample` and `netblock report`: kernel counters into the weekly table."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone

from netblock import report as rep
from netblock.errors import BadInput
from netblock.printable import printable


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
                   help="top: netblocks by drops (default); classes: rejections by class; "
                   "summary: the week in numbers; asn: distinct rejected IPs per origin AS "
                   "(needs [report] asn_file)")
    p.add_argument("--since", metavar="DURATION", help="window ending now, e.g. 7d, 24h (default 7d)")
    p.add_argument("--from", dest="from_", metavar="TIME", help="window start, ISO 8601 (UTC if no zone; default: --to minus 7d)")
    p.add_argument("--to", metavar="TIME", help="window end, ISO 8601 (default: now)")
    p.add_argument("--top", type=int, default=None, metavar="N", help="rows to show (default: [report] top, 10)")
    p.add_argument("--by", choices=("packets", "bytes"), default="packets", help="rank by (default packets)")
    p.add_argument("--exact", action="store_true", help="raw integers instead of K/M/G (default: off)")
    p.add_argument("--host", metavar="ID", help="fleet mode (PostgreSQL store): one MX host's drops and "
                   "rejections only (default: the whole fleet, packets summed over hosts)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON rows: netblock, packets, bytes, first_seen, "
                     "last_seen, reason (default: a table)")
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
    p.set_defaults(handler=cmd_wrapup)


def cmd_sample(args, ctx) -> int:
    from netblock import sampling

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


def final_netblocks(store, config, until: datetime, blocks: dict[str, tuple[str, bool]] | None = None) -> list[str]:
    """What sync installs at ``until`` (its aggregation of the active blocks minus the protected
    netblocks), as the store's "addr/len" texts: the netblocks a report's rows are named after.

    The text path of the aggregation keeps this at milliseconds for 10k
    blocks. This host's own addresses are left out of the carve-outs
    (reading them costs a netlink round and half a second of imports): they
    only ever split a block around this host, whose pieces then report under
    that block.
    """
    from netblock.aggregate import aggregate_lines
    from netblock.sync import protected

    if blocks is None:
        blocks = store.block_reasons(until)
    active = [net for net, (_reason, on) in blocks.items() if on]
    carve = [str(n) for n in protected(store, config, now=until, own=()).all()]
    return [f if "/" in f else f + ("/128" if ":" in f else "/32") for f in aggregate_lines(active, carve)]


def drop_rows(store, config, since: datetime | None, until: datetime) -> dict:
    """Drops per netblock in the window, rolled up onto the netblocks installed at its end.

    Most sampled netblocks are still installed as they were: those are
    matched by text, and only the rest (merged, split or gone) go through
    the roll-up's address arithmetic.
    """
    blocks = store.block_reasons(until)
    finals = final_netblocks(store, config, until, blocks)
    final_set = set(finals)
    rows: dict = {}
    moved: dict = {}
    for text, (p, b, first, last) in store.sample_drops(since, until).items():
        net = rep.parse_net(text)
        (rows if text in final_set else moved)[net] = rep.Row(net, p, b, first, last)
    if moved:
        for target, row in rep.rollup(moved, [rep.parse_net(f) for f in finals]).items():
            if target in rows:
                rows[target].merge(row)
            else:
                rows[target] = row
    for row in rows.values():
        for net in (row.netblock, *row.rolled_up):
            reason = blocks.get(str(net.cidr), ("", False))[0]
            if reason:
                row.reason = reason
                break
    return rows


def top_rows(store, config, since: datetime, until: datetime, n: int, by: str = "packets") -> list[rep.Row]:
    return rep.top(drop_rows(store, config, since, until).values(), n, by)


def history(store, since: datetime, until: datetime):
    """Observations of the window, and of the 4 weeks before it (for storm detection)."""
    start = since - timedelta(weeks=4)
    everything = store.observations(since=start, until=until)
    inside = [o for o in everything if o.time >= since]
    before = [o for o in everything if o.time < since]
    return inside, before


def classes_rows(store, config, since, until) -> list[rep.ClassRow]:
    """Rejections by class in the window; DNSBL zones configured or seen before it and silent in it are flagged."""
    counts = store.observation_class_counts(since, until)
    known = set(store.observation_class_counts(until=since))
    known |= set(getattr(getattr(config, "policy", None), "classes", {}) or {})
    return rep.classes(counts, {c for c in known if c.startswith("dnsbl:")})


def summary_of(store, config, since, until) -> rep.Summary:
    inside, before = history(store, since, until)
    earlier = [o for o in before if o.cls == "connect"]
    weeks = 0.0
    if earlier:
        weeks = min(4.0, (since - min(o.time for o in earlier)).total_seconds() / (7 * 86400))
    totals = [rep.Row(rep.parse_net(net), p, b) for net, (p, b, _f, _l) in store.sample_drops(since, until).items()]
    factor = getattr(getattr(config, "report", None), "storm_factor", 2.0)
    return rep.summary(inside, len(earlier), weeks, store.blocks(), totals, since, until, factor)


def asn_rows(store, config, since, until) -> list:
    """Distinct rejected addresses per origin AS in the window, from the one routing table (netblock.asn)."""
    from netblock import asn
    from netblock.store import NOT_OFFENCES

    ips = {o.ip for o in store.observations(since=since, until=until) if o.cls not in NOT_OFFENCES}
    return asn.count_by_origin(ips, asn.from_config(config))


def cmd_report(args, ctx) -> int:
    if args.top is not None and args.top < 1:
        raise BadInput(f"--top: {args.top} must be at least 1")
    if args.plot:
        from netblock import plot

        plot.check_target(args.plot)
    since, until = window(args, ctx.now())
    store, config = ctx.store(), ctx.config
    if args.host is not None:
        from netblock.fleet import view_host

        view_host(store, config, args.host)
    n = args.top or getattr(getattr(config, "report", None), "top", 10)
    if args.plot or args.html:
        _files(args, store, config, since, until, n)
    if args.kind == "asn":
        from netblock.asn import render_counts

        rows = asn_rows(store, config, since, until)[:n]
        records = [{"ips": r.ips, "asn": r.asn, "owner": r.owner} for r in rows]
        return _emit(args, ctx, records, lambda: render_counts(rows), fields=["ips", "asn", "owner"])
    if args.kind == "classes":
        rows = classes_rows(store, config, since, until)
        records = [{"class": r.cls, "label": r.label, "count": r.count, "dead": r.dead} for r in rows]
        return _emit(args, ctx, records, lambda: rep.classes_table(rows, since, until),
                     fields=["class", "label", "count", "dead"])
    if args.kind == "summary":
        s = summary_of(store, config, since, until)
        record = dict(vars(s), since=since, until=until)
        return _emit(args, ctx, [record], lambda: rep.summary_table(s, since, until), single=True)
    rows = top_rows(store, config, since, until, n, args.by)
    records = [{"netblock": str(r.netblock.cidr), "packets": r.packets, "bytes": r.bytes,
                "first_seen": r.first_seen, "last_seen": r.last_seen, "reason": r.reason} for r in rows]
    if args.json and args.host is None and hasattr(store, "hosts"):  # a fleet: which MX dropped what
        from netblock.fleet import per_host_packets

        per_host = per_host_packets(store, since, until)
        for r in records:
            r["hosts"] = per_host.get(r["netblock"], {})
    return _emit(args, ctx, records, lambda: rep.table(rows, exact=args.exact),
                 fields=["netblock", "packets", "bytes", "first_seen", "last_seen", "reason"])


def _files(args, store, config, since, until, n) -> None:
    """--plot and --html: written before anything is printed, so a failure leaves stdout empty."""
    from netblock.export import write_atomically

    rows = top_rows(store, config, since, until, n, args.by)
    daily = store.daily_drops(since, until)
    if args.plot:
        from netblock import plot

        plot.write(args.plot, rows, daily, since, until, by=args.by)
    if args.html:
        from netblock import html

        extra = []
        if getattr(getattr(config, "report", None), "asn_file", ""):
            from netblock.asn import render_counts

            extra.append(("Rejected addresses by origin AS",
                          html.preformatted(render_counts(asn_rows(store, config, since, until)[:n]))))
        page = html.page(rows, classes_rows(store, config, since, until), summary_of(store, config, since, until),
                         daily, since, until, host=getattr(config, "host_id", ""), extra_sections=extra)
        write_atomically(args.html, page)


def _emit(args, ctx, records: list[dict], text, fields=None, single=False) -> int:
    if args.json:
        ctx.print_json(records[0] if single else records)
    elif args.csv:
        w = csv.DictWriter(ctx.stdout, fieldnames=fields or (list(records[0]) if records else []))
        w.writeheader()
        for r in records:
            w.writerow({k: (v.isoformat() if isinstance(v, datetime) else printable(v) if isinstance(v, str) else v)
                        for k, v in r.items()})
    else:
        ctx.print(text())
    return 0


def wrapup_text(store, config, since: datetime, until: datetime, n: int) -> str:
    parts = [rep.table(top_rows(store, config, since, until, n)),
             rep.classes_table(classes_rows(store, config, since, until), since, until),
             rep.summary_table(summary_of(store, config, since, until), since, until)]
    return "\n\n".join(parts) + "\n"


def cmd_wrapup(args, ctx) -> int:
    import os

    from netblock.export import write_atomically
    from netblock.targets import parse_duration

    until = ctx.now()
    since = until - parse_duration(args.since)
    n = args.top or getattr(getattr(ctx.config, "report", None), "top", 10)
    text = printable(wrapup_text(ctx.store(), ctx.config, since, until, n), keep_newlines=True)
    year, week, _ = until.isocalendar()
    os.makedirs(args.dir, mode=0o700, exist_ok=True)
    path = os.path.join(args.dir, f"{year}-W{week:02d}.txt")
    write_atomically(path, text)
    ctx.stdout.write(text)
    return 0
