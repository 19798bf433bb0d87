//! `cargo xtask test`: unit tests on the host, then the privileged suites on real kernels.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Result, anyhow, bail};

use crate::{artifacts, kernels, process::run, setup, vm, workspace_root};

/// libtest's counts from its `test result:` line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
}

pub fn parse_counts(output: &str) -> Option<Counts> {
    let line = output.lines().rev().find(|l| l.starts_with("test result:"))?;
    let num = |what: &str| -> Option<u32> {
        let i = line.find(&format!(" {what}"))?;
        line[..i].rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Some(Counts { passed: num("passed")?, failed: num("failed")?, ignored: num("ignored")? })
}

/// Where a suite runs.
#[derive(Clone, Copy)]
pub enum Where {
    Host,
    Vm(&'static str),
}

/// Runs one libtest binary as root where asked, and insists that it ran tests, all passed and
/// none was skipped.
pub fn run_suite(name: &str, exe: &Path, place: &Where, env: &[(String, String)]) -> Result<Counts> {
    let argv = vec![exe.display().to_string(), "--test-threads=1".into()];
    let (status, output) = match place {
        Where::Host => {
            // A private mount namespace with bpffs mounted, so the host's mounts stay as they are.
            let out = Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(r#"mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || exit 125; exec "$@""#)
                .arg("sh")
                .args(&argv)
                .envs(env.iter().cloned())
                .stderr(Stdio::inherit())
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            print!("{text}");
            (out.status.code().unwrap_or(-1), text)
        }
        Where::Vm(kernel) => {
            let mut opts = vm::VmOptions::new(kernels::resolve(kernel)?);
            opts.env = env.to_vec();
            // The emulated guest kernel (TCG) has oopsed once while patching its own code (an
            // int3 in kmem_cache_free as systemd started): a crashed VM, not a failed test.
            // Boot again once, loudly; test failures are never retried.
            let out = match vm::run_in_vm(&opts, &workspace_root(), &argv) {
                Err(e) if e.is::<vm::VmCrashed>() => {
                    eprintln!("xtask: {name}: the VM crashed ({e}); running the suite once more in a fresh VM");
                    vm::run_in_vm(&opts, &workspace_root(), &argv)?
                }
                other => other?,
            };
            (out.status, out.output)
        }
    };
    let counts = parse_counts(&output).ok_or_else(|| anyhow!("{name}: no `test result:` line (status {status})"))?;
    if status != 0 || counts.failed > 0 {
        bail!("{name}: {} passed, {} failed (exit status {status})", counts.passed, counts.failed);
    }
    if counts.passed == 0 || counts.ignored > 0 {
        bail!("{name}: {} passed, {} skipped: privileged tests may not be skipped", counts.passed, counts.ignored);
    }
    Ok(counts)
}

pub fn all() -> Result<()> {
    let start = Instant::now();
    setup::all()?;
    crate::lint::all()?;
    eprintln!("== unit tests (host, no root needed)");
    run(Command::new("cargo").args(["test", "-q"]).current_dir(workspace_root()))?;
    eprintln!("== deployment files: manifests, and the Helm chart as Helm renders it, as Kubernetes API types");
    let rendered = workspace_root().join("target/helm-rendered");
    let _ = std::fs::remove_dir_all(&rendered);
    run(Command::new(crate::setup::helm_python())
        .arg(workspace_root().join("deploy/helm/render.py"))
        .arg(workspace_root().join("deploy/helm/mptcpify"))
        .arg(&rendered))?;
    run(Command::new("cargo")
        .args(["test", "-q", "-p", "mptcpify-tests", "--test", "deploy"])
        .env("MPTCPIFY_RENDERED_CHART", &rendered)
        .current_dir(workspace_root()))?;
    let a = artifacts::build()?;
    let place = if a.host_accepts_program() {
        eprintln!("== privileged suite on this host's kernel (it accepts fmod_ret programs)");
        Where::Host
    } else {
        eprintln!("== privileged suite in the 6.12 VM (this host's kernel refuses fmod_ret programs)");
        Where::Vm("6.12")
    };
    let t = Instant::now();
    let privileged = run_suite("privileged suite", &a.privileged, &place, &a.env())?;
    let privileged_secs = t.elapsed().as_secs();
    let host_refusal = match place {
        Where::Vm(_) => {
            eprintln!("== this host's refusal of fmod_ret programs, as a user meets it");
            Some(run_suite("host refusal suite", &a.host_refuses, &Where::Host, &a.env())?)
        }
        Where::Host => None,
    };
    // systemd runs as PID 1 of a PID namespace in this one: a VM of its own.
    let units_place = place;
    eprintln!("== systemd unit suite");
    let t = Instant::now();
    let units = run_suite("systemd unit suite", &a.units, &units_place, &a.env())?;
    let units_secs = t.elapsed().as_secs();
    eprintln!("== negative suite in the 6.1 VM (no update_socket_protocol)");
    let t = Instant::now();
    let negative = run_suite("negative suite", &a.no_hook, &Where::Vm("6.1"), &a.env())?;
    let negative_secs = t.elapsed().as_secs();
    let place_name = match place {
        Where::Host => "host kernel".to_owned(),
        Where::Vm(k) => format!("{k} VM"),
    };
    eprintln!("== benchmark smoke run (6.12 VM)");
    let t = Instant::now();
    crate::bench::run(true)?;
    let bench_secs = t.elapsed().as_secs();
    println!();
    println!("benchmark smoke run: completed in {bench_secs} s");
    println!(
        "privileged suite ({place_name}): {} passed, 0 failed, 0 skipped in {privileged_secs} s",
        privileged.passed
    );
    println!("systemd unit suite ({place_name}): {} passed, 0 failed, 0 skipped in {units_secs} s", units.passed);
    println!("negative suite (6.1 VM): {} passed, 0 failed, 0 skipped in {negative_secs} s", negative.passed);
    let refusal = host_refusal.map_or(0, |c| c.passed);
    if let Some(c) = host_refusal {
        println!("host refusal suite (this kernel): {} passed, 0 failed, 0 skipped", c.passed);
    }
    println!("xtask test: finished in {} s", start.elapsed().as_secs());
    println!(
        "privileged: {} passed, 0 failed, 0 skipped",
        privileged.passed + units.passed + negative.passed + refusal
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_counts_are_read_from_the_last_result_line() {
        let out = "running 3 tests\ntest a ... ok\n\ntest result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.2s\n";
        assert_eq!(parse_counts(out), Some(Counts { passed: 3, failed: 0, ignored: 1 }));
        let failed = "test result: FAILED. 10 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(parse_counts(failed), Some(Counts { passed: 10, failed: 2, ignored: 0 }));
        assert_eq!(parse_counts("kernel panic"), None);
    }
}
