//! The negative suite: a kernel without `update_socket_protocol` (Debian bookworm's 6.1). Every
//! command must say so clearly and leave nothing behind. Run in the 6.1 VM by `cargo xtask test`.
use mptcpify_tests::*;

fn assert_hook_missing(stderr: &str) {
    assert!(stderr.contains("no update_socket_protocol() hook"), "{stderr}");
    assert!(stderr.contains("needs Linux >= 6.6"), "{stderr}");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(release.starts_with("6.1."), "this suite runs on the 6.1 kernel, not {release}");
    assert!(stderr.contains(release.trim()), "the error names the running kernel: {stderr}");
}

#[test]
fn enable_explains_the_missing_hook_and_leaves_nothing() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-nohook");
    let pid = std::process::id().to_string();
    for args in [vec!["enable", "--cgroup", cg.relative.as_str()], vec!["enable", "--pid", pid.as_str()]] {
        let stderr = fails(&args, "update_socket_protocol");
        assert_hook_missing(&stderr);
        assert!(mptcpify_pins().is_empty(), "{:?}", mptcpify_pins());
    }
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_TCP);
}

#[test]
fn probe_explains_the_missing_hook() {
    let _g = setup();
    assert_hook_missing(&fails(&["probe"], "update_socket_protocol"));
    assert!(mptcpify_pins().is_empty());
}

#[test]
fn status_and_reset_still_work() {
    let _g = setup();
    let status = status_json();
    assert_eq!(status["loaded"], false);
    assert!(ok(&["status"]).contains("not loaded"));
    assert!(ok(&["reset"]).contains("nothing was loaded"));
    fails(&["disable", "--pid", "1"], "not loaded");
}

#[test]
fn doctor_fails_on_the_missing_hook() {
    let _g = setup();
    let out = mptcpify(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let level =
        |name: &str| v["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["level"].clone();
    assert_eq!(level("kernel"), "FAIL", "{v}");
    assert_eq!(level("hook"), "FAIL", "{v}");
    assert_eq!(level("program"), "FAIL", "{v}");
    assert_eq!(level("privileges"), "OK");
    assert!(mptcpify_pins().is_empty());
}
