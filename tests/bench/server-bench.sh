#!/usr/bin/env bash
# make bench-server (part of make bench): nbd-sidecar serve side by side with qemu-nbd and nbdkit's file plugin, on the same images,
# over a unix socket and TCP loopback. A benchmark, not a test: it prints numbers and never fails on them.
#   tests/bench/server-bench.sh [--quick] [--reps N] [--only WORKLOAD] [--dir DIR] [--baseline OTHER-NBD-SIDECAR] [--serve-args ARGS]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
for tool in qemu-nbd nbdkit nbdcopy fio; do
  command -v "$tool" >/dev/null || { echo "server-bench: $tool is missing (make deps installs it)" >&2; exit 1; }
done
[ -x "$root/artifacts/sidecar/nbd-sidecar" ] || { echo "server-bench: run 'make build' first" >&2; exit 1; }
exec /usr/bin/python3 "$root/tests/bench/server_bench.py" --sidecar "$root/artifacts/sidecar/nbd-sidecar" "$@"
