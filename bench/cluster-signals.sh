#!/usr/bin/env bash
# Signals across a cluster: NODES nodes on one PostgreSQL database, N
# streams on C collections spread over the nodes, R signals a second sent
# to the nodes in turn for T seconds, so that most reach streams on other
# nodes through PostgreSQL (NOTIFY), while CHURN streams a second join and
# leave. Latency from the signal's POST to the last stream of its
# collection, on whatever node. Results in target/bench/cluster-signals.json.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-9000} C=${C:-1000} R=${R:-1000} T=${T:-10} NODES=${NODES:-3} CHURN=${CHURN:-100}
. bench/nodes.sh
db=broker_signals_$$
create_database "$db"

echo "== Broker: $NODES nodes, $N streams on $C collections, $R signals a second"
NODE_ARGS="--signal-rate 0 --presence-grace-ms 1000" start_nodes "$NODES" 18400 "$db" signals
"$bench" channels --addr "$all" --pid "$pidlist" -n "$N" --channels "$C" --signals -r "$R" -t "$T" \
  --churn "$CHURN" --procs "$NODES" --first-source 2 --json "$out/cluster-signals.json" | grep -v '^{'
