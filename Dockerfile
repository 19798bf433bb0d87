# The agent's image for the DaemonSet (deploy/kubernetes, deploy/helm).
#   docker build -t mptcpify:0.1.0 .                         # compiles the agent in a Rust image
#   podman build --build-arg BINARY=prebuilt --build-arg BASE=IMAGE -t mptcpify:0.1.0 DIR
#                                                            # DIR holds a built ./mptcpify (what
#                                                            # `cargo xtask image` does offline)
# Builders skip the stages the final one does not use (BuildKit, buildah).

# The run stage's base: anything with glibc >= Debian 12's.
ARG BASE=debian:bookworm-slim
# Where the binary comes from: `build` (compiled below) or `prebuilt` (the build context's
# ./mptcpify, built beforehand: no Rust image needed).
ARG BINARY=build

# Stable Rust for the agent, nightly + bpf-linker for the kernel program (built by
# mptcpify/build.rs and embedded in the binary).
FROM rust:1.95-bookworm AS build
RUN rustup toolchain install nightly --profile minimal --component rust-src
WORKDIR /src
COPY . .
RUN cargo run -q -p xtask -- setup --build-only \
 && cargo build --release --locked -p mptcpify \
 && strip -o /mptcpify target/release/mptcpify

FROM scratch AS prebuilt
COPY mptcpify /mptcpify

FROM ${BINARY} AS binary

# Run stage: the binary needs only glibc; no shell tools, no compilers.
FROM ${BASE}
COPY --from=binary /mptcpify /usr/local/bin/mptcpify
ENTRYPOINT ["/usr/local/bin/mptcpify"]
CMD ["agent", "--kubernetes", "--config=/etc/mptcpify/policy.toml", "--metrics-addr=0.0.0.0:9464"]
