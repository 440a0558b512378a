#!/usr/bin/env bash
# vendor/h2 is h2 0.4.20 from crates.io plus vendor/h2.patch, and nothing
# else: its src/ patched, its licence, and its manifest without examples,
# benches and dev-dependencies. This script rebuilds that from the published
# crate (Cargo's registry cache if it holds it, else crates.io), checked
# against its checksum, and
#
#   bash vendor/update-h2.sh          # checks that vendor/h2 is exactly that (CI runs this)
#   bash vendor/update-h2.sh --write  # writes it into vendor/h2 (after changing the patch)
#   bash vendor/update-h2.sh --diff   # writes vendor/h2.patch from vendor/h2 (after editing its src/)
#
# It also checks that every hunk of the patch adds a line marked "Broker:",
# and that Cargo.lock uses vendor/h2 rather than the registry's h2.
# To move to another release: change VERSION and SHA256 (crates.io's index
# has the checksum), run --write, mend what does not apply, run --diff.
set -euo pipefail
VERSION=0.4.20
SHA256=7d29020232d6aa3fb1daca64c1127cf662cf97f254ae16c18c05b8ab635fc118
cd "$(dirname "$0")"
mode=${1:---check}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/h2-$VERSION.crate 2>/dev/null | head -n 1 || true)
if [ -z "$crate" ]; then
  crate=$work/h2-$VERSION.crate
  curl -sSfL --max-time 60 -o "$crate" "https://static.crates.io/crates/h2/h2-$VERSION.crate" || {
    echo "update-h2: cannot fetch h2 $VERSION (not in Cargo's cache, crates.io unreachable)" >&2
    exit 1
  }
fi
echo "$SHA256  $crate" | sha256sum --check --quiet || {
  echo "update-h2: $crate does not have the checksum of h2 $VERSION" >&2
  exit 1
}
tar xzf "$crate" -C "$work"

# What is kept of the published crate: src/, the licence, and the manifest
# trimmed (Cargo's generated header, readme, examples, benches and
# dev-dependencies left out) under a header of our own.
keep() {
  mkdir -p "$2"
  cp -R "$1/src" "$1/LICENSE" "$2/"
  {
    echo "# h2 $VERSION from crates.io with Broker's patch (vendor/h2.patch): its buffers"
    echo "# are taken when needed and given back when idle (see vendor/README.md)."
    echo "# Made by vendor/update-h2.sh: only src/, the licence and this manifest"
    echo "# are kept; examples, benches and dev-dependencies are left out."
    awk '
      /^\[/ { skip = ($0 ~ /^\[\[(example|bench)\]\]$/ || $0 ~ /^\[dev-dependencies/) }
      skip { next }
      !body && (/^#/ || /^$/) { next }
      /^readme = / { next }
      { body = 1; print }' "$1/Cargo.toml"
  } >"$2/Cargo.toml"
}
keep "$work/h2-$VERSION" "$work/pristine/h2-$VERSION"

case "$mode" in
  --diff)
    mkdir -p "$work/ours/h2"
    cp -R h2/src "$work/ours/h2/"
    (cd "$work" && diff -ruN "pristine/h2-$VERSION/src" ours/h2/src) | sed \
      -e "s|^diff -ruN pristine/h2-$VERSION/src/\([^ ]*\) ours/h2/src/.*|diff -ruN h2-$VERSION/src/\1 h2/src/\1|" \
      -e "s|^--- pristine/h2-$VERSION/|--- h2-$VERSION/|" -e "s|^+++ ours/h2/|+++ h2/|" \
      -e 's#^\(---\|+++\) \([^[:space:]]*\).*#\1 \2#' >h2.patch || true
    echo "wrote vendor/h2.patch"
    ;;
  --write | --check)
    cp -R "$work/pristine/h2-$VERSION" "$work/patched"
    patch --quiet --no-backup-if-mismatch -d "$work/patched" -p1 <h2.patch
    if [ "$mode" = --write ]; then
      rm -rf h2 && cp -R "$work/patched" h2
      echo "wrote vendor/h2"
    elif ! diff -r "$work/patched" h2; then
      echo "update-h2: vendor/h2 is not h2 $VERSION plus vendor/h2.patch (see the diff above)" >&2
      exit 1
    fi
    ;;
  *)
    echo "usage: bash vendor/update-h2.sh [--check | --write | --diff]" >&2
    exit 2
    ;;
esac

# Every hunk adds at least one line that says "Broker:".
awk '
  /^@@/ { if (hunk && !marked) { print "update-h2: a hunk of vendor/h2.patch without a Broker: mark: " hunk; bad = 1 } hunk = FILENAME ":" FNR ": " $0; marked = 0 }
  /^\+.*Broker:/ { marked = 1 }
  END { if (hunk && !marked) { print "update-h2: a hunk of vendor/h2.patch without a Broker: mark: " hunk; bad = 1 } exit bad }' h2.patch >&2

# Cargo drops a [patch] that no longer fits (a newer h2 wanted by hyper) with
# a mere warning: then the lock file names h2 from the registry.
awk '/^name = "h2"$/ { h2 = 1; next } h2 && /^source = / { bad = 1 } /^$/ { h2 = 0 } END { exit bad }' ../Cargo.lock || {
  echo "update-h2: Cargo.lock takes h2 from the registry: the patch in Cargo.toml is not used" >&2
  exit 1
}
[ "$mode" = --diff ] || echo "vendor/h2 is h2 $VERSION plus vendor/h2.patch, every hunk marked, and in use"
