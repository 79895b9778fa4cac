#!/usr/bin/env bash
# Measures batch issuing: POST /v1/tracking-numbers with {"count": N} (1000 by default) under
# wrk. Only answered batches (201) count as numbers: a refused one (503, say a full write-behind
# buffer) issues none. The last line is key=value pairs: numbers answered per second, batches
# answered per second, the share of replies that were not 201, the p99 of all replies (refusals
# included), and the counts behind them.
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
# Counts 201s and the rest itself (wrk's Requests/sec counts every reply), and prints the
# summary from them.
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init() answered = 0; refused = 0 end
function response(status) if status == 201 then answered = answered + 1 else refused = refused + 1 end end
function done(summary, latency)
  local answered, refused = 0, 0
  for _, t in ipairs(threads) do answered = answered + t:get("answered"); refused = refused + t:get("refused") end
  local secs, replies = summary.duration / 1e6, answered + refused
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("batches answered %d, refused %d (%.1f%%), socket errors %d: %.0f numbers/s answered through POST /v1/tracking-numbers (count %d)\n",
    answered, refused, replies > 0 and 100 * refused / replies or 0, errors, answered * $count / secs, $count))
  io.write(string.format("numbers_per_s=%.0f batches_per_s=%.1f refused_share=%.3f p99_ms=%.2f batches=%d refused=%d socket_errors=%d count=%d\n",
    answered * $count / secs, answered / secs, replies > 0 and refused / replies or 0,
    latency:percentile(99) / 1000, answered, refused, errors, $count))
end
LUA
status=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' -d "$body" "$url/v1/tracking-numbers")
[ "$status" = 201 ] || { echo "bench-batch.sh: a batch got $status, not 201"; exit 1; }

wrk -t1 -c"$conns" -d2s -s "$work/post.lua" "$url/v1/tracking-numbers" >/dev/null
wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$work/post.lua" "$url/v1/tracking-numbers"
