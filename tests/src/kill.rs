//! Killing `mptcpify` at a chosen system call, by strace's fault injection: how the tests show
//! that an edit killed at any step leaves state the next command repairs.
use std::process::Command;

use crate::{mptcpify_bin, text};

/// The calls among `syscalls` (strace's comma list) that one run of `mptcpify ARGS` makes, in
/// order, each as its name and first argument (`bpf(BPF_MAP_UPDATE_ELEM`); it must succeed.
/// (With `-f` and `-o`, strace starts each line with the thread's PID: left out.)
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
        .map(|l| l.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start())
        .filter_map(|l| {
            l.split_once('(').map(|(name, rest)| format!("{name}({}", rest.split(',').next().unwrap_or("")))
        })
        .collect();
    assert!(!calls.is_empty(), "no call of {syscalls} seen for {args:?}");
    calls
}

/// How many calls of each system call `calls` holds, by name, in the order first seen.
pub fn per_syscall(calls: &[String]) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for c in calls {
        let name = c.split('(').next().unwrap_or(c).to_owned();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, k)) => *k += 1,
            None => counts.push((name, 1)),
        }
    }
    counts
}

/// Runs `mptcpify ARGS`, killed (SIGKILL) on entering its `n`th call of `syscall` (1-based;
/// strace counts each system call of an injection set on its own, so one is injected at a
/// time); whether it died.
pub fn killed_at(syscall: &str, n: usize, args: &[&str]) -> bool {
    let out = Command::new("strace")
        .args(["-qq", "-f", "-o", "/dev/null", "-e"])
        .arg(format!("trace={syscall}"))
        .arg("-e")
        .arg(format!("inject={syscall}:signal=KILL:when={n}"))
        .arg(mptcpify_bin())
        .args(args)
        .output()
        .unwrap();
    !out.status.success()
}
