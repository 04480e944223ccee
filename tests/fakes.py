"""The tests' in-memory kernel and config for pure-logic tests (never for kernel tests).

The kernel is the product's dry-run backend (netblock/firewall/dryrun.py): it
keeps the contract of netblock.firewall's Backend (apply() makes `elements`
equal to `desired` and reports the difference), so sync's logic can be
checked without netfilter, and it records calls, so a test can assert that a
dry run or a refused command never reached the kernel.
"""

from __future__ import annotations

import json

from netblock import config
from netblock.firewall.dryrun import DryrunBackend


class FakeBackend(DryrunBackend):
    """The dry-run backend, plus the one question only tests ask of it."""

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
