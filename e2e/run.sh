#!/usr/bin/env bash
# Broker from the outside: the API against its OpenAPI description
# (schemathesis); the TypeScript client (unit tests, then against the
# binary, and its size; a newcomer's app on the packed packages); then the
# console and the example apps in headless Chromium. Needs chromium,
# Node.js with npm, and schemathesis (.ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin broker
ci() { npm ci --prefix "$1" --no-audit --no-fund --loglevel=error; }
ci e2e
ci examples/broker-client
ci examples/webhook-receiver
ci clients/js
npm run --prefix clients/js build
npm test --prefix clients/js
npm run --prefix clients/js e2e
npm run --prefix clients/js size
ci clients/react
npm run --prefix clients/react build
npm test --prefix clients/react
bash e2e/newcomer.sh
ci examples/board
npm run --prefix examples/board build
bash e2e/api.sh target/debug/broker
npm test --prefix e2e
