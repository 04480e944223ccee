"""Charts of the report: the top-N as bars, the drops per day as a line.

matplotlib is an optional extra (``pip install 'netblock[plot]'``): the
daemon and the CLI never need it, and a postmaster on a small mail host
should not have to install a plotting stack to block spammers. Without it,
--plot says so in one line and the page of --html simply has no charts.
"""

from __future__ import annotations

import importlib.util
import io
import os
from datetime import datetime, timedelta

from netblock.errors import BadInput, ToolMissing
from netblock.model import host_mask

FORMATS = (".png", ".svg")


def available() -> bool:
    """Whether matplotlib can be imported, without paying for the import."""
    return importlib.util.find_spec("matplotlib") is not None


def check_target(path: str) -> str:
    """The format of ``path`` from its suffix; refused before any work is done."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise BadInput(f"--plot: {path!r} must end in .png or .svg")
    if not available():
        raise ToolMissing(f"--plot {path}: matplotlib is not installed (pip install 'netblock[plot]')")
    return ext[1:]


def _per_day(daily: dict[datetime, tuple[int, int]], since: datetime, until: datetime):
    """Every UTC day of the window, with 0 for days without drops, so the line does not skip gaps."""
    day = since.replace(hour=0, minute=0, second=0, microsecond=0)
    days, packets = [], []
    while day < until:
        days.append(day)
        packets.append(daily.get(day, (0, 0))[0])
        day += timedelta(days=1)
    return days, packets


def figure(rows, daily, since: datetime, until: datetime, by: str = "packets"):
    """A two-panel figure: bars of the top netblocks, line of all drops per day."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a mail server
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 7), layout="constrained")
    bars, line = fig.subplots(2, 1, height_ratios=(3, 2))
    labels = [host_mask(r.netblock) + ("*" if r.carved else "") for r in rows][::-1]
    values = [getattr(r, by) for r in rows][::-1]
    bars.barh(labels, values, color="#b03a2e")
    bars.set_xlabel(f"{by} dropped")
    bars.set_title(f"Top {len(rows)} blocks, {since:%Y-%m-%d %H:%M} .. {until:%Y-%m-%d %H:%M} UTC")
    if not rows:
        bars.text(0.5, 0.5, "no drops in this window", ha="center", va="center", transform=bars.transAxes)
    days, packets = _per_day(daily, since, until)
    line.plot(days, packets, marker="o", color="#1f4e79")
    line.set_ylabel("packets dropped per day")
    line.set_ylim(bottom=0)
    for label in line.get_xticklabels():
        label.set_rotation(30)
        label.set_horizontalalignment("right")
    return fig


def render(rows, daily, since, until, fmt: str, by: str = "packets") -> bytes:
    out = io.BytesIO()
    fig = figure(rows, daily, since, until, by)
    # A fixed date in SVG metadata keeps the same data producing the same file.
    metadata = {"Date": None} if fmt == "svg" else {}
    fig.savefig(out, format=fmt, metadata=metadata)
    return out.getvalue()


def write(path: str, rows, daily, since, until, by: str = "packets") -> None:
    from netblock.reports.export import write_atomically

    data = render(rows, daily, since, until, check_target(path), by)
    write_atomically(path, data)
