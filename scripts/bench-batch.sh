#!/usr/bin/env bash
# Measures batch issuing: POST /v1/tracking-numbers with {"count": N} (1000 by default) under
# wrk, and prints numbers issued per second on its last line.
#
#   scripts/bench-batch.sh [--seconds S] [--conns C] [--count N] [--url URL] [--] [tracknum flags...]
#
# Without --url it starts ./target/release/tracknum (cargo build --release first) on a free
# loopback port with a fresh temporary data dir; flags after -- go to it, e.g.
#   scripts/bench-batch.sh -- --redis-url redis://127.0.0.1:6391 --secret bench-secret-0123456789
set -euo pipefail
secs=10 conns=4 count=1000 url=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) secs=$2; shift 2;;
    --conns) conns=$2; shift 2;;
    --count) count=$2; shift 2;;
    --url) url=$2; shift 2;;
    --) shift; break;;
    *) break;;
  esac
done
command -v wrk >/dev/null || { echo "bench-batch.sh: wrk is needed (apt-get install wrk)"; exit 2; }

work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

if [ -z "$url" ]; then
  bin=${TRACKNUM_BIN:-./target/release/tracknum}
  [ -x "$bin" ] || { echo "bench-batch.sh: no binary at $bin (cargo build --release first)"; exit 2; }
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  url="http://127.0.0.1:$port"
  "$bin" --listen "127.0.0.1:$port" --data-dir "$work/data" "$@" >"$work/tracknum.log" 2>&1 & pid=$!
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "$url/healthz" 2>/dev/null && break; sleep 0.1; done
fi

body="{\"count\":$count,\"origin_country_id\":\"MY\",\"weight\":1.5,\"customer_slug\":\"redbox-logistics\"}"
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
LUA
status=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' -d "$body" "$url/v1/tracking-numbers")
[ "$status" = 201 ] || { echo "bench-batch.sh: a batch got $status, not 201"; exit 1; }

wrk -t1 -c"$conns" -d2s -s "$work/post.lua" "$url/v1/tracking-numbers" >/dev/null
wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$work/post.lua" "$url/v1/tracking-numbers" | tee "$work/wrk.txt"
awk -v count="$count" '
  /Requests\/sec/ {rps=$2}
  /^ +99%/ {p99=$2}
  /Non-2xx/ {bad=$NF}
  END {printf "batches/s %.1f, p99 %s, non-2xx %d: %.0f numbers/s through POST /v1/tracking-numbers (count %d)\n", rps, p99, bad, rps*count, count}' "$work/wrk.txt"
