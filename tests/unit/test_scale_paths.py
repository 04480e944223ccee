"""Paths whose cost must follow the change, not the installed set (issue: 100k netblocks)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from netaddr import IPNetwork

from netblock.firewall import BackendBase, RegionView
from netblock.reports import export
from netblock.store.sqlite import Store

T0 = datetime(2026, 1, 5, 12, tzinfo=timezone.utc)


class ProvenBackend:
    """A backend whose kernel state is proven (region_view) and must not be read for counters."""

    def __init__(self, keys):
        self.keys = keys

    def region_view(self):
        return RegionView(1, 1, {4: (self.keys, [float("nan")] * len(self.keys))})

    def counters(self):
        raise AssertionError("the kernel was read")


def test_metrics_counters_come_from_the_last_samples(tmp_path):
    a, b = IPNetwork("198.18.16.0/24"), IPNetwork("198.18.20.7/32")
    with Store.open(str(tmp_path / "nb.db")) as st:
        st.add_changed_samples(T0, {a: (3, 180)})
        st.add_changed_samples(T0 + timedelta(minutes=5), {a: (7, 420)})
        backend = ProvenBackend([a.first << 8 | 24, b.first << 8 | 32])
        assert export.Sampled(backend, st).counters() == {a: (7, 420), b: (0, 0)}


def test_metrics_read_the_kernel_when_nothing_proves_it(tmp_path):
    class Unproven(BackendBase):  # no cheap paths: region_view() proves nothing
        def counters(self):
            return {IPNetwork("198.18.16.0/24"): (1, 60)}

    with Store.open(str(tmp_path / "nb.db")) as st:
        assert export.Sampled(Unproven(), st).counters() == {IPNetwork("198.18.16.0/24"): (1, 60)}
