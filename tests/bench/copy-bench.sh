#!/usr/bin/env bash
# Benchmark of `nbd-sidecar copy` side by side with nbdcopy and `qemu-img convert -W` (a benchmark, never a test).
# Images: a dense one (random data) and one with 10% data (sparse-random), served by nbdkit's file plugin
# (or qemu-nbd with --server qemu-nbd) over a unix socket; destinations: a new local file, and an NBD export
# of a fresh sparse file by the same server. Tools run alternating, ROUNDS times, in an order that rotates every
# round; medians are printed with seconds, MiB/s, CPU-seconds (user+sys) and peak RSS, and our ratio to the best
# reference: throughput ratio (higher is better) for dense, elapsed-time ratio (lower is better) for sparse.
# nbd-sidecar makes the copy durable before it exits (it flushes the destination), so the references it is
# measured against do too: `nbdcopy --flush` and `qemu-img convert -t writeback`. The tools' defaults
# (nbdcopy without --flush, qemu-img's cache=unsafe for a file) leave the data in the page cache; they run as
# well and a second set of ratios compares with them, for information.
# nbdcopy caps its connections at its threads, one per CPU: on a 2-CPU machine it uses 2 (see --verbose).
# --baseline PATH runs another nbd-sidecar build as well (tool nbd-sidecar-base), alternating, for before/after.
# Usage: tests/bench/copy-bench.sh [--quick] [--size 4G] [--rounds N] [--server nbdkit|qemu-nbd] [--sidecar PATH] [--baseline PATH]
set -euo pipefail

SIZE=4G
ROUNDS=3
SERVER=nbdkit
SIDECAR="$(cd "$(dirname "$0")/../.." && pwd)/artifacts/sidecar/nbd-sidecar"
BASELINE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) SIZE=256M; ROUNDS=1 ;;
    --size) SIZE="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    --server) SERVER="$2"; shift ;;
    --sidecar) SIDECAR="$2"; shift ;;
    --baseline) BASELINE="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "copy-bench: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

for tool in nbdkit nbdcopy qemu-img qemu-nbd /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "copy-bench: $tool is missing (make deps)" >&2; exit 1; }
done
[ -x "$SIDECAR" ] || { echo "copy-bench: $SIDECAR is missing (make build)" >&2; exit 1; }
[ -z "$BASELINE" ] || [ -x "$BASELINE" ] || { echo "copy-bench: $BASELINE is missing" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/copy-bench.XXXXXX")"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

bytes=$(numfmt --from=iec "$SIZE")
echo "copy-bench: size $SIZE, $ROUNDS round(s), source server $SERVER, $(nproc) CPUs, work in $WORK"

# Images: dense random data, and 10% data in random places (kept sparse on disk).
head -c "$bytes" /dev/urandom > "$WORK/dense.img"
rm -f "$WORK/gen.sock"
nbdkit -U "$WORK/gen.sock" --exit-with-parent sparse-random "$SIZE" percent=10 seed=42 &
gen=$!
for _ in $(seq 100); do [ -S "$WORK/gen.sock" ] && break; sleep 0.05; done
nbdcopy "nbd+unix:///?socket=$WORK/gen.sock" "$WORK/sparse.img"
kill $gen; wait $gen 2>/dev/null || true
echo "copy-bench: dense.img $(du -h "$WORK/dense.img" | cut -f1) allocated, sparse.img $(du -h "$WORK/sparse.img" | cut -f1) allocated"

serve() { # serve NAME FILE -> starts a server on $WORK/NAME.sock, sets SERVED_PID
  local sock="$WORK/$1.sock"
  rm -f "$sock"
  if [ "$SERVER" = qemu-nbd ]; then
    local read_only=(-r)
    [ "$1" = target ] && read_only=()
    qemu-nbd -f raw -t "${read_only[@]}" -e 8 -x disk -k "$sock" "$2" &
  else
    nbdkit -f -U "$sock" -e disk --exit-with-parent file "$2" &
  fi
  SERVED_PID=$!
  PIDS+=("$SERVED_PID")
  for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
}
stop() { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null || true; }

serve dense "$WORK/dense.img"; DENSE_PID=$SERVED_PID
serve sparse "$WORK/sparse.img"; SPARSE_PID=$SERVED_PID
RESULTS="$WORK/results.txt"
: > "$RESULTS"

run_one() { # run_one IMAGE DESTKIND TOOL
  local image=$1 kind=$2 tool=$3 src="nbd+unix:///disk?socket=$WORK/$1.sock" dst target_pid=""
  rm -f "$WORK/out.img" "$WORK/target.img"
  if [ "$kind" = file ]; then
    dst="$WORK/out.img"
  else
    truncate -s "$SIZE" "$WORK/target.img"
    serve target "$WORK/target.img"; target_pid=$SERVED_PID
    dst="nbd+unix:///disk?socket=$WORK/target.sock"
  fi
  sync
  local cmd
  local existing=()
  [ "$kind" = nbd ] && existing=(-n)
  case "$tool" in
    nbd-sidecar) cmd=("$SIDECAR" copy "$src" "$dst") ;;
    nbd-sidecar-base) cmd=("$BASELINE" copy "$src" "$dst") ;;
    nbdcopy+flush) cmd=(nbdcopy --flush "$src" "$dst") ;;
    qemu-img+wb) cmd=(qemu-img convert "${existing[@]}" -t writeback -W -f raw -O raw "$src" "$dst") ;;
    nbdcopy) cmd=(nbdcopy "$src" "$dst") ;;
    qemu-img) cmd=(qemu-img convert "${existing[@]}" -W -f raw -O raw "$src" "$dst") ;;
  esac
  local out
  out=$( { /usr/bin/time -f "%e %U %S %M" "${cmd[@]}" >/dev/null 2>"$WORK/err.txt"; } 2>&1 | tail -1 ) || { echo "copy-bench: $tool failed: $(cat "$WORK/err.txt")" >&2; exit 1; }
  tail -1 "$WORK/err.txt" | grep -qE '^[0-9.]+ [0-9.]+ [0-9.]+ [0-9]+$' && out=$(tail -1 "$WORK/err.txt")
  [ -n "$target_pid" ] && stop "$target_pid"
  echo "$image $kind $tool $out" >> "$RESULTS"
}

# The order of the tools rotates every round: a run right after another copy finds a different page cache and
# writeback state than the first run of a group, and that position must not always fall on the same tool.
TOOLS=(nbd-sidecar ${BASELINE:+nbd-sidecar-base} nbdcopy+flush qemu-img+wb nbdcopy qemu-img)
for round in $(seq "$ROUNDS"); do
  shift_by=$(( (round - 1) % ${#TOOLS[@]} ))
  order=("${TOOLS[@]:shift_by}" "${TOOLS[@]:0:shift_by}")
  for image in dense sparse; do
    for kind in file nbd; do
      for tool in "${order[@]}"; do
        run_one "$image" "$kind" "$tool"
      done
    done
  done
  echo "copy-bench: round $round done"
done

stop "$DENSE_PID"; stop "$SPARSE_PID"

awk -v bytes="$bytes" '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, ",")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  {
    key = $1 " " $2 " " $3
    secs[key] = secs[key] (secs[key] == "" ? "" : ",") $4
    cpu[key] = cpu[key] (cpu[key] == "" ? "" : ",") ($5 + $6)
    rss[key] = rss[key] (rss[key] == "" ? "" : ",") $7
    if (!(key in seen)) { seen[key] = 1; order[++n] = key }
  }
  END {
    printf "\n%-7s %-5s %-14s %9s %9s %8s %9s %s\n", "image", "dest", "tool", "seconds", "MiB/s", "CPU-s", "RSS-MiB", "ratio (ours vs best reference)"
    for (i = 1; i <= n; i++) {
      split(order[i], k, " ")
      s = median(secs[order[i]]); if (s < 0.01) s = 0.01  # /usr/bin/time resolves 10 ms
      m[order[i]] = s
      printf "%-7s %-5s %-14s %9.2f %9.0f %8.2f %9.0f\n", k[1], k[2], k[3], s, bytes / 1048576 / s, median(cpu[order[i]]), median(rss[order[i]]) / 1024
    }
    print ""
    split("dense sparse", images, " "); split("file nbd", kinds, " ")
    for (set = 1; set <= 2; set++) {
      if (set == 1) { split("nbdcopy+flush qemu-img+wb", refs, " "); print "Against the durable references (nbdcopy --flush, qemu-img -t writeback); the targets:" }
      else { split("nbdcopy+flush qemu-img+wb nbdcopy qemu-img", refs, " "); print "\nAgainst every reference, including the defaults that do not flush (for information):" }
      for (a = 1; a <= 2; a++) for (b = 1; b <= 2; b++) {
        ours = m[images[a] " " kinds[b] " nbd-sidecar"]; best = -1; who = ""
        for (r in refs) { t = m[images[a] " " kinds[b] " " refs[r]]; if (best < 0 || t < best) { best = t; who = refs[r] } }
        if (images[a] == "dense")
          printf "%-6s -> %-4s throughput ratio %.2f (target >= 1.0; best reference %s)\n", images[a], kinds[b], best / ours, who
        else
          printf "%-6s -> %-4s elapsed ratio    %.2f (target <= 1.0; best reference %s)\n", images[a], kinds[b], ours / best, who
      }
    }
    for (i = 1; i <= n; i++) if (order[i] ~ / nbd-sidecar$/) { r = median(rss[order[i]]) / 1024; if (r > peak) peak = r }
    printf "\nnbd-sidecar peak RSS %.0f MiB (target < 256 MiB)\n", peak
  }' "$RESULTS"
