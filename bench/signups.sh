#!/usr/bin/env bash
# A sign-up flood against everything else: N streams on one collection get
# K events one at a time (each inserted once the previous one reached every
# stream) while /healthz is timed every 20 ms; on a quiet server, then with
# S sign-ups a second arriving (the server runs with --signup-rate 0, as
# when they come from many addresses, so that every one is hashed);
# alternating, a fresh server each. Results in target/bench/signups-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000} K=${K:-200} S=${S:-200} PAIRS=${PAIRS:-2}
# shellcheck source=bench/lib.sh
. bench/lib.sh
prepare

for pair in $(seq "$PAIRS"); do
  for rate in 0 "$S"; do
    target/release/broker --host 127.0.0.1 --port 18080 --save-path "$work/$pair-$rate" \
      --secret bench --signup-rate 0 2>>"$out/signups-broker.log" &
    pid=$!
    pids+=("$pid")
    wait_port 18080
    echo "== $N streams, $K events one at a time, $rate sign-ups a second"
    "$bench" fanout --addr 127.0.0.1:18080 --pid "$pid" -n "$N" -k "$K" -b 1 --signups "$rate" \
      --json "$out/signups-$pair-$rate.json" | grep -v '^{' || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
