"""`netblock export`: the Prometheus text read back with prometheus_client's own parser, JSON, CSV,
the atomic --output and the /metrics listener."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import urllib.request
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_report_cli import NOW, Harness, N  # noqa: F401  (same fake kernel and store)

from netblock.model import Observation
from netblock.reports import export
from netblock.store.sqlite import Store
from netblock.system import hostaddrs


@pytest.fixture
def nb(tmp_path, monkeypatch):
    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: [N("192.0.2.250/32")])
    h = Harness(tmp_path, monkeypatch)
    h.ok("add", "198.18.1.0/24", "2001:db8:5::/48", "--reason", "storm")
    h.ok("add", "203.0.113.7", "--ttl", "1h")
    h.count("198.18.1.0/24", 7, 280)
    h.count("2001:db8:5::/48", 3, 180)
    with Store.open(h.db) as store:
        store.add_observations([Observation(NOW, N("198.51.100.7/32").ip, "dnsbl:zen.spamhaus.org", "postfix"),
                                Observation(NOW, N("198.51.100.8/32").ip, "dnsbl:zen.spamhaus.org", "postfix"),
                                Observation(NOW, N("198.51.100.9/32").ip, "connect", "postfix")])
        store.set_state("last_tick", str(NOW.timestamp()))
    return h


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_prometheus_text_parses_with_the_exact_names(nb):
    got = samples(nb.ok("export"))
    host = ("host", "mx1")
    assert got == {
        ("netblock_dropped_packets_total", (("family", "ipv4"), host, ("netblock", "198.18.1.0/24"))): 7,
        ("netblock_dropped_packets_total", (("family", "ipv4"), host, ("netblock", "203.0.113.7/32"))): 0,
        ("netblock_dropped_packets_total", (("family", "ipv6"), host, ("netblock", "2001:db8:5::/48"))): 3,
        ("netblock_dropped_bytes_total", (("family", "ipv4"), host, ("netblock", "198.18.1.0/24"))): 280,
        ("netblock_dropped_bytes_total", (("family", "ipv4"), host, ("netblock", "203.0.113.7/32"))): 0,
        ("netblock_dropped_bytes_total", (("family", "ipv6"), host, ("netblock", "2001:db8:5::/48"))): 180,
        ("netblock_blocks", (host, ("source", "cli"))): 3,
        ("netblock_blocks", (host, ("source", "list"))): 0,
        ("netblock_blocks", (host, ("source", "policy"))): 0,
        ("netblock_observations_total", (("class", "connect"), host)): 1,
        ("netblock_observations_total", (("class", "dnsbl:zen.spamhaus.org"), host)): 2,
        ("netblock_last_tick_timestamp_seconds", (host,)): NOW.timestamp(),
        ("netblock_counting_only", (host,)): 0,
        **{("netblock_rejected_rows", (host, ("table", t))): 0
           for t in ("allowlist", "blocks", "host_addresses", "observations")},
    }


def test_counting_only_mode_is_exported(nb):
    from netblock.firewall import Settings

    nb.backend.settings = Settings(verdict="count")
    assert samples(nb.ok("export"))[("netblock_counting_only", (("host", "mx1"),))] == 1
    assert json.loads(nb.ok("export", "--format", "json"))["counting_only"] is True


def test_expired_blocks_leave_the_gauge(nb):
    nb.at(NOW + timedelta(hours=2))
    got = samples(nb.ok("export"))
    assert got[("netblock_blocks", (("host", "mx1"), ("source", "cli")))] == 2


def test_json_and_csv(nb):
    doc = json.loads(nb.ok("export", "--format", "json"))
    assert doc["host"] == "mx1" and doc["last_tick"] == NOW.timestamp()
    assert doc["netblocks"][0] == {"netblock": "198.18.1.0/24", "family": "ipv4", "packets": 7, "bytes": 280}
    assert doc["blocks"] == {"cli": 3} and doc["observations"] == {"connect": 1, "dnsbl:zen.spamhaus.org": 2}
    rows = list(csv.reader(io.StringIO(nb.ok("export", "--format", "csv"))))
    assert rows[0] == ["netblock", "family", "packets", "bytes", "host"]
    assert rows[1:] == [["198.18.1.0/24", "ipv4", "7", "280", "mx1"], ["203.0.113.7/32", "ipv4", "0", "0", "mx1"],
                        ["2001:db8:5::/48", "ipv6", "3", "180", "mx1"]]


def test_output_is_written_atomically(nb, tmp_path, monkeypatch):
    target = tmp_path / "textfile" / "netblock.prom"
    target.parent.mkdir()
    target.write_text("old\n")
    assert nb.ok("export", "--output", str(target)) == ""
    assert samples(target.read_text())[("netblock_blocks", (("host", "mx1"), ("source", "cli")))] == 3
    assert os.listdir(target.parent) == ["netblock.prom"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        export.write_atomically(str(target), "new\n")
    assert target.read_text().startswith("# HELP") and os.listdir(target.parent) == ["netblock.prom"]


def test_output_into_a_missing_directory_is_one_line(nb, tmp_path):
    assert "cannot write there" in nb.refused("export", "--output", str(tmp_path / "nope" / "x.prom"))


def test_listen_serves_metrics_on_loopback(nb):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def read():  # as the CLI does: the HTTP thread opens the store per scrape
        with Store.open(nb.db) as store:
            return export.snapshot(store, nb.backend, "mx1", NOW)

    server = export.serve("127.0.0.1", port, read)
    try:
        for expected in (7, 9):  # each scrape reads the kernel afresh
            nb.count("198.18.1.0/24", expected, 40 * expected)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            key = ("netblock_dropped_packets_total",
                   (("family", "ipv4"), ("host", "mx1"), ("netblock", "198.18.1.0/24")))
            assert samples(text)[key] == expected
    finally:
        server.shutdown()
        server.server_close()


def test_listen_refusals(nb):
    assert "is not ADDR:PORT" in nb.refused("export", "--listen", "localhost")
    assert "is not ADDR:PORT" in nb.refused("export", "--listen", "127.0.0.1:99999")


def test_dnsbl_zones_beyond_the_50_most_frequent_are_one_label(nb):
    ip = N("198.51.100.7/32").ip
    with Store.open(nb.db) as store:  # 60 zones (zone-k seen k times) and zen.spamhaus.org (seen twice)
        store.add_observations([Observation(NOW, ip, f"dnsbl:zone-{k}.example", "postfix")
                                for k in range(1, 61) for _ in range(k)])
    got = samples(nb.ok("export"))
    zones = {dict(labels)["class"]: v for (name, labels), v in got.items()
             if name == "netblock_observations_total" and dict(labels)["class"].startswith("dnsbl:")}
    # kept: zone-11 .. zone-60; the other 11 zones (1 + ... + 10 hits, and zen's 2) are one label
    assert len(zones) == 51 and zones["dnsbl:other"] == sum(range(1, 11)) + 2
    assert "dnsbl:zone-10.example" not in zones and "dnsbl:zen.spamhaus.org" not in zones
    assert zones["dnsbl:zone-11.example"] == 11
    assert sum(zones.values()) == sum(range(1, 61)) + 2
    assert json.loads(nb.ok("export", "--format", "json"))["observations"]["dnsbl:other"] == 57
