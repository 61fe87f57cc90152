# Builds sluice-scheduler, sluice-executor and sluice into one runtime image.
# Only the product crates: the test-support crate would turn on the test-only
# function and the benchmark committers (cargo features), which release
# images must not carry.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins -p sluice-cli -p sluice-scheduler -p sluice-executor

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid sluice --home-dir /var/lib/sluice --shell /usr/sbin/nologin sluice \
    && mkdir -p /var/lib/sluice && chown sluice:sluice /var/lib/sluice
COPY --from=build /src/target/release/sluice-scheduler /src/target/release/sluice-executor /src/target/release/sluice /usr/local/bin/
USER sluice:sluice
WORKDIR /var/lib/sluice
# The scheduler's gRPC and REST port and its coordinator (the executors'
# Flight port, 50051, is set by their own command).
EXPOSE 50050 50090
# Closed by default: a scheduler on a non-loopback address needs the
# cluster's TLS files (`sluice certs`), mounted at /etc/sluice/tls; without
# them it refuses to start, naming the missing file. docker-compose.yml runs
# its development cluster with --insecure-no-tls instead.
CMD ["sluice-scheduler", "--bind-host", "0.0.0.0", "--coordinator-addr", "0.0.0.0:50090", \
     "--tls-ca", "/etc/sluice/tls/ca.pem", "--tls-cert", "/etc/sluice/tls/node.pem", \
     "--tls-key", "/etc/sluice/tls/node.key"]
