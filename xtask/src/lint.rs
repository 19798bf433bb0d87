//! `cargo xtask lint` (also the first step of `cargo xtask test`): the style and lints the
//! compiler and clippy enforce, on the host crates and on the kernel program.
use std::process::Command;

use anyhow::Result;

use crate::{process::run, workspace_root};

/// The lints every crate is held to; warnings are errors.
const CLIPPY_DENY: [&str; 2] = ["--", "-Dwarnings"];

pub fn all() -> Result<()> {
    eprintln!("== rustfmt and clippy (warnings are errors)");
    run(Command::new("cargo").args(["fmt", "--all", "--check"]).current_dir(workspace_root()))?;
    run(Command::new("cargo")
        .args(["clippy", "-q", "--workspace", "--all-targets", "--exclude", "mptcpify-ebpf"])
        .args(CLIPPY_DENY)
        .current_dir(workspace_root()))?;
    // The kernel program only builds for the BPF target, with nightly and core built from source,
    // as mptcpify/build.rs builds it (its own target directory: other flags).
    run(Command::new("cargo")
        .args(["+nightly", "clippy", "-q", "-p", "mptcpify-ebpf", "--bins", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(workspace_root().join("target/ebpf-clippy"))
        .args(CLIPPY_DENY)
        .current_dir(workspace_root()))
}
