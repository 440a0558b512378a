#!/usr/bin/env bash
# Runs the same `subscribers` and `fanout` measurements against Broker and
# against nginx + nchan (one worker), one after the other on this machine,
# then prints both with their ratios; Broker's fan-out also once more to
# streams that name no collection. Results go to target/bench/.
#   N subscribers (18000), K single events (50), B events in the burst (100).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-18000} K=${K:-200} B=${B:-100}

# shellcheck source=bench/lib.sh
. bench/lib.sh
prepare

# Each run connects from its own source addresses (127.0.0.<first>…), so that
# no run waits for the ephemeral ports that an earlier one left in TIME_WAIT.
measure() { # name addr pid target first-source
  "$bench" subscribers --target "$4" --addr "$2" --pid "$3" -n "$N" --first-source "$5" \
    --json "$out/$1-subscribers.json"
  "$bench" fanout --target "$4" --addr "$2" --pid "$3" -n "$N" -k "$K" -b "$B" \
    --first-source "$(($5 + 10))" --json "$out/$1-fanout.json"
}

# broker <name>: a fresh server on 18080 with a store of its own, its pid
# in $broker.
broker() {
  target/release/broker --host 127.0.0.1 --port 18080 --save-path "$work/$1" --secret bench \
    2>>"$out/broker.log" &
  broker=$!
  pids+=("$broker")
  wait_port 18080
}

echo "== Broker"
: >"$out/broker.log"
broker named
measure broker 127.0.0.1:18080 "$broker" broker 2
kill "$broker"; wait "$broker" 2>/dev/null || true
# The same fan-out to streams that name no collection (the hub's shared
# ring instead of an inbox each), on an empty store: such a stream's sync
# would carry the last run's events.
broker unfiltered
"$bench" fanout --target broker --addr 127.0.0.1:18080 --pid "$broker" -n "$N" -k "$K" -b "$B" \
  --unfiltered --first-source 40 --json "$out/broker-unfiltered-fanout.json"
kill "$broker"; wait "$broker" 2>/dev/null || true

echo "== nginx + nchan"
mkdir -p "$work/nginx/tmp"
nginx -p "$work/nginx" -c "$PWD/bench/nchan/nginx.conf" 2>"$out/nginx.log" &
master=$!
pids+=("$master")
wait_port 18081
worker=$(pgrep -P "$master" | head -n 1)
measure nchan 127.0.0.1:18081 "$worker" nchan 100
kill "$master"; wait "$master" 2>/dev/null || true

echo
"$bench" compare "$out/broker-subscribers.json" "$out/nchan-subscribers.json"
echo
"$bench" compare "$out/broker-fanout.json" "$out/nchan-fanout.json"
echo
echo "unfiltered streams (the shared ring):"
"$bench" compare "$out/broker-unfiltered-fanout.json" "$out/nchan-fanout.json"
