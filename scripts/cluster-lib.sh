# Sourced by scripts/run and scripts/bench: start a local Redis Cluster of
# 3 masters and 3 replicas (redis-server --cluster-enabled yes +
# redis-cli --cluster create) on free loopback ports below 55535 (each node
# also binds port + 10000 for the cluster bus), in directory $1.
# After start_local_cluster: CLUSTER_SEEDS="127.0.0.1:p1,..." and
# CLUSTER_PIDS=(...) (stop them with stop_local_cluster, by pid).

cluster_free_port() {
  /usr/bin/python3 - "$@" <<'PY'
import socket, sys
taken = {int(p) for p in sys.argv[1:]}
for _ in range(1000):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p >= 55535 or p in taken or p + 10000 in taken:
        continue
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 10000))
    except OSError:
        continue
    finally:
        b.close()
    print(p); break
else:
    sys.exit("no free port pair below 55535")
PY
}

start_local_cluster() {
  local dir=$1 ports=() p i
  CLUSTER_PIDS=()
  for i in 1 2 3 4 5 6; do
    p=$(cluster_free_port "${ports[@]}") || return 1
    ports+=("$p")
  done
  for p in "${ports[@]}"; do
    mkdir -p "$dir/$p"
    redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir/$p" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
      --cluster-require-full-coverage no --maxmemory-policy volatile-lru \
      >"$dir/$p/redis.log" 2>&1 &
    CLUSTER_PIDS+=($!)
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 200); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
  done
  local nodes=()
  for p in "${ports[@]}"; do nodes+=("127.0.0.1:$p"); done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
    >"$dir/create.log" 2>&1 || { cat "$dir/create.log" >&2; return 1; }
  for _ in $(seq 600); do
    local ok=1
    for p in "${ports[@]}"; do
      redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  [ "$ok" = 1 ] || { echo "cluster did not reach cluster_state:ok" >&2; return 1; }
  CLUSTER_SEEDS=$(IFS=,; echo "${nodes[*]}")
}

stop_local_cluster() {
  local p
  for p in "${CLUSTER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
}
