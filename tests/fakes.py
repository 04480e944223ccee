"""An in-memory backend and config for pure-logic tests (never for kernel tests).

The fake keeps exactly the contract of netblock.firewall's Backend: apply()
makes `installed` equal to `desired` and reports the difference, so sync's
logic can be checked without netfilter. It also records calls, so a test can
assert that a dry run or a refused command never reached the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from netblock.errors import NetblockError
from netblock.firewall import Change, Settings


class FakeBackend:
    name = "fake"
    description = "in-memory fake backend (tests only)"

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.elements: dict = {}
        self.calls: list[str] = []
        self.present = False

    def ensure(self) -> None:
        self.calls.append("ensure")
        self.present = True

    def apply(self, desired) -> Change:
        self.calls.append("apply")
        if not self.present:
            raise AssertionError("apply() before ensure()")
        change = Change()
        for net, expiry in desired.items():
            if net not in self.elements:
                change.added.append(net)
            elif self.elements[net] != expiry:
                change.updated.append(net)
        change.removed = [net for net in self.elements if net not in desired]
        self.elements = dict(desired)
        return change

    def counters(self) -> dict:
        self.calls.append("counters")
        return {net: (0, 0) for net in self.elements}

    def installed(self) -> dict:
        self.calls.append("installed")
        if not self.present:
            raise NetblockError("fake: netblock's kernel objects are missing; run ensure() first")
        return dict(self.elements)

    def remove(self) -> None:
        self.calls.append("remove")
        self.elements = {}
        self.present = False

    @property
    def mutations(self) -> list[str]:
        return [c for c in self.calls if c in ("ensure", "apply", "remove")]


@dataclass
class FakeBlocksConfig:
    default_ttl: timedelta = timedelta(days=7)
    max_ttl: timedelta = timedelta(days=90)
    reblock_factor: float = 2.0
    max_prefix_v4: int = 8
    max_prefix_v6: int = 32
    allow: list[str] = field(default_factory=list)


@dataclass
class FakePolicyConfig:
    delivered_window: timedelta = timedelta(days=30)


@dataclass
class FakeConfig:
    """The fields of netblock.config.Config that sync and the block commands read."""

    lock_file: str
    db: str = ""
    backend: str = "fake"
    blocks: FakeBlocksConfig = field(default_factory=FakeBlocksConfig)
    policy: FakePolicyConfig = field(default_factory=FakePolicyConfig)

    def firewall_settings(self) -> Settings:
        return Settings()
