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
ARG RUST_IMAGE=rust:1.95-bookworm
ARG BASE_IMAGE=gcr.io/distroless/static-debian12:nonroot

# The builder runs on the target platform (emulated for cross builds): musl's gcc wrapper then
# compiles aws-lc natively and no cross toolchain is needed.
FROM ${RUST_IMAGE} AS build
ARG TARGETARCH
ARG TRUSTED_PRODUCT_CODES=""
ARG TRUSTED_KEYS_DIR=trusted-keys
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN ENTITLEMENT_GATE_TRUSTED_PRODUCT_CODES="${TRUSTED_PRODUCT_CODES}" \
    ENTITLEMENT_GATE_TRUSTED_KEYS_DIR="/src/${TRUSTED_KEYS_DIR}" \
    scripts/build-static.sh "${TARGETARCH:-$(uname -m)}" /out

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
# Where the seller publishes the source of this build, e.g. --build-arg SOURCE_URL=https://...
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="entitlement-gate" \
      org.opencontainers.image.description="Lets a paid AWS Marketplace container start only for entitled buyers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}"
COPY --from=build /out/entitlement-gate /entitlement-gate
USER 65532:65532
ENTRYPOINT ["/entitlement-gate"]
CMD ["check"]
