"""The dry-run backend: the whole pipeline, with nothing put in the kernel.

For trying a configuration (sources, classes, thresholds, widening) on a
live MX without touching its firewall: the daemon reads, decides and syncs
as it would, and the "kernel" is this object's memory. Every call is
recorded in ``calls``; ``elements`` holds what apply() was given, of the
configured families, with the Change the real backends would report;
counters are all zero, since nothing is matched. The elements live as long
as the process: a fresh `netblock status` or `sync` finds nothing installed,
and says so. The tests use it as their in-memory kernel.
"""

from __future__ import annotations

from datetime import datetime

from netaddr import IPNetwork

from netblock.errors import KernelError, NetblockError
from netblock.firewall import BackendBase, Change, Desired, Settings

NAME = "dryrun"
_VERSION = {"ipv4": 4, "ipv6": 6}


class DryrunBackend(BackendBase):
    """A backend that records what it would do and touches nothing."""

    name = NAME
    description = "DRY RUN: nothing is installed in the kernel; the elements live in this process's memory"

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.elements: dict[IPNetwork, datetime | None] = {}
        self.calls: list[str] = []
        self.present = False  # ensure() made the (imaginary) skeleton; remove() took it away

    def ensure(self) -> None:
        self.calls.append("ensure")
        self.present = True

    def apply(self, desired: Desired) -> Change:
        """Hold exactly the desired netblocks of the configured families; the difference is the Change."""
        self.calls.append("apply")
        if not self.present:
            raise KernelError("dryrun: apply() before ensure(): netblock's objects do not exist")
        versions = {_VERSION[f] for f in self.settings.families}
        wanted = {net: expiry for net, expiry in desired.items() if net.version in versions}
        change = Change()
        for net, expiry in wanted.items():
            if net not in self.elements:
                change.added.append(net)
            elif self.elements[net] != expiry:
                change.updated.append(net)
        change.removed = [net for net in self.elements if net not in wanted]
        self.elements = wanted
        return change

    def counters(self) -> dict[IPNetwork, tuple[int, int]]:
        """Zero for every element: a dry run matches no packet."""
        self.calls.append("counters")
        return {net: (0, 0) for net in self.elements}

    def installed(self) -> dict[IPNetwork, datetime | None]:
        self.calls.append("installed")
        if not self.present:
            raise NetblockError("dryrun: netblock's objects are missing (a dry run installs nothing in the "
                                "kernel: its elements live in the memory of the process that synced)")
        return dict(self.elements)

    def verdict(self) -> str | None:
        """The configured verdict while the objects exist: the imaginary rule always matches its settings."""
        return self.settings.verdict if self.present else None

    def remove(self) -> None:
        self.calls.append("remove")
        self.elements = {}
        self.present = False


def create(settings: Settings) -> DryrunBackend:
    return DryrunBackend(settings)
