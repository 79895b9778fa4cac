#!/usr/bin/env bash
# Import throughput: a file of ROWS orders (default 1,000,000, from scripts/import-file.sh) is
# uploaded to a release build, on the embedded store and then on a private redis-server (no
# persistence, a free port), and followed until its job is done. Prints, per backend, the
# upload time, the job's run time, rows per second (upload to done) and the server's peak RSS
# (VmHWM), as a Markdown table.
#
#   cargo build --release && scripts/bench-import.sh [ROWS]
#
# Env: TRACKNUM_BIN (default target/release/tracknum).
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
bin=$(realpath "${TRACKNUM_BIN:-target/release/tracknum}")
[ -x "$bin" ] || { echo "bench-import.sh: no tracknum binary at $bin (cargo build --release first)" >&2; exit 2; }
for tool in redis-server curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-import.sh: $tool is needed" >&2; exit 2; }
done
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

scripts/import-file.sh "$rows" > "$work/orders.csv"
size=$(stat -c %s "$work/orders.csv")
echo "file: $rows rows, $((size / 1000000)) MB" >&2

# Runs one import against a server started with "$@"; prints a table row.
run() {
  local label=$1; shift
  local port; port=$(free_port)
  RUST_LOG=warn "$bin" --listen "127.0.0.1:$port" --data-dir "$work/data-$label" \
    --secret bench-secret-0123456789 --import-max-bytes 1GB "$@" 2>>"$work/server.log" &
  local pid=$!
  pids+=("$pid")
  until curl -sf "127.0.0.1:$port/readyz" >/dev/null; do sleep 0.1; done
  local start; start=$(date +%s.%N)
  local id
  id=$(curl -sf -X POST -H 'content-type: text/csv' --data-binary "@$work/orders.csv" \
    "127.0.0.1:$port/v1/imports" | json 'd["id"]')
  local uploaded; uploaded=$(date +%s.%N)
  local status=queued
  while [ "$status" != done ]; do
    sleep 0.2
    status=$(curl -sf "127.0.0.1:$port/v1/imports/$id" | json 'd["status"]')
    case "$status" in failed|cancelled) echo "bench-import.sh: the job $status" >&2; exit 1 ;; esac
  done
  local end; end=$(date +%s.%N)
  local issued
  issued=$(curl -sf "127.0.0.1:$port/v1/imports/$id" | json 'd["rows"]["issued"]')
  [ "$issued" = "$rows" ] || { echo "bench-import.sh: $issued of $rows rows issued" >&2; exit 1; }
  curl -sf "127.0.0.1:$port/v1/imports/$id/results" -o "$work/results.csv"
  local numbered
  numbered=$(awk -F, 'NR > 1 && length($(NF-1)) == 16 { print $(NF-1) }' "$work/results.csv" | sort -u | wc -l)
  [ "$numbered" = "$rows" ] || { echo "bench-import.sh: $numbered distinct numbers for $rows rows" >&2; exit 1; }
  local rss; rss=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c "
up, run = $uploaded - $start, $end - $uploaded
print(f'| $label | {up:.1f} s | {run:.1f} s | {$rows / (up + run):,.0f} | $rss MiB |')"
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" --daemonize no >/dev/null &
pids+=($!)
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done

echo "| backend | upload | job | rows/s (upload to done) | peak RSS |"
echo "| --- | --- | --- | --- | --- |"
run embedded
run redis --redis-url "redis://127.0.0.1:$redis_port"
echo "measured $(date -u +%Y-%m-%d) on $(nproc) cores" >&2
