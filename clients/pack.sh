#!/usr/bin/env bash
# Until @broker/client and @broker/react are published: builds both and
# packs them into tarballs that `npm install` takes in any folder.
#
#   bash clients/pack.sh [DIR]      # DIR defaults to target/npm
#   npm install DIR/broker-client-*.tgz DIR/broker-react-*.tgz
set -euo pipefail
cd "$(dirname "$0")"
out=$(realpath -m "${1:-../target/npm}")
mkdir -p "$out"
# The client first: the hooks are built against it. `npm pack` builds each
# (its prepack script) and keeps only dist/ and the README.
for package in js react; do
  npm ci --prefix "$package" --no-audit --no-fund --loglevel=error
  (cd "$package" && npm pack --pack-destination "$out" --loglevel=error >/dev/null)
done
ls "$out"/broker-client-*.tgz "$out"/broker-react-*.tgz
