#!/usr/bin/env bash
# The S3 commit benchmark (issue: rename-free multipart committer) on the
# fastest local S3 server we can install: s3s-fs 0.14.1 (a file-system S3
# server, ~2.5x faster than moto here), on 127.0.0.1. Prints the JSON of
# `sluice bench s3-commit`; extra arguments go to it (--rows, --partitions).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}
tools="$HOME/.cache/sluice-test/s3s-fs"
if [ ! -x "$tools/bin/s3s-fs" ]; then
  echo "installing s3s-fs 0.14.1 into $tools" >&2
  cargo install --locked --quiet --root "$tools" s3s-fs --version 0.14.1 --features binary
fi
cargo build --release --quiet --bin sluice

root=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$root/bench"
"$tools/bin/s3s-fs" --host 127.0.0.1 --port "$port" \
  --access-key bench --secret-key benchsecret "$root" >"$root.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$root" "$root.log"' EXIT
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break
  sleep 0.1
done

export AWS_ENDPOINT_URL_S3="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=bench \
  AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
"$CARGO_TARGET_DIR/release/sluice" bench s3-commit --bucket bench --server "s3s-fs 0.14.1" "$@"
