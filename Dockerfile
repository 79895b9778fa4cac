# tracknum's image: build in the official Rust image, run on Debian slim as a non-root user.
#
#   docker build -t tracknum .
#   docker run -p 8080:8080 -v tracknum-data:/data tracknum            # embedded store in /data
#   docker run -p 8080:8080 -e REDIS_URL=redis://redis:6379 -e TRACKNUM_SECRET=... tracknum
#
# Builder and runtime share one Debian release, so the binary finds the glibc it was linked with.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /build

# Dependencies first, in their own layer: a change to the code alone does not rebuild them.
# Cargo loads the whole workspace: every member's manifest and every target they declare, so
# each target gets an empty stand-in here (tests/api/recipes.rs fails when one is missing from
# this list). The image holds tracknum alone: the load tester's stand-in stays, never built.
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml ./loadtest/
RUN mkdir -p src benches loadtest/src \
 && echo '' > src/lib.rs \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > benches/issue.rs \
 && echo 'fn main() {}' > loadtest/src/main.rs \
 && cargo build --release --locked --bin tracknum \
 && rm -rf src benches

# The real sources. COPY keeps their modification times, which can be older than the stand-ins'
# build; touching them makes cargo rebuild the crate instead of keeping the stand-in.
COPY src ./src
COPY benches ./benches
RUN find src benches -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --bin tracknum

FROM debian:${DEBIAN_RELEASE}-slim

# curl runs the health check; ca-certificates lets tracknum verify a rediss:// server. Nothing
# else is added. Not pinned: bookworm's security updates replace the exact version.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed uid and gid, so volumes and Kubernetes' runAsUser can name them.
RUN groupadd --system --gid 10001 tracknum \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin tracknum \
 && mkdir /data \
 && chown 10001:10001 /data

COPY --from=builder /build/target/release/tracknum /usr/local/bin/tracknum

# The embedded store lives in /data (unused with REDIS_URL). A new named volume mounted there
# starts out owned by tracknum; a bind-mounted directory must be writable by uid 10001.
ENV TRACKNUM_LISTEN=0.0.0.0:8080 \
    TRACKNUM_DATA_DIR=/data
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8080

# Liveness: the process answers. The port is taken from TRACKNUM_LISTEN, so a changed port
# is still checked (a shell command, for that expansion). Readiness (/readyz) is left to
# whatever routes traffic (Compose, Kubernetes).
# hadolint ignore=DL3025
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS -o /dev/null "http://127.0.0.1:${TRACKNUM_LISTEN##*:}/healthz" || exit 1

# tracknum drains in-flight requests on SIGTERM (up to --drain-timeout, 10 s) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tracknum"]
