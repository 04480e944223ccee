#!/usr/bin/env bash
# The README's test command: set everything up from nothing, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest -p no:cacheprovider tests
