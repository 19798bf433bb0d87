//! `cargo xtask fuzz`: each fuzz target of `fuzz/` (cargo fuzz, libFuzzer) for a bounded time,
//! from its committed seeds; a crash, a failed assertion or a hang fails the run and leaves the
//! input under `fuzz/artifacts/`.
use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{process::run, workspace_root};

/// What mptcpify reads from untrusted sources, one target each.
pub const TARGETS: [&str; 4] = ["policy", "pod_cgroup", "kallsyms", "kernel_btf"];
/// Per target, unless `MPTCPIFY_FUZZ_SECONDS` says otherwise.
const DEFAULT_TIME: Duration = Duration::from_secs(20);
/// One input taking longer than this is a finding (a hang).
const INPUT_TIMEOUT_SECS: u32 = 10;

/// How one target's run went.
#[derive(Debug, PartialEq, Eq)]
pub struct Ran {
    pub target: &'static str,
    pub executions: u64,
    pub corpus: u64,
}

/// libFuzzer's `-print_final_stats=1` line `stat::NAME: VALUE`.
fn stat(output: &str, name: &str) -> Option<u64> {
    output.lines().find_map(|l| l.strip_prefix(&format!("stat::{name}:"))?.trim().parse().ok())
}

pub fn install() -> Result<()> {
    if Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz");
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--version", "^0.13", "--locked"]))
}

fn run_target(fuzz: &Path, target: &'static str, time: Duration) -> Result<Ran> {
    let corpus = workspace_root().join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    let seeds = fuzz.join("seeds").join(target);
    let mut cmd = Command::new(fuzz.join("target/x86_64-unknown-linux-gnu/release").join(target));
    cmd.arg(format!("-artifact_prefix={}/", fuzz.join("artifacts").display()))
        .arg(format!("-max_total_time={}", time.as_secs()))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .args(["-rss_limit_mb=2048", "-print_final_stats=1"])
        .arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    std::fs::create_dir_all(fuzz.join("artifacts"))?;
    let out = cmd.output().with_context(|| format!("running fuzz target {target}"))?;
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = text.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("fuzz target {target} found an input that fails (saved under fuzz/artifacts/):\n{}", tail.join("\n"));
    }
    Ok(Ran {
        target,
        executions: stat(&text, "number_of_executed_units").unwrap_or(0),
        corpus: std::fs::read_dir(&corpus)?.count() as u64,
    })
}

/// Builds the targets and runs each; the summary lines name executions and findings.
pub fn all() -> Result<Vec<Ran>> {
    install()?;
    let time = std::env::var("MPTCPIFY_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_TIME, Duration::from_secs);
    let fuzz = workspace_root().join("fuzz");
    // Its own target directory (`fuzz/target`), where the targets are run from below.
    run(Command::new("cargo")
        .args(["+nightly", "fuzz", "build", "-O"])
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(&fuzz))?;
    let mut ran = Vec::new();
    for target in TARGETS {
        eprintln!("== fuzz {target} ({} s)", time.as_secs());
        let r = run_target(&fuzz, target, time)?;
        if r.executions == 0 {
            bail!("fuzz target {target} ran no input");
        }
        ran.push(r);
    }
    Ok(ran)
}

pub fn print_summary(ran: &[Ran]) {
    for r in ran {
        println!("fuzz {}: {} executions, corpus {} inputs, no findings", r.target, r.executions, r.corpus);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_are_read() {
        let err = "Done 12 runs\nstat::number_of_executed_units: 293518\nstat::average_exec_per_sec:     13977\n";
        assert_eq!(stat(err, "number_of_executed_units"), Some(293518));
        assert_eq!(stat(err, "average_exec_per_sec"), Some(13977));
        assert_eq!(stat("", "number_of_executed_units"), None);
    }
}
