"""The weekly wrap-up as one self-contained HTML page.

What a postmaster mails to colleagues or posts: no script, no external
stylesheet, font or image, so it reads the same offline and in a mail
client that blocks remote content. Charts are inline SVG when matplotlib is
installed; without it the page has the tables only.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Sequence

from netblock.printable import printable
from netblock.reports import tables as rep

STYLE = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.h { font-family: monospace; }
tr.dead td { color: #a00; }
tr.new td.h { font-weight: bold; }
p.note, p.gone { font-size: 90%; color: #444; }
.storm { background: #fdd; padding: 0.5em; border: 1px solid #a00; }
svg { max-width: 100%; height: auto; }
"""


def _table(head: list[tuple[str, bool]], rows: list[list[tuple[str, str]]], row_class=None) -> str:
    out = ["<table>", "<tr>" + "".join(f'<th class="{"n" if num else ""}">{escape(h)}</th>' for h, num in head)
           + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        out.append(f"<tr{cls}>" + "".join(f'<td class="{c}">{escape(printable(v))}</td>' for v, c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def top_section(rows: list[rep.Row], dropped_out: list[rep.Row] | None = None) -> str:
    """The top table; a block with carve-outs is marked * and footnoted; with ``dropped_out`` (a
    comparison was made) the previous window's packets and rank, and who left the top."""
    compare = dropped_out is not None
    head = [("Host/Mask", False), ("Packets", True), ("Bytes", True)]
    if compare:
        head += [("Before", True), ("Rank before", True)]
    head.append(("Reason", False))
    body = []
    for r in rows:
        line = [(rep.host_mask(r.netblock) + ("*" if r.carved else ""), "h"), (rep.human(r.packets), "n"),
                (rep.human(r.bytes), "n")]
        if compare:
            line += [("-" if r.prev_packets is None else rep.human(r.prev_packets), "n"),
                     ("new" if r.prev_rank is None else f"#{r.prev_rank}", "n")]
        body.append(line + [(r.reason, "")])
    out = [_table(head, body, ["new" if compare and r.prev_rank is None else "" for r in rows])]
    notes = [f"* {rep.host_mask(r.netblock)} except {', '.join(rep.host_mask(c) for c in r.carved)}"
             for r in rows if r.carved]
    if notes:
        out.append('<p class="note">' + "<br>\n".join(escape(n) for n in notes) + "</p>")
    if dropped_out:
        out.append('<p class="gone">Dropped out: ' + escape(", ".join(
            f"{rep.host_mask(r.netblock)} (#{r.prev_rank}, {rep.human(r.prev_packets or 0)} packets)"
            for r in dropped_out)) + "</p>")
    return "\n".join(out)


def classes_section(rows: list[rep.ClassRow]) -> str:
    compare = any(r.previous is not None for r in rows)
    total, before = sum(r.count for r in rows), sum(r.previous or 0 for r in rows)
    head = [("Class", False), ("Rejections", True)] + ([("Before", True), ("Change", True)] if compare else [])
    head.append(("", False))

    def line(label, count, prev, note):
        cells = [(label, ""), (str(count), "n")]
        if compare:
            cells += [(str(prev), "n"), (rep.change(count, prev), "n")]
        return cells + [(note, "")]

    body = [line("total", total, before, "")]
    body += [line(r.label, r.count, r.previous or 0, "no hits — dead or useless?" if r.dead else "") for r in rows]
    marks = [""] + ["dead" if r.dead else "" for r in rows]
    return _table(head, body, marks)


def summary_section(s: rep.Summary) -> str:
    lines = [line for line in rep.summary_table(s, datetime.min, datetime.min).splitlines()[1:]
             if not line.startswith("STORM")]
    body = [[(line[:38].rstrip(), ""), (line[38:].strip(), "n")] for line in lines]
    out = _table([("", False), ("", True)], body)
    if s.storm:
        out = (f'<p class="storm">Storm: {s.connections} connections in this window, over '
               f"{s.weekly_average_connections:.0f} a week on average in the 4 weeks before.</p>\n" + out)
    return out


def preformatted(text: str) -> str:
    """A table another module renders as text (the ASN report), kept in its own layout."""
    return f"<pre>{escape(printable(text, keep_newlines=True))}</pre>"


def charts(rows, daily, since, until) -> str:
    """The charts as inline SVG, or "" when matplotlib is not installed."""
    from netblock.reports import plot

    if not plot.available():
        return ""
    svg = plot.render(rows, daily, since, until, "svg").decode()
    return svg[svg.index("<svg"):]  # the XML prolog and DOCTYPE do not belong inside HTML


def page(top_rows, class_rows, summary, daily, since: datetime, until: datetime, host: str = "",
         extra_sections: Sequence[tuple[str, str]] = (), dropped_out: list[rep.Row] | None = None) -> str:
    """The whole page; ``extra_sections`` are (title, HTML) pairs, e.g. the ASN table; ``dropped_out``
    as for report.table (None: no comparison)."""
    span = f"{since:%Y-%m-%d %H:%M} .. {until:%Y-%m-%d %H:%M} UTC"
    title = printable(f"netblock wrap-up{' for ' + host if host else ''}, {span}")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        "<h2>Blocks by packets dropped</h2>", top_section(top_rows, dropped_out),
        "<h2>Connection-time rejections</h2>", classes_section(class_rows),
        "<h2>Summary</h2>", summary_section(summary),
    ]
    for heading, html in extra_sections:
        parts += [f"<h2>{escape(heading)}</h2>", html]
    chart = charts(top_rows, daily, since, until)
    if chart:
        parts += ["<h2>Charts</h2>", chart]
    parts.append("</body></html>\n")
    return "\n".join(parts)
