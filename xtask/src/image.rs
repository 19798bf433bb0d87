//! `cargo xtask image`: the agent's container image, built offline. No registry is reachable
//! here, so the base is made from Debian's packages (mmdebstrap, through the machine's own
//! mirror) and imported as a local image; the shipped Dockerfile then builds on it with its
//! `prebuilt` stage, which takes the release binary built here instead of a Rust image.
//! Everything lives in a private podman store under `target/container`, so the host's own
//! images are untouched; the result is saved as an OCI archive for the container suite.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{process::run, workspace_root};

/// The image's name, as the manifest and the chart name it (a local short name resolves to
/// `localhost/`).
pub const IMAGE: &str = "localhost/mptcpify:0.1.0";
/// The imported base: glibc and libgcc, what the binary links against, nothing else.
const BASE_IMAGE: &str = "localhost/mptcpify-base:bookworm";
/// The binary is built on Debian 12 (bookworm): its glibc is the oldest the base may have.
const BASE_SUITE: &str = "bookworm";
const BASE_PACKAGES: &str = "libc6,libgcc-s1";

pub fn dir() -> PathBuf {
    workspace_root().join("target/container")
}

/// The saved image, which `podman load` takes.
pub fn archive() -> PathBuf {
    dir().join("mptcpify.oci.tar")
}

/// podman with the private store.
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--root").arg(dir().join("storage")).arg("--runroot").arg(dir().join("run"));
    cmd.args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
    cmd
}

/// Builds the image and saves it; returns its size in bytes as podman reports it.
pub fn build() -> Result<u64> {
    let context = dir().join("context");
    std::fs::create_dir_all(&context)?;
    run(Command::new("cargo").args(["build", "--release", "-q", "-p", "mptcpify"]).current_dir(workspace_root()))?;
    let binary = workspace_root().join("target/release/mptcpify");
    run(Command::new("strip").arg("-o").arg(context.join("mptcpify")).arg(&binary))?;
    import_base()?;
    run(podman()
        .args(["build", "--quiet", "--isolation", "chroot", "--build-arg", "BINARY=prebuilt"])
        .arg("--build-arg")
        .arg(format!("BASE={BASE_IMAGE}"))
        .arg("-f")
        .arg(workspace_root().join("Dockerfile"))
        .args(["-t", IMAGE])
        .arg(&context))?;
    let _ = std::fs::remove_file(archive());
    run(podman().args(["save", "--quiet", "--format", "oci-archive", "-o"]).arg(archive()).arg(IMAGE))?;
    let out = podman().args(["image", "inspect", "--format", "{{.Size}}", IMAGE]).output()?;
    let size = String::from_utf8_lossy(&out.stdout).trim().parse().context("reading the image's size")?;
    eprintln!("image: {IMAGE}, {:.1} MB, saved to {}", size as f64 / 1e6, archive().display());
    Ok(size)
}

/// Makes the base from Debian's packages once (unpacked only: glibc needs no maintainer
/// scripts) and imports it.
fn import_base() -> Result<()> {
    if podman().args(["image", "exists", BASE_IMAGE]).status()?.success() {
        return Ok(());
    }
    let tar = dir().join("base.tar");
    let mirror = crate::kernels::mirror()?;
    run(Command::new("mmdebstrap")
        .args(["--quiet", "--variant=extract", &format!("--include={BASE_PACKAGES}"), BASE_SUITE])
        .arg(&tar)
        .arg(format!("deb {mirror} {BASE_SUITE} main")))?;
    run(podman().arg("import").arg(&tar).arg(BASE_IMAGE).arg("--quiet"))
}
