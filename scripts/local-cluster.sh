#!/usr/bin/env bash
# The multi-instance topology on one machine, on loopback only: a private Redis (AOF on),
# three tracknum instances and nginx in front, with deploy/nginx.conf, the file Compose uses.
#
#   1. single: the load test straight at one instance, for comparison;
#   2. cluster: the load test through nginx, while one instance is killed (SIGKILL) and, a
#      while later, started again;
#   3. a batch with an Idempotency-Key, sent twice through nginx: the second answer must be
#      the first one replayed.
#
# It fails on any duplicate or invalid number, on errors outside the time the instance was
# down, or on a keyed batch that was not replayed.
#
# Usage: scripts/local-cluster.sh [--short] [--duration 30s] [--concurrency 64]
#   --short           a quick run for CI (3 s single, 8 s cluster)
# Environment:
#   TRACKNUM_BIN, LOADTEST_BIN   binaries to use (default: cargo build --release)
#   KEEP=1                       keep the working directory (logs, summaries) after the run
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

cluster_s=30
concurrency=64
while [ $# -gt 0 ]; do
  case "$1" in
    --short) cluster_s=8 ;;
    --duration) cluster_s=${2%s}; shift ;;
    --concurrency) concurrency=$2; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "local-cluster: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ! [[ "$cluster_s" =~ ^[0-9]+$ ]] || [ "$cluster_s" -lt 6 ]; then
  echo "local-cluster: --duration must be whole seconds, at least 6" >&2
  exit 2
fi
single_s=$(( cluster_s / 3 > 3 ? cluster_s / 3 : 3 ))
# The instance dies at 30% of the cluster run and is started again at 50%.
kill_at_ms=$(( cluster_s * 300 ))
restart_at_ms=$(( cluster_s * 500 ))

say() { printf 'local-cluster: %s\n' "$*" >&2; }

# --- what it needs ------------------------------------------------------------------------
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
[ ${#missing[@]} -eq 0 ] || ./scripts/apt-install.sh "${missing[@]}"
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

if [ -z "${TRACKNUM_BIN:-}" ] || [ -z "${LOADTEST_BIN:-}" ]; then
  say "building tracknum and loadtest (release)"
  cargo build --release --quiet --bin tracknum --bin loadtest
fi
tracknum_bin=$(realpath "${TRACKNUM_BIN:-target/release/tracknum}")
loadtest_bin=$(realpath "${LOADTEST_BIN:-target/release/loadtest}")

# --- the cluster --------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/tracknum-cluster.XXXXXX")
declare -A pids=()
cleanup() {
  set +e
  # nginx runs in the foreground (daemon off), so its master is one of these.
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  if [ "${KEEP:-}" = 1 ]; then say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
now_ms() { date +%s%3N; }

wait_ready() { # url what
  local deadline=$(( $(date +%s) + 30 ))
  until curl -fsS -o /dev/null "$1/readyz" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then say "$2 never became ready"; return 1; fi
    sleep 0.1
  done
}

redis_port=$(free_port)
mkdir -p "$work/redis"
redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$work/redis" --save "" \
  --appendonly yes --appendfsync everysec --daemonize no --logfile "$work/redis/redis.log" &
pids[redis]=$!
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.05; done

instance_ports=()
for i in 1 2 3; do instance_ports+=("$(free_port)"); done
start_instance() { # n
  local n=$1 port=${instance_ports[$(( $1 - 1 ))]}
  TRACKNUM_LISTEN="127.0.0.1:$port" \
  REDIS_URL="redis://127.0.0.1:$redis_port" \
  TRACKNUM_SECRET="local-cluster-secret" \
  TRACKNUM_CLIENT_IP_HEADER="X-Forwarded-For" \
    "$tracknum_bin" >>"$work/tracknum-$n.log" 2>&1 &
  pids[tracknum-$n]=$!
}
for n in 1 2 3; do start_instance "$n"; done
for n in 1 2 3; do wait_ready "http://127.0.0.1:${instance_ports[$(( n - 1 ))]}" "tracknum-$n"; done

nginx_port=$(free_port)
mkdir -p "$work/nginx"
ln -s "$repo/deploy/nginx.conf" "$work/nginx/nginx.conf"
echo "listen 127.0.0.1:$nginx_port;" > "$work/nginx/tracknum-listen.conf"
for port in "${instance_ports[@]}"; do
  echo "server 127.0.0.1:$port max_fails=1 fail_timeout=5s;"
done > "$work/nginx/tracknum-upstreams.conf"
nginx_globals="daemon off; pid $work/nginx/nginx.pid; error_log $work/nginx/error.log warn;"
"$nginx_bin" -q -t -p "$work/nginx" -c "$work/nginx/nginx.conf" -g "$nginx_globals"
"$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g "$nginx_globals" &
pids[nginx]=$!
lb="http://127.0.0.1:$nginx_port"
wait_ready "$lb" nginx
say "redis :$redis_port, tracknum :${instance_ports[*]}, nginx :$nginx_port (work dir $work)"

loadtest() { # json-out url seconds [options]
  local out=$1 url=$2 seconds=$3
  shift 3
  "$loadtest_bin" "$url" --duration "${seconds}s" --concurrency "$concurrency" --json "$@" >"$out"
}

# --- 1. one instance, directly -------------------------------------------------------------
say "single: ${single_s}s straight at tracknum-1"
loadtest "$work/single.json" "http://127.0.0.1:${instance_ports[0]}" "$single_s" --quiet

# --- 2. through nginx, killing an instance --------------------------------------------------
say "cluster: ${cluster_s}s through nginx; tracknum-2 is killed at $(( kill_at_ms / 1000 )).$(( kill_at_ms % 1000 / 100 ))s and restarted at $(( restart_at_ms / 1000 )).$(( restart_at_ms % 1000 / 100 ))s"
# Errors may happen while an instance is down; whether they stayed in that window is judged
# below, so the tool itself allows them.
loadtest "$work/cluster.json" "$lb" "$cluster_s" --max-error-rate 1 &
load=$!
sleep "$(( kill_at_ms / 1000 )).$(printf %03d $(( kill_at_ms % 1000 )))"
kill -KILL "${pids[tracknum-2]}"
wait "${pids[tracknum-2]}" 2>/dev/null || true
killed=$(now_ms)
say "tracknum-2 killed"
sleep "$(( (restart_at_ms - kill_at_ms) / 1000 )).$(printf %03d $(( (restart_at_ms - kill_at_ms) % 1000 )))"
start_instance 2
wait_ready "http://127.0.0.1:${instance_ports[1]}" "tracknum-2 (restarted)"
back=$(now_ms)
say "tracknum-2 back and ready"
load_status=0
wait "$load" || load_status=$?

# A keyed batch, sent twice through nginx (round robin: two different instances): the second
# answer is the first one replayed.
key="local-cluster-$(now_ms)"
batch() {
  curl -sS -D "$work/batch-$1.head" -o "$work/batch-$1.json" -X POST "$lb/v1/tracking-numbers" \
    -H 'Content-Type: application/json' -H "Idempotency-Key: $key" -d '{"count": 1000}'
}
batch 1
batch 2

retried=$(grep -cE '\[error\].* while (connecting to|reading response header from) upstream' "$work/nginx/error.log" || true)

# --- the verdict ----------------------------------------------------------------------------
python3 - "$work" "$killed" "$back" "$load_status" "$retried" <<'PY'
import json, sys
work, killed, back, load_status, retried = sys.argv[1], *map(int, sys.argv[2:])
single = json.load(open(f"{work}/single.json"))
cluster = json.load(open(f"{work}/cluster.json"))
heads = [open(f"{work}/batch-{i}.head").read().lower() for i in (1, 2)]
bodies = [open(f"{work}/batch-{i}.json").read() for i in (1, 2)]

# Times are taken against the load test's own start.
t0 = cluster["started_at_unix_ms"]
down_from, down_to = killed - t0, back - t0
# nginx may try the restarted instance's old connections once more right after it is back.
grace_ms = 1000

def errors_in(s, lo, hi):
    return sum(row["errors"] for second, row in enumerate(s["timeline"])
               if lo // 1000 <= second <= hi // 1000)

def line(name, s):
    l = s["latency_ms"]
    return (f"  {name:<24} {s['rate']:>9,.0f}/s  p50 {l['p50']:>6.2f} ms  p99 {l['p99']:>6.2f} ms"
            f"  p99.9 {l['p99_9']:>7.2f} ms  requests {s['requests']:>9,}  errors {s['errors']:>5,}"
            f"  duplicates {s['duplicates']}")

print("local-cluster results")
print(line("1 instance, direct", single))
print(line("3 instances via nginx", cluster))
while_down = errors_in(cluster, down_from, down_to + grace_ms)
print(f"  tracknum-2 down from {down_from / 1000:.1f} s to {down_to / 1000:.1f} s of the cluster run;"
      f" errors while down: {while_down}, errors at other times: {cluster['errors'] - while_down};"
      f" nginx retried {retried} requests on another instance")

problems = []
for name, s in (("single", single), ("cluster", cluster)):
    if s["duplicates"]:
        problems.append(f"{name}: {s['duplicates']} duplicate numbers: {s['duplicate_examples'][:2]}")
    if s["invalid"]:
        problems.append(f"{name}: {s['invalid']} invalid replies: {s['invalid_examples']}")
    if s["requests"] == 0 or s["numbers"] == 0:
        problems.append(f"{name}: no numbers issued")
if single["errors"]:
    problems.append(f"single: {single['errors']} errors with nothing down ({single['statuses']}, {single['failures']})")
if cluster["errors"]:
    first, last = cluster["first_error_ms"], cluster["last_error_ms"]
    if first < down_from - 100 or last > down_to + grace_ms:
        problems.append(f"cluster: errors from {first:.0f} ms to {last:.0f} ms, outside the"
                        f" {down_from}-{down_to} ms the instance was down")
if load_status not in (0, 1):
    problems.append(f"cluster: the load test exited {load_status}")
if not (heads[0].startswith("http/1.1 201") and heads[1].startswith("http/1.1 201")):
    problems.append(f"keyed batch: not two 201s: {heads[0].splitlines()[0]} / {heads[1].splitlines()[0]}")
elif "idempotent-replayed: true" not in heads[1] or bodies[0] != bodies[1]:
    problems.append("keyed batch: the second answer was not the first one replayed")
else:
    print("  keyed batch of 1000 sent twice through nginx: the second answer replayed the first")

if problems:
    print("FAIL")
    for p in problems:
        print("  " + p)
    sys.exit(1)
print("PASS: no duplicate, no invalid number, errors only while an instance was down")
PY
