"""Exports of the kernel's counters and the store's state: Prometheus, JSON, CSV.

The Prometheus text is produced by prometheus_client from a collector that
reads everything fresh at each call, so the textfile export and the /metrics
listener show the same numbers.

Label sets are bounded: a series is one block as decided (its kernel pieces
summed, however many carve-outs cut it), and DNSBL zones beyond the
DNSBL_LABELS most frequent share the class ``dnsbl:other`` (zone names come
from the MTA's reply, which any DNSBL operator words).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime

from netaddr import IPNetwork

from netblock.errors import BadInput


@dataclass
class Snapshot:
    """Everything one export shows, read once."""

    counters: dict[IPNetwork, tuple[int, int]]
    blocks_by_source: dict[str, int]
    observations_by_class: dict[str, int]
    last_tick: float | None
    host: str
    # "count": counting-only mode, the per-netblock counters are what drop would have dropped
    verdict: str = "drop"
    rejected: dict | None = None  # {table: rows skipped on receipt} (netblock.store.receipt)


DNSBL_LABELS = 50
OTHER_ZONES = "dnsbl:other"


def by_block(counters: dict[IPNetwork, tuple[int, int]], blocks) -> dict[IPNetwork, tuple[int, int]]:
    """The kernel's per-piece counters summed per block as decided (report.Decisions).

    A piece no active block holds (the store changed and sync has not run
    yet) keeps its own series. When a carve-out comes or goes, the pieces are
    re-created from zero, so the block's sum goes down once: Prometheus reads
    that as a counter reset, as it does after a reboot.
    """
    from netblock.reports.tables import Decisions, Row, group

    grouped = group([Row(net, p, b) for net, (p, b) in counters.items()], Decisions(blocks))
    return {r.netblock: (r.packets, r.bytes) for r in grouped}


def bounded_classes(counts: dict[str, int], limit: int = DNSBL_LABELS) -> dict[str, int]:
    """Observation counts with the DNSBL zones beyond the ``limit`` most frequent summed as dnsbl:other.

    >>> bounded_classes({"dnsbl:a": 5, "dnsbl:b": 3, "dnsbl:c": 1, "dnsbl:d": 1, "no-rdns": 9}, limit=2)
    {'dnsbl:a': 5, 'dnsbl:b': 3, 'dnsbl:other': 2, 'no-rdns': 9}
    """
    zones = sorted((c for c in counts if c.startswith("dnsbl:")), key=lambda c: (-counts[c], c))
    out = {c: n for c, n in counts.items() if not c.startswith("dnsbl:") or c in zones[:limit]}
    rest = sum(counts[c] for c in zones[limit:])
    if rest or OTHER_ZONES in out:
        out[OTHER_ZONES] = out.get(OTHER_ZONES, 0) + rest
    return dict(sorted(out.items()))


class Sampled:
    """A backend whose counters() answers from the store's latest samples, not from a kernel dump.

    For `/metrics`: a scrape every 15 s must not read a 100k set back each
    time. The elements are those the backend proves the kernel holds
    (its snapshot, checked against the ruleset generation); their counters
    are as last sampled (the daemon every ``[daemon] sample_every``, and
    right before an element goes). A backend with no such proof is read.
    """

    def __init__(self, backend, store):
        self.backend, self.store = backend, store

    @property
    def settings(self):
        return self.backend.settings

    def counters(self) -> dict[IPNetwork, tuple[int, int]]:
        view = self.backend.region_view()
        if view is None:
            return self.backend.counters()
        nets = [IPNetwork((k >> 8, k & 255), version=v) for v, (keys, _exp) in view.sets.items() for k in keys]
        last = self.store.last_samples(str(n) for n in nets)
        return {n: last[str(n)][1:] if str(n) in last else (0, 0) for n in nets}


def snapshot(store, backend, host: str, now: datetime) -> Snapshot:
    from netblock.decide.protect import fleet_members
    from netblock.store.receipt import rejected_by_table, within_floors

    active = [b for b in within_floors(store, store.blocks(now=now)) if b.created <= now]
    counters = by_block(backend.counters(), active)
    by_source: dict[str, int] = {}
    for b in active:
        by_source[b.source] = by_source.get(b.source, 0) + 1
    store.allowlist()
    fleet_members(store)  # the rows a sync reads, so the count below is what a sync skips
    last = store.get_state("last_tick")
    return Snapshot(counters, by_source, bounded_classes(store.observation_class_counts()),
                    float(last) if last else None, host,
                    verdict=backend.settings.verdict,
                    rejected=rejected_by_table(store))


def _family(net: IPNetwork) -> str:
    return "ipv4" if net.version == 4 else "ipv6"


def _sorted(counters):
    return sorted(counters.items(), key=lambda kv: (kv[0].version, kv[0].first, kv[0].prefixlen))


class _Collector:
    def __init__(self, read):
        self.read = read

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.read()
        labels = ["netblock", "family", "host"]
        packets = CounterMetricFamily("netblock_dropped_packets", "Packets dropped by the kernel per block as decided",
                                      labels=labels)
        nbytes = CounterMetricFamily("netblock_dropped_bytes", "Bytes dropped by the kernel per block as decided",
                                     labels=labels)
        for net, (p, b) in _sorted(snap.counters):
            packets.add_metric([str(net.cidr), _family(net), snap.host], p)
            nbytes.add_metric([str(net.cidr), _family(net), snap.host], b)
        yield packets
        yield nbytes
        blocks = GaugeMetricFamily("netblock_blocks", "Active blocks in the store by source",
                                   labels=["source", "host"])
        for source in ("cli", "list", "policy"):
            blocks.add_metric([source, snap.host], snap.blocks_by_source.get(source, 0))
        yield blocks
        obs = CounterMetricFamily("netblock_observations", "Observations from the mail logs by class",
                                  labels=["class", "host"])
        for cls, n in sorted(snap.observations_by_class.items()):
            obs.add_metric([cls, snap.host], n)
        yield obs
        skipped = GaugeMetricFamily("netblock_rejected_rows",
                                    "Store rows skipped on receipt (unparseable, or beyond the width floors "
                                    "or the coverage cap), by table", labels=["table", "host"])
        for table in ("blocks", "allowlist", "observations", "host_addresses"):
            skipped.add_metric([table, snap.host], (snap.rejected or {}).get(table, 0))
        yield skipped
        tick = GaugeMetricFamily("netblock_last_tick_timestamp_seconds",
                                 "Unix time of the last completed daemon or run-once tick", labels=["host"])
        tick.add_metric([snap.host], snap.last_tick or 0.0)
        yield tick
        counting = GaugeMetricFamily("netblock_counting_only",
                                     "1 in counting-only mode: the dropped_* counters count what drop would "
                                     "have dropped, and nothing is dropped", labels=["host"])
        counting.add_metric([snap.host], 1.0 if snap.verdict == "count" else 0.0)
        yield counting


def prometheus(read) -> str:
    """The Prometheus text format for the snapshot ``read()`` returns."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(read))
    return generate_latest(registry).decode()


def serve(addr: str, port: int, read):
    """Serve the Prometheus text of ``read()`` at http://addr:port/metrics from a thread.

    Returns the server; ``shutdown()`` stops it. Each scrape calls ``read()``
    afresh, so /metrics and the textfile show the same numbers. The server is
    built here around prometheus_client's WSGI app because its own
    ``start_http_server`` returns the server only from 0.17 on, and Debian 12
    ships 0.16.
    """
    import socket
    import threading
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import CollectorRegistry, make_wsgi_app

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(read))

    class Quiet(WSGIRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
            """A scrape is not news."""

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    try:
        Server.address_family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]
        server = make_server(addr, port, make_wsgi_app(registry), Server, handler_class=Quiet)
    except OSError as e:
        raise BadInput(f"--listen: cannot listen on {addr}:{port}: {e.strerror or e}") from None
    threading.Thread(target=server.serve_forever, name="netblock-metrics", daemon=True).start()
    return server


def as_json(snap: Snapshot) -> str:
    return json.dumps({
        "host": snap.host,
        "netblocks": [{"netblock": str(n.cidr), "family": _family(n), "packets": p, "bytes": b}
                      for n, (p, b) in _sorted(snap.counters)],
        "blocks": snap.blocks_by_source,
        "observations": snap.observations_by_class,
        "last_tick": snap.last_tick,
        "counting_only": snap.verdict == "count",
    }, indent=2) + "\n"


def as_csv(snap: Snapshot) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["netblock", "family", "packets", "bytes", "host"])
    for n, (p, b) in _sorted(snap.counters):
        w.writerow([str(n.cidr), _family(n), p, b, snap.host])
    return out.getvalue()


def write_atomically(path: str, data: str | bytes) -> None:
    """Temp file in the same directory + rename: node_exporter never reads half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".netblock-", suffix=".tmp", dir=directory)
    except OSError as e:
        raise BadInput(f"{path}: cannot write there: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
