#!/usr/bin/env bash
# A newcomer's first app: both packages packed as their READMEs say,
# installed into a fresh folder outside the repository, an app written from
# the READMEs compiled with strict TypeScript and run against the binary.
#
#   bash e2e/newcomer.sh            # BROKER_BIN defaults to target/debug/broker
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BROKER_BIN:-$root/target/debug/broker}
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

bash "$root/clients/pack.sh" "$work/packages" >/dev/null
mkdir "$work/app"
cp "$root"/e2e/newcomer/{app.ts,board.tsx,tsconfig.json} "$work/app/"
cd "$work/app"
npm init -y >/dev/null
npm pkg set type=module
npm install --no-audit --no-fund --loglevel=error "$work"/packages/broker-client-*.tgz "$work"/packages/broker-react-*.tgz \
  react@19.3.1 react-dom@19.3.1 typescript@5.9.3 @types/react@19.3.3 @types/react-dom@19.3.0 @types/node@20.19.43
npx tsc -p tsconfig.json

port=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
"$bin" --host 127.0.0.1 --port "$port" --save-path "$work/data" --secret newcomer >"$work/broker.log" 2>&1 &
pid=$!
for _ in $(seq 200); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.1
done
BROKER_URL="http://127.0.0.1:$port" node --test dist/app.js || { cat "$work/broker.log" >&2; exit 1; }
