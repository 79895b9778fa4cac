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
# With --redis-cluster, Redis is a Redis Cluster of 3 masters and 3 replicas (AOF on, node
# timeout 1 s), and step 2 kills (SIGKILL) the master that holds the serial counter instead of
# an instance; its replica takes over.
#
# It fails on any duplicate or invalid number, on errors outside the time the instance (or the
# counter's master) was down, or on a keyed batch that was not replayed.
#
# Usage: scripts/local-cluster.sh [--short] [--redis-cluster] [--duration 30s] [--concurrency 64]
#   --short           a quick run for CI (3 s single, 8 s cluster)
#   --redis-cluster   a Redis Cluster (3+3 nodes) instead of one Redis; kill its counter master
# Environment:
#   TRACKNUM_BIN, LOADTEST_BIN   binaries to use (default: cargo build --release)
#   KEEP=1                       keep the working directory (logs, summaries) after the run
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
# shellcheck source=lib/redis-cluster.sh
. scripts/lib/redis-cluster.sh

cluster_s=30
concurrency=64
redis_cluster=0
while [ $# -gt 0 ]; do
  case "$1" in
    --short) cluster_s=8 ;;
    --redis-cluster) redis_cluster=1 ;;
    --duration) cluster_s=${2%s}; shift ;;
    --concurrency) concurrency=$2; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
  cargo build --release --quiet -p tracknum -p loadtest
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

redis_ports=()
if [ "$redis_cluster" = 1 ]; then
  redis_cluster_start "$work"
  for n in 1 2 3 4 5 6; do pids[redis-$n]=${redis_pids[$(( n - 1 ))]}; done
  redis_env=(REDIS_CLUSTER_URLS="$redis_cluster_urls")
else
  redis_ports+=("$(free_port)")
  mkdir -p "$work/redis"
  redis-server --bind 127.0.0.1 --port "${redis_ports[0]}" --dir "$work/redis" --save "" \
    --appendonly yes --appendfsync everysec --daemonize no --logfile "$work/redis/redis.log" &
  pids[redis]=$!
  until redis-cli -p "${redis_ports[0]}" ping >/dev/null 2>&1; do sleep 0.05; done
  redis_env=(REDIS_URL="redis://127.0.0.1:${redis_ports[0]}")
fi

instance_ports=()
for i in 1 2 3; do instance_ports+=("$(free_port)"); done
start_instance() { # n
  local n=$1 port=${instance_ports[$(( $1 - 1 ))]}
  env "${redis_env[@]}" \
  TRACKNUM_LISTEN="127.0.0.1:$port" \
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
say "redis :${redis_ports[*]}, tracknum :${instance_ports[*]}, nginx :$nginx_port (work dir $work)"

loadtest() { # json-out url seconds [options]
  local out=$1 url=$2 seconds=$3
  shift 3
  "$loadtest_bin" "$url" --duration "${seconds}s" --concurrency "$concurrency" --json "$@" >"$out"
}

# --- 1. one instance, directly -------------------------------------------------------------
say "single: ${single_s}s straight at tracknum-1"
loadtest "$work/single.json" "http://127.0.0.1:${instance_ports[0]}" "$single_s" --quiet

# --- 2. through nginx, killing an instance (or the counter's Redis master) ------------------
at() { echo "$(( $1 / 1000 )).$(( $1 % 1000 / 100 ))s"; }
if [ "$redis_cluster" = 1 ]; then
  victim=$(redis_cluster_counter_master)
  say "cluster: ${cluster_s}s through nginx; redis-$victim (the counter's master) is killed at $(at "$kill_at_ms")"
else
  say "cluster: ${cluster_s}s through nginx; tracknum-2 is killed at $(at "$kill_at_ms") and restarted at $(at "$restart_at_ms")"
fi
# Errors may happen while something is down; whether they stayed in that window is judged
# below, so the tool itself allows them.
loadtest "$work/cluster.json" "$lb" "$cluster_s" --max-error-rate 1 &
load=$!
sleep "$(( kill_at_ms / 1000 )).$(printf %03d $(( kill_at_ms % 1000 )))"
if [ "$redis_cluster" = 1 ]; then
  kill -KILL "${pids[redis-$victim]}"
  wait "${pids[redis-$victim]}" 2>/dev/null || true
  killed=$(now_ms)
  say "redis-$victim killed"
  # Back once another node is master of the counter's slot and the cluster is ok again.
  deadline=$(( $(date +%s) + 30 ))
  until new=$(redis_cluster_counter_master 2>/dev/null) && [ -n "$new" ] && [ "$new" != "$victim" ] \
      && redis-cli -p "${redis_ports[$(( new - 1 ))]}" cluster info | grep -q '^cluster_state:ok'; do
    if [ "$(date +%s)" -ge "$deadline" ]; then say "no replica took over in 30 s"; exit 1; fi
    sleep 0.05
  done
  back=$(now_ms)
  say "redis-$new took over after $(( back - killed )) ms"
else
  # What the kill throws away: the serials leased and not yet handed out (gaps, not repeats).
  unused=$(curl -fsS "http://127.0.0.1:${instance_ports[1]}/metrics" 2>/dev/null \
    | awk '/^tracknum_pool_serials /{print $2}' || true)
  kill -KILL "${pids[tracknum-2]}"
  wait "${pids[tracknum-2]}" 2>/dev/null || true
  killed=$(now_ms)
  say "tracknum-2 killed with ${unused:-?} leased serials unused"
  sleep "$(( (restart_at_ms - kill_at_ms) / 1000 )).$(printf %03d $(( (restart_at_ms - kill_at_ms) % 1000 )))"
  start_instance 2
  wait_ready "http://127.0.0.1:${instance_ports[1]}" "tracknum-2 (restarted)"
  back=$(now_ms)
  say "tracknum-2 back and ready"
fi
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

# Leases each instance made (the counter's load), from its metrics.
leases=$(for port in "${instance_ports[@]}"; do
  curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null \
    | awk '/^tracknum_block_leases_total /{print $2}' || true
done | paste -sd, -)
retried=$(grep -cE '\[error\].* while (connecting to|reading response header from) upstream' "$work/nginx/error.log" || true)

# --- the verdict ----------------------------------------------------------------------------
python3 - "$work" "$killed" "$back" "$load_status" "$retried" "$redis_cluster" "$leases" "$single_s" "$cluster_s" <<'PY'
import json, sys
work, killed, back, load_status, retried, redis_cluster = sys.argv[1], *map(int, sys.argv[2:7])
leases, run_s = [x for x in sys.argv[7].split(",") if x], int(sys.argv[8]) + int(sys.argv[9])
down = "the counter's Redis master" if redis_cluster else "tracknum-2"
single = json.load(open(f"{work}/single.json"))
cluster = json.load(open(f"{work}/cluster.json"))
heads = [open(f"{work}/batch-{i}.head").read().lower() for i in (1, 2)]
bodies = [open(f"{work}/batch-{i}.json").read() for i in (1, 2)]

# Times are taken against the load test's own start.
t0 = cluster["started_at_unix_ms"]
down_from, down_to = killed - t0, back - t0
# nginx may try the restarted instance's old connections once more right after it is back;
# after a failover, each instance's cluster client needs a moment to learn the new master.
grace_ms = 3000 if redis_cluster else 1000

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
print(f"  {down} down from {down_from / 1000:.1f} s to {down_to / 1000:.1f} s of the cluster run;"
      f" errors while down: {while_down}, errors at other times: {cluster['errors'] - while_down};"
      f" nginx retried {retried} requests on another instance")
# The stall: from the kill to the last error, and the longest run of seconds with no success.
stalled = [row["replies"] - row["errors"] <= 0 for row in cluster["timeline"]]
longest = run = 0
for s_ in stalled:
    run = run + 1 if s_ else 0
    longest = max(longest, run)
last = cluster.get("last_error_ms")
stall_ms = max(0, last - down_from) if last is not None and last >= down_from else 0
if leases:
    print(f"  block leases per instance over the whole run (instance 1 also ran step 1): {', '.join(leases)}"
          f" in about {run_s} s, {max(float(x) for x in leases) / run_s:.1f}/s at most")
print(f"  issuing stalled: errors until {stall_ms:.0f} ms after the kill;"
      f" {longest} whole second(s) without a single number")

problems = []
for name, s in (("single", single), ("cluster", cluster)):
    if s["duplicates"]:
        problems.append(f"{name}: {s['duplicates']} duplicate numbers: {s['duplicate_examples'][:2]}")
    if s["invalid"]:
        problems.append(f"{name}: {s['invalid']} invalid replies: {s['invalid_examples']}")
    if s["requests"] == 0 or s["numbers"] == 0:
        problems.append(f"{name}: no numbers issued")
for name, s in (("single", single), ("cluster", cluster)):
    other_5xx = {k: v for k, v in s["statuses"].items() if int(k) >= 500 and int(k) != 503}
    if other_5xx:
        problems.append(f"{name}: server errors other than 503: {other_5xx}")
if single["errors"]:
    problems.append(f"single: {single['errors']} errors with nothing down ({single['statuses']}, {single['failures']})")
if cluster["errors"]:
    first, last = cluster["first_error_ms"], cluster["last_error_ms"]
    if first < down_from - 100 or last > down_to + grace_ms:
        problems.append(f"cluster: errors from {first:.0f} ms to {last:.0f} ms, outside the"
                        f" {down_from}-{down_to} ms {down} was down")
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
print(f"PASS: no duplicate, no invalid number, errors only while {down} was down")
PY
