#!/usr/bin/env bash
# The README's demo command: set everything up from nothing, then run `netblock demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/netblock demo "$@"
