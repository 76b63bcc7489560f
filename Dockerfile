# syntax=docker/dockerfile:1
# voucherd's image: one static-ish binary (glibc, libgcc) on debian:bookworm-slim,
# run as an unprivileged user. Build: docker build -t voucherd .
# Used by deploy/compose.yaml and deploy/k8s/. The build needs only the workspace's
# manifests and the sources the binary compiles (src/, crates/, migrations/ and cql/ are
# compiled in; stress/ is a workspace member, so its manifest must be there).

# ---- builder ----------------------------------------------------------------------
# rust-version in Cargo.toml is 1.90; bookworm matches the runtime's glibc.
FROM rust:1.90-bookworm AS builder
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
COPY stress ./stress
COPY src ./src
COPY crates ./crates
COPY migrations ./migrations
COPY cql ./cql
# The cache mounts keep the registry and compiled dependencies between builds; the
# binary is copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked -p voucherd --bin voucherd \
    && install -D -m 0755 target/release/voucherd /out/voucherd

# ---- runtime ----------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# A fixed uid/gid so that volumes and Kubernetes' runAsUser agree with the image.
RUN groupadd --system --gid 10001 voucherd \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin voucherd \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/voucherd
COPY --from=builder /out/voucherd /usr/local/bin/voucherd
USER 10001:10001
# Off loopback voucherd needs an admin token (VOUCHERD_ADMIN_TOKEN_FILE) or refuses
# to start; the embedded store (the default) lives in /var/lib/voucherd.
ENV VOUCHERD_LISTEN=0.0.0.0:8000 \
    VOUCHERD_STORE=/var/lib/voucherd \
    VOUCHERD_LOG_FORMAT=json
EXPOSE 8000
# SIGTERM: readiness turns 503, in-flight requests finish (up to 15 s), the ledger
# is flushed, exit 0.
STOPSIGNAL SIGTERM
# Healthy = ready to take traffic (/readyz answers 200). No curl in the image: bash
# speaks the one HTTP/1.0 request itself.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${VOUCHERD_LISTEN##*:} && printf 'GET /readyz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["voucherd"]
CMD ["serve"]
