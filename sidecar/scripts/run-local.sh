#!/usr/bin/env bash
# make run: serve a sample sparse disk image with nbd-sidecar on 127.0.0.1:10809 and a unix socket, print
# URIs and commands to paste, and stop cleanly on Ctrl-C. The image is created once under artifacts/run/.
#
# make run MODE=operator (run-local.sh --operator [OPERATOR FLAGS]): run nbd-operator on this machine
# against the cluster of the current kubeconfig context ($KUBECONFIG, else ~/.kube/config), with
# /metrics on 127.0.0.1:8080 and /healthz, /readyz on 127.0.0.1:8081; Ctrl-C stops it.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"

run_operator() {
  local operator="$root/artifacts/operator/nbd-operator" kubectl context server app_version
  if [ ! -x "$operator" ]; then
    echo "run-local: $operator is missing; run 'make build' first" >&2
    exit 1
  fi
  if command -v kubectl >/dev/null 2>&1; then
    kubectl=kubectl
  else
    kubectl="$("$root/tests/testenv/helm.sh")/kubectl"
  fi
  if ! context=$("$kubectl" config current-context 2>/dev/null) || [ -z "$context" ]; then
    echo "run-local: no current kubeconfig context (KUBECONFIG=${KUBECONFIG:-~/.kube/config}); point KUBECONFIG at a" \
      "cluster or 'kubectl config use-context NAME'. 'make run' without MODE needs no cluster." >&2
    exit 1
  fi
  server=$("$kubectl" config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  if ! "$kubectl" get crd nbdexports.nbdoperator.io >/dev/null 2>&1; then
    echo "run-local: the NbdExport CRD is not installed in context '$context' ($server) or the cluster is" \
      "unreachable; install the CRDs with 'kubectl apply -f $root/crds/' (or the chart), then run again." >&2
    exit 1
  fi
  app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$root/charts/nbd-operator/Chart.yaml")
  cat <<INFO

Running nbd-operator against context '$context' ($server).
Metrics: http://127.0.0.1:${NBD_METRICS_PORT:-8080}/metrics   health: http://127.0.0.1:${NBD_HEALTH_PORT:-8081}/healthz /readyz
Export pods use ${NBD_SIDECAR_IMAGE:-ghcr.io/nbdoperator/nbd-sidecar:$app_version} (NBD_SIDECAR_IMAGE=... to change).
Try: kubectl apply -f $root/crds/samples/nbdexport-pvc.yaml; kubectl get nbdexports -w

Press Ctrl-C to stop.

INFO
  exec "$operator" \
    --metrics-bind-address "127.0.0.1:${NBD_METRICS_PORT:-8080}" \
    --health-probe-bind-address "127.0.0.1:${NBD_HEALTH_PORT:-8081}" \
    --sidecar-image "${NBD_SIDECAR_IMAGE:-ghcr.io/nbdoperator/nbd-sidecar:$app_version}" \
    "$@"
}

if [ "${1:-}" = --operator ]; then
  shift
  run_operator "$@"
fi
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
