"""The wrap-up page in a real browser: Debian's chromium, headless, renders it without a console error.

The page carries the comparison with the previous window and the carve-out
footnotes, and stays one self-contained file (nothing fetched, no script).
The console check is shown able to fail first: a page with a broken script
and a missing image gives errors in the very same log.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from datetime import timedelta

import pytest
from test_report_cli import NOW, Harness, N  # noqa: F401  (same fake kernel and store)

from netblock.system import hostaddrs

CHROMIUM = shutil.which("chromium")


def browse(page, tmp_path, *mode: str) -> subprocess.CompletedProcess:
    """chromium headless on ``page``, its own profile, no network of its own, console on stderr."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: scripts/setup.sh installs it")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--window-size=1200,1800", *mode, f"file://{page}"],
        capture_output=True, text=True, timeout=180, check=False)


def console_errors(stderr: str) -> list[str]:
    """What the page put on the console as errors (uncaught exceptions, failed loads), from chromium's log."""
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line or "Failed to load" in line)]


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, the decompressed scanlines) of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, zlib.decompress(idat)


@pytest.fixture
def page(tmp_path, monkeypatch):
    monkeypatch.setattr(hostaddrs, "own_addresses", lambda: [N("192.0.2.250/32")])
    nb = Harness(tmp_path, monkeypatch)
    week = timedelta(days=7)
    nb.at(NOW - week - timedelta(days=1))
    nb.ok("add", "198.19.0.0/16", "--force", "--ttl", "30d", "--reason", "widened: 70 offenders")
    nb.ok("add", "198.18.1.0/24", "198.18.9.0/24", "--ttl", "30d", "--reason", "dense <24>")
    nb.ok("allow", "add", "198.19.44.44")
    nb.sample(NOW - week - timedelta(days=1))
    nb.count("198.18.9.0/24", 30)
    nb.count("198.18.1.0/24", 10)
    nb.sample(NOW - week - timedelta(hours=1))
    for piece in [n for n in nb.backend.elements if n in N("198.19.0.0/16")]:
        nb.count(str(piece), 3)
    nb.count("198.18.1.0/24", 60)
    nb.sample(NOW - timedelta(days=1))
    nb.at(NOW)
    out = tmp_path / "week.html"
    nb.ok("report", "--top", "2", "--html", str(out))
    return out


def test_the_page_carries_the_comparison_and_the_carve_outs(page):
    html = page.read_text()
    assert "198.19.0.0/16*" in html and "* 198.19.0.0/16 except 198.19.44.44" in html
    assert "Dropped out: 198.18.9.0/24 (#1, 30 packets)" in html
    assert ">#2<" in html and ">new<" in html and "Before" in html
    assert "dense &lt;24&gt;" in html  # the reason is the block's, escaped
    # one self-contained file: nothing to fetch, nothing to run
    assert not re.search(r"<script|<link|<img|<iframe|\ssrc=|url\((?!#)|@import|href=\"http", html)


def test_chromium_renders_it_without_console_errors(page, tmp_path):
    shot = tmp_path / "week.png"
    r = browse(page, tmp_path, f"--screenshot={shot}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert console_errors(r.stderr) == [], console_errors(r.stderr)
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 1800)
    assert len(set(pixels)) > 16  # text and tables drawn, not a blank page
    dom = browse(page, tmp_path, "--dump-dom").stdout
    assert "198.19.0.0/16*" in dom and "Dropped out: 198.18.9.0/24" in dom


def test_the_console_check_sees_errors(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><body><p>x</p><script>nosuchfunction();</script>'
                      '<img src="missing.png"></body></html>')
    r = browse(broken, tmp_path, f"--screenshot={tmp_path / 'broken.png'}")
    errors = console_errors(r.stderr)
    assert any("nosuchfunction" in e for e in errors), r.stderr[-2000:]
