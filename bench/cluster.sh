#!/usr/bin/env bash
# Broker as a cluster on PostgreSQL: NODES nodes (3) of the release binary on
# one fresh database of the machine's server, then
#   1. durable inserts: 64 publishers spread over the nodes, and pgbench
#      inserting one row of the same table (same columns and indexes) per
#      transaction with 64 clients, against the same server, in the same run;
#   2. insert on the first node to delivery on 100 subscribers of the others,
#      at RATE/s (1000);
#   3. the scheduler: EVENTS (100000) future events due over WINDOW (100) s,
#      inserted over the nodes;
#      their publication lateness, none twice.
# Results go to target/bench/cluster-*.json. PG (postgres://postgres@127.0.0.1:5432)
# names the server.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-3} RATE=${RATE:-1000} EVENTS=${EVENTS:-100000} WINDOW=${WINDOW:-100} SECONDS_=${SECONDS_:-10}
. bench/nodes.sh
db=broker_bench_$$
create_database "$db"
create_database "${db}_pgbench"
start_nodes "$NODES" 18180 "$db" cluster

echo "== durable inserts: $NODES nodes, 64 publishers"
"$bench" insert --addr "$all" --pid "$pidlist" -c 64 -t "$SECONDS_" --json "$out/cluster-insert.json"

echo "== pgbench: one row per transaction, 64 clients, same server"
psql "$PG/${db}_pgbench" -q -f src/store/migrations/postgres/0001_init.sql
cat >"$out/pgbench-insert.sql" <<'SQL'
INSERT INTO events (id, user_id, collection_id, event, timestamp, data)
VALUES (gen_random_uuid(), '9b2f1c4e-0a4d-4c8e-9d67-3f1f0b5a6c11', '5d6f3a2e-8b1c-4f0a-a9e2-7c3b1d0e4f55',
        'bench', 0, '{"n":12345}');
SQL
pgbench -n -c 64 -j 2 -T "$SECONDS_" -f "$out/pgbench-insert.sql" "$PG/${db}_pgbench" | tee "$out/cluster-pgbench.txt"

echo "== insert on one node, delivery on the others: $RATE/s"
"$bench" rate --addr "$all" -n 100 -r "$RATE" -t "$SECONDS_" --first-source 30 --json "$out/cluster-rate.json"

echo "== scheduler: $EVENTS pending events over $NODES nodes"
"$bench" schedule --addr "$all" --pid "$pidlist" -e "$EVENTS" --window "$WINDOW" --json "$out/cluster-schedule.json"
