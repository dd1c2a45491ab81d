# syntax=docker/dockerfile:1
# Retail Pulse: one image for every role (`serve`, `worker`, `migrate`, the client).
#   docker build -t retail-pulse .
#   docker run -p 8080:8080 retail-pulse            # API + workers on SQLite in the container
# docker-compose.yml runs it on PostgreSQL with a scalable worker service.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the build between builds; the binary is copied out of
# the cached target dir because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin retail-pulse \
    && cp target/release/retail-pulse /usr/local/bin/retail-pulse

FROM debian:bookworm-slim
# ca-certificates: image hosts are fetched over HTTPS (rustls reads the system roots).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/retail-pulse \
       --create-home --shell /usr/sbin/nologin retail-pulse
COPY --from=builder /usr/local/bin/retail-pulse /usr/local/bin/retail-pulse
USER retail-pulse
# The default SQLite database (./retail-pulse.db) needs a directory this user can write.
WORKDIR /var/lib/retail-pulse
EXPOSE 8080
ENTRYPOINT ["retail-pulse"]
CMD ["serve"]
