#!/usr/bin/env bash
# The README's test command: set everything up from nothing, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .  # pyflakes and import order ([tool.ruff] in pyproject.toml)
.venv/bin/mypy  # netblock/ ([tool.mypy] in pyproject.toml)
exec .venv/bin/python -m pytest -p no:cacheprovider tests
