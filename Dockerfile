# syntax=docker/dockerfile:1
# entitlement-gate: a static binary on a minimal, scannable base (AWS Marketplace rejects
# `FROM scratch` images as unscannable).
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/entitlement-gate:0.1.0 .
#
# Locked build (recommended for listings): embed the product codes and public keys this image will
# accept, so a buyer cannot point it at another product or key:
#   --build-arg TRUSTED_PRODUCT_CODES=abc123xyz --build-arg TRUSTED_KEYS_DIR=trusted-keys
# with trusted-keys/<version>.pem in the build context.
#
# Prebuilt binary (a machine that cannot pull the Rust image, or a CI that already built it): build
# it with scripts/build-static.sh (target/static/<arch>/entitlement-gate, locked or open as its
# environment says), then
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg BINARY_SOURCE=prebuilt -t ... .
# The final stage is the same either way; only where /out comes from differs.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG BASE_IMAGE=gcr.io/distroless/static-debian12:nonroot
# build: compile in the builder stage below; prebuilt: take target/static/<arch>/ from the context.
ARG BINARY_SOURCE=build

# The builder runs on the build machine's own platform and cross-compiles for each target platform
# (cargo-zigbuild, zig as C compiler and linker): no emulation, and both architectures share the
# tools layer. .dockerignore admits only what the build reads.
FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
ENV ENTITLEMENT_GATE_TOOLS_DIR=/opt/build-tools
# Tools first, in their own layer: it changes only with the script or the pinned versions.
COPY scripts/build-static.sh scripts/build-tools.txt scripts/
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    scripts/build-static.sh --install-tools
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY emulator emulator
# A workspace member (the benchmarks' load generator): cargo reads every member's manifest.
COPY bench/meter-load bench/meter-load
COPY trusted-keys trusted-keys
ARG TARGETARCH
ARG TRUSTED_PRODUCT_CODES=""
ARG TRUSTED_KEYS_DIR=trusted-keys
# The registry and the target directory (one per architecture) persist across builds: an edit to
# src/ recompiles the gate, not its 200 dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,id=entitlement-gate-target-${TARGETARCH} \
    ENTITLEMENT_GATE_TRUSTED_PRODUCT_CODES="${TRUSTED_PRODUCT_CODES}" \
    ENTITLEMENT_GATE_TRUSTED_KEYS_DIR="/src/${TRUSTED_KEYS_DIR}" \
    scripts/build-static.sh "${TARGETARCH}" /out \
 # The metering sidecar's state directory, owned by the image's user: the volume ECS or
 # Kubernetes mounts there is writable although the root filesystem is read-only.
 && mkdir -p /out/var/lib/entitlement-gate/meter

# The binary scripts/build-static.sh wrote for this architecture; the state directory as above.
FROM scratch AS prebuilt
ARG TARGETARCH
# (WORKDIR creates the directory; podman's buildah only when a later step writes to the stage.)
WORKDIR /out/var/lib/entitlement-gate/meter
COPY target/static/${TARGETARCH}/entitlement-gate /out/entitlement-gate

# Only the chosen stage is built (BuildKit and podman skip a stage nothing uses).
FROM ${BINARY_SOURCE} AS binary

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
# Where the seller publishes the source of this build, e.g. --build-arg SOURCE_URL=https://...
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="entitlement-gate" \
      org.opencontainers.image.description="Lets a paid AWS Marketplace container start only for entitled buyers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}"
COPY --from=binary /out/entitlement-gate /entitlement-gate
COPY --from=binary --chown=65532:65532 /out/var/lib/entitlement-gate /var/lib/entitlement-gate
USER 65532:65532
ENTRYPOINT ["/entitlement-gate"]
CMD ["check"]
