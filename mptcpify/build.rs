//! Builds the kernel program (mptcpify-ebpf) for the bpfel target with nightly + bpf-linker and
//! leaves it in OUT_DIR, from where `loader.rs` embeds it with `include_bytes!`.
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root_dir = format!("{manifest_dir}/../mptcpify-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package { name: "mptcpify-ebpf", root_dir: &root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
