#!/usr/bin/env bash
# What one record costs in storage, on both backends, after N numbers issued with all seven
# inputs and varied orders (scripts/bench_orders.py): first batches of 1000 through POST
# /v1/tracking-numbers ({"orders": [...]}, wrk -c4), then single GET /next-tracking-number
# requests (wrk -c64). A refused request (503) is sent again with other orders, so exactly N
# numbers are answered; any other failure stops the script.
#
#   cargo build --release && scripts/bench-storage.sh [--batches N] [--singles N]
#
# Defaults: 150 batches and 50,000 singles, 200,000 records. It prints, per backend:
# - bytes per record: embedded (--fsync everysec, the default), the data dir's growth after a
#   clean stop over an empty store's, also after a clean stop (du: disk blocks; the last line
#   also has the apparent size); Redis, the growth of `used_memory` (INFO memory), on a private
#   redis-server (a free port, no persistence);
# - redis-server CPU per record (used_cpu_sys + used_cpu_user, INFO cpu) over the batches and
#   over the singles, and in brackets the part spent in commands (INFO commandstats);
# - tracknum's own CPU per record (/proc/PID/stat), for batches and singles.
# A Markdown table, then one line of key=value pairs, last.
# Env: TRACKNUM_BIN (default ./target/release/tracknum), to measure two builds side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
batches=150 singles=50000 size=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --batches) batches=$2; shift 2 ;;
    --singles) singles=$2; shift 2 ;;
    *) echo "usage: scripts/bench-storage.sh [--batches N] [--singles N]" >&2; exit 2 ;;
  esac
done
bin=$(realpath "${TRACKNUM_BIN:-target/release/tracknum}")
[ -x "$bin" ] || { echo "bench-storage.sh: no tracknum binary at $bin (cargo build --release first)" >&2; exit 2; }
for tool in wrk redis-server redis-cli curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-storage.sh: $tool is needed" >&2; exit 2; }
done
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fail() { echo "bench-storage.sh: $*" >&2; exit 1; }

# The orders: more lines than needed, for the requests sent again.
scripts/bench_orders.py batches $((batches + batches / 2 + 10)) "$size" 1 >"$work/batches.txt"
scripts/bench_orders.py queries $((singles + singles / 2 + 10)) 2 >"$work/queries.txt"

# Replays the lines of a file (POST bodies or GET queries) until WANT requests are answered 2xx.
# A 503 is sent again (as the next line); other statuses count as failed. Once every request
# has its reply, writes "answered refused failed" to OUT; meanwhile idle connections send a
# request that touches no storage (a 405).
cat >"$work/replay.lua" <<'LUA'
local requests = {}
function init(args)
  local method, file = args[1], args[2]
  want, out = tonumber(args[3]), args[4]
  -- Made once here: request() must cost wrk little, or wrk sets the pace.
  for line in io.lines(file) do
    if method == "POST" then
      requests[#requests + 1] = wrk.format("POST", "/v1/tracking-numbers",
        {["Content-Type"] = "application/json"}, line)
    else
      requests[#requests + 1] = wrk.format("GET", "/next-tracking-number?" .. line)
    end
  end
  sent, answered, refused, failed, at, finished = 0, 0, 0, 0, 0, false
  idle = wrk.format("DELETE", "/healthz")
end
function request()
  -- wrk calls request() once before it starts, to count the requests it returns.
  if not checked then checked = true; return idle end
  if sent >= want + refused then return idle end
  sent = sent + 1
  at = at % #requests + 1
  return requests[at]
end
function response(status)
  if status == 405 then return end
  if status >= 200 and status < 300 then answered = answered + 1
  elseif status == 503 then refused = refused + 1
  else failed = failed + 1 end
  if not finished and sent == want + refused and answered + refused + failed == sent then
    finished = true
    local f = io.open(out, "w")
    f:write(answered, " ", refused, " ", failed, "\n")
    f:close()
  end
end
LUA

# replay METHOD FILE WANT CONNS: prints "answered refused".
replay() {
  local out="$work/replay.out" waited=0
  if [ "$3" = 0 ]; then echo "0 0"; return; fi
  rm -f "$out"
  wrk -t1 -c"$4" -d3600s --timeout 30s -s "$work/replay.lua" "$url" -- "$1" "$2" "$3" "$out" \
    >"$work/wrk.log" 2>&1 &
  local wpid=$!
  until [ -s "$out" ]; do
    sleep 0.02
    kill -0 "$wpid" 2>/dev/null || { cat "$work/wrk.log" >&2; fail "wrk ended early"; }
    waited=$((waited + 1))
    [ "$waited" -lt 30000 ] || { kill "$wpid"; fail "$1 requests not all answered in 10 minutes"; }
  done
  kill -INT "$wpid"
  wait "$wpid" || true
  local answered refused failed
  read -r answered refused failed <"$out"
  [ "$failed" = 0 ] || fail "$failed requests failed (not 2xx or 503); see $work"
  echo "$answered $refused"
}

tracknum_cpu() { # seconds of CPU tracknum has used
  awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$tpid/stat"
}
redis_cpu() { # "seconds of CPU, µs in commands" of the redis-server (0 0 without one)
  if [ -z "${redis_port:-}" ]; then echo "0 0"; return; fi
  { redis-cli -p "$redis_port" INFO cpu; redis-cli -p "$redis_port" INFO commandstats; } | tr -d '\r' | awk -F'[:,=]' '
    /^used_cpu_(sys|user):/ { cpu += $2 }
    /^cmdstat_/ && $1 != "cmdstat_info" { for (i = 2; i < NF; i++) if ($i == "usec") us += $(i + 1) }
    END { printf "%.6f %d\n", cpu, us }'
}

# start_tracknum LABEL ARGS...: sets tpid and url, and waits until ready.
start_tracknum() {
  local label=$1; shift
  local port; port=$(free_port)
  "$bin" --listen "127.0.0.1:$port" "$@" >>"$work/tracknum-$label.log" 2>&1 &
  tpid=$!
  pids+=("$tpid")
  url="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "$url/readyz" 2>/dev/null && return; sleep 0.1; done
  fail "tracknum ($label) did not get ready; see $work/tracknum-$label.log"
}
stop_tracknum() { kill -TERM "$tpid"; wait "$tpid" || fail "tracknum did not stop cleanly"; }

# issue LABEL: both phases against $url; sets <label>_* figures.
issue() {
  local label=$1 t0 t1 t2 r0 r1 r2 w0 w1 w2 b s
  t0=$(tracknum_cpu); r0=$(redis_cpu); w0=$(date +%s.%N)
  b=$(replay POST "$work/batches.txt" "$batches" 4)
  t1=$(tracknum_cpu); r1=$(redis_cpu); w1=$(date +%s.%N)
  s=$(replay GET "$work/queries.txt" "$singles" 64)
  t2=$(tracknum_cpu); r2=$(redis_cpu); w2=$(date +%s.%N)
  python3 - "$label" "$batches" "$size" "$singles" "$b" "$s" "$t0" "$t1" "$t2" "$r0" "$r1" "$r2" \
    "$w0" "$w1" "$w2" >>"$work/figures" <<'PY'
import sys
label, batches, size, singles, b, s, t0, t1, t2, r0, r1, r2, w0, w1, w2 = sys.argv[1:]
t0, t1, t2, w0, w1, w2 = (float(x) for x in (t0, t1, t2, w0, w1, w2))
(rb0, ub0), (rb1, ub1), (rb2, ub2) = ([float(x) for x in r.split()] for r in (r0, r1, r2))
figures = {}
for phase, n, refused, cpu, secs, redis_cpu, redis_us in [
    ("batches", int(batches) * int(size), b.split()[1], t1 - t0, w1 - w0, rb1 - rb0, ub1 - ub0),
    ("singles", int(singles), s.split()[1], t2 - t1, w2 - w1, rb2 - rb1, ub2 - ub1),
]:
    n = n or float("nan")  # a phase of no requests was skipped: its figures are nan
    figures[f"{label}_refused_{phase}"] = refused
    figures[f"{label}_per_s_{phase}"] = f"{n / secs:.0f}"
    figures[f"{label}_tracknum_cpu_us_{phase}"] = f"{cpu * 1e6 / n:.1f}"
    if label == "redis":
        figures[f"redis_cpu_us_{phase}"] = f"{redis_cpu * 1e6 / n:.2f}"
        figures[f"redis_cmd_us_{phase}"] = f"{redis_us / n:.2f}"
print(" ".join(f"{k}={v}" for k, v in figures.items()))
PY
}
records=$((batches * size + singles))

# Embedded: an empty store's size, then the same data dir after the records, each after a clean stop.
data="$work/embedded"
start_tracknum embedded --data-dir "$data"
stop_tracknum
empty=$(du -sB1 "$data" | cut -f1) empty_apparent=$(du -sb "$data" | cut -f1)
start_tracknum embedded --data-dir "$data"
redis_port=""
issue embedded
stop_tracknum
full=$(du -sB1 "$data" | cut -f1) full_apparent=$(du -sb "$data" | cut -f1)
echo "embedded_bytes=$(((full - empty) / records)) embedded_apparent_bytes=$(((full_apparent - empty_apparent) / records)) embedded_dir_empty=$empty embedded_dir_full=$full" >>"$work/figures"

# Redis: a private server, no persistence.
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  >"$work/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
used_memory() { redis-cli -p "$redis_port" INFO memory | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }'; }
start_tracknum redis --redis-url "redis://127.0.0.1:$redis_port" --secret bench-secret-0123456789 \
  --data-dir "$work/unused"
m0=$(used_memory)
issue redis
m1=$(used_memory)
stop_tracknum
echo "redis_bytes=$(((m1 - m0) / records)) redis_used_memory_before=$m0 redis_used_memory_after=$m1" >>"$work/figures"

# The table, then every figure on one line.
summary=$(tr '\n' ' ' <"$work/figures" | sed 's/ *$//')
get() { tr ' ' '\n' <<<"$summary" | awk -F= -v k="$1" '$1 == k { print $2 }'; }
echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(basename "$bin"): $batches batches of $size (wrk -c4), then $singles singles (wrk -c64)"
echo
echo "| backend | records | bytes per record | redis-server CPU µs/record: batches, singles (in commands) | tracknum CPU µs/record: batches, singles | numbers/s: batches, singles | 503s sent again |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
row() { # label, name, redis cell
  echo "| $2 | $records | $(get "$1_bytes") | $3 | $(get "$1_tracknum_cpu_us_batches"), $(get "$1_tracknum_cpu_us_singles") | $(get "$1_per_s_batches"), $(get "$1_per_s_singles") | $(get "$1_refused_batches"), $(get "$1_refused_singles") |"
}
row embedded "embedded (--fsync everysec)" "–"
row redis Redis "$(get redis_cpu_us_batches), $(get redis_cpu_us_singles) ($(get redis_cmd_us_batches), $(get redis_cmd_us_singles))"
echo
echo "records=$records $summary"
