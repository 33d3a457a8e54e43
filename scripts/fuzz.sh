#!/usr/bin/env bash
# Runs every fuzz target in the module for FUZZTIME each (default 60s), one
# target per `go test` run (-fuzz takes a single target). Seed corpora under
# testdata/fuzz run as ordinary tests in `make test`; this explores further.
# Usage: scripts/fuzz.sh [PACKAGE...]   (default: every package with a Fuzz func)
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-60s}
pkgs=("$@")
if [ ${#pkgs[@]} -eq 0 ]; then
  mapfile -t pkgs < <(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u)
fi
total=0
for pkg in "${pkgs[@]}"; do
  for name in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
    echo "== $name ($pkg, $fuzztime)"
    go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$pkg" 2>&1 | tail -n 3
    total=$((total + 1))
  done
done
echo "fuzzed $total targets for $fuzztime each"
