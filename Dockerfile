# syntax=docker/dockerfile:1

# ---- build ------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# Compile-time checked queries (if any) read the prepared metadata in .sqlx/
# instead of a live database.
ENV SQLX_OFFLINE=true

# The whole workspace is copied: Cargo.toml declares tests and benches whose
# files must exist, and migrations/ is embedded into the binary.
COPY . .

RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin okr-exporter \
 && install -m 0755 target/release/okr-exporter /usr/local/bin/okr-exporter

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

# /backfill: where `okr-exporter backfill` writes in docker-compose.yml. An
# empty named volume mounted there takes this directory's owner, so user
# 10001 can write it and others (promtool as nobody) read it.
#
# No PostgreSQL server in the image: `demo` without --database-url needs local
# server binaries; the compose stack uses its postgres service instead.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 okr \
 && useradd --system --uid 10001 --gid okr --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin okr \
 && install -d -o 10001 -g 10001 -m 0755 /backfill

COPY --from=builder /usr/local/bin/okr-exporter /usr/local/bin/okr-exporter

# Inside a container the exporter must listen on all interfaces; the default
# 127.0.0.1 would be unreachable from Prometheus.
ENV OKR_LISTEN=0.0.0.0:9464

USER 10001:10001
EXPOSE 9464 8080

ENTRYPOINT ["okr-exporter"]
CMD ["serve"]
