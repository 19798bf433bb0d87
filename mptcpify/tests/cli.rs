//! The CLI surface that needs no root: completions, man pages, help.
use std::process::Command;

fn mptcpify(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mptcpify")).args(args).output().unwrap()
}

#[test]
fn completions_for_every_shell_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = mptcpify(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in ["enable", "exclude", "disable", "status", "run", "monitor", "doctor", "sync"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    assert!(!mptcpify(&["completions", "tcsh"]).status.success());
}

#[test]
fn man_pages_are_generated_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = mptcpify(&["man", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    let main = std::fs::read_to_string(dir.path().join("mptcpify.1")).unwrap();
    assert!(main.contains(".TH mptcpify") && main.contains("enable"), "{main}");
    let enable = std::fs::read_to_string(dir.path().join("mptcpify-enable.1")).unwrap();
    assert!(enable.contains("\\-\\-cgroup") && enable.contains("\\-\\-all"), "{enable}");
    assert!(!dir.path().join("mptcpify-__exec.1").exists());
}
