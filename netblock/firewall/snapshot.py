"""What a set backend last wrote, kept on disk per network namespace: one file handler for all three.

Each backend proves its snapshot against the kernel its own way (nftables:
the ruleset generation; ipset: the sets' headers; iptables: a digest of
netblock's chain), and any doubt means it reads the kernel. The file itself
is handled here once: written atomically, trusted only in a directory
nobody else can write to, and only the newest few kept, since a network
namespace that is gone never comes back to read its own.
"""

from __future__ import annotations

import marshal
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/run/netblock")
KEPT = 32  # network namespaces; losing one costs that namespace one read of the kernel


@dataclass(frozen=True)
class SnapshotFile:
    """``/run/netblock/<backend>/<backend>-<netns cookie>.snapshot``, a marshal of a dict with a format."""

    backend: str  # the directory and the file prefix
    fmt: int  # the layout version: a file of another one is not read

    @property
    def directory(self) -> Path:
        return ROOT / self.backend

    def path(self, cookie: int) -> Path:
        return self.directory / f"{self.backend}-{cookie}.snapshot"

    def read(self, cookie: int) -> dict | None:
        """The snapshot of this namespace, or None (missing, unreadable, another format, an unsafe directory)."""
        try:
            st = self.directory.stat()
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return None
            data = marshal.loads(self.path(cookie).read_bytes())
            if not isinstance(data, dict) or data.get("format") != self.fmt:
                return None
            return data
        except (OSError, ValueError, EOFError, TypeError):
            return None

    def write(self, cookie: int, payload: dict) -> None:
        """Replace the snapshot with ``payload`` (marshal-able); on any failure there is none."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self.path(cookie)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(marshal.dumps({"format": self.fmt, **payload}))
            new = not path.exists()
            os.replace(tmp, path)
        except (OSError, ValueError):
            self.forget(cookie)
            return
        if new:
            self._prune()

    def forget(self, cookie: int) -> None:
        try:
            self.path(cookie).unlink(missing_ok=True)
        except OSError:
            pass

    def _prune(self) -> None:
        def age(path: Path) -> float:
            try:
                return -path.stat().st_mtime
            except OSError:
                return 0.0  # pruned by another netblock meanwhile

        try:
            for old in sorted(self.directory.glob(f"{self.backend}-*.snapshot"), key=age)[KEPT:]:
                old.unlink(missing_ok=True)
        except OSError:
            pass
