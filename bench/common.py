"""What the benches share: the tests' own set-up, so a bench measures what the tests prove.

The daemon's config template, its process handling and the log lines live in
tests/helpers.py and tests/loglines.py, the PostgreSQL server in tests/pg.py;
this module puts tests/ on the path once and names what the benches use. Run a bench from the repository's root
(``python -m bench.bench_x``) and import ``bench.common``; a bench run as a
script (``python bench/bench_x.py``) imports ``common``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from helpers import (  # noqa: E402
    NETBLOCK as NETBLOCK,
    Notify as Notify,
    clean_env as clean_env,
    daemon_toml as daemon_toml,
    dnsbl_policy as dnsbl_policy,
    start_daemon as start_daemon,
    stop_daemon as stop_daemon,
)
from loglines import dnsbl_reject as dnsbl_reject  # noqa: E402
from pg import PgServer as PgServer  # noqa: E402
