# syntax=docker/dockerfile:1
# contactd: one binary for every role (worker, indexer, migrate, ingest, ...).
# Build: docker build -t contactd .

# Base images are pinned to a release (CI refuses floating tags), so a rebuild
# is the build that was tested; move them on purpose.
FROM rust:1.95.0-bookworm AS build
# librdkafka is built from source by rdkafka-sys (cmake-free, needs make and a
# C toolchain, both in the image); its TLS and SASL/SCRAM and the Scylla
# driver's TLS link OpenSSL.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Release line tables make the binary 139 MB; stripped to its symbols (function
# names still in backtraces) it is 30 MB.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin contactd \
    && cp target/release/contactd /usr/local/bin/contactd \
    && strip --strip-debug /usr/local/bin/contactd

FROM debian:12.12-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/contactd --shell /usr/sbin/nologin contactd \
    && mkdir -p /var/lib/contactd \
    && chown 10001:10001 /var/lib/contactd
COPY --from=build /usr/local/bin/contactd /usr/local/bin/contactd
COPY examples/events.jsonl /usr/share/contactd/examples/events.jsonl
USER 10001:10001
WORKDIR /var/lib/contactd
# No CONTACTD__ settings here: environment variables outrank the config file,
# so any set by the image would silently override what the Helm chart and
# docker-compose write into contactd.toml (data_dir, log format and filter).
# 9464: worker metrics and probes; 9465: indexer search API, metrics and probes.
EXPOSE 9464 9465
ENTRYPOINT ["/usr/local/bin/contactd"]
CMD ["worker"]
