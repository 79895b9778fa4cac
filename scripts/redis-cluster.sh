#!/usr/bin/env bash
# A private Redis Cluster (3 masters, 3 replicas, AOF on, cluster-node-timeout 1000) on loopback
# ports, in the foreground until Ctrl-C, for benchmarks and trying things by hand:
#
#   scripts/redis-cluster.sh &        # prints REDIS_CLUSTER_URLS=redis://127.0.0.1:…,…
#   ../shared/bench/ratio.sh -- --redis-cluster-urls "$urls" --secret bench-secret-0123456789
#
# Installs redis-server when it is missing (Debian/Ubuntu). Its data lives in a temporary
# directory, removed at the end (KEEP=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/redis-cluster.sh
. scripts/lib/redis-cluster.sh

command -v redis-server >/dev/null 2>&1 || ./scripts/apt-install.sh redis-server
work=$(mktemp -d "${TMPDIR:-/tmp}/tracknum-redis-cluster.XXXXXX")
redis_pids=()
cleanup() {
  set +e
  for pid in "${redis_pids[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  if [ "${KEEP:-}" = 1 ]; then echo "redis-cluster: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

redis_cluster_start "$work"
echo "REDIS_CLUSTER_URLS=$redis_cluster_urls"
echo "redis-cluster: ready; the counter's master is node $(redis_cluster_counter_master) (Ctrl-C stops it)" >&2
wait
