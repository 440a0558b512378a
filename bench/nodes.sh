# Sourced by bench/cluster.sh and bench/cluster-fanout.sh: the release build,
# fresh databases on the PostgreSQL server at $PG, and Broker nodes on them,
# all stopped and dropped on exit.
PG=${PG:-postgres://postgres@127.0.0.1:5432}
out=target/bench
bench=target/release/broker-bench
mkdir -p "$out"
cargo build --release --workspace --quiet
pids=() addrs=() databases=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  for d in "${databases[@]}"; do
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $d WITH (FORCE)" || true
  done
}
trap cleanup EXIT

# create_database NAME: a new empty database, dropped on exit.
create_database() {
  psql "$PG/postgres" -qc "CREATE DATABASE $1"
  databases+=("$1")
}

# start_nodes COUNT FIRST_PORT DATABASE LOG_PREFIX: nodes on FIRST_PORT+1…
# (with the options in $NODE_ARGS),
# waited for until ready; sets $all and $pidlist (comma-separated).
start_nodes() {
  for i in $(seq 1 "$1"); do
    # shellcheck disable=SC2086 # NODE_ARGS: more options, split on spaces
    target/release/broker --host 127.0.0.1 --port "$(($2 + i))" --database-url "$PG/$3" ${NODE_ARGS:-} \
      2>"$out/$4-node-$i.log" &
    pids+=($!) addrs+=("127.0.0.1:$(($2 + i))")
  done
  for a in "${addrs[@]}"; do
    for _ in $(seq 100); do curl -fsS "http://$a/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  done
  all=$(IFS=,; echo "${addrs[*]}") pidlist=$(IFS=,; echo "${pids[*]}")
}
