#!/usr/bin/env bash
# The S3 commit benchmark (issue: rename-free multipart committer) on the
# fastest local S3 server we can install: s3s-fs 0.14.1 (a file-system S3
# server, ~2.5x faster than moto here), on 127.0.0.1. Prints the JSON of
# `sluice-bench s3-commit`; extra arguments go to it (--rows, --partitions).
# `--moto` as the first argument runs the same bench on the tests' moto server
# instead (the version scripts/test-servers.sh pins), for a second server's costs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}
server_kind=s3s-fs
if [ "${1:-}" = "--moto" ]; then
  server_kind=moto
  shift
fi
cargo build --release --quiet -p sluice-test-support --bin sluice-bench

root=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
if [ "$server_kind" = moto ]; then
  # The tests' pinned moto, in the tests' venv.
  moto_version=$(sed -n 's/^MOTO_VERSION=//p' scripts/test-servers.sh)
  venv="${SLUICE_TEST_CACHE:-$HOME/.cache/sluice-test}/venv"
  if ! "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$moto_version')" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "moto[server]==$moto_version"
  fi
  name="moto $moto_version"
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$root.log" 2>&1 &
else
  tools="$HOME/.cache/sluice-test/s3s-fs"
  if [ ! -x "$tools/bin/s3s-fs" ]; then
    echo "installing s3s-fs 0.14.1 into $tools" >&2
    cargo install --locked --quiet --root "$tools" s3s-fs --version 0.14.1 --features binary
  fi
  name="s3s-fs 0.14.1"
  mkdir -p "$root/bench"
  "$tools/bin/s3s-fs" --host 127.0.0.1 --port "$port" \
    --access-key bench --secret-key benchsecret "$root" >"$root.log" 2>&1 &
fi
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$root" "$root.log"' EXIT
for _ in $(seq 1 150); do
  curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/" && break
  sleep 0.2
done
if [ "$server_kind" = moto ]; then
  curl -s -o /dev/null -X PUT "http://127.0.0.1:$port/bench"
fi

export AWS_ENDPOINT_URL_S3="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=bench \
  AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
"$CARGO_TARGET_DIR/release/sluice-bench" s3-commit --bucket bench --server "$name" "$@"
