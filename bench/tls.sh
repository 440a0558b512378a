#!/usr/bin/env bash
# HTTPS side by side: Broker (--tls-cert) and nginx + nchan over TLS (one
# worker), each measured with event streams over HTTP/1.1 (h1), over HTTP/2
# with one stream per connection (h2) and with S streams per connection as
# a browser shares one among its tabs (h2s), a fresh server for every line.
# Prints each pair with its ratios. Results go to target/bench/tls-*.json.
#   N subscribers (18000), K single events (50), B events in the burst (20),
#   S streams per shared HTTP/2 connection (6).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-18000} K=${K:-50} B=${B:-20} S=${S:-6}
# shellcheck source=bench/lib.sh
. bench/lib.sh
prepare

make_cert "$work"

source=2
# run <what> <name> <target> <port> <start command…>: a fresh server, one measurement.
run() {
  local what=$1 name=$2 target=$3 port=$4 mode=()
  shift 4
  [[ $name == *-h2 ]] && mode=(--http2)
  [[ $name == *-h2s ]] && mode=(--http2 --h2-streams "$S")
  "$@" &
  local server=$!
  pids+=("$server")
  wait_port "$port"
  local pid=$server
  [ "$target" = nchan ] && pid=$(pgrep -P "$server" | head -n 1)
  local args=(--tls-ca "$work/ca.pem" "${mode[@]}" "$what" --target "$target"
    --addr "127.0.0.1:$port" --pid "$pid" -n "$N" --first-source "$source"
    --json "$out/tls-$name-$what.json")
  [ "$what" = fanout ] && args+=(-k "$K" -b "$B")
  echo "== $name $what"
  "$bench" "${args[@]}"
  source=$((source + 10))
  kill "$server"; wait "$server" 2>/dev/null || true
}

broker() {
  local data
  data=$(mktemp -d -p "$work")
  exec target/release/broker --host 127.0.0.1 --port 18443 --save-path "$data" --secret bench \
    --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" 2>>"$out/tls-broker.log"
}
nginx_nchan() {
  local prefix
  prefix=$(mktemp -d -p "$work")
  mkdir -p "$prefix/tmp"
  # Beside the configuration, where nginx looks for relative paths.
  cp "$work/cert.pem" "$work/key.pem" bench/nchan/nginx-tls.conf "$prefix/"
  exec nginx -p "$prefix" -c "$prefix/nginx-tls.conf" 2>>"$out/tls-nginx.log"
}

for what in subscribers fanout; do
  for mode in h1 h2 h2s; do
    run "$what" "broker-$mode" broker 18443 broker
    run "$what" "nchan-$mode" nchan 18444 nginx_nchan
  done
done

for what in subscribers fanout; do
  for mode in h1 h2 h2s; do
    echo
    echo "## $what over $mode"
    "$bench" compare "$out/tls-broker-$mode-$what.json" "$out/tls-nchan-$mode-$what.json"
  done
done
