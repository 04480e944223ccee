"""The kernel lock: one netblock process changes the kernel at a time.

Two processes that each compute a desired set and apply it could interleave so
that the older view lands last; serialising sync (read store -> apply) under one
flock(2) makes the last writer also the one that saw the newest store. The
lock is advisory and dies with its holder, so a kill -9 never leaves it stuck.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from netblock.errors import Busy, PermissionDenied

DEFAULT_TIMEOUT = 60.0
_POLL = 0.05

# Paths this process holds already: a nested kernel_lock() on one of them is a
# no-op instead of a self-deadlock (flock on a second descriptor would block).
_held: dict[str, int] = {}


@contextmanager
def kernel_lock(path: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT):
    """Hold an exclusive flock on ``path`` for the ``with`` body.

    Waits up to ``timeout`` seconds for another holder, then raises Busy.
    The lock file's directory is created if missing.
    """
    key = os.path.abspath(os.fspath(path))
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = _open(Path(key))
    try:
        _acquire(fd, key, timeout)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except PermissionError:
        raise PermissionDenied(f"lock file {path}: permission denied") from None
    except OSError as exc:
        raise Busy(f"lock file {path}: {exc.strerror}") from None


def _acquire(fd: int, key: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise Busy(f"lock file {key}: {exc.strerror}") from None
        if time.monotonic() >= deadline:
            raise Busy(f"lock file {key}: another netblock process has held it for more than {timeout:g}s")
        time.sleep(_POLL)
