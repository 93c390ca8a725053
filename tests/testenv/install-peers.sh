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

exec "$(dirname "$0")/apt-install.sh" install-peers "${missing[*]}" "${packages[@]}"
