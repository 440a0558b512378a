#!/usr/bin/env bash
# 150,000 streams on 8 Broker nodes sharing one PostgreSQL database, each
# stream on a collection of its own; R events a second (spread over the
# nodes' publishers) for T seconds, each into one stream's collection, so
# that most events cross from the node that took the insert to another.
# Results in target/bench/c8-channels.json.
#   N streams (150000), R events a second (2000), T seconds (30).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-150000} R=${R:-2000} T=${T:-30} NODES=${NODES:-8} PROCS=${PROCS:-24}
. bench/nodes.sh
db=broker_channels_$$
create_database "$db"

echo "== Broker: $NODES nodes, $N streams, $R events a second"
start_nodes "$NODES" 18300 "$db" c8ch
"$bench" channels --addr "$all" --pid "$pidlist" -n "$N" --procs "$PROCS" -r "$R" -t "$T" \
  --first-source 2 --json "$out/c8-channels.json" | grep -v '^{'
