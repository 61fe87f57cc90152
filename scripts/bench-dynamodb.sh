#!/usr/bin/env bash
# The DynamoDB limiter benchmark: starts DynamoDB Local (and moto) on
# 127.0.0.1 like the tests, builds the binaries, and runs the bench, which
# prints JSON on stdout. The writers are I/O-bound, so the dev profile is
# used (the release profile works too: BENCH_PROFILE=release).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}
profile=${BENCH_PROFILE:-dev}
source scripts/test-servers.sh
cargo build --profile "$profile" --workspace --bins
# --workspace, not -p: the same feature set as the build above, so nothing is rebuilt.
cargo bench --profile "$profile" --workspace --bench dynamodb
