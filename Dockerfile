# Builds sluice-scheduler, sluice-executor and sluice into one runtime image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sluice-scheduler /src/target/release/sluice-executor /src/target/release/sluice /usr/local/bin/
RUN mkdir -p /var/lib/sluice
EXPOSE 50050
CMD ["sluice-scheduler", "--bind-host", "0.0.0.0"]
