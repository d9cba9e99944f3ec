# npd-agent with its eBPF object embedded: `docker build -t npd .`
#
# The build stage is Debian 12 like the development machines: the nightly toolchain builds
# the eBPF crate (rust-src, -Z build-std), bpf-linker is built against the LLVM major of that
# nightly (llvm-22 comes from bookworm-security), and `cargo xtask build` does the rest.
FROM debian:bookworm AS build
ARG RUST_STABLE=1.95.0
ARG RUST_NIGHTLY=nightly-2026-05-19
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH \
    NPD_EBPF_TOOLCHAIN=${RUST_NIGHTLY}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates curl gcc libc6-dev pkg-config \
      llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
# rustup-init straight from static.rust-lang.org (what sh.rustup.rs fetches), to a file: a
# failed download must fail the build, not pipe nothing into sh.
RUN curl -sSfo /tmp/rustup-init \
      "https://static.rust-lang.org/rustup/dist/$(uname -m)-unknown-linux-gnu/rustup-init" \
 && chmod +x /tmp/rustup-init \
 && /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain ${RUST_STABLE} \
 && rm /tmp/rustup-init \
 && rustup toolchain install ${RUST_NIGHTLY} --profile minimal --component rust-src \
 && LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --locked \
      --no-default-features --features llvm-22
WORKDIR /src
COPY . .
# The image's files, laid out by the same code that writes `cargo xtask image`'s OCI archive
# (npd_tests::images::agent): the agent and the shared libraries ldd resolves for it.
RUN cargo xtask build \
 && cargo xtask image --agent target/release/npd-agent --rootfs /rootfs

# The runtime image: just the agent and glibc, no shell; the same files and the same
# entrypoint as `cargo xtask image` builds without Docker.
FROM scratch
COPY --from=build /rootfs/ /
# The agent needs root for its capabilities (see deploy/base/daemonset.yaml); it writes nothing.
ENTRYPOINT ["/usr/local/bin/npd-agent"]
CMD ["run"]
