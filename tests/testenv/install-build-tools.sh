#!/usr/bin/env bash
# Installs what `make build` needs besides the .NET SDK: nbd-sidecar is compiled ahead of time (native AOT),
# and the SDK links the native binary with the system's C toolchain (clang, else gcc) and zlib.
# Idempotent and quiet: does nothing when both are there.
set -euo pipefail

missing=()
command -v clang >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || missing+=("a C compiler (clang or gcc)")
[ -f /usr/include/zlib.h ] || missing+=("zlib headers")
[ ${#missing[@]} -eq 0 ] && exit 0

packages=(clang zlib1g-dev)
if [ "$(id -u)" -ne 0 ]; then
  echo "install-build-tools: missing ${missing[*]}, needed to link the native nbd-sidecar." >&2
  echo "install-build-tools: run as root, or: sudo apt-get install -y ${packages[*]}" >&2
  exit 1
fi

echo "install-build-tools: installing ${packages[*]} (missing: ${missing[*]})"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
