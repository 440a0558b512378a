#!/usr/bin/env bash
# Webhooks. First, throughput: one endpoint (a receiver in broker-bench that
# answers 204 at once) on a collection getting R events a second for T
# seconds, on each backend: latency from the insert to the event's arrival
# at the endpoint, and how many connections it took. Then, a dead endpoint
# (it takes the requests and never answers) next to the per-stream fan-out
# (N streams, each on a collection of its own, F events a second for 10 s,
# while 20 events a second go to another collection): without and with a
# dead endpoint on that collection, alternating, a fresh server each
# (SQLite). Results in target/bench/webhooks-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${R:-1000} T=${T:-30} N=${N:-18000} F=${F:-1000} PAIRS=${PAIRS:-2}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432/postgres}
# shellcheck source=bench/lib.sh
. bench/lib.sh
prepare
flags=(--webhook-allow-http --webhook-allow-private)

# start <name> <broker options…>: a fresh Broker on 18080; $pid.
start() {
  local name=$1
  shift
  target/release/broker --host 127.0.0.1 --port 18080 --save-path "$work/$name" --secret bench \
    "${flags[@]}" "$@" 2>>"$out/webhooks-broker.log" &
  pid=$!
  pids+=("$pid")
  wait_port 18080
}

stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }

for backend in ${BACKENDS-sqlite postgres}; do
  db=()
  if [ "$backend" = postgres ]; then
    psql "$PGURL" -qc "DROP DATABASE IF EXISTS bench_webhooks" -c "CREATE DATABASE bench_webhooks"
    db=(--database-url "${PGURL%/*}/bench_webhooks")
  fi
  start "rate-$backend" "${db[@]}"
  echo "== $backend: one webhook endpoint, $R events a second for $T s"
  "$bench" rate --addr 127.0.0.1:18080 --pid "$pid" -n 1 -r "$R" -t "$T" --webhook live \
    --json "$out/webhooks-rate-$backend.json" | grep -v '^{' || true
  stop
done

for pair in $(seq "$PAIRS"); do
  for dead in no yes; do
    start "fanout-$pair-$dead"
    echo "== $N streams, $F events a second into their collections; a dead webhook: $dead"
    # Both runs: 20 events a second into another collection, from before
    # the fan-out starts to after it ends; its webhook never answers, or
    # there is none.
    hook=()
    [ "$dead" = no ] || hook=(--webhook dead)
    "$bench" rate --addr 127.0.0.1:18080 -n 1 -r 20 -t 60 "${hook[@]}" >/dev/null 2>&1 &
    sleep 2
    "$bench" channels --addr 127.0.0.1:18080 --pid "$pid" -n "$N" -r "$F" -t 10 --first-source 2 \
      --json "$out/webhooks-fanout-$pair-$dead.json" | grep -v '^{' || true
    stop
    wait 2>/dev/null || true
  done
done
