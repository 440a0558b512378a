#!/usr/bin/env bash
# Broker from the outside: the API against its OpenAPI description
# (schemathesis), then the console and the example apps in headless Chromium.
# Needs chromium, Node.js with npm, and schemathesis (.ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin broker
npm ci --prefix e2e --no-audit --no-fund --loglevel=error
npm ci --prefix examples/broker-client --no-audit --no-fund --loglevel=error
bash e2e/api.sh target/debug/broker
npm test --prefix e2e
