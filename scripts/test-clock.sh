#!/usr/bin/env bash
# The unit and kernel tests again, with the whole user-space clock moved ahead
# (default 400 days; faketime's LD_PRELOAD reaches every child: netblock, nft,
# ipset, postgres). The kernel keeps the real clock, so this is exactly the
# two-clock case of netblock/clock.py: a test that leans on today's calendar,
# or mixes the kernel's time with the program's, fails here.
#   scripts/test-clock.sh [OFFSET] [pytest args...]     e.g. scripts/test-clock.sh +400d -x
# Run by .ci/run after the README's test command; setup.sh installs faketime.
set -euo pipefail
cd "$(dirname "$0")/.."
offset=+400d
if [ $# -gt 0 ] && [[ $1 == [+-]* ]]; then offset=$1; shift; fi
command -v faketime >/dev/null || { echo "test-clock: faketime is missing; run scripts/setup.sh" >&2; exit 2; }
echo "test-clock: user-space clock $(faketime -f "$offset" date -u +%FT%TZ) (real $(date -u +%FT%TZ))"
exec faketime -f "$offset" .venv/bin/python -m pytest -p no:cacheprovider -q tests/unit tests/kernel "$@"
