#!/usr/bin/env bash
# A local Broker cluster: N nodes on one PostgreSQL database, behind nginx.
#
#   deploy/cluster.sh [-n NODES] [-p PORT] [-d DATABASE_URL] [-r RUN_DIR]
#
# nginx listens on 127.0.0.1:PORT (8080) and the nodes on PORT+1 … PORT+N.
# Each node's log and pid file go to RUN_DIR (./cluster-run). BROKER_BIN
# names the binary (target/debug/broker); other BROKER_* variables reach
# every node. Stops everything on Ctrl-C or SIGTERM.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
nodes=3 port=8080 run=./cluster-run
url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/broker}
while getopts "n:p:d:r:" opt; do
  case $opt in
    n) nodes=$OPTARG ;;
    p) port=$OPTARG ;;
    d) url=$OPTARG ;;
    r) run=$OPTARG ;;
    *) sed -n '2,9p' "$0" >&2; exit 2 ;;
  esac
done
bin=${BROKER_BIN:-$here/../target/debug/broker}
mkdir -p "$run/tmp"
run=$(cd "$run" && pwd)

pids=()
stop() {
  trap - EXIT INT TERM
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

upstream=""
for i in $(seq 1 "$nodes"); do
  node_port=$((port + i))
  # nginx (on loopback) names the client in X-Forwarded-For: the login
  # limits per address count clients, not the balancer.
  "$bin" --host 127.0.0.1 --port "$node_port" --database-url "$url" --trusted-proxy 127.0.0.1 \
    >"$run/node-$node_port.log" 2>&1 &
  pids+=($!)
  echo $! >"$run/node-$node_port.pid"
  upstream+="        server 127.0.0.1:$node_port max_fails=1 fail_timeout=2s;\n"
done

# The shipped configuration with this cluster's nodes and port.
awk -v nodes="$upstream" -v listen="127.0.0.1:$port" '
  /# nodes$/ { print; printf "%s", nodes; skip = 1; next }
  /# end nodes$/ { skip = 0 }
  skip { next }
  /^ *listen / { sub(/127\.0\.0\.1:[0-9]+/, listen) }
  { print }' "$here/nginx.conf" >"$run/nginx.conf"
nginx -p "$run" -c "$run/nginx.conf" -g 'daemon off;' 2>"$run/nginx.log" &
nginx_pid=$!
pids+=("$nginx_pid")

for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
echo "Broker cluster: $nodes nodes on $url, nginx at http://127.0.0.1:$port (logs in $run)"
# A node that dies leaves the others serving (nginx routes around it); the
# cluster stops with nginx or on a signal.
wait "$nginx_pid" || true
echo "nginx stopped; see $run/nginx.log" >&2
