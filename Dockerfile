# syntax=docker/dockerfile:1
# atp's image: atpd (the entrypoint) and atpctl, run as uid 65532.
#
#   docker build -t atp:0.1.0 .
#   docker run -p 50051:50051 -p 9464:9464 -v atp-data:/var/lib/atp atp:0.1.0
#
# The build steps live in scripts/docker/build.sh so they run natively too
# (scripts/docker-native-check, in CI). The toolchain matches the one the
# repository is tested with (rustc 1.95.0); protoc is the vendored one
# (tools/protoc, through .cargo/config.toml), so the builder needs nothing
# beyond the Rust image. Needs BuildKit (Docker 23+ by default) for the
# cache mounts.

FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/docker/build.sh /out

FROM debian:bookworm-slim
COPY --from=builder /out/usr/local/bin/atpd /out/usr/local/bin/atpctl /usr/local/bin/
COPY --from=builder /out/etc/atp/atpd.toml /etc/atp/atpd.toml
COPY --from=builder --chown=65532:65532 /out/var/lib/atp /var/lib/atp
# No name needed: Kubernetes' runAsNonRoot checks the numeric uid.
USER 65532:65532
WORKDIR /var/lib/atp
EXPOSE 50051 9464
ENTRYPOINT ["atpd"]
CMD ["--config", "/etc/atp/atpd.toml"]
