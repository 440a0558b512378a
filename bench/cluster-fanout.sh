#!/usr/bin/env bash
# 150,000 subscribers on 8 Broker nodes sharing one PostgreSQL database, then
# the same 150,000 on nginx + nchan with 8 workers, one after the other on
# this machine: one event at a time to all (K, 20), then a burst of B (100).
# Prints both with their ratios; results go to target/bench/c8-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-150000} K=${K:-20} B=${B:-100} NODES=${NODES:-8} PROCS=${PROCS:-24}
. bench/nodes.sh
db=broker_fanout_$$
create_database "$db"

echo "== Broker: $NODES nodes"
start_nodes "$NODES" 18300 "$db" c8
"$bench" fanout --addr "$all" --pid "$pidlist" \
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
