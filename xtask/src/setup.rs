//! Installs what building and testing need on a fresh Debian machine: apt packages, nightly's
//! rust-src, bpf-linker. Each step is skipped when already done.
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::process::run;

/// Debian packages: QEMU 7.2 (with the C virtiofsd), a static busybox for the initramfs, the
/// tools that pack it, kmod for depmod, iproute2 and python3 for tests and the demo.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "gzip",
    "xz-utils",
    "kmod",
    "iproute2",
    "python3",
    "python3-venv",
    "libc6-dev",
    // Benchmarks: the real two-path workload and the LD_PRELOAD tool we compare with.
    "iperf3",
    "mptcpize",
    // Tests: kills edits at each of their bpf(2) calls (fault injection).
    "strace",
    // The container image, built offline, and the OCI runtime that runs it in the VM.
    "podman",
    "crun",
    "mmdebstrap",
    // The container suite: a CA for the agent's kubeconfig.
    "openssl",
    // The compatibility tests: an unmodified psql with tcp_user_timeout; AppArmor profiles.
    "postgresql-client",
    "apparmor",
];

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

pub fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
}

fn nightly_sysroot() -> Result<String> {
    let out =
        Command::new("rustc").args(["+nightly", "--print", "sysroot"]).output().context("running rustc +nightly")?;
    if !out.status.success() {
        bail!("no nightly toolchain: `rustup toolchain install nightly` (it builds the kernel program)");
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

pub fn rust_tools() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if !std::path::Path::new(&sysroot).join("lib/rustlib/src/rust/library/core").exists() {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    if Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    // bpf-linker links nightly's own libLLVM instead of needing an LLVM install.
    let lib = format!("{sysroot}/lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM-") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*.so in {lib}"))?;
    let llvm = llvm.trim_start_matches("lib").trim_end_matches(".so").to_owned();
    let major = llvm.trim_start_matches("LLVM-").split('-').next().unwrap_or("").to_owned();
    eprintln!("setup: building bpf-linker 0.13 against {llvm}");
    run(Command::new("cargo")
        .args(["+nightly", "install", "bpf-linker", "--version", "^0.13", "--locked"])
        .args(["--no-default-features", "--features", &format!("llvm-{major},no-llvm-linking")])
        .env("RUSTFLAGS", format!("-L {lib} -l dylib={llvm} -C link-arg=-Wl,-rpath,{lib}")))
}

/// Helm's template engine for rendering and linting the chart in tests: the `helm-python-sdk`
/// wheel from PyPI embeds Helm itself (no helm binary or Go toolchain can be fetched here).
pub const HELM_SDK: &str = "helm-python-sdk==0.2.2";

/// The virtualenv's python that can `import helm_python`.
pub fn helm_python() -> std::path::PathBuf {
    crate::workspace_root().join("target/tools/helm-venv/bin/python")
}

pub fn helm() -> Result<()> {
    let py = helm_python();
    if Command::new(&py).args(["-c", "import helm_python"]).output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    let venv = py.parent().and_then(|p| p.parent()).expect("venv dir");
    eprintln!("setup: installing {HELM_SDK} into {}", venv.display());
    run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
    run(Command::new(&py).args(["-m", "pip", "install", "-q", HELM_SDK]))
}

pub fn all() -> Result<()> {
    apt_packages()?;
    rust_tools()?;
    crate::fuzz::install()?;
    helm()?;
    crate::kernels::fetch_all()?;
    Ok(())
}
