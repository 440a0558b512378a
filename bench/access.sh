#!/usr/bin/env bash
# What access control costs the fan-out: `broker-bench fanout` on a public
# collection with a baseline binary (built from an earlier commit) and with
# this one, back to back, then on a private collection read by a member
# (every delivery passes a permission check). Fresh server for each run.
#   bench/access.sh BASELINE_BINARY   (ROUNDS=2 N=18000 K=200 B=100)
# Results in target/bench/access-*.json; a table at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
baseline=${1:?usage: bench/access.sh BASELINE_BINARY}
ROUNDS=${ROUNDS:-2} N=${N:-18000} K=${K:-200} B=${B:-100}
out=target/bench
mkdir -p "$out"
cargo build --release --workspace --quiet
bench=target/release/broker-bench
source=2

run() { # name binary [--private]
  local data port=18090 pid
  data=$(mktemp -d)
  "$2" --host 127.0.0.1 --port "$port" --save-path "$data" --secret bench 2>"$out/access-$1.log" &
  pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  "$bench" fanout --addr "127.0.0.1:$port" --pid "$pid" -n "$N" -k "$K" -b "$B" \
    --first-source "$source" --json "$out/access-$1.json" "${@:3}" >/dev/null
  source=$((source + 10))
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}

for round in $(seq "$ROUNDS"); do
  run "baseline-$round" "$baseline"
  run "public-$round" target/release/broker
  run "private-$round" target/release/broker --private
done
python3 - "$out" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def metric(name, key):
    data = json.load(open(f"{out}/access-{name}.json"))
    for failure in data["failures"]:
        print(f"{name}: FAILURE: {failure}")
    return data["metrics"][key]
keys = ["single event to last subscriber p50", "single event to last subscriber p99",
        "burst delivered to all", "deliveries lost"]
print("| run | " + " | ".join(keys) + " |")
print("|---" * (len(keys) + 1) + "|")
for r in range(1, rounds + 1):
    for kind in ["baseline", "public", "private"]:
        name = f"{kind}-{r}"
        print(f"| {name} | " + " | ".join(f"{metric(name, k):.3f}" for k in keys) + " |")
PY
