"""An in-memory backend and config for pure-logic tests (never for kernel tests).

The fake keeps exactly the contract of netblock.firewall's Backend: apply()
makes `installed` equal to `desired` and reports the difference, so sync's
logic can be checked without netfilter. It also records calls, so a test can
assert that a dry run or a refused command never reached the kernel.
"""

from __future__ import annotations

import json

from netblock import config
from netblock.errors import NetblockError
from netblock.firewall import BackendBase, Change, Settings


class FakeBackend(BackendBase):
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

    def add(self, additions) -> Change | None:
        """No fast path, like the ipset and iptables backends: the caller syncs."""
        self.calls.append("add")
        return None

    def verdict(self) -> str | None:
        """The configured verdict while the objects exist: the fake's rule always matches its settings."""
        return self.settings.verdict if self.present else None

    def remove(self) -> None:
        self.calls.append("remove")
        self.elements = {}
        self.present = False

    @property
    def mutations(self) -> list[str]:
        return [c for c in self.calls if c in ("ensure", "apply", "remove")]


def fake_config(lock_file: str, db: str = "", toml: str = "") -> config.Config:
    """A real Config, built as the program builds it (config.loads): the defaults are config's own.

    The journal is off unless ``toml`` says otherwise, so a test never reads the host's journal.
    """
    head = f'lock_file = "{lock_file}"\n' + (f'db = "{db}"\n' if db else "")
    if "[sources]" not in toml:
        toml += "\n[sources]\njournal = false\n"
    return config.loads(head + toml)


def daemon_config(files=(), journal=False, units=(), window: str = "1d") -> config.Config:
    """A real Config for the daemon's tick that decides nothing (no policy classes): only reading is tested."""
    toml = "\n".join([
        "[sources]",
        f"files = {json.dumps([str(f) for f in files])}",
        f"journal = {json.dumps(journal)}",
        f"journal_units = {json.dumps(list(units))}",
        "[policy]",
        f'window = "{window}"',
        "classes = {}",
    ])
    return config.loads(toml + "\n")
