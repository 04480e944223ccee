"""Exports of the kernel's counters and the store's state: Prometheus, JSON, CSV.

The Prometheus text is produced by prometheus_client from a collector that
reads everything fresh at each call, so the textfile export and the /metrics
listener show the same numbers.
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
    rejected: dict = None  # {table: rows skipped on receipt} (netblock.receipt)


def snapshot(store, backend, host: str, now: datetime) -> Snapshot:
    counters = backend.counters()
    from netblock.receipt import rejected_by_table
    from netblock.sync import fleet_members, received

    by_source: dict[str, int] = {}
    for b in received(store, store.blocks(now=now)):
        by_source[b.source] = by_source.get(b.source, 0) + 1
    store.allowlist()
    fleet_members(store)  # the rows a sync reads, so the count below is what a sync skips
    last = store.get_state("last_tick")
    return Snapshot(counters, by_source, store.observation_class_counts(), float(last) if last else None, host,
                    rejected_by_table(store))


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
        packets = CounterMetricFamily("netblock_dropped_packets", "Packets dropped by the kernel per netblock",
                                      labels=labels)
        nbytes = CounterMetricFamily("netblock_dropped_bytes", "Bytes dropped by the kernel per netblock",
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


def prometheus(read) -> str:
    """The Prometheus text format for the snapshot ``read()`` returns."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(read))
    return generate_latest(registry).decode()


def serve(addr: str, port: int, read):
    """Serve the Prometheus text of ``read()`` at http://addr:port/metrics from a thread.

    Returns the server; ``shutdown()`` stops it. Each scrape calls ``read()``
    afresh, so /metrics and the textfile show the same numbers.
    """
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(read))
    try:
        server, _thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as e:
        raise BadInput(f"--listen: cannot listen on {addr}:{port}: {e.strerror or e}") from None
    return server


def as_json(snap: Snapshot) -> str:
    return json.dumps({
        "host": snap.host,
        "netblocks": [{"netblock": str(n.cidr), "family": _family(n), "packets": p, "bytes": b}
                      for n, (p, b) in _sorted(snap.counters)],
        "blocks": snap.blocks_by_source,
        "observations": snap.observations_by_class,
        "last_tick": snap.last_tick,
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
