#!/usr/bin/env bash
# Installs what `make build` needs besides the .NET SDK: nbd-sidecar is compiled ahead of time (native AOT),
# and the SDK links the native binary with the system's C toolchain (clang, else gcc) and zlib.
# Idempotent and quiet: does nothing when both are there.
set -euo pipefail

missing=()
command -v clang >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || missing+=("a C compiler (clang or gcc)")
[ -f /usr/include/zlib.h ] || missing+=("zlib headers")
[ ${#missing[@]} -eq 0 ] && exit 0

# Linking needs a C compiler and libz; clang is what the .NET SDK looks for first.
exec "$(dirname "$0")/apt-install.sh" install-build-tools "${missing[*]} (needed to link the native nbd-sidecar)" clang zlib1g-dev
