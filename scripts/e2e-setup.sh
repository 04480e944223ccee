#!/usr/bin/env bash
# Install what the end-to-end scene (tests/e2e/, docs/e2e.md) needs on Debian 12, as root,
# unattended and safe to run again:
#   * Postfix (+ pcre maps), installed normally but never started as the host's service:
#     the tests run their own master with their own config directory inside a namespace.
#   * Exim (exim4-daemon-light): Debian's exim4 and postfix conflict (both provide
#     mail-transport-agent), so Exim is only unpacked into $E2E_DIR/exim and its binary
#     run from there with the test's own config file.
#   * dnsmasq-base: the DNS server inside the server namespace (PTR/A records and the DNSBL zone).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
E2E_DIR=${E2E_DIR:-/opt/netblock-e2e}

# No package script may start a daemon on the host: postfix's postinst would otherwise
# try to start the host's mail service.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
fi
cleanup() { if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

need=()
for p in postfix postfix-pcre dnsmasq-base adduser iproute2; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
updated=0
if [ "${#need[@]}" -gt 0 ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    updated=1
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Exim, unpacked only. Its binary is linked against libraries the daemon-light package
# depends on; install those (they do not conflict with postfix), not exim4 itself.
if [ ! -x "$E2E_DIR/exim/usr/sbin/exim4" ]; then
    [ "$updated" = 1 ] || apt-get update -qq
    # Every library dependency of exim4-daemon-light, not exim4-base (which pulls in the conflict).
    mapfile -t installable < <(apt-cache depends exim4-daemon-light |
        awk '$1 == "Depends:" && $2 !~ /^(<|exim4)/ {print $2}' | sort -u)
    apt-get install -y -qq --no-install-recommends "${installable[@]}" >/dev/null
    work=$(mktemp -d)
    chown _apt "$work" 2>/dev/null || chmod 777 "$work"  # apt-get download fetches as the _apt user
    (cd "$work" && apt-get download -qq exim4-daemon-light exim4-base exim4-config >/dev/null)
    mkdir -p "$E2E_DIR/exim"
    for deb in "$work"/*.deb; do
        dpkg-deb -x "$deb" "$E2E_DIR/exim"
    done
    rm -rf "$work"
fi
# Debian's exim binary is built to run as this user (exim4-base's postinst would create it).
if ! getent passwd Debian-exim >/dev/null; then
    adduser --system --group --quiet --allow-bad-names --home /var/spool/exim4 --no-create-home Debian-exim
fi
missing=$(ldd "$E2E_DIR/exim/usr/sbin/exim4" | awk '/not found/ {print $1}')
if [ -n "$missing" ]; then
    echo "e2e-setup: exim4 still misses libraries: $missing" >&2
    exit 1
fi
echo "e2e-setup: postfix $(postconf -dh mail_version), exim $("$E2E_DIR/exim/usr/sbin/exim4" -bV 2>/dev/null | awk 'NR==1 {print $3}'), dnsmasq $(dnsmasq --version | awk 'NR==1 {print $3}')"
