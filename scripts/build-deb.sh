#!/usr/bin/env bash
# Build the Debian package from this checkout without touching it: the tracked
# and new (not ignored) files are copied into a scratch directory, built there
# with `dpkg-buildpackage -us -uc -b` against Debian 12's own python3-* modules,
# and the .deb (with its .buildinfo and .changes) lands in OUTDIR (default dist/).
# Needs the build dependencies of debian/control (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-dist}")
mkdir -p "$out"
work=$(mktemp -d /tmp/netblock-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/netblock"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf - | tar -xf - -C "$work/netblock"
else
    tar --exclude=./.venv --exclude=./.git --exclude=./dist --exclude='__pycache__' -cf - . |
        tar -xf - -C "$work/netblock"
fi
# Debian's python3 and tools, whatever else comes first on PATH (pyenv, a venv).
(cd "$work/netblock" && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b)
cp "$work"/netblock_*.deb "$work"/netblock_*.buildinfo "$work"/netblock_*.changes "$out"/
ls "$out"/netblock_*.deb
