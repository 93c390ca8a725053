#!/usr/bin/env bash
# make run: serve a sample sparse disk image with nbd-sidecar on 127.0.0.1:10809 and a unix socket, print
# URIs and commands to paste, and stop cleanly on Ctrl-C. The image is created once under artifacts/run/.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
sidecar="$root/artifacts/sidecar/nbd-sidecar"
dir="$root/artifacts/run"
image="$dir/sample.img"
socket="$dir/nbd.sock"
port="${NBD_PORT:-10809}"
metrics_port="${NBD_METRICS_PORT:-10810}"
export_name="sample"

if [ ! -x "$sidecar" ]; then
  echo "run-local: $sidecar is missing; run 'make build' first" >&2
  exit 1
fi

mkdir -p "$dir"
if [ ! -f "$image" ]; then
  echo "run-local: creating a 1 GiB sparse sample image at $image"
  truncate -s 1G "$image.tmp"
  # A few allocated regions between holes, so block status and sparse reads have something to show.
  printf 'NbdOperator sample disk\n' | dd of="$image.tmp" bs=1 seek=0 conv=notrunc status=none
  # ("yes" dies of SIGPIPE when head has enough; that is expected, not a failure.)
  { yes 'NbdOperator sample data 0123456789abcdef' || true; } | head -c 4M | dd of="$image.tmp" bs=1M seek=1 conv=notrunc status=none iflag=fullblock
  head -c 8M /dev/urandom | dd of="$image.tmp" bs=1M seek=256 conv=notrunc status=none iflag=fullblock
  { yes 'the last megabyte' || true; } | head -c 1M | dd of="$image.tmp" bs=1M seek=1023 conv=notrunc status=none iflag=fullblock
  mv "$image.tmp" "$image"
fi

cat <<INFO

Serving $image (1 GiB, sparse) as export '$export_name':
  nbd://127.0.0.1:$port/$export_name
  nbd+unix:///$export_name?socket=$socket
Metrics and health: http://127.0.0.1:$metrics_port/metrics  /healthz  /readyz

Try, in another terminal:
  nbdinfo nbd://127.0.0.1:$port/$export_name
  nbdinfo --map 'nbd+unix:///$export_name?socket=$socket'
  qemu-img info -f raw nbd://127.0.0.1:$port/$export_name
  qemu-img convert -p -f raw -O qcow2 nbd://127.0.0.1:$port/$export_name /tmp/sample.qcow2
  nbdcopy --progress 'nbd+unix:///$export_name?socket=$socket' /tmp/sample.img

Press Ctrl-C to stop.

INFO

exec "$sidecar" serve \
  --export "$export_name=$image" \
  --description "NbdOperator sample disk (make run)" \
  --listen "127.0.0.1:$port" \
  --unix "$socket" \
  --metrics-listen "127.0.0.1:$metrics_port"
