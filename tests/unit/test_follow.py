"""Following log files: appends, both rotation styles, restarts, over-long lines, inotify.

The end-to-end tests count observations in a real store: a rotation or a
restart must neither lose a line nor store one twice.
"""

from __future__ import annotations

import gzip
import os
import sys
from datetime import datetime, timezone

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import helpers  # noqa: E402
from fakes import FakeBackend, daemon_config  # noqa: E402
from loglines import no_rdns_reject  # noqa: E402

from netblock.errors import StoreError  # noqa: E402
from netblock.sources import follow  # noqa: E402
from netblock.sources.follow import Follower, Inotify, Position  # noqa: E402
from netblock.store.sqlite import Store  # noqa: E402

# A pinned instant, not today: in this file it meets only fakes, the store and pure functions,
# never the kernel's or the real clock (scripts/test-clock.sh runs the suite 400 days ahead).
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def reject(i: int) -> str:
    """A Postfix RCPT reject for 198.18.(i // 250).(i % 250 + 1), unique per i."""
    ip = f"198.18.{i // 250}.{i % 250 + 1}"
    return no_rdns_reject(ip, f"2026-11-27T11:{i % 60:02d}:00+00:00", helo=f"x{i}")


def append(path, *lines: str, newline: bool = True) -> None:
    with open(path, "a") as f:
        f.write("\n".join(lines) + ("\n" if newline else ""))


def texts(batch) -> list[str]:
    return [line.text for line in batch.lines]


def drain(fol: Follower) -> list[str]:
    """Read and commit until nothing is left (bounded)."""
    out = []
    for _ in range(100):
        batch = fol.read()
        if not batch.lines and batch.after == fol.position:
            return out
        out += texts(batch)
        fol.commit(batch)
    raise AssertionError("follower never ran dry")


# ------------------------------------------------------------------ the follower alone

def test_append_returns_complete_lines_with_their_offsets(tmp_path):
    log = tmp_path / "mail.log"
    append(log, "one", "two")
    fol = Follower(str(log))
    batch = fol.read()
    assert texts(batch) == ["one", "two"]
    assert [line.position for line in batch.lines] == [0, 4]
    assert batch.after.offset == 8
    fol.commit(batch)
    append(log, "thr", newline=False)  # half-written: not yet a line
    assert fol.read().lines == []
    append(log, "ee")
    assert drain(fol) == ["three"]
    assert fol.position.offset == os.path.getsize(log)


def test_nothing_moves_until_commit(tmp_path):
    log = tmp_path / "mail.log"
    append(log, "a", "b")
    fol = Follower(str(log))
    first = fol.read()
    again = fol.read()
    assert texts(first) == texts(again) == ["a", "b"]


def test_rename_rotation_finishes_the_old_file_then_switches(tmp_path):
    log = tmp_path / "mail.log"
    append(log, "old-1")
    fol = Follower(str(log))
    assert drain(fol) == ["old-1"]
    os.rename(log, tmp_path / "mail.log.1")
    append(tmp_path / "mail.log.1", "old-2", "old-3-unterminated", newline=False)  # writer not yet HUPed
    append(log, "new-1")
    assert drain(fol) == ["old-2", "old-3-unterminated", "new-1"]
    st = os.stat(log)
    assert (fol.position.dev, fol.position.ino, fol.position.offset) == (st.st_dev, st.st_ino, 6)
    append(log, "new-2")
    assert drain(fol) == ["new-2"]


def test_rotation_while_the_new_file_is_not_created_yet(tmp_path):
    log = tmp_path / "mail.log"
    append(log, "a")
    fol = Follower(str(log))
    drain(fol)
    os.rename(log, tmp_path / "mail.log.1")
    append(tmp_path / "mail.log.1", "b")
    assert drain(fol) == ["b"]  # still the old inode: no new file to switch to
    append(log, "c")
    assert drain(fol) == ["c"]


def test_copytruncate_restarts_at_zero(tmp_path):
    log = tmp_path / "mail.log"
    append(log, "first line of the old content", "second line of the old content")
    fol = Follower(str(log))
    drain(fol)
    with open(log, "r+") as f:
        f.truncate(0)
    append(log, "fresh")
    batch = fol.read()
    assert batch.restarted
    assert texts(batch) == ["fresh"]


def test_overlong_lines_are_cut_and_counted(tmp_path):
    log = tmp_path / "mail.log"
    huge = "x" * (follow.CHUNK * 2 + 17)
    append(log, "short", "y" * 300, huge, "after")
    fol = Follower(str(log), max_line=100)
    batch = fol.read()
    assert [len(t) for t in texts(batch)] == [5, 100, 100, 5]
    assert [line.truncated for line in batch.lines] == [False, True, True, False]
    assert batch.overlong == 2
    assert texts(batch)[-1] == "after"
    assert batch.lines[-1].position == 6 + 301 + len(huge) + 1


def test_an_unterminated_overlong_tail_waits_for_its_newline(tmp_path):
    log = tmp_path / "mail.log"
    append(log, "z" * (follow.CHUNK + 5), newline=False)
    fol = Follower(str(log), max_line=50)
    assert fol.read().lines == []
    append(log, "z")
    batch = fol.read()
    assert texts(batch) == ["z" * 50] and batch.overlong == 1
    assert batch.after.offset == follow.CHUNK + 7


def test_saved_position_resumes_and_finds_the_rotated_inode(tmp_path):
    log = tmp_path / "mail.log"
    append(log, "a", "b")
    fol = Follower(str(log))
    batch = fol.read()
    fol.commit(batch)
    saved = fol.position.dump()
    fol.close()
    # down: more lines, then a rotation, then the new file
    append(log, "c")
    os.rename(log, tmp_path / "mail.log.1")
    append(log, "d")
    again = Follower(str(log), Position.parse(saved))
    assert drain(again) == ["c", "d"]


def test_position_parse_rejects_garbage():
    assert Position.parse("1:2:3") == Position(1, 2, 3)
    for bad in (None, "", "1:2", "a:b:c", "1:2:-3"):
        assert Position.parse(bad) is None


def test_read_lines_reads_gzip_and_plain_alike(tmp_path):
    plain = tmp_path / "m.log"
    plain.write_text("a\nbb\n" + "c" * 20 + "\nlast")
    packed = tmp_path / "m.log.gz"
    with gzip.open(packed, "wt") as f:
        f.write(plain.read_text())
    for path in (plain, packed):
        got = list(follow.read_lines(str(path), max_line=10))
        assert [(l.text, l.position, l.truncated) for l in got] == [
            ("a", 0, False), ("bb", 2, False), ("c" * 10, 5, True), ("last", 26, False)]


def test_inotify_wakes_on_append_and_on_creation(tmp_path):
    log = tmp_path / "mail.log"
    ino = Inotify()
    try:
        fol = Follower(str(log))
        ino.watch(fol)  # the file does not exist yet: only the directory is watched
        assert not ino.wait(0)
        append(log, "born")
        assert ino.wait(2) and ino.drain() > 0
        assert drain(fol) == ["born"]
        ino.watch(fol)
        ino.drain()
        append(log, "grown")
        assert ino.wait(2)
        assert drain(fol) == ["grown"]
    finally:
        ino.close()


# ------------------------------------------------------------------ into the store

def config_for(*files: str):
    return daemon_config(files, window="1h")


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "nb.db")
    yield s
    s.close()


def runner(store, *files):
    return helpers.runner(config_for(*files), store, factory=FakeBackend, clock=lambda: NOW)


def stored(store) -> list[int]:
    return sorted(o.position for o in store.observations())


def test_restart_with_rotation_in_between_loses_and_repeats_nothing(tmp_path, store):
    log = tmp_path / "mail.log"
    append(log, *(reject(i) for i in range(10)))
    first = runner(store, str(log))
    assert first.read_all()[0] == 10
    append(log, *(reject(i) for i in range(10, 15)), newline=False)
    assert first.read_all()[0] == 4  # the 15th line is still being written
    first.close_sources()

    append(log, "")  # its newline arrives while netblock is down
    append(log, *(reject(i) for i in range(15, 20)))
    os.rename(log, tmp_path / "mail.log.1")
    append(log, *(reject(i) for i in range(20, 27)))

    second = runner(store, str(log))
    assert second.read_all()[0] == 13
    assert len(store.observations()) == 27
    assert len({o.ip for o in store.observations()}) == 27
    third = runner(store, str(log))
    assert third.read_all()[0] == 0


def test_a_failing_store_loses_no_line(tmp_path, store, monkeypatch):
    log = tmp_path / "mail.log"
    append(log, *(reject(i) for i in range(6)))
    r = runner(store, str(log))
    real = store.add_observations
    calls = []

    def broken(obs):
        calls.append(1)
        raise StoreError("disk full")

    monkeypatch.setattr(store, "add_observations", broken)
    with pytest.raises(StoreError):
        r.read_all()
    assert store.get_state(follow.state_key(str(log))) is None
    monkeypatch.setattr(store, "add_observations", real)
    assert r.read_all()[0] == 6
    assert len(store.observations()) == 6 and calls


def test_offset_is_saved_with_the_observations(tmp_path, store):
    log = tmp_path / "mail.log"
    append(log, reject(0), "not a mail line", reject(1))
    r = runner(store, str(log))
    r.read_all()
    saved = Position.parse(store.get_state(follow.state_key(str(log))))
    assert saved.offset == os.path.getsize(log)
    lengths = [len(reject(0)) + 1, len("not a mail line") + 1]
    assert stored(store) == [0, sum(lengths)]


# ------------------------------------------------------------------ sources that are not regular files (issue #15)

@pytest.fixture
def guard():
    """Fails the test instead of hanging it if an open() or read() ever blocks (a guard, not a timing)."""
    import signal

    def hung(*_):
        raise TimeoutError("blocked on a source that is not a regular file")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_fifo_is_refused_with_one_line_naming_it_and_never_opened_blocking(tmp_path, guard):
    fifo = tmp_path / "mail.log"
    os.mkfifo(fifo)
    fol = Follower(str(fifo))
    batch = fol.read()
    assert batch.refused == f"{fifo}: a FIFO, not a regular file; not read" and not batch.lines
    assert fol.fileno() is None
    with pytest.raises(follow.NotARegularFile, match="a FIFO"):
        follow.open_regular(str(fifo))


def test_a_device_is_refused_too(guard):
    batch = Follower("/dev/zero").read()  # reading it would never end
    assert batch.refused == "/dev/zero: a character device, not a regular file; not read"


def test_a_file_replaced_by_a_fifo_is_finished_then_refused(tmp_path, guard):
    log = tmp_path / "mail.log"
    append(log, reject(1))
    fol = Follower(str(log))
    assert drain(fol) == [reject(1)]
    append(log, reject(2))
    os.rename(log, tmp_path / "mail.log.1")
    os.mkfifo(log)
    assert drain(fol) == [reject(2)]
    assert fol.read().refused == f"{log}: a FIFO, not a regular file; not read"
    os.unlink(log)
    append(log, reject(3))  # a regular file again: read as before
    assert drain(fol) == [reject(3)] and fol.refused is None


def test_the_other_sources_go_on_and_the_refusal_is_said_once(tmp_path, store, guard):
    import io

    fifo, log = tmp_path / "fifo.log", tmp_path / "mail.log"
    os.mkfifo(fifo)
    append(log, reject(1), reject(2))
    err = io.StringIO()
    r = helpers.runner(config_for(str(fifo), str(log)), store, factory=FakeBackend, clock=lambda: NOW, stderr=err)
    assert r.read_all()[0] == 2
    append(log, reject(3))
    assert r.read_all()[0] == 1
    lines = [line for line in err.getvalue().splitlines() if "FIFO" in line]
    assert lines == [f"netblock: {fifo}: a FIFO, not a regular file; not read (the other sources go on)"]


def test_one_shot_reading_refuses_a_fifo_without_opening_it_blocking(tmp_path, guard):
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    with pytest.raises(follow.NotARegularFile, match="a FIFO"):
        list(follow.read_lines(str(fifo)))
    with pytest.raises(follow.NotARegularFile, match="a FIFO"):
        list(follow.read_blocks(str(fifo)))
    assert follow.pieces(str(fifo), 1 << 20) is None
