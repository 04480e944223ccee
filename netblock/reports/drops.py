"""The report's data: the store's samples, blocks and observations read into report rows.

What `netblock report`, `wrapup` and the HTML page show, for a window of
time: drops per block as decided (see ``decisions``), the top-N with the
previous window's comparison and carve-outs, rejections by class, the
summary, and the per-AS counts. The row algebra and the text tables are in
reports/tables.py; this module is what reads the store for them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from netblock.reports import tables as rep

# A block that expired (or was replaced) this long before the window may still
# have had its last drops sampled inside it (sync samples before removing).
ENDED_SLACK = timedelta(days=1)


def _active(b, at: datetime) -> bool:
    return b.created <= at and (b.expires is None or b.expires > at)


def decisions(blocks, since: datetime | None, until: datetime):
    """The blocks as decided at ``until``, and those that ended within the window, from all of
    the store's ``blocks``.

    A sampled piece is reported under the decision holding it at the end of
    the window (merged into a wider block, or cut by a new carve-out: still
    that block); a piece whose block has since expired or been replaced by
    a narrower one, under the decision it belonged to when it ended. Neither
    needs the mapping at sampling time: pieces only ever lie inside the merge
    of the blocks active when they were installed.
    """
    now, ended = [], []
    for b in blocks:
        if _active(b, until):
            now.append(b)
        elif (b.created <= until and b.expires is not None
              and (since is None or b.expires >= since - ENDED_SLACK)):
            ended.append(b)
    return rep.Decisions(now), rep.Decisions(ended)


def drop_rows(store, config, since: datetime | None, until: datetime, blocks=None) -> list[rep.Row]:
    """Drops in the window per decided block (summed over its kernel pieces), with its reason.
    ``blocks``: the store's blocks, when the caller has read them already."""
    pieces = [rep.Row(rep.parse_net(text), p, b, first, last)
              for text, (p, b, first, last) in store.sample_drops(since, until).items()]
    return rep.group(pieces, *decisions(store.blocks() if blocks is None else blocks, since, until))


def previous_window(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    return since - (until - since), since


def top_rows(store, config, since: datetime, until: datetime, n: int, by: str = "packets",
             compare: bool = False) -> tuple[list[rep.Row], list[rep.Row] | None]:
    """The top-n decided blocks with their carve-outs, and (``compare``) the previous window's top-n
    rows that dropped out (None without a comparison)."""
    from netblock.decide.protect import for_sync as protected

    blocks = store.blocks()
    everything = drop_rows(store, config, since, until, blocks)
    rows = rep.top(everything, n, by)
    gone = None
    if compare:
        p_since, p_until = previous_window(since, until)
        gone = rep.compare(rows, everything, drop_rows(store, config, p_since, p_until, blocks), n, by)
    # This host's own addresses are left out (a netlink round and half a second of imports).
    rep.carve_outs(rows + (gone or []), protected(store, config, now=until, own=()).all())
    return rows, gone


def row_record(r: rep.Row, compare: bool, dropped_out: bool = False) -> dict:
    """A top row as JSON/CSV; with the comparison, the rows that dropped out of the top follow the
    shown ones, marked ``dropped_out``."""
    rec = {"netblock": str(r.netblock.cidr), "packets": r.packets, "bytes": r.bytes,
           "first_seen": r.first_seen, "last_seen": r.last_seen, "reason": r.reason,
           "except": [str(c.cidr) for c in r.carved]}
    if compare:
        rec.update(previous_rank=r.prev_rank, previous_packets=r.prev_packets, new=r.prev_rank is None,
                   dropped_out=dropped_out)
    return rec


def history(store, since: datetime, until: datetime):
    """Observations of the window, and of the 4 weeks before it (for storm detection)."""
    start = since - timedelta(weeks=4)
    everything = store.observations(since=start, until=until)
    inside = [o for o in everything if o.time >= since]
    before = [o for o in everything if o.time < since]
    return inside, before


def classes_rows(store, config, since, until, compare: bool = False) -> list[rep.ClassRow]:
    """Rejections by class in the window; DNSBL zones configured or seen before it and silent in it are flagged.
    With ``compare``, each class's count in the previous window of the same length too."""
    counts = store.observation_class_counts(since, until)
    known = set(store.observation_class_counts(until=since))
    known |= set(config.policy.classes)
    previous = store.observation_class_counts(*previous_window(since, until)) if compare else None
    return rep.classes(counts, {c for c in known if c.startswith("dnsbl:")}, previous)


def summary_of(store, config, since, until) -> rep.Summary:
    inside, before = history(store, since, until)
    earlier = rep.sessions(before)
    weeks = 0.0
    if earlier:
        weeks = min(4.0, (since - min(o.time for o in earlier)).total_seconds() / (7 * 86400))
    totals = [rep.Row(rep.parse_net(net), p, b) for net, (p, b, _f, _l) in store.sample_drops(since, until).items()]
    factor = config.report.storm_factor
    return rep.summary(inside, len(earlier), weeks, store.blocks(), totals, since, until, factor)


def asn_rows(store, config, since, until) -> list:
    """Distinct rejected addresses per origin AS in the window, from the one routing table (netblock.decide.asn)."""
    from netblock.decide import asn
    from netblock.model import NOT_OFFENCES

    ips = {o.ip for o in store.observations(since=since, until=until) if o.cls not in NOT_OFFENCES}
    return asn.count_by_origin(ips, asn.from_config(config))


def asn_drop_rows(store, config, since, until) -> list[rep.OriginDrops]:
    """Packets and bytes dropped per origin AS in the window, by decided block (see drops_by_origin)."""
    from netblock.decide import asn

    table = asn.from_config(config)
    return rep.drops_by_origin(drop_rows(store, config, since, until), table.origin, table.name)


def wrapup_text(store, config, since: datetime, until: datetime, n: int, compare: bool = True) -> str:
    rows, gone = top_rows(store, config, since, until, n, compare=compare)
    parts = [rep.table(rows, dropped_out=gone),
             rep.classes_table(classes_rows(store, config, since, until, compare), since, until),
             rep.summary_table(summary_of(store, config, since, until), since, until)]
    return "\n\n".join(parts) + "\n"




def asn_drops_ranked(store, config, since, until, n: int, by: str = "packets") -> list[rep.OriginDrops]:
    """The top ``n`` origin ASes by dropped packets, or by bytes (ties: packets, then the AS number)."""
    drops = asn_drop_rows(store, config, since, until)
    if by == "bytes":
        drops.sort(key=lambda o: (-o.bytes, -o.packets, o.asn is None, o.asn or 0))
    return drops[:n]


def packets_by_host(rows: list[rep.Row], per_host: dict[str, dict[str, int]]) -> list[dict[str, int]]:
    """Each row's packets per fleet host, summed over its kernel pieces; ``per_host`` is
    {piece: {host: packets}}, as run/fleet.py's per_host_packets reads it."""
    out = []
    for row in rows:
        hosts: dict[str, int] = {}
        for piece in {row.netblock, *row.rolled_up}:
            for host, packets in per_host.get(str(piece.cidr), {}).items():
                hosts[host] = hosts.get(host, 0) + packets
        out.append(hosts)
    return out


def html_page(store, config, since: datetime, until: datetime, n: int, compare: bool,
              rows: list[rep.Row], gone: list[rep.Row] | None, daily) -> str:
    """The wrap-up as one HTML page: the top rows given, the classes, the summary, the charts, and the
    per-AS tables when [report] asn_file names a routing table."""
    from netblock.reports import html

    extra = []
    if config.report.asn_file:
        from netblock.decide.asn import render_counts

        extra.append(("Rejected addresses by origin AS",
                      html.preformatted(render_counts(asn_rows(store, config, since, until)[:n]))))
        extra.append(("Drops by origin AS",
                      html.preformatted(rep.origin_table(asn_drop_rows(store, config, since, until)[:n]))))
    return html.page(rows, classes_rows(store, config, since, until, compare),
                     summary_of(store, config, since, until), daily, since, until,
                     host=config.host_id, extra_sections=extra, dropped_out=gone)
