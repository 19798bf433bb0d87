//! Building what the privileged suites, the demo and the benchmark run, and where cargo put it.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{process::run, workspace_root};

/// Paths of everything the privileged suites run.
pub struct Artifacts {
    pub mptcpify: PathBuf,
    pub privileged: PathBuf,
    pub no_hook: PathBuf,
    pub host_refuses: PathBuf,
    pub units: PathBuf,
    pub container: PathBuf,
    pub static_probe: PathBuf,
}

/// Executables cargo reports building, by target name.
fn cargo_executables(args: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let out = Command::new("cargo")
        .args(args)
        .arg("--message-format=json")
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if v["reason"] == "compiler-artifact"
            && let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str())
        {
            found.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    Ok(found)
}

fn find(list: &[(String, PathBuf)], name: &str) -> Result<PathBuf> {
    list.iter().find(|(n, _)| n == name).map(|(_, p)| p.clone()).ok_or_else(|| anyhow!("cargo built no {name}"))
}

pub fn build() -> Result<Artifacts> {
    let bins = cargo_executables(&["build", "-p", "mptcpify"])?;
    let tests = cargo_executables(&["test", "-p", "mptcpify-tests", "--no-run"])?;
    // The probe again, statically linked (glibc, crt-static): a program LD_PRELOAD cannot reach.
    let host = "x86_64-unknown-linux-gnu";
    let static_dir = workspace_root().join("target/static");
    run(Command::new("cargo")
        .args(["build", "-q", "-p", "mptcpify-tests", "--bin", "sockprobe", "--release", "--target", host])
        .arg("--target-dir")
        .arg(&static_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(workspace_root()))?;
    Ok(Artifacts {
        mptcpify: find(&bins, "mptcpify")?,
        privileged: find(&tests, "privileged")?,
        no_hook: find(&tests, "no_hook")?,
        host_refuses: find(&tests, "host_refuses")?,
        units: find(&tests, "units")?,
        container: find(&tests, "container")?,
        static_probe: static_dir.join(host).join("release/sockprobe"),
    })
}

impl Artifacts {
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("MPTCPIFY_BIN".into(), self.mptcpify.display().to_string()),
            ("MPTCPIFY_SOCKPROBE_STATIC".into(), self.static_probe.display().to_string()),
            ("MPTCPIFY_IMAGE_ARCHIVE".into(), crate::image::archive().display().to_string()),
            ("RUST_BACKTRACE".into(), "1".into()),
            (
                crate::test::PATHS_CHART_ENV.into(),
                workspace_root().join("target").join(crate::test::PATHS_CHART_DIR).display().to_string(),
            ),
        ]
    }
}

impl Artifacts {
    /// Can this host's kernel take the program? (These machines' kernels refuse fmod_ret.)
    pub fn host_accepts_program(&self) -> bool {
        Command::new(&self.mptcpify)
            .arg("probe")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}
