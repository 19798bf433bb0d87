# The agent's image for the DaemonSet (deploy/kubernetes, deploy/helm).
#   docker build -t mptcpify:0.1.0 .
# Build stage: stable Rust for the agent, nightly + bpf-linker for the kernel program (built by
# mptcpify/build.rs and embedded in the binary).
FROM rust:1.95-bookworm AS build
RUN rustup toolchain install nightly --profile minimal --component rust-src
WORKDIR /src
COPY . .
RUN cargo run -q -p xtask -- setup --build-only \
 && cargo build --release --locked -p mptcpify \
 && strip target/release/mptcpify

# Run stage: the binary needs only glibc; no shell tools, no compilers.
FROM debian:bookworm-slim
COPY --from=build /src/target/release/mptcpify /usr/local/bin/mptcpify
ENTRYPOINT ["/usr/local/bin/mptcpify"]
CMD ["agent", "--kubernetes", "--config=/etc/mptcpify/policy.toml", "--metrics-addr=0.0.0.0:9464"]
