# syntax=docker/dockerfile:1
# The operator image: `docker build -t volcengine-ecs-operator:0.1.0 .`
#
# Builder: Debian bookworm with the stable Rust toolchain (Cargo.toml asks for 1.89 or newer);
# --locked builds exactly Cargo.lock. Runtime: distroless cc (glibc, libgcc, CA certificates,
# no shell, no package manager), as the distroless `nonroot` user 65532. The binary needs no
# files and writes none, so it runs with a read-only root filesystem (deploy/deployment.yaml).
#
# The cache mounts need BuildKit (the default builder of current Docker); they keep the
# cargo registry and the target directory between builds, so only changed crates rebuild.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ecs-operator --bin ecs-operator \
    && cp target/release/ecs-operator /ecs-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ecs-operator /ecs-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/ecs-operator"]
# `run` is the controller; the same image also runs `crd` (print the CRD) and `sweep`. The
# emulator is a test tool in its own crate and binary: it is not in this image.
CMD ["run"]
