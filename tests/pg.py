"""A real PostgreSQL server for the tests of fleet mode, started once per session.

scripts/pg-test-server.sh does the work (installing Debian's postgresql if
missing, initdb in a private directory, a Unix socket only), so .ci/run and a
developer's machine need nothing but the package. Every wait is bounded by
pg_ctl's own timeout.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pg-test-server.sh"
_names = itertools.count()


class PgServer:
    def __init__(self, directory: str):
        self.dir = directory
        self.dsn = ""

    def _run(self, *args: str) -> str:
        done = subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"pg-test-server.sh {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def start(self) -> str:
        self.dsn = self._run("start", self.dir)
        return self.dsn

    def stop(self) -> None:
        self._run("stop", self.dir)

    def destroy(self) -> None:
        self._run("destroy", self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)

    def psql(self, sql: str, db: str = "postgres") -> str:
        done = subprocess.run(
            ["env", "-u", "FAKETIME_SHARED", "runuser", "-u", "postgres", "--", "psql", "-h", self.dir, "-U", "postgres", "-d", db,
             "-v", "ON_ERROR_STOP=1", "-Atqc", sql],
            capture_output=True, text=True, timeout=60)
        if done.returncode:  # (FAKETIME_SHARED: see as_postgres in scripts/pg-test-server.sh)
            raise RuntimeError(f"psql {sql!r}: {done.stderr.strip()}")
        return done.stdout.strip()

    def require_password(self, role: str, password: str) -> None:
        """A login role that must authenticate with its password (everyone else stays trusted)."""
        self.psql(f"DROP ROLE IF EXISTS {role}")
        self.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        hba = Path(self.dir) / "data" / "pg_hba.conf"
        text = hba.read_text()
        line = f"local all {role} scram-sha-256\n"
        if line not in text:
            hba.write_text(line + text)
        self.psql("SELECT pg_reload_conf()")

    def new_database(self, prefix: str = "t") -> str:
        """A fresh empty database on this server; its DSN."""
        name = f"{prefix}_{next(_names)}"
        self.psql(f"DROP DATABASE IF EXISTS {name}")
        self.psql(f"CREATE DATABASE {name}")
        return f"postgresql:///{name}?host={self.dir}&user=postgres"


@pytest.fixture(scope="session")
def pg_server():
    # Short and under /tmp: the socket path must fit in sun_path and the
    # postgres user must be able to reach it (pytest's tmp dirs are root-only).
    server = PgServer(tempfile.mkdtemp(prefix="nbpg-", dir="/tmp"))
    try:
        server.start()
        yield server
    finally:
        server.destroy()
