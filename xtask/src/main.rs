//! `cargo xtask …`: set-up, the VM runner, the whole test pipeline and the demo.
#![deny(unsafe_code)]
mod artifacts;
mod bench;
mod bench_paths;
mod demo;
mod fuzz;
mod image;
mod kernels;
mod lint;
mod modules;
mod process;
mod setup;
mod test;
mod topology;
mod vm;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need: apt packages, nightly rust-src, bpf-linker, kernels.
    Setup {
        /// Only what building needs (nightly rust-src, bpf-linker): no VM kernels, QEMU or test
        /// tools. The Dockerfile uses this.
        #[arg(long)]
        build_only: bool,
    },
    /// Run CMD as root in a VM with the host filesystem visible; exit with CMD's status.
    Vm {
        /// A pinned kernel (6.12: Debian trixie, has the hook; 6.1: bookworm, lacks it; newest:
        /// the newest Debian ships), a version from trixie-backports (6.18, 7.3.4) or a directory.
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// Host directory to share writable (repeatable); everything else is read-only.
        #[arg(long = "rw", value_name = "DIR")]
        rw: Vec<PathBuf>,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// The VM's kernels, pinned by exact Debian package in xtask/kernels.pin.
    Kernels {
        #[command(subcommand)]
        action: Option<KernelsCmd>,
    },
    /// rustfmt and clippy (warnings are errors) on the host crates and the kernel program.
    Lint,
    /// Each fuzz target (policy, pod cgroup, kallsyms, BTF) for MPTCPIFY_FUZZ_SECONDS (20) each.
    Fuzz,
    /// Lints, unit tests, then the privileged suite (6.12 VM unless this kernel takes the program)
    /// and the negative suite (6.1 VM).
    Test,
    /// Show an unmodified program's sockets turn into MPTCP, with a real two-path connection.
    Demo,
    /// The agent's container image, built offline (Debian base by mmdebstrap, the Dockerfile by
    /// podman with a prebuilt binary); saved to target/container/mptcpify.oci.tar.
    Image,
    /// Benchmarks (in the VM): hook cost, two-path iperf3 gain beside mptcpize, control plane.
    /// Writes target/bench/results.{json,md}.
    Bench {
        /// A short run that only proves the benchmark works (CI runs it).
        #[arg(long)]
        smoke: bool,
        /// Only render target/bench/results.json again (results.md, BENCHMARKS.md); no VM.
        #[arg(long, conflicts_with = "smoke")]
        render_only: bool,
    },
    /// Internal: the measuring part of `bench`, run as root in the VM.
    #[command(name = "bench-in-vm", hide = true)]
    BenchInVm {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        smoke: bool,
    },
}

#[derive(Subcommand)]
enum KernelsCmd {
    /// Move a pin (or all) to what its Debian suite ships today, and fetch it.
    Pin { name: Option<String> },
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").to_path_buf()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup { build_only: true } => setup::rust_tools().map(|()| 0),
        Cmd::Setup { build_only: false } => setup::all().map(|()| 0),
        Cmd::Vm { kernel, rw, cmd } => vm::cli(&kernel, &cmd, &rw),
        Cmd::Kernels { action: None } => kernels::list().map(|()| 0),
        Cmd::Kernels { action: Some(KernelsCmd::Pin { name }) } => kernels::move_pins(name.as_deref()).map(|()| 0),
        Cmd::Lint => lint::all().map(|()| 0),
        Cmd::Fuzz => fuzz::all().map(|ran| {
            fuzz::print_summary(&ran);
            0
        }),
        Cmd::Test => test::all().map(|()| 0),
        Cmd::Demo => demo::run().map(|()| 0),
        Cmd::Image => image::build().map(|_| 0),
        Cmd::Bench { render_only: true, .. } => {
            bench::write_reports(&workspace_root().join("target/bench"), false).map(|()| 0)
        }
        Cmd::Bench { smoke, render_only: false } => bench::run(smoke).map(|()| 0),
        Cmd::BenchInVm { out, smoke } => bench::in_vm(&out, smoke).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
