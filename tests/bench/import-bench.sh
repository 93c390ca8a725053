#!/usr/bin/env bash
# Benchmark of an end-to-end NbdImport (operator + pod runner + nbd-sidecar copy, on the local apiserver of the
# integration tests) against nbdcopy doing the same copy directly (a benchmark, never a test). The importer makes its
# copy durable before it reports success, so nbdcopy runs with --flush, as in copy-bench.sh.
# The source: a SIZE image with 10% data (nbdkit sparse-random, kept sparse on disk) served by nbdkit's file
# plugin over TCP on 127.0.0.1; the targets: a fresh sparse file of the same size (what the pod runner gives a
# Block PVC). Rounds alternate; medians of elapsed seconds are printed with the ratio import / nbdcopy (the issue's
# target is <= 1.2: the operator's overhead is scheduling, not copying). Each import target is compared with the
# source (cmp) so a fast wrong copy cannot win.
# Each round is a fresh test process; by default it first imports a small warm-up source (untimed), so the operator
# measured is warm, as a long-running one is; --cold measures the first import of a just-started operator instead.
# Every round's timeline (import, pods and claims as watches see them, and what the pod runner did, in seconds
# from creating the NbdImport) is printed with --timeline; the last round's always.
# Usage: tests/bench/import-bench.sh [--quick] [--size 4G] [--rounds N] [--timeline] [--cold]
set -euo pipefail

SIZE=4G
ROUNDS=3
TIMELINE=
COLD=
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) SIZE=256M; ROUNDS=1 ;;
    --size) SIZE="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    --timeline) TIMELINE=1 ;;
    --cold) COLD=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "import-bench: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

for tool in nbdkit nbdcopy python3 cmp; do
  command -v "$tool" >/dev/null || { echo "import-bench: $tool is missing (make deps)" >&2; exit 1; }
done
TESTS="$ROOT/tests/NbdOperator.Integration.Tests/bin/${CONFIGURATION:-Release}/net10.0/NbdOperator.Integration.Tests.dll"
[ -f "$TESTS" ] || { echo "import-bench: $TESTS is missing (make build)" >&2; exit 1; }
# The importer runs the sidecar as the image ships it (compiled ahead of time by make build), not the JIT build next to
# the tests: its start-up is part of what users wait for.
export NBD_SIDECAR="${NBD_SIDECAR:-$ROOT/artifacts/sidecar/nbd-sidecar}"
[ -x "$NBD_SIDECAR" ] || { echo "import-bench: $NBD_SIDECAR is missing (make build)" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/import-bench.XXXXXX")"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

bytes=$(numfmt --from=iec "$SIZE")
echo "import-bench: size $SIZE, $ROUNDS round(s), $(nproc) CPUs, $([ -n "$COLD" ] && echo "cold operator" || echo "warm operator (one small import first)"), sidecar $NBD_SIDECAR, work in $WORK"
rm -f "$WORK/gen.sock"
nbdkit -U "$WORK/gen.sock" --exit-with-parent sparse-random "$SIZE" percent=10 seed=42 &
gen=$!
for _ in $(seq 100); do [ -S "$WORK/gen.sock" ] && break; sleep 0.05; done
nbdcopy "nbd+unix:///?socket=$WORK/gen.sock" "$WORK/source.img"
kill $gen; wait $gen 2>/dev/null || true
echo "import-bench: source.img $(du -h "$WORK/source.img" | cut -f1) allocated of $SIZE"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
nbdkit -f -i 127.0.0.1 -p "$port" --exit-with-parent file "$WORK/source.img" &
PIDS+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
URL="nbd://127.0.0.1:$port/"
WARMUP_URL=
if [ -z "$COLD" ]; then
  port2=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
  nbdkit -f -i 127.0.0.1 -p "$port2" --exit-with-parent sparse-random 1M percent=10 seed=7 &
  PIDS+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port2") 2>/dev/null && break; sleep 0.05; done
  WARMUP_URL="nbd://127.0.0.1:$port2/"
fi

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
: > "$WORK/nbdcopy.txt"; : > "$WORK/import.txt"; : > "$WORK/copy-only.txt"; : > "$WORK/process.txt"; : > "$WORK/overhead.txt"
for round in $(seq "$ROUNDS"); do
  # nbdcopy directly, into a fresh sparse file of the source's size, durable like the import's.
  rm -f "$WORK/direct.img"; truncate -s "$bytes" "$WORK/direct.img"
  start=$(date +%s.%N)
  nbdcopy --flush "$URL" "$WORK/direct.img"
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l >> "$WORK/nbdcopy.txt"
  cmp "$WORK/source.img" "$WORK/direct.img"
  rm -f "$WORK/direct.img"

  # The same copy as an NbdImport through the operator and the pod runner.
  out="$WORK/import-$round.out"
  NBD_IMPORT_BENCH_URL="$URL" NBD_IMPORT_BENCH_WARMUP_URL="$WARMUP_URL" NBD_IMPORT_BENCH_OUT="$out" NBD_IMPORT_BENCH_SOURCE="$WORK/source.img" \
    dotnet "$TESTS" -class NbdOperator.Integration.Tests.ImportBenchmark >"$WORK/import-$round.log" 2>&1 ||
    { cat "$WORK/import-$round.log" >&2; echo "import-bench: the import failed" >&2; exit 1; }
  read -r elapsed copy process _ < "$out"
  echo "$elapsed" >> "$WORK/import.txt"
  echo "$copy" >> "$WORK/copy-only.txt"
  echo "$process" >> "$WORK/process.txt"
  echo "$elapsed - $process" | bc -l >> "$WORK/overhead.txt"
  if [ -n "$TIMELINE" ] || [ "$round" = "$ROUNDS" ]; then
    echo "import-bench: round $round timeline (seconds from creating the NbdImport):"
    sed 's/^/  /' "$out.timeline"
  fi
  echo "import-bench: round $round: nbdcopy $(tail -1 "$WORK/nbdcopy.txt")s, NbdImport ${elapsed}s (importer process ${process}s, its copy ${copy}s; operator and runner $(tail -1 "$WORK/overhead.txt")s)"
done

direct=$(median < "$WORK/nbdcopy.txt")
import=$(median < "$WORK/import.txt")
copy=$(median < "$WORK/copy-only.txt")
process=$(median < "$WORK/process.txt")
overhead=$(median < "$WORK/overhead.txt")
ratio=$(echo "$import / $direct" | bc -l)
printf 'import-bench: medians over %s round(s): nbdcopy %.2fs, NbdImport end to end %.2fs (of which the copy %.2fs)\n' "$ROUNDS" "$direct" "$import" "$copy"
printf 'import-bench: medians: the importer process %.2fs; outside it (operator, pod runner, watches) %.3fs\n' "$process" "$overhead"
printf 'import-bench: ratio NbdImport / nbdcopy = %.2f (target <= 1.2)\n' "$ratio"
