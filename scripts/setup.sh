#!/usr/bin/env bash
# Set up netblock from nothing on Debian 12 as root: Debian packages, then a venv
# at .venv with netblock and its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
# Kernel-side tools and libraries. libnftables1 is what the `nftables` Python module
# (PyPI: pip-nftables) loads; iptables provides xtables-legacy for python-iptables;
# systemd-journal-remote writes the real journal files the journal tests read;
# chromium renders the report's HTML page headless in its test; faketime moves the clock.
packages=(nftables libnftables1 iptables ipset iproute2 iputils-ping util-linux procps
          iprange systemd systemd-journal-remote postgresql python3-venv python3-dev gcc faketime chromium)
# The Debian package: debian/control's Build-Depends (and build-essential, which
# dpkg-buildpackage always requires), lintian, and mmdebstrap for
# the throwaway Debian 12 root that tests/package installs it into.
packages+=(build-essential debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
           python3-netaddr lintian mmdebstrap)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    # No package may start a service on this host (postgresql would start a
    # cluster): the tests start their own servers in their own directories.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get -o DPkg::Lock::Timeout=900 update -qq
    apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
# The end-to-end scene's real mail servers (Postfix installed, Exim unpacked beside it).
./scripts/e2e-setup.sh
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
