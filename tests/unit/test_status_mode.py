"""`netblock status` names the verdict (counting-only or enforcing) and the sources, with the file-mode warning.

The kernel side of the verdict is checked with each real backend in
tests/kernel/test_count_mode.py; here a fake backend reports it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from fakes import FakeBackend, fake_config  # noqa: E402
from test_cli_blocks import Harness  # noqa: E402

from netblock.config import SourcesConfig  # noqa: E402
from netblock.firewall import Settings  # noqa: E402
from netblock.system import hostaddrs  # noqa: E402


class VerdictBackend(FakeBackend):
    """A fake whose rule in the "kernel" has a verdict, as the real backends report it."""

    def __init__(self, settings: Settings, installed: str | None):
        super().__init__(settings)
        self.installed_verdict = installed

    def verdict(self):
        return self.installed_verdict


@pytest.fixture
def nb(tmp_path, monkeypatch):
    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: [])
    h = Harness(tmp_path, monkeypatch)
    h.config = fake_config(str(tmp_path / "lock"), str(h.db))
    return h


def status(nb) -> tuple[dict, str, str]:
    rc, text, err = nb("status")
    assert rc == 0, err
    return json.loads(nb.ok("status", "--json")), text, err


def test_counting_only_mode_is_named(nb):
    nb.backend = VerdictBackend(Settings(verdict="count"), "count")
    nb.ok("add", "198.18.1.0/24")
    info, text, _ = status(nb)
    assert (info["verdict"], info["verdict_installed"], info["counting_only"]) == ("count", "count", True)
    assert "mode:         COUNTING ONLY: nothing is dropped" in text


def test_a_kernel_behind_the_configured_verdict_is_pointed_out(nb):
    nb.backend = VerdictBackend(Settings(verdict="drop"), "count")
    nb.ok("add", "198.18.1.0/24")
    info, text, _ = status(nb)
    assert (info["verdict"], info["verdict_installed"], info["counting_only"]) == ("drop", "count", False)
    assert ("mode:         enforcing: drop (the kernel still has verdict count: run `netblock sync`, "
            "or reload the daemon)") in text


def test_a_rule_that_matches_the_settings_is_not_called_drifted(nb):
    """Every backend declares verdict() (the Backend protocol): the fake's rule has its settings' verdict."""
    nb.ok("add", "198.18.1.0/24")
    info, text, _ = status(nb)
    assert info["verdict_installed"] == "drop"
    assert "mode:         enforcing: drop\n" in text


def test_file_mode_warns_once_and_the_journal_does_not(nb, tmp_path):
    nb.config = replace(nb.config, sources=SourcesConfig(files=(str(tmp_path / "mail.log"), str(tmp_path / "other.log"))))
    info, text, err = status(nb)
    assert info["sources"]["mode"] == "files" and len(info["warnings"]) == 1
    assert f"sources:      {tmp_path}/mail.log, {tmp_path}/other.log ([sources] files" in text
    assert err.count("any local user can forge") == 1
    nb.config = replace(nb.config, sources=SourcesConfig(journal=True))
    info, text, err = status(nb)
    assert info["sources"] == {"mode": "journal", "files": [], "journal": True,
                               "reason": "the journal ([sources] journal = true)"}
    assert info["warnings"] == [] and "forge" not in err
