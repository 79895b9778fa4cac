# Sourced, not run: a private Redis Cluster of 3 masters and 3 replicas on loopback, for
# scripts/local-cluster.sh and scripts/redis-cluster.sh.
#
#   redis_cluster_start DIR    starts it in DIR (AOF on, cluster-node-timeout 1000) and waits
#                              until every node says cluster_state:ok; sets redis_ports (6 ports),
#                              redis_pids (their pids) and redis_cluster_urls (the seed list)
#   redis_cluster_counter_master
#                              prints the node (1-6) that is master of tracknum's counter now

# A port whose cluster bus port (port + 10000) is free too.
redis_cluster_free_port() {
  python3 -c '
import socket
while True:
    a = socket.socket(); a.bind(("127.0.0.1", 0)); port = a.getsockname()[1]
    if port + 10000 < 65536:
        try:
            b = socket.socket(); b.bind(("127.0.0.1", port + 10000)); b.close(); a.close(); print(port); break
        except OSError:
            pass
    a.close()'
}

redis_cluster_start() { # dir
  local dir=$1 n port deadline
  redis_ports=()
  redis_pids=()
  for n in 1 2 3 4 5 6; do
    port=$(redis_cluster_free_port)
    redis_ports+=("$port")
    mkdir -p "$dir/redis-$n"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir/redis-$n" --save "" \
      --appendonly yes --appendfsync everysec --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
      --daemonize no --logfile "$dir/redis-$n/redis.log" &
    redis_pids+=($!)
  done
  for port in "${redis_ports[@]}"; do
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${redis_ports[@]}") \
    --cluster-replicas 1 --cluster-yes >"$dir/cluster-create.log" 2>&1
  deadline=$(( $(date +%s) + 30 ))
  for port in "${redis_ports[@]}"; do
    until redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; do
      if [ "$(date +%s)" -ge "$deadline" ]; then echo "the Redis Cluster never became ok" >&2; return 1; fi
      sleep 0.1
    done
  done
  redis_cluster_urls=$(printf 'redis://127.0.0.1:%s,' "${redis_ports[@]}" | sed 's/,$//')
}

redis_cluster_counter_master() {
  local slot
  slot=$(redis-cli -p "${redis_ports[0]}" cluster keyslot '{tracknum}:serial')
  redis-cli -p "${redis_ports[0]}" cluster nodes | python3 -c '
import sys
slot, ports = int(sys.argv[1]), sys.argv[2:]
for line in sys.stdin:
    f = line.split()
    if "master" not in f[2] or "fail" in f[2]:
        continue
    for r in f[8:]:
        lo, _, hi = r.partition("-")
        if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
            print(ports.index(f[1].split("@")[0].split(":")[1]) + 1)' "$slot" "${redis_ports[@]}"
}
