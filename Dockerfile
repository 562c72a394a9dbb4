# syntax=docker/dockerfile:1
#
# keysmith operator image.
#   docker build -t keysmith:dev .
# The binary is linked against glibc (TLS is rustls with ring: no OpenSSL), so the runtime is
# distroless "cc" on Debian 12, the same glibc generation as the bookworm builder.
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

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="keysmith" \
      org.opencontainers.image.description="Kubernetes operator that creates API keys at AI and compute providers and delivers them into Secrets" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /keysmith /keysmith
# 65532 is distroless' "nonroot"; numeric so runAsNonRoot can verify it.
USER 65532:65532
# /metrics, /healthz, /readyz (keysmith run --metrics-addr)
EXPOSE 8080
ENTRYPOINT ["/keysmith"]
CMD ["run"]
