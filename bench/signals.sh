#!/usr/bin/env bash
# Presence and signals on one node: N streams on C collections, every stream
# asking for signals and presence (an anonymous one: counted, not named);
# R signals a second for T seconds, each to one collection (so to N / C
# streams), while CHURN streams a second open with a token on the next
# collection and close a second later (a join, then a leave once the
# 1 s grace is over: 2 × CHURN presence changes a second). Latency from
# the signal's POST to the last stream of its collection. At R and at
# R_LOW; then at R with no churn, and nginx + nchan (one worker) with the
# same frames (N subscribers on C channels, R publications a second), for
# what this machine can deliver at all. Results in target/bench/signals-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-18000} C=${C:-1000} R=${R:-5000} R_LOW=${R_LOW:-1000} T=${T:-10} CHURN=${CHURN:-250}
# shellcheck source=bench/lib.sh
. bench/lib.sh
prepare

# run <name> <signals a second> <first source> <broker-bench channels options…>
run() {
  local name=$1 rate=$2 source=$3
  shift 3
  target/release/broker --host 127.0.0.1 --port 18080 --save-path "$work/$name" --secret bench \
    --signal-rate 0 --presence-grace-ms 1000 2>>"$out/signals-broker.log" &
  local pid=$!
  pids+=("$pid")
  wait_port 18080
  echo "== $N streams on $C collections, $rate signals a second $*"
  "$bench" channels --addr 127.0.0.1:18080 --pid "$pid" -n "$N" --channels "$C" --signals \
    -r "$rate" -t "$T" --first-source "$source" --json "$out/signals-$name.json" "$@" \
    | grep -v '^{' || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run "$R" "$R" 2 --churn "$CHURN"
run "$R_LOW" "$R_LOW" 20 --churn "$CHURN"
run "$R-quiet" "$R" 40
nchan_channels signals nchan 60 -n "$N" --channels "$C" -r "$R" -t "$T"
