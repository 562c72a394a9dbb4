# syntax=docker/dockerfile:1
#
# keysmith operator image, for people who have Docker (BuildKit):
#   docker build -t keysmith:dev .
# Without Docker or a registry, scripts/build-image.sh builds the same image with buildah from
# the release binary (reproducibly: same digest on a rebuild); that is the one the node e2e tests
# run. Both images hold the same files: the root filesystem of scripts/image-rootfs.sh (Debian
# 12's libc6 and libgcc-s1 — the binary links glibc; TLS is rustls, no OpenSSL — the Mozilla CA
# bundle from ca-certificates, a nonroot user 65532, /tmp) and the stripped binary at /keysmith.
# Multi-arch: `docker buildx build --platform linux/amd64,linux/arm64 .` builds natively per
# platform (no cross toolchain needed).

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build
# Strip symbols from the release binary without changing Cargo.toml's release profile.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never
# The whole source tree minus .dockerignore (target/, .git, charts, docs, ...): cargo needs
# every target Cargo.toml declares, even those it does not build.
COPY . .
# Cache mounts keep the registry and build artefacts between builds (BuildKit); the binary is
# copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin keysmith \
 && install -m 0755 target/release/keysmith /keysmith \
 && /keysmith --version

# The root filesystem, made by the same script as scripts/build-image.sh uses.
FROM debian:bookworm AS rootfs
RUN apt-get update \
 && apt-get install -y --no-install-recommends mmdebstrap ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/image-rootfs.sh /image-rootfs.sh
ARG SOURCE_DATE_EPOCH=0
RUN SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH} /image-rootfs.sh /rootfs bookworm

FROM scratch
COPY --from=rootfs /rootfs/ /
COPY --from=builder /keysmith /keysmith
LABEL org.opencontainers.image.title="keysmith" \
      org.opencontainers.image.description="Kubernetes operator that creates API keys at AI and compute providers and delivers them into Secrets" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="scratch (Debian 12 libc6, libgcc-s1, ca-certificates)"
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# 65532 is "nonroot" in /etc/passwd; numeric so runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /
# /metrics, /healthz, /readyz (keysmith run --metrics-addr)
EXPOSE 8080
# `keysmith run` by default; `keysmith emulate <provider> ...` runs a provider emulator.
ENTRYPOINT ["/keysmith"]
CMD ["run"]
