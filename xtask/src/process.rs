//! Running other programs: the one place xtask starts a command and checks how it ended.
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Runs a command with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs `sh -c CMD` (stderr inherited); fails unless it exits 0; returns its stdout.
pub fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").arg("-c").arg(cmd).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("`{cmd}` failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
