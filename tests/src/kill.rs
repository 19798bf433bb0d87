//! Killing `mptcpify` at a chosen system call, by strace's fault injection: how the tests show
//! that an edit killed at any step leaves state the next command repairs.
use std::process::Command;

use crate::{mptcpify_bin, text};

/// The calls among `syscalls` (strace's comma list) that one run of `mptcpify ARGS` makes, in
/// order, each as its name and first argument (`bpf(BPF_MAP_UPDATE_ELEM`); it must succeed.
pub fn calls(syscalls: &str, args: &[&str]) -> Vec<String> {
    let log = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("strace")
        .args(["-qq", "-f", "-e"])
        .arg(format!("trace={syscalls}"))
        .arg("-o")
        .arg(log.path())
        .arg(mptcpify_bin())
        .args(args)
        .output()
        .expect("strace (cargo xtask setup installs it)");
    assert!(out.status.success(), "mptcpify {args:?} under strace: {}", text(&out));
    let calls: Vec<String> = std::fs::read_to_string(log.path())
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_once('(').map(|(name, rest)| format!("{name}({}", rest.split(',').next().unwrap_or("")))
        })
        .collect();
    assert!(!calls.is_empty(), "no call of {syscalls} seen for {args:?}");
    calls
}

/// Runs `mptcpify ARGS`, killed (SIGKILL) on entering its `n`th call among `syscalls`
/// (1-based); whether it died.
pub fn killed_at(syscalls: &str, n: usize, args: &[&str]) -> bool {
    let out = Command::new("strace")
        .args(["-qq", "-f", "-o", "/dev/null", "-e"])
        .arg(format!("trace={syscalls}"))
        .arg("-e")
        .arg(format!("inject={syscalls}:signal=KILL:when={n}"))
        .arg(mptcpify_bin())
        .args(args)
        .output()
        .unwrap();
    !out.status.success()
}
