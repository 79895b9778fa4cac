#!/usr/bin/env bash
# What each layer of tracknum costs: GET /next-tracking-number with all seven inputs, measured
# against the bare warp ceiling (../shared/bench/ceiling) in one run, in turns, for each setup:
#
#   defaults            embedded store, access log on
#   access log off      RUST_LOG=off
#   keys and limits on  --api-keys-file (one key, sent by every request) and a rate limit high
#                       enough never to refuse
#   Redis               a private redis-server (no persistence), --redis-url
#
#   scripts/bench-layers.sh [--rounds N] [--seconds S] [--conns C]
#
# Prints a Markdown table (ratio to the ceiling, requests/s, p99) and the date. Run it on a quiet
# machine after `cargo build --release`; compare figures within one run only.
# Env: TRACKNUM_BIN (default target/release/tracknum), BENCH_DIR (default ../shared/bench).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 secs=10 conns=64
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --seconds) secs=$2; shift 2 ;;
    --conns) conns=$2; shift 2 ;;
    *) echo "usage: scripts/bench-layers.sh [--rounds N] [--seconds S] [--conns C]" >&2; exit 2 ;;
  esac
done
bin=$(realpath "${TRACKNUM_BIN:-target/release/tracknum}")
bench=$(realpath "${BENCH_DIR:-../shared/bench}")
[ -x "$bin" ] || { echo "bench-layers.sh: no tracknum binary at $bin (cargo build --release first)" >&2; exit 2; }
for tool in wrk redis-server curl python3 sha256sum; do
  command -v "$tool" >/dev/null || { echo "bench-layers.sh: $tool is needed" >&2; exit 2; }
done
export CARGO_TARGET_DIR=${CEILING_TARGET_DIR:-${TMPDIR:-/tmp}/tracknum-ceiling-target}
cargo build --release --quiet --manifest-path "$bench/ceiling/Cargo.toml"
ceiling_bin="$CARGO_TARGET_DIR/release/ceiling"

query='origin_country_id=MY&destination_country_id=ID&weight=1.234&created_at=2018-11-20T19:29:32%2B08:00&customer_id=de619854-b59b-425e-9db4-943979e1bd49&customer_name=RedBox%20Logistics&customer_slug=redbox-logistics'
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() {
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "$@" 2>/dev/null && return 0; sleep 0.1; done
  echo "bench-layers.sh: $1 did not come up" >&2; exit 1
}

key=bench-key-0123456789abcdef
echo "bench:sha256:$(printf %s "$key" | sha256sum | cut -d' ' -f1)" >"$work/keys"
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  >"$work/redis.log" 2>&1 &
pids+=($!)

ceiling_port=$(free_port)
"$ceiling_bin" "127.0.0.1:$ceiling_port" & pids+=($!)
wait_up "http://127.0.0.1:$ceiling_port/"

# name | environment | flags | request header
layers=(
  "defaults||"
  "access log off|RUST_LOG=off|"
  "keys and limits on||--api-keys-file $work/keys --rate-limit 10000000 --rate-burst 10000000"
  "Redis||--redis-url redis://127.0.0.1:$redis_port --secret bench-secret-0123456789"
)
urls=() headers=()
for i in "${!layers[@]}"; do
  IFS='|' read -r name env flags <<<"${layers[$i]}"
  port=$(free_port)
  mkdir -p "$work/data$i"
  # shellcheck disable=SC2086 # flags are words
  env $env "$bin" --listen "127.0.0.1:$port" --data-dir "$work/data$i" $flags \
    >"$work/tracknum$i.log" 2>&1 &
  pids+=($!)
  header=""
  [[ "$flags" == *api-keys-file* ]] && header="Authorization: Bearer $key"
  urls+=("http://127.0.0.1:$port/next-tracking-number?$query")
  headers+=("$header")
  wait_up "${urls[$i]}" ${header:+-H "$header"}
done

run() { # url [header] -> "rps p99_ms non2xx"
  local url=$1 header=${2:-}
  wrk -t1 -c"$conns" -d"${secs}s" --latency ${header:+-H "$header"} "$url" | awk '
    /Requests\/sec/ {rps=$2}
    /^ +99%/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; p99=v}
    /Non-2xx/ {bad=$NF}
    END {printf "%s %s %s\n", rps, p99, (bad==""?0:bad)}'
}

# Warm-up: every server, two seconds.
wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$ceiling_port/" >/dev/null
for i in "${!urls[@]}"; do run "${urls[$i]}" "${headers[$i]}" >/dev/null; done

declare -A rps p99 bad
for r in $(seq 1 "$rounds"); do
  read -r a b _ < <(run "http://127.0.0.1:$ceiling_port/")
  rps[c,$r]=$a p99[c,$r]=$b
  line="round $r: ceiling $a/s"
  for i in "${!urls[@]}"; do
    read -r a b n < <(run "${urls[$i]}" "${headers[$i]}")
    rps[$i,$r]=$a p99[$i,$r]=$b bad[$i,$r]=${n%%.*}
    line+=", ${layers[$i]%%|*} $a/s"
  done
  echo "$line" >&2
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { local k=$1; shift; local out=(); for r in $(seq 1 "$rounds"); do out+=("${rps[$k,$r]}"); done; median "${out[@]}"; }
colp() { local k=$1; local out=(); for r in $(seq 1 "$rounds"); do out+=("${p99[$k,$r]}"); done; median "${out[@]}"; }
c_rps=$(col c) c_p99=$(colp c)
echo
echo "$(date -u +%Y-%m-%d), $(nproc) cores, wrk -t1 -c$conns, $rounds rounds of ${secs} s, medians:"
echo
echo "| setup | ratio | requests/s | p99 (ms) | non-2xx |"
echo "| --- | --- | --- | --- | --- |"
printf '| ceiling (bare warp) | 1.00 | %.0f | %s | 0 |\n' "$c_rps" "$c_p99"
for i in "${!urls[@]}"; do
  t_rps=$(col "$i") t_p99=$(colp "$i") n=0
  for r in $(seq 1 "$rounds"); do n=$((n + bad[$i,$r])); done
  python3 -c "print(f'| ${layers[$i]%%|*} | {float($t_rps)/float($c_rps):.2f} | {float($t_rps):.0f} | $t_p99 | $n |')"
done
