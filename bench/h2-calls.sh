#!/usr/bin/env bash
# What it costs an API call to share the streams' runtime: HTTP/2
# connections stay there (docs/architecture.md says why), HTTPS/1.1 API
# connections move to the API runtime. Times C inserts made one after the
# other on one connection with curl, over HTTP/1.1 and over HTTP/2, first
# on an idle server, then while `broker-bench rate` fans R events a second
# out to N HTTP/2 event streams (S per connection) on the same server.
#   N streams (9000), S streams per connection (6), R events a second (100),
#   C inserts per measurement (300).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-9000} S=${S:-6} R=${R:-100} C=${C:-300}
# shellcheck source=bench/lib.sh
. bench/lib.sh
prepare

make_cert "$work"

target/release/broker --host 127.0.0.1 --port 18443 --save-path "$work/data" --secret bench \
  --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" 2>>"$out/h2-calls-broker.log" &
pids+=($!)
wait_port 18443
B=https://localhost:18443
api=(curl -sS --cacert "$work/ca.pem" --resolve localhost:18443:127.0.0.1 -H 'content-type: application/json')
collection=$(cat /proc/sys/kernel/random/uuid)
"${api[@]}" -o /dev/null "$B/users" \
  -d "{\"username\":\"calls\",\"password\":\"correct horse\",\"collection_id\":\"$collection\"}"
jwt=$("${api[@]}" "$B/login" -d '{"username":"calls","password":"correct horse"}' | jq -r .jwt)

# calls <label> <curl protocol flag>: C inserts on one connection; prints
# the p50, p99 and max of their times in milliseconds (the first, which
# pays for the handshake, left out).
calls() {
  local urls=()
  for _ in $(seq "$C"); do urls+=(-o /dev/null "$B/insert"); done
  "${api[@]}" "$2" -w '%{http_code} %{time_total}\n' -H "authorization: Bearer $jwt" \
    -d "{\"event\":\"call\",\"collection_id\":\"$collection\",\"timestamp\":$(date +%s),\"data\":{}}" \
    "${urls[@]}" | tail -n +2 | awk -v label="$1" '
      $1 != 200 { bad++ } { t[NR] = $2 * 1000 }
      END { n = asort(t); printf "%-28s p50 %7.2f ms  p99 %7.2f ms  max %7.2f ms  (%d calls, %d refused)\n",
            label, t[int(n * 0.5)], t[int(n * 0.99)], t[n], n, bad }'
}

echo "== idle server"
calls "HTTPS/1.1 (API runtime)" --http1.1
calls "HTTP/2 (streams runtime)" --http2
echo "== while $R events a second fan out to $N HTTP/2 streams"
"$bench" --tls-ca "$work/ca.pem" --http2 --h2-streams "$S" rate --addr 127.0.0.1:18443 \
  -n "$N" -r "$R" -t 60 --json "$out/h2-calls-rate.json" >"$out/h2-calls-rate.txt" &
load=$!
pids+=("$load")
# Measure once every stream is open and events flow.
until grep -q 'deliveries\|"setup' "$out/h2-calls-rate.txt" 2>/dev/null \
  || [ "$(ss -Htn state established '( sport = :18443 )' | wc -l)" -ge $((N / S)) ]; do sleep 0.5; done
sleep 2
calls "HTTPS/1.1 (API runtime)" --http1.1
calls "HTTP/2 (streams runtime)" --http2
calls "HTTPS/1.1 (API runtime)" --http1.1
calls "HTTP/2 (streams runtime)" --http2
wait "$load" || true
grep -E '^  (insert to last subscriber p|deliveries lost|FAILURE)' "$out/h2-calls-rate.txt"
