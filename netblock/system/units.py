"""The systemd units shipped in systemd/, rendered for where netblock is installed."""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources
from pathlib import Path

SHIPPED_BIN = "/usr/local/bin/netblock"


def netblock_path() -> str:
    """The netblock command of this installation (a venv's bin/ or /usr/local/bin)."""
    beside = Path(sys.executable).with_name("netblock")
    if beside.exists():
        return str(beside)
    return shutil.which("netblock") or SHIPPED_BIN


def unit_names() -> list[str]:
    return sorted(p.name for p in resources.files("netblock.systemd").iterdir()
                  if p.name.endswith((".service", ".timer")))


def render(name: str, binary: str | None = None) -> str:
    text = resources.files("netblock.systemd").joinpath(name).read_text()
    return text.replace(SHIPPED_BIN, binary or netblock_path())


def install(prefix: str = "/", binary: str | None = None) -> list[Path]:
    """Write every unit into PREFIX/etc/systemd/system; returns the paths written."""
    target = Path(prefix) / "etc/systemd/system"
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in unit_names():
        path = target / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(render(name, binary))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        written.append(path)
    return written
