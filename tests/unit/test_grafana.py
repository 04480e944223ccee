"""contrib/grafana/netblock.json queries only what `netblock export` really emits.

The exporter runs on a real store (blocks of every source, observations of
every kind, a tick) with the fake kernel's counters; its Prometheus text is
read back with prometheus_client's parser. Every PromQL expression of the
dashboard is then taken apart: each metric it selects, each label it matches,
groups by or shows in a legend must be one of those, and a label matched with
`=` against a fixed value must have that value somewhere.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_report_cli import NOW, Harness, N  # noqa: F401  (same fake kernel and store)

from netblock.model import Observation
from netblock.store.sqlite import Store
from netblock.system import hostaddrs

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "netblock.json"

FUNCTIONS = {"sum", "max", "min", "avg", "count", "topk", "bottomk", "increase", "rate", "irate", "time",
             "label_values", "sort_desc"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool"}


def emitted(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Sample names, and every label with the values it takes, of a Prometheus text."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            names.add(s.name)
            for k, v in s.labels.items():
                labels.setdefault(k, set()).add(v)
    return names, labels


def take_apart(expr: str) -> tuple[set[str], set[str], set[str], list[tuple[str, str]]]:
    """(metrics, labels, functions, fixed label=value matchers) of one PromQL expression."""
    matchers: list[tuple[str, str]] = []
    labels: set[str] = set()
    for body in re.findall(r"\{([^{}]*)\}", expr):
        for name, op, value in re.findall(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', body):
            labels.add(name)
            if op == "=" and "$" not in value:
                matchers.append((name, value))
    rest = re.sub(r"\{[^{}]*\}", " ", expr)
    rest = re.sub(r'"(?:[^"\\]|\\.)*"', " ", rest)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)  # ranges: [1d], [$__range]
    for _kw, group in re.findall(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", rest):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    rest = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", rest)
    metrics, functions = set(), set()
    for m in re.finditer(r"(?<![\w$])([A-Za-z_:][\w:]*)\s*(\()?", rest):
        word, call = m.group(1), m.group(2)
        if call:
            functions.add(word)
        elif word not in KEYWORDS:
            metrics.add(word)
    return metrics, labels, functions, matchers


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(PromQL, legend) of every panel target, and the template variables' queries."""
    out = [(t["expr"], t.get("legendFormat", "")) for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q)
            assert m, q
            out.append((f"{m[1]}{{{m[2]}=~\".*\"}}", ""))
    return out


@pytest.fixture
def exported(tmp_path, monkeypatch) -> str:
    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: [N("192.0.2.250/32")])
    nb = Harness(tmp_path, monkeypatch)
    nb.ok("add", "198.18.1.0/24", "2001:db8:5::/48", "--reason", "storm")
    nb.ok("add", "198.19.0.0/16", "--force", "--reason", "widened")
    nb.ok("allow", "add", "198.19.44.44")
    nb.count("198.18.1.0/24", 7, 280)
    ip = N("198.51.100.7/32").ip
    with Store.open(nb.db) as store:
        store.add_observations([Observation(NOW, ip, cls, "postfix") for cls in (
            "connect", "delivered", "dnsbl:zen.spamhaus.org", "no-rdns", "pregreet")])
        store.set_state("last_tick", str(NOW.timestamp()))
    return nb.ok("export")


def test_the_dashboard_queries_only_what_the_exporter_emits(exported):
    names, labels = emitted(exported)
    assert {"netblock_dropped_packets_total", "netblock_blocks", "netblock_observations_total"} <= names
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("top blocks", "per day", "rejections by class", "blocks active"):
        assert topic in titles, topic
    seen_metrics = set()
    for expr, legend in queries(dashboard):
        metrics, used, functions, matchers = take_apart(expr)
        assert metrics, expr
        assert metrics <= names, (expr, metrics - names)
        used |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        assert used <= set(labels), (expr, legend, used - set(labels))
        assert functions <= FUNCTIONS, (expr, functions - FUNCTIONS)
        for name, value in matchers:
            assert value in labels[name], (expr, name, value)
        seen_metrics |= metrics
    assert {"netblock_dropped_packets_total", "netblock_observations_total", "netblock_blocks"} <= seen_metrics


def test_the_checker_catches_a_wrong_name(exported):
    names, labels = emitted(exported)
    metrics, used, _f, _m = take_apart('sum by (netblok) (increase(netblock_dropped_packet_total{host=~"$host"}[1d]))')
    assert metrics == {"netblock_dropped_packet_total"} and metrics - names
    assert used == {"netblok", "host"} and used - set(labels) == {"netblok"}
