#!/usr/bin/env bash
# The API against its own description: schemathesis (PyPI) generates requests
# from GET /openapi.json of a live server and checks every answer (no 5xx,
# statuses, headers, content types and bodies as described, invalid input
# refused, valid input accepted, authentication enforced).
#
# GET /events, a stream that never ends, has a pass of its own: schemathesis
# reads each stream until a short timeout and checks every SSE event in it
# against the description.
#
# Usage: e2e/api.sh [path/to/broker]   (default target/debug/broker)
set -euo pipefail
cd "$(dirname "$0")/.."
broker=${1:-target/debug/broker}
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Every generated request comes from 127.0.0.1: no per-address login or
# sign-up limit, or the fuzzed requests would lock the address out.
"$broker" --host 127.0.0.1 --port "$port" --save-path "$dir/broker.db" --secret api-test \
  --login-attempts-per-address 0 --signup-rate 0 >"$dir/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -fs "$base/healthz" >/dev/null && break; sleep 0.1; done

collection=$(python3 -c 'import uuid; print(uuid.uuid4())')
curl -fs "$base/users" -H 'content-type: application/json' \
  -d "{\"username\":\"schemathesis\",\"password\":\"pw\",\"collection_id\":\"$collection\"}" >/dev/null
# An administrator, so that /admin is exercised beyond 403 (granted on the
# running server's store, as an operator would).
"$broker" admin grant schemathesis --save-path "$dir/broker.db" 2>>"$dir/log"
login() {
  curl -fs "$base/login" -H 'content-type: application/json' -d '{"username":"schemathesis","password":"pw"}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["jwt"])'
}
jwt=$(login)

# Published events, so that streams carry some (plain and enveloped).
for name in price status; do
  curl -fs "$base/insert" -H "authorization: Bearer $jwt" -H 'content-type: application/json' \
    -d "{\"event\":\"$name\",\"collection_id\":\"$collection\",\"timestamp\":1,\"data\":{\"v\":[1,\"two\"]}}" >/dev/null
done

run() {
  schemathesis --config-file e2e/schemathesis.toml run "$base/openapi.json" --checks all \
    --header "Authorization: Bearer $jwt" --no-color --report junit --report-dir target/schemathesis "$@"
}
# Logging out, changing the password and administering accounts (the
# caller's own among them: schemathesis finds its id) revoke tokens, and
# wrong old passwords lock the name out of /login: each of these goes last,
# with a token of its own taken beforehand, the account changes last.
ending=(/logout /users/me/password '/admin/users/{id}')
tokens=()
for _ in "${ending[@]}"; do tokens+=("$(login)"); done
run --exclude-path /events "${ending[@]/#/--exclude-path=}" \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-100}" --request-timeout 10
run --include-path /events --max-examples 30 --request-timeout 1
for i in "${!ending[@]}"; do
  jwt=${tokens[$i]}
  run --include-path "${ending[$i]}" --max-examples 30 --request-timeout 10
done
if grep -q 'panicked' "$dir/log"; then
  echo "the server panicked during the run:" >&2
  grep -B2 -A5 'panicked' "$dir/log" >&2
  exit 1
fi
