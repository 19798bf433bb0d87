//! `cargo xtask test`: unit tests on the host, then the privileged suites on real kernels.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Result, anyhow, bail};

use crate::{
    artifacts::{self, Artifacts},
    kernels,
    process::run,
    setup, vm, workspace_root,
};

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
pub fn run_suite(name: &str, exe: &Path, place: &Where, env: &[(String, String)], filters: &[&str]) -> Result<Counts> {
    let mut argv = vec![exe.display().to_string(), "--test-threads=1".into()];
    argv.extend(filters.iter().map(|f| f.to_string()));
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
            // The main suite's ~80 tests take about a quarter of an hour under TCG; the VM's own
            // default (15 min) is for single commands.
            opts.timeout = std::time::Duration::from_secs(40 * 60);
            let out = vm::run_in_vm_once_more_if_crashed(&opts, &workspace_root(), &argv, name)?;
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

/// Unit tests and the deployment files' tests: everything that needs no root.
fn host_tests() -> Result<()> {
    eprintln!("== unit tests (host, no root needed)");
    run(Command::new("cargo").args(["test", "-q"]).current_dir(workspace_root()))?;
    eprintln!("== deployment files: manifests, and the Helm chart as Helm renders it, as Kubernetes API types");
    let rendered = render_chart("helm-rendered", None)?;
    let limited = render_chart("helm-rendered-netpol", Some(r#"{"metrics": {"networkPolicy": {"enabled": true}}}"#))?;
    let paths = render_chart(PATHS_CHART_DIR, Some(PATHS_VALUES))?;
    // A grant is asked for by the policy too: `pod_paths = true` only in a comment is not the
    // policy saying it, and `[paths]` goes with nodePaths both ways.
    let refused = [
        (r#"{"podPaths": {"enabled": true}, "policy": "[kubernetes]\n# pod_paths = true\n"}"#, "podPaths.enabled"),
        (r#"{"nodePaths": {"enabled": true}, "policy": "[enable]\n# [paths]\n"}"#, "go together"),
        (r#"{"policy": "[paths]\nauto = true\n"}"#, "go together"),
    ];
    for (values, says) in refused {
        eprintln!("== the chart refuses {values}");
        let out = Command::new(crate::setup::helm_python())
            .arg(workspace_root().join("deploy/helm/render.py"))
            .arg(workspace_root().join("deploy/helm/mptcpify"))
            .arg(workspace_root().join("target/helm-rendered-refused"))
            .arg(values)
            .output()?;
        let said = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !said.contains(says) {
            bail!("the chart rendered {values}, or refused it for another reason than {says:?}: {said}");
        }
    }
    run(Command::new("cargo")
        .args(["test", "-q", "-p", "mptcpify-tests", "--test", "deploy"])
        .env("MPTCPIFY_RENDERED_CHART", &rendered)
        .env("MPTCPIFY_RENDERED_CHART_NETPOL", &limited)
        .env(PATHS_CHART_ENV, &paths)
        .current_dir(workspace_root()))
}

/// The chart with both paths features on, as the deploy tests and the container suite read it.
const PATHS_VALUES: &str = r#"{"podPaths": {"enabled": true}, "nodePaths": {"enabled": true},
    "policy": "[kubernetes]\ncgroup_driver = \"auto\"\npod_paths = true\n\n[paths]\nauto = true\n"}"#;
pub const PATHS_CHART_ENV: &str = "MPTCPIFY_RENDERED_CHART_PATHS";
pub const PATHS_CHART_DIR: &str = "helm-rendered-paths";

/// Renders the chart with Helm into `target/DIR`, with `values` (JSON) over its defaults.
fn render_chart(dir: &str, values: Option<&str>) -> Result<std::path::PathBuf> {
    let out = workspace_root().join("target").join(dir);
    let _ = std::fs::remove_dir_all(&out);
    run(Command::new(crate::setup::helm_python())
        .arg(workspace_root().join("deploy/helm/render.py"))
        .arg(workspace_root().join("deploy/helm/mptcpify"))
        .arg(&out)
        .args(values))?;
    Ok(out)
}

/// The privileged tests that also run on the newest kernel (libtest filters).
const NEWEST_KERNEL_TESTS: [&str; 2] = ["core::", "compat::"];

/// A privileged suite that ran, for the summary.
struct Ran {
    /// `privileged suite (6.12 VM)`.
    title: String,
    counts: Counts,
    secs: u64,
}

impl Where {
    fn describe(self) -> String {
        match self {
            Where::Host => "this kernel".to_owned(),
            Where::Vm(k) => match kernels::pinned(k) {
                Ok(pin) if pin.name != pin.release() => format!("{k} VM, {}", pin.release()),
                _ => format!("{k} VM"),
            },
        }
    }
}

fn timed_suite(name: &str, exe: &Path, place: Where, a: &Artifacts) -> Result<Ran> {
    filtered_suite(name, exe, place, a, &[])
}

fn filtered_suite(name: &str, exe: &Path, place: Where, a: &Artifacts, filters: &[&str]) -> Result<Ran> {
    let t = Instant::now();
    let counts = run_suite(name, exe, &place, &a.env(), filters)?;
    Ok(Ran { title: format!("{name} ({})", place.describe()), counts, secs: t.elapsed().as_secs() })
}

/// Every privileged suite, none skipped: the main one where the program loads, this host's
/// refusal where it does not, the systemd units (a VM of their own: systemd runs as PID 1 of a
/// PID namespace there) and the negative suite on 6.1.
fn privileged_suites(a: &Artifacts) -> Result<Vec<Ran>> {
    let place = if a.host_accepts_program() { Where::Host } else { Where::Vm("6.12") };
    eprintln!("== privileged suite ({})", place.describe());
    let mut ran = vec![timed_suite("privileged suite", &a.privileged, place, a)?];
    if let Where::Vm(_) = place {
        // Which options MPTCP refuses differs between kernels (TCP_MAXSEG, TCP_AO_*, …), and the
        // hook's surroundings move: the core and compatibility tests also run on the newest kernel.
        let newest = Where::Vm("newest");
        eprintln!("== core and compatibility tests ({})", newest.describe());
        ran.push(filtered_suite("core and compatibility tests", &a.privileged, newest, a, &NEWEST_KERNEL_TESTS)?);
        eprintln!("== this host's refusal of fmod_ret programs, as a user meets it");
        ran.push(timed_suite("host refusal suite", &a.host_refuses, Where::Host, a)?);
    }
    eprintln!("== systemd unit suite");
    ran.push(timed_suite("systemd unit suite", &a.units, place, a)?);
    eprintln!("== negative suite in the 6.1 VM (no update_socket_protocol)");
    ran.push(timed_suite("negative suite", &a.no_hook, Where::Vm("6.1"), a)?);
    eprintln!("== the agent's container image, built offline");
    let t = Instant::now();
    let size = crate::image::build()?;
    println!("container image: {:.1} MB, built in {} s", size as f64 / 1e6, t.elapsed().as_secs());
    eprintln!("== container suite: the DaemonSet's container under podman + crun ({})", place.describe());
    ran.push(timed_suite("container suite", &a.container, place, a)?);
    Ok(ran)
}

pub fn all() -> Result<()> {
    let start = Instant::now();
    setup::all()?;
    crate::lint::all()?;
    host_tests()?;
    let fuzzed = crate::fuzz::all()?;
    let a = artifacts::build()?;
    let ran = privileged_suites(&a)?;
    eprintln!("== benchmark smoke run (6.12 VM)");
    let t = Instant::now();
    crate::bench::run(true)?;
    println!();
    println!("benchmark smoke run: completed in {} s", t.elapsed().as_secs());
    crate::fuzz::print_summary(&fuzzed);
    for r in &ran {
        println!("{}: {} passed, 0 failed, 0 skipped in {} s", r.title, r.counts.passed, r.secs);
    }
    println!("xtask test: finished in {} s", start.elapsed().as_secs());
    let passed: u32 = ran.iter().map(|r| r.counts.passed).sum();
    println!("privileged: {passed} passed, 0 failed, 0 skipped");
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
