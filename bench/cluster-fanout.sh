#!/usr/bin/env bash
# 150,000 subscribers on 8 Broker nodes sharing one PostgreSQL database, then
# the same 150,000 on nginx + nchan with 8 workers, one after the other on
# this machine: one event at a time to all (K, 20), then a burst of B (100).
# Prints both with their ratios; results go to target/bench/c8-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-150000} K=${K:-20} B=${B:-100} NODES=${NODES:-8} PROCS=${PROCS:-24}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
out=target/bench
mkdir -p "$out"
cargo build --release --workspace --quiet
bench=target/release/broker-bench
db=broker_fanout_$$
psql "$PG/postgres" -qc "CREATE DATABASE $db"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
}
trap cleanup EXIT

echo "== Broker: $NODES nodes"
addrs=()
for i in $(seq 1 "$NODES"); do
  port=$((18300 + i))
  target/release/broker --host 127.0.0.1 --port "$port" --database-url "$PG/$db" \
    2>"$out/c8-node-$i.log" &
  pids+=($!) addrs+=("127.0.0.1:$port")
done
for a in "${addrs[@]}"; do
  for _ in $(seq 100); do curl -fsS "http://$a/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
done
"$bench" fanout --addr "$(IFS=,; echo "${addrs[*]}")" --pid "$(IFS=,; echo "${pids[*]}")" \
  -n "$N" --procs "$PROCS" -k "$K" -b "$B" --first-source 2 --json "$out/c8-broker-fanout.json"
kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
pids=()

echo "== nginx + nchan: 8 workers"
prefix=$(mktemp -d)
mkdir -p "$prefix/tmp"
nginx -p "$prefix" -c "$PWD/bench/nchan/nginx-8.conf" 2>"$out/c8-nginx.log" &
master=$!
pids+=("$master")
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/18091) 2>/dev/null && break; sleep 0.1; done
sleep 1
workers=$(pgrep -P "$master" | paste -sd, -)
"$bench" fanout --target nchan --addr 127.0.0.1:18091 --pid "$workers" \
  -n "$N" --procs "$PROCS" -k "$K" -b "$B" --first-source 100 --json "$out/c8-nchan-fanout.json"
kill "$master"; wait "$master" 2>/dev/null || true
rm -rf "$prefix"

echo
"$bench" compare "$out/c8-broker-fanout.json" "$out/c8-nchan-fanout.json"
