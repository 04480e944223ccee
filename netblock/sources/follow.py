"""Following log files like ``tail -F``, with a position that survives restarts.

A follower never moves its position on its own: ``read()`` returns a batch of
complete lines and the position *after* them, and only ``commit(batch)`` moves
on. The caller commits after the observations those lines produced are stored,
and stores the position in the same transaction, so a crash or a failing store
neither loses a line nor counts one twice. A half-written last line is left for
the next read.

Rotation is handled the two ways logrotate does it:

* ``create`` (rename, then a new file under the old name): the old inode is read
  to its end, then the follower switches to the new file from offset 0. If the
  rename happened while netblock was down, the old inode is looked for among the
  rotated siblings in the same directory (``mail.log.1``) and finished first.
* ``copytruncate``: the file shrinks below the position, so reading restarts at 0.

Wake-ups come from inotify (on each file and on its directory, so creation and
renames are seen as well as appends); there is no sleep-polling loop.

Why this module is long: following a file through rotation, truncation and
copy-truncate, with saved positions, is one state machine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import gzip
import os
import select
import stat
import struct
import sys
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, cast

from netblock.errors import NotARegularFile

DEFAULT_MAX_LINE = 8192
CHUNK = 1 << 16
BATCH_LINES = 5000  # bounded batches keep each store transaction short
PROGRESS_EVERY = 1024  # lines between progress reports (each costs a seek)


@dataclass(frozen=True)
class Position:
    """Where reading continues: which inode of which device, and the byte offset in it."""

    dev: int
    ino: int
    offset: int

    def dump(self) -> str:
        return f"{self.dev}:{self.ino}:{self.offset}"

    @classmethod
    def parse(cls, text: str | None) -> "Position | None":
        """The saved form; anything unreadable means "no saved position" (start over at 0)."""
        if not text:
            return None
        try:
            dev, ino, offset = (int(x) for x in text.split(":"))
        except ValueError:
            return None
        if min(dev, ino, offset) < 0:
            return None
        return cls(dev, ino, offset)


@dataclass(frozen=True)
class Line:
    text: str
    position: int  # byte offset of the line's start in its file
    truncated: bool = False


@dataclass
class Batch:
    lines: list[Line] = field(default_factory=list)
    after: Position | None = None  # where the next read starts once committed
    overlong: int = 0
    restarted: bool = False  # the file was truncated (copytruncate) and read from 0 again
    rotated: bool = False  # the old inode was finished; the next read opens the new file
    refused: str | None = None  # the path is not a regular file (a FIFO, a device): one line saying so


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def not_regular(path: str, mode: int) -> str | None:
    """The one-line refusal of a source that is not a regular file, or None for a regular one."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return f"{path}: {kind}, not a regular file; not read"


def open_regular(path: str) -> int:
    """A read-only descriptor of the regular file ``path``; NotARegularFile for anything else.

    Opening never blocks: O_NONBLOCK keeps a FIFO without a writer (or a
    device) from waiting in open(), and the type is checked on the opened
    descriptor, so a file swapped for a FIFO between a stat and the open is
    still refused before anything is read from it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        why = not_regular(path, os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if why:
        os.close(fd)
        raise NotARegularFile(why)
    return fd


def state_key(path: str) -> str:
    return f"offset:{path}"


def _decode(raw: bytes) -> str:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", errors="replace")


def scan(fd: int, start: int, end: int, max_line: int, *, final: bool = False,
         limit: int | None = None) -> tuple[list[Line], int, int]:
    """Complete lines of ``fd`` between ``start`` and ``end``: (lines, next offset, over-long count).

    A line longer than ``max_line`` keeps its first ``max_line`` bytes; the rest is
    skipped up to its newline, so memory stays bounded however long it is. An
    unterminated tail is left unread unless ``final`` (the file will not grow again).
    """
    limit = BATCH_LINES if limit is None else limit
    lines: list[Line] = []
    overlong = 0
    pos = start
    while pos < end and len(lines) < limit:
        chunk = os.pread(fd, min(CHUNK, end - pos), pos)
        if not chunk:
            break
        base = pos
        i = 0
        while len(lines) < limit:
            nl = chunk.find(b"\n", i)
            if nl < 0:
                break
            raw = chunk[i:nl]
            if len(raw) > max_line:
                lines.append(Line(_decode(raw[:max_line]), base + i, True))
                overlong += 1
            else:
                lines.append(Line(_decode(raw), base + i))
            i = nl + 1
        if len(lines) >= limit:
            return lines, base + i, overlong
        if i > 0:
            pos = base + i
            continue
        # No newline in a whole chunk from ``pos``: either the tail is incomplete,
        # or one line is longer than a chunk. Look ahead for its end.
        if len(chunk) < CHUNK and base + len(chunk) >= end:
            tail_end = end
            nl_at = -1
        else:
            nl_at, tail_end = _find_newline(fd, base + len(chunk), end)
        if nl_at < 0:
            if final:
                head = chunk[:max_line]
                truncated = tail_end - base > max_line
                lines.append(Line(_decode(head), base, truncated))
                overlong += truncated
                return lines, tail_end, overlong
            return lines, base, overlong
        truncated = nl_at - base > max_line
        lines.append(Line(_decode(chunk[:max_line]), base, truncated))
        overlong += truncated
        pos = nl_at + 1
    return lines, pos, overlong


def _find_newline(fd: int, pos: int, end: int) -> tuple[int, int]:
    while pos < end:
        chunk = os.pread(fd, min(CHUNK, end - pos), pos)
        if not chunk:
            break
        nl = chunk.find(b"\n")
        if nl >= 0:
            return pos + nl, end
        pos += len(chunk)
    return -1, pos


class Follower:
    """One followed log file; see the module docstring for the rules it keeps."""

    def __init__(self, path: str, position: Position | None = None, *, max_line: int = DEFAULT_MAX_LINE):
        self.path = os.path.abspath(path)
        self.key = state_key(path)
        self.max_line = max_line
        self.position = position
        self.overlong = 0
        self._fd: int | None = None
        self._fd_id: tuple[int, int] | None = None
        self.refused: str | None = None  # why the path is not read right now

    # -- opening ---------------------------------------------------------
    def _open(self) -> None:
        self.refused = None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        self.refused = not_regular(self.path, st.st_mode)
        if self.refused:
            return
        saved = self.position
        if saved is not None and (st.st_dev, st.st_ino) != (saved.dev, saved.ino):
            old = self._find_rotated(saved)
            if old is not None:
                self._attach(old, saved.offset)
                return
            saved = None
        self._attach(self.path, saved.offset if saved else 0)

    def _find_rotated(self, saved: Position) -> str | None:
        """The renamed old inode (``mail.log.1`` ...), if it is still next to the log."""
        directory, base = os.path.split(self.path)
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return None
        for name in names:
            if not name.startswith(base) or name == base:
                continue
            candidate = os.path.join(directory, name)
            try:
                st = os.stat(candidate)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (saved.dev, saved.ino):
                return candidate
        return None

    def _attach(self, path: str, offset: int) -> None:
        try:
            fd = open_regular(path)
        except FileNotFoundError:
            return
        except NotARegularFile as exc:
            self.refused = str(exc)
            return
        st = os.fstat(fd)
        self._fd = fd
        self._fd_id = (st.st_dev, st.st_ino)
        self.position = Position(st.st_dev, st.st_ino, offset)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._fd_id = None

    def fileno(self) -> int | None:
        return self._fd

    # -- reading ---------------------------------------------------------
    def read(self) -> Batch:
        """The next complete lines and the position after them; nothing moves until commit()."""
        if self._fd is None:
            self._open()
            if self._fd is None:
                return Batch(after=self.position, refused=self.refused)
        assert self.position is not None
        size = os.fstat(self._fd).st_size
        start = self.position.offset
        restarted = False
        if size < start:
            start, restarted = 0, True
        current = self._path_id()
        rotated = current is not None and current != self._fd_id
        lines, end, overlong = scan(self._fd, start, size, self.max_line, final=rotated)
        assert self._fd_id is not None  # set with self._fd
        dev, ino = self._fd_id
        after = Position(dev, ino, end)
        finished_old = rotated and end >= size
        if finished_old:
            assert current is not None  # rotated: another file is at the path
            after = Position(current[0], current[1], 0)
        return Batch(lines, after, overlong, restarted, finished_old)

    def _path_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino)

    def commit(self, batch: Batch) -> None:
        """Move past ``batch``; call once what it produced is stored with ``batch.after``."""
        self.overlong += batch.overlong
        if batch.after is None:
            return
        self.position = batch.after
        if self._fd_id is not None and (batch.after.dev, batch.after.ino) != self._fd_id:
            self.close()
            self._open()


# ------------------------------------------------------------------ inotify

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
FILE_EVENTS = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVE_SELF | IN_DELETE_SELF
DIR_EVENTS = IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CLOSE_WRITE

_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _libc.inotify_init1.argtypes = [ctypes.c_int]
        _libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    return _libc


class Inotify:
    """The kernel's file-change notifications for the followed files and their directories."""

    def __init__(self) -> None:
        fd = _lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def add(self, path: str, mask: int) -> bool:
        """Watch ``path``; False when it does not exist (yet): the directory watch covers creation."""
        wd = _lib().inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                return False
            raise OSError(err, f"inotify_add_watch({path}): {os.strerror(err)}")
        return True

    def watch(self, follower: Follower) -> None:
        self.add(os.path.dirname(follower.path) or ".", DIR_EVENTS)
        self.add(follower.path, FILE_EVENTS)

    def drain(self) -> int:
        """Consume pending events; how many there were (their content does not matter)."""
        count = 0
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return count
            if not data:
                return count
            i = 0
            while i + 16 <= len(data):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, i)
                i += 16 + length
                count += 1

    def wait(self, timeout: float | None) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return bool(ready)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ------------------------------------------------------------------ one-shot reading

def _open_input(path: str) -> tuple[BinaryIO, int]:
    """A binary stream for a plain or gzip file (or ``-`` for stdin), with its size for progress."""
    if path == "-":
        return sys.stdin.buffer, 0
    f = os.fdopen(open_regular(path), "rb")
    size = os.fstat(f.fileno()).st_size
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return cast(BinaryIO, gzip.GzipFile(fileobj=f, mode="rb")), size
    f.seek(0)
    return f, size


def read_lines(path: str, *, max_line: int = DEFAULT_MAX_LINE, on_bytes=None) -> Iterator[Line]:
    """Every line of a finished file (plain, .gz or stdin) with its (uncompressed) byte offset.

    ``on_bytes(n)`` is told how many raw bytes were consumed, for a progress bar.
    """
    stream, _ = _open_input(path)
    raw_file = getattr(stream, "fileobj", None) or stream
    offset = 0
    last_raw = 0
    count = 0
    try:
        while True:
            raw = stream.readline(max_line + 1)
            if not raw:
                break
            start = offset
            offset += len(raw)
            truncated = False
            if len(raw) > max_line and not raw.endswith(b"\n"):
                truncated = True
                while True:
                    rest = stream.readline(CHUNK)
                    offset += len(rest)
                    if not rest or rest.endswith(b"\n"):
                        break
                raw = raw[:max_line]
            elif raw.endswith(b"\n"):
                raw = raw[:-1]
                if len(raw) > max_line:
                    raw, truncated = raw[:max_line], True
            yield Line(_decode(raw), start, truncated)
            count += 1
            if on_bytes is not None and count % PROGRESS_EVERY == 0:
                last_raw = _report(raw_file, last_raw, on_bytes)
        if on_bytes is not None:
            _report(raw_file, last_raw, on_bytes)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
            if raw_file is not stream:
                raw_file.close()


BLOCK = 1 << 20  # bytes per read_blocks() block: big enough that per-block costs vanish


@dataclass(frozen=True)
class Block:
    """Complete lines of a file, each ending in "\\n" (a missing last one is added).

    Pure ASCII stays bytes (nothing to decode, indexes are byte offsets);
    anything else is decoded as read_lines() decodes it.
    """

    text: str | bytes
    position: int  # byte offset of the first line in its file
    lines: int


def read_blocks(path: str, *, max_line: int = DEFAULT_MAX_LINE, block_line: int | None = None,
                on_bytes=None, size: int = BLOCK, start: int = 0, stop: int | None = None,
                ) -> Iterator["Block | Line"]:
    """A finished file (plain, .gz or stdin) in big blocks of lines, for whole-block parsing.

    Yields the same lines as read_lines(), grouped: runs of lines no longer than
    ``block_line`` bytes (default ``max_line``) as Blocks, every longer line on
    its own as a Line, cut to ``max_line`` bytes exactly as read_lines() cuts
    it, so the caller can hand it to a per-line parser that caps it.  Memory
    stays bounded by ``size`` + ``max_line`` however long a line is.

    ``start`` and ``stop`` (a plain file only, on line starts: see pieces())
    restrict reading to those bytes.
    """
    limit = max_line if block_line is None else min(block_line, max_line)
    stream, _ = _open_input(path)
    raw_file = getattr(stream, "fileobj", None) or stream
    left = None
    if start or stop is not None:
        if raw_file is not stream or stream is sys.stdin.buffer:
            raise ValueError("read_blocks: start/stop need a plain file")
        stream.seek(start)
        left = (os.fstat(stream.fileno()).st_size if stop is None else stop) - start

    def read(n: int) -> bytes:
        nonlocal left
        if left is None:
            return stream.read(n)
        data = stream.read(min(n, left))
        left -= len(data)
        return data

    offset = start  # file offset of pending[0]
    pending = b""
    last_raw = 0
    try:
        while True:
            data = read(size)
            if not data:
                break
            if pending:
                data = pending + data
            cut = data.rfind(b"\n") + 1
            if cut:
                yield from _split_block(data[:cut], offset, limit, max_line)
                offset += cut
                pending = data[cut:]
            else:
                pending = data
            if len(pending) > max_line:
                # One line longer than max_line and no end in sight: keep its head, skip the rest.
                head = pending[:max_line]
                skipped = len(pending)
                while True:
                    data = read(size)
                    nl = data.find(b"\n")
                    if nl >= 0 or not data:
                        break
                    skipped += len(data)
                yield Line(_decode(head), offset, True)
                if nl >= 0:
                    offset += skipped + nl + 1
                    pending = data[nl + 1:]
                else:
                    offset += skipped
                    pending = b""
            if on_bytes is not None:
                last_raw = _report(raw_file, last_raw, on_bytes)
        if pending:  # what follows a skipped tail may hold whole lines, or end unterminated
            yield from _split_block(pending if pending.endswith(b"\n") else pending + b"\n",
                                    offset, limit, max_line)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
            if raw_file is not stream:
                raw_file.close()


def pieces(path: str, size: int) -> list[tuple[int, int]] | None:
    """(start, stop) byte ranges of about ``size`` covering a plain file, each from a line start.

    None for stdin, a gzip file or anything else that cannot be read from the middle.
    """
    if path == "-":
        return None
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            st = os.fstat(f.fileno())
            if f.read(2) == b"\x1f\x8b":
                return None
            cuts = [0]
            for guess in range(size, st.st_size, size):
                if guess <= cuts[-1]:
                    continue
                f.seek(guess - 1)
                while True:  # the line that ``guess`` falls in ends at the next newline
                    chunk = f.read(CHUNK)
                    nl = chunk.find(b"\n")
                    if nl >= 0 or not chunk:
                        break
                if nl < 0:
                    break
                cut = f.tell() - len(chunk) + nl + 1
                if cut < st.st_size:
                    cuts.append(cut)
    except (OSError, NotARegularFile):
        return None
    return list(zip(cuts, cuts[1:] + [st.st_size]))


def _split_block(data: bytes, offset: int, limit: int, max_line: int) -> Iterator["Block | Line"]:
    """``data`` (whole lines) as one Block, or, around over-long lines, several."""
    if not _has_long_line(data, limit):
        yield _block(data, offset)
        return
    start = i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        if nl - i > limit:
            if i > start:
                yield _block(data[start:i], offset + start)
            raw = data[i:nl]
            yield Line(_decode(raw[:max_line]), offset + i, len(raw) > max_line)
            start = nl + 1
        i = nl + 1
    if start < len(data):
        yield _block(data[start:], offset + start)


def _has_long_line(data: bytes, limit: int) -> bool:
    """Whether a line of ``data`` (whole lines) is longer than ``limit`` bytes.

    Every such line covers one of the offsets 0, limit, 2*limit, ...: only the
    line around each of those is measured, so a block costs a few hundred
    short memchr() calls instead of a pass over every line.
    """
    if len(data) <= limit + 1:
        return False
    for p in range(0, len(data), limit):
        if p <= limit:
            start = data.rfind(b"\n", 0, p) + 1
        else:
            nl = data.rfind(b"\n", p - limit - 1, p)
            if nl < 0:
                return True
            start = nl + 1
        if data.find(b"\n", p, start + limit + 1) < 0:
            return True
    return False


def _block(data: bytes, offset: int) -> Block:
    text = data if data.isascii() else data.decode("utf-8", errors="replace")
    return Block(text, offset, data.count(b"\n"))


def _report(raw_file, last: int, on_bytes) -> int:
    """Tell ``on_bytes`` how far the raw (possibly compressed) file has been consumed."""
    try:
        here = raw_file.tell()
    except (OSError, ValueError, AttributeError):
        return last
    if here > last:
        on_bytes(here - last)
    return max(here, last)


def input_size(path: str) -> int:
    if path == "-":
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
