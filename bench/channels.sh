#!/usr/bin/env bash
# Each stream on a channel of its own: Broker (a collection per stream) and
# nginx + nchan (a channel id per subscriber, one worker), one after the
# other, a fresh server each; then the mixed run (every stream on one shared
# channel too, B broadcasts to it one at a time while M events a second go
# to single streams); then Broker with no stream open and the same inserts
# (into N collections), for the CPU an insert costs without any fan-out.
# Results in target/bench/channels-*.json.
#   N streams (18000), R events a second (5000), T seconds (10),
#   M events a second in the mixed run (2000), B broadcasts (50).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-18000} R=${R:-5000} T=${T:-10} M=${M:-2000} B=${B:-50}
# shellcheck source=bench/lib.sh
. bench/lib.sh
prepare

# broker <name> <streams> <first source> <broker-bench channels options…>
broker() {
  local name=$1 streams=$2 source=$3
  shift 3
  target/release/broker --host 127.0.0.1 --port 18080 --save-path "$work/$name" --secret bench \
    2>>"$out/channels-broker.log" &
  local pid=$!
  pids+=("$pid")
  wait_port 18080
  echo "== Broker, $streams streams $*"
  "$bench" channels --addr 127.0.0.1:18080 --pid "$pid" -n "$streams" --first-source "$source" \
    --json "$out/channels-$name.json" "$@" | grep -v '^{' || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

broker broker "$N" 2 -r "$R" -t "$T"
nchan_channels channels nchan 20 -n "$N" -r "$R" -t "$T"
broker broker-mixed "$N" 40 -r "$M" -t "$T" -b "$B"
nchan_channels channels nchan-mixed 60 -n "$N" -r "$M" -t "$T" -b "$B"
broker idle 0 80 -r "$R" -t "$T" --channels "$N"
