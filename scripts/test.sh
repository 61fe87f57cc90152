#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need,
# starts the real servers on 127.0.0.1, builds the binaries the multi-process
# tests spawn, and runs every test with cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}

need_apt=()
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v npm >/dev/null || need_apt+=(npm)
command -v curl >/dev/null || need_apt+=(curl)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} with apt-get" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

source scripts/test-servers.sh

# The binaries the tests start, built with the tests' feature set (dev
# dependencies included) so they share one build of DataFusion and Ballista
# with the test targets instead of a second one.
cargo build --workspace --all-targets
status=0
cargo nextest run --workspace --no-fail-fast "$@" || status=$?
if [ "$status" -ne 0 ]; then
  echo "test logs (servers, schedulers, executors) are kept in $SLUICE_TEST_LOGS" >&2
fi
exit "$status"
