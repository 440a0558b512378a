#!/usr/bin/env bash
# Each stream on a channel of its own: Broker (a collection per stream) and
# nginx + nchan (a channel id per subscriber, one worker), one after the
# other, a fresh server each; then Broker with no stream open, for the CPU
# an insert costs without any fan-out. Results in target/bench/channels-*.json.
#   N streams (18000), R events a second (5000), T seconds (10).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-18000} R=${R:-5000} T=${T:-10}
out=target/bench
mkdir -p "$out"
cargo build --release --workspace --quiet
bench=target/release/broker-bench
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=bench/lib.sh
. bench/lib.sh

# broker <name> <streams> <first source>
broker() {
  target/release/broker --host 127.0.0.1 --port 18080 --save-path "$work/$1" --secret bench \
    2>>"$out/channels-broker.log" &
  local pid=$!
  pids+=("$pid")
  wait_port 18080
  echo "== Broker, $2 streams"
  "$bench" channels --addr 127.0.0.1:18080 --pid "$pid" -n "$2" -r "$R" -t "$T" \
    --first-source "$3" --json "$out/channels-$1.json" | grep -v '^{' || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

broker broker "$N" 2

echo "== nginx + nchan, $N streams"
mkdir -p "$work/nginx/tmp"
nginx -p "$work/nginx" -c "$PWD/bench/nchan/nginx.conf" 2>"$out/channels-nginx.log" &
master=$!
pids+=("$master")
wait_port 18081
worker=$(pgrep -P "$master" | head -n 1)
"$bench" channels --target nchan --addr 127.0.0.1:18081 --pid "$worker" -n "$N" -r "$R" -t "$T" \
  --first-source 20 --json "$out/channels-nchan.json" | grep -v '^{' || true
kill "$master"; wait "$master" 2>/dev/null || true

broker idle 0 40
