#!/usr/bin/env bash
# Retention under load: one collection getting R updates a second, spread
# over K event names, for T seconds, read by N streams; each backend
# (SQLite, PostgreSQL) with `--retention latest=1` and without (`all`).
# Reports the insert latency and the insert-to-last-stream latency (p50,
# p99), the events the collection holds at the end (with latest=1: K, plus
# what the sweep, once a second, has not reached yet), and the size of the
# database every 10 s (SQLite: the file and its WAL; PostgreSQL: the events
# table with its indexes). Results in target/bench/retention-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100} R=${R:-1000} T=${T:-60} K=${K:-100}  # BACKENDS="sqlite postgres"
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432/postgres}
# shellcheck source=bench/lib.sh
. bench/lib.sh
prepare

# size <backend> <data folder or database URL>: bytes held.
size() {
  case $1 in
    sqlite) du -cb "$2"/broker.sqlite3* | tail -1 | cut -f1 ;;
    postgres) psql "$2" -Atc "SELECT pg_total_relation_size('events')" ;;
  esac
}

# held <backend> <data folder or database URL>: events stored.
held() {
  case $1 in
    sqlite) python3 -c "import sqlite3,sys; print(sqlite3.connect(f'file:{sys.argv[1]}/broker.sqlite3?mode=ro', uri=True).execute('SELECT count(*) FROM events').fetchone()[0])" "$2" ;;
    postgres) psql "$2" -Atc "SELECT count(*) FROM events" ;;
  esac
}

# run <sqlite|postgres> <retention>
run() {
  local name="$1-${2//[=,]/}" where db=()
  where="$work/$name"
  if [ "$1" = postgres ]; then
    psql "$PGURL" -qc "DROP DATABASE IF EXISTS bench_retention" -c "CREATE DATABASE bench_retention"
    where="${PGURL%/*}/bench_retention"
    db=(--database-url "$where")
  fi
  target/release/broker --host 127.0.0.1 --port 18080 --save-path "$work/$name" --secret bench \
    --retention "$2" "${db[@]}" 2>>"$out/retention-broker.log" &
  local pid=$!
  pids+=("$pid")
  wait_port 18080
  echo "== $1, --retention $2: $R updates a second to $K names for $T s, read by $N streams"
  (while sleep 10; do size "$1" "$where"; done) >"$out/retention-$name.sizes" &
  local sizer=$!
  "$bench" rate --addr 127.0.0.1:18080 --pid "$pid" -n "$N" -r "$R" -t "$T" --names "$K" \
    --json "$out/retention-$name.json" | grep -v '^{' || true
  kill "$sizer"
  echo "size every 10 s (bytes): $(tr '\n' ' ' <"$out/retention-$name.sizes")"
  echo "events held at the end: $(held "$1" "$where")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for backend in ${BACKENDS:-sqlite postgres}; do
  run "$backend" all
  run "$backend" latest=1
done
