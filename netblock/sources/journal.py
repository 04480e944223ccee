"""Reading the MTA's entries from journald through ``journalctl -o json``.

A subprocess instead of python-systemd keeps the dependency list short and
works the same in the venv and in Debian's python. Entries are accepted only on
the *trusted* fields journald itself fills in (the leading underscore ones:
``_SYSTEMD_UNIT``, ``_COMM``, ``_UID``), never on what the client wrote: anyone
may run ``logger -t postfix/smtpd "reject: ... [victim-ip]"``, which sets
SYSLOG_IDENTIFIER to postfix/smtpd but leaves ``_COMM=logger``, the user's own
``_UID`` and a session unit, so it cannot get an innocent address blocked.

The cursor of the last entry whose observations are stored is kept in the
store (``cursor:journal``), written in the same transaction as the
observations; a restart continues with ``--after-cursor`` and neither loses nor
repeats an entry. If storing fails, ``rewind()`` restarts journalctl from the
last stored cursor.

The journal is the default source (``[sources] journal = "auto"``) wherever
the MTA logs to it: ``detect()`` asks journalctl for entries of the MTA's
units or programs in the last day, and ``choose()`` turns that into the
sources to read. Configured ``files`` are the explicit choice (a maillog
setup, a host without systemd) and turn the automatic journal off.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import IO, Iterable, Mapping, Sequence

from netblock.errors import ToolMissing

STATE_KEY = "cursor:journal"
DEFAULT_UNITS = ("postfix@-.service", "postfix.service", "exim4.service", "sendmail.service")
UID_MIN = 1000  # accounts at or above this are people (login.defs), never an MTA
# Programs whose only job is to write what they are told into the journal.
RELAYING_COMMS = frozenset({"logger", "systemd-cat", "python", "python3", "perl", "sh", "bash", "dash"})
BATCH_ENTRIES = 5000
# The programs of Postfix (its daemons), Exim (Debian's binary is exim4) and Sendmail,
# as journald's _COMM has them: what auto-detection looks for besides the units.
MTA_COMMS = ("smtpd", "postscreen", "master", "qmgr", "cleanup", "smtp", "exim4", "exim", "sendmail")
DETECT_WINDOW = timedelta(days=1)
DETECT_ENTRIES = 200  # the newest entries looked at: enough to see whose they are
DETECT_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Entry:
    """What the parsers need from one journal entry."""

    program: str  # SYSLOG_IDENTIFIER, e.g. "postfix/smtpd"
    message: str
    time: datetime
    cursor: str


@dataclass
class Batch:
    entries: list[Entry] = field(default_factory=list)
    cursor: str | None = None  # of the last entry read, trusted or not
    ignored: int = 0  # entries refused by trusted()
    eof: bool = False  # journalctl exited (always, without --follow, once it is done)


def _uid_min() -> int:
    try:
        with open("/etc/login.defs", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "UID_MIN" and parts[1].isdigit():
                    return int(parts[1])
    except OSError:
        pass
    return UID_MIN


def trusted(entry: Mapping[str, object], units: Sequence[str], uid_min: int = UID_MIN) -> bool:
    """Whether journald vouches that the entry came from one of the MTA's units."""
    unit = _text(entry.get("_SYSTEMD_UNIT"))
    if not unit or unit not in units:
        return False
    comm = _text(entry.get("_COMM"))
    if not comm or comm in RELAYING_COMMS:
        return False
    uid = _text(entry.get("_UID"))
    if not uid.isdigit() or int(uid) >= uid_min:
        return False
    return True


def _text(value: object) -> str:
    """journald sends non-UTF-8 or binary field values as a list of byte values."""
    if value is None:
        return ""
    if isinstance(value, list):
        try:
            return bytes(value).decode("utf-8", errors="replace")
        except (TypeError, ValueError):
            return ""
    return str(value)


def to_entry(record: Mapping[str, object]) -> Entry | None:
    try:
        usec = int(_text(record.get("__REALTIME_TIMESTAMP")))
    except ValueError:
        return None
    when = datetime.fromtimestamp(usec / 1e6, timezone.utc)
    program = _text(record.get("SYSLOG_IDENTIFIER")) or _text(record.get("_COMM"))
    return Entry(program, _text(record.get("MESSAGE")), when, _text(record.get("__CURSOR")))


def command(units: Iterable[str], *, cursor: str | None, follow: bool, since: datetime | None,
            journalctl: str = "journalctl") -> list[str]:
    """The journalctl invocation: trusted-field matches for each unit (ORed by journalctl)."""
    args = [journalctl, "--output=json", "--no-pager", "--quiet"]
    if follow:
        args.append("--follow")
    if cursor:
        args.append(f"--after-cursor={cursor}")
    elif since is not None:
        args.append(f"--since=@{int(since.timestamp())}")
    elif follow:
        args.append("--lines=0")
    args += [f"_SYSTEMD_UNIT={u}" for u in units]
    return args


@dataclass(frozen=True)
class Detection:
    """What the journal of the last day says about the MTA."""

    available: bool  # journalctl ran
    trusted: int = 0  # entries netblock would read: from the MTA's units, by the MTA's programs
    other_units: tuple[str, ...] = ()  # units of entries by the MTA's programs outside journal_units
    error: str = ""


def detect(units: Sequence[str], *, now: datetime, journalctl: str | None = None,
           window: timedelta = DETECT_WINDOW) -> Detection:
    """Whether the MTA logs to journald: its units' or programs' entries within ``window`` before ``now``.

    Matching goes by journald's trusted fields only (unit, or _COMM), and
    an entry counts as the MTA's by the same ``trusted()`` test the reader
    applies, so a user's ``logger -t postfix/smtpd`` never makes netblock
    choose the journal.
    """
    journalctl = journalctl or os.environ.get("NETBLOCK_JOURNALCTL", "journalctl")
    args = [journalctl, "--output=json", "--no-pager", "--quiet", f"--since=@{int((now - window).timestamp())}",
            f"--until=@{int(now.timestamp()) + 1}", f"--lines={DETECT_ENTRIES}"]
    args += [f"_SYSTEMD_UNIT={u}" for u in units] + (["+"] if units else []) + [f"_COMM={c}" for c in MTA_COMMS]
    try:
        proc = subprocess.run(args, capture_output=True, stdin=subprocess.DEVNULL, timeout=DETECT_TIMEOUT_S)
    except FileNotFoundError:
        return Detection(False, error=f"{journalctl}: not found")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Detection(False, error=f"{journalctl}: {exc}")
    uid_min = _uid_min()
    trusted_n, others = 0, set()
    for line in proc.stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if trusted(record, units, uid_min):
            trusted_n += 1
        else:
            unit = _text(record.get("_SYSTEMD_UNIT"))
            if unit and unit not in units and _text(record.get("_COMM")) in MTA_COMMS:
                others.add(unit)
    if proc.returncode != 0 and not trusted_n and not others:
        err = " ".join(proc.stderr.decode("utf-8", "replace").split())[:200]
        return Detection(False, error=f"{journalctl} exited with status {proc.returncode}: {err}")
    return Detection(True, trusted_n, tuple(sorted(others)))


@dataclass(frozen=True)
class Choice:
    """The sources to read, and why (one line for the daemon's log and `status`)."""

    files: tuple[str, ...]
    journal: bool
    reason: str
    detected: bool = False  # the journal setting was "auto" and journalctl was asked

    @property
    def mode(self) -> str:
        if self.files and self.journal:
            return "files+journal"
        return "files" if self.files else "journal" if self.journal else "none"


def choose(files: Sequence[str], setting: bool | str, units: Sequence[str], detect_now) -> Choice:
    """The sources for ``[sources] files`` and ``journal`` (true, false or "auto").

    ``detect_now()`` returns a Detection; it is called only when the answer
    depends on it ("auto" with no files), so explicit settings never run
    journalctl.
    """
    files = tuple(files)
    named = ", ".join(files)
    if setting is True:
        return Choice(files, True, "the journal ([sources] journal = true)" + (f" and {named}" if files else ""))
    if setting is False:
        why = f"{named} ([sources] files)" if files else "nothing: [sources] journal = false and no [sources] files"
        return Choice(files, False, why)
    if files:
        return Choice(files, False, f"{named} ([sources] files, the explicit choice: the journal is not read)")
    found = detect_now()
    if found.trusted:
        return Choice((), True, f"the journal (auto-detected: {found.trusted} recent entries of "
                                f"{', '.join(units)} in the last day)", detected=True)
    if not found.available:
        why = f"journalctl cannot be used ({found.error})"
    elif found.other_units:
        why = (f"the MTA logs to the journal from {', '.join(found.other_units)}, which is not in "
               f"[sources] journal_units")
    else:
        why = f"no entries of {', '.join(units)} in the journal in the last day"
    return Choice((), False, f"nothing yet: {why}; set [sources] files for a maillog, or journal = true",
                  detected=True)


def file_source_forgery_warning(choice: Choice) -> str | None:
    """The one warning for reading log files: any local user can write a line the parsers take for the MTA's.

    Said once by the daemon when it opens its sources and once by `status`.
    """
    if not choice.files:
        return None
    return ("log files are read: any local user can forge an MTA line (`logger -t postfix/smtpd ...`) "
            "and get an address blocked; where the MTA logs to journald, set [sources] files = [] and "
            "journal = \"auto\": the journal's trusted fields tell who wrote a line")


def _stdout(proc: subprocess.Popen) -> IO[bytes]:
    """journalctl's output: Journal.start() always opens it as a pipe."""
    assert proc.stdout is not None
    return proc.stdout


class Journal:
    """One journalctl child and the entries it has printed but nobody has committed yet."""

    def __init__(self, units: Sequence[str], *, cursor: str | None = None, follow: bool = True,
                 since: datetime | None = None, journalctl: str | None = None):
        self.units = tuple(units)
        self.cursor = cursor
        self.follow = follow
        self.since = since
        self.journalctl = journalctl or os.environ.get("NETBLOCK_JOURNALCTL", "journalctl")
        self.uid_min = _uid_min()
        self.ignored = 0
        self._proc: subprocess.Popen | None = None
        self._buf = b""

    def start(self) -> None:
        args = command(self.units, cursor=self.cursor, follow=self.follow, since=self.since,
                       journalctl=self.journalctl)
        try:
            self._proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          stdin=subprocess.DEVNULL, close_fds=True)
        except FileNotFoundError:
            raise ToolMissing(f"journalctl: {self.journalctl!r} not found (sources.journal = true needs it)") from None
        os.set_blocking(_stdout(self._proc).fileno(), False)
        self._buf = b""

    def fileno(self) -> int | None:
        return None if self._proc is None else _stdout(self._proc).fileno()

    def read(self, *, wait: bool = False) -> Batch:
        """Entries available now (all remaining ones when ``wait`` and not following)."""
        if self._proc is None:
            self.start()
            assert self._proc is not None  # start() sets it or raises
        batch = Batch()
        fd = _stdout(self._proc).fileno()
        if wait:
            os.set_blocking(fd, True)
        try:
            while len(batch.entries) + batch.ignored < BATCH_ENTRIES:
                nl = self._buf.find(b"\n")
                if nl >= 0:
                    line, self._buf = self._buf[:nl], self._buf[nl + 1:]
                    self._take(line, batch)
                    continue
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                if not data:
                    batch.eof = True
                    break
                self._buf += data
        finally:
            if wait:
                os.set_blocking(fd, False)
        return batch

    def _take(self, line: bytes, batch: Batch) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            return
        if not isinstance(record, dict):
            return
        cursor = _text(record.get("__CURSOR"))
        if cursor:
            batch.cursor = cursor
        if not trusted(record, self.units, self.uid_min):
            batch.ignored += 1
            return
        entry = to_entry(record)
        if entry is not None:
            batch.entries.append(entry)

    def commit(self, batch: Batch) -> None:
        self.ignored += batch.ignored
        if batch.cursor:
            self.cursor = batch.cursor

    def rewind(self) -> None:
        """Forget what was read after the committed cursor: journalctl starts again from it."""
        self.stop()
        self.start()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _stdout(proc).close()
