#!/usr/bin/env bash
# Installs the real NBD peers the tests run against (qemu-img/qemu-nbd/qemu-io, nbdkit, libnbd's
# nbdinfo/nbdsh/nbdcopy, fio, gnutls certtool). Idempotent and quiet: does nothing when all are there.
set -euo pipefail

packages=(qemu-utils nbdkit libnbd-bin python3-libnbd fio gnutls-bin)
commands=(qemu-img qemu-nbd qemu-io nbdkit nbdinfo nbdsh nbdcopy fio certtool)

missing=()
for c in "${commands[@]}"; do
  command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
# The python binding has no command of its own; nbdsh needs it.
/usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || missing+=("python3-libnbd")
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-peers: missing ${missing[*]}." >&2
  echo "install-peers: run as root, or: sudo apt-get install -y ${packages[*]}" >&2
  exit 1
fi

echo "install-peers: installing ${packages[*]} (missing: ${missing[*]})"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
