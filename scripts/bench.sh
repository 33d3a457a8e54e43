#!/usr/bin/env bash
# Runs every benchmark scenario and writes BENCHMARKS.md (see internal/bench).
# Usage: scripts/bench.sh [benchsuite flags, e.g. --quick --out /tmp/b.md]
# Needs the bw CLI (make tools, or BROKER_BW) for the fallback scenarios.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export BROKER_BW="${BROKER_BW:-$root/tools/bw/node_modules/.bin/bw}"
bin=$(mktemp -d "${TMPDIR:-/tmp}/brkbin-XXXXXX")
trap 'rm -rf "$bin"' EXIT
go build -trimpath -o "$bin/broker" ./cmd/broker
go build -trimpath -o "$bin/brokerload" ./cmd/brokerload
go build -trimpath -o "$bin/benchsuite" ./internal/bench/benchsuite
"$bin/benchsuite" --broker "$bin/broker" --brokerload "$bin/brokerload" --module "$root" --out "$root/BENCHMARKS.md" "$@"
