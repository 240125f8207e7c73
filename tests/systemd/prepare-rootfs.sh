#!/usr/bin/env bash
# Prepare (once, then cached) a Debian bookworm root that boots a real systemd under
# systemd-nspawn, for tests/test_systemd_e2e.py. Prints the root's path on success.
# Needs root and Debian's package mirror (the one apt is configured with here).
set -euo pipefail
cache=${TOKEND_NSPAWN_CACHE:-/var/cache/tokend-nspawn}
root="$cache/bookworm"

if [ -f "$root/.tokend-ready" ]; then echo "$root"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "prepare-rootfs: needs root" >&2; exit 1; }

if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container debootstrap >/dev/null
fi

# The mirror this machine's apt already uses: no host name is written into the project.
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)

mkdir -p "$cache"
rm -rf "$root.tmp"
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps,python3,python3-venv,passwd \
  bookworm "$root.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
  || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
# A container has no consoles to log in on, and nothing here needs the network configured.
rm -f "$root.tmp/etc/systemd/system/getty.target.wants/"* 2>/dev/null || true
echo tokend-e2e > "$root.tmp/etc/hostname"
touch "$root.tmp/.tokend-ready"
rm -rf "$root"
mv "$root.tmp" "$root"
echo "$root"
