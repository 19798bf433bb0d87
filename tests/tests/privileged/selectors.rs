//! Command, user and system-wide rules, exclusions, the never-break namespace check, and
//! rules that follow a recreated cgroup.
use std::process::Command;

use mptcpify_tests::*;

/// The probe under another command name.
fn renamed_probe(name: &str) -> std::path::PathBuf {
    let path = std::path::PathBuf::from("/tmp").join(name);
    std::fs::copy(world_runnable(&sockprobe_bin()), &path).unwrap();
    path
}

/// `SO_PROTOCOL` of a tcp4 socket made by the probe as uid 65534 (nobody).
fn proto_as_nobody(cg: Option<&TestCgroup>) -> i64 {
    let bin = renamed_probe("probe-nobody");
    let args = ["--reuid=65534", "--regid=65534", "--clear-groups", bin.to_str().unwrap(), "tcp4"];
    let out = run_in(cg, std::path::Path::new("/usr/bin/setpriv"), &args);
    parse_probe(&out)["tcp4"]["proto"]
}

#[test]
fn a_comm_rule_selects_by_command_name() {
    let _g = setup();
    let other = renamed_probe("otherprobe");
    ok(&["enable", "--comm", "sockprobe"]);
    assert_eq!(proto_of(None, "tcp4"), IPPROTO_MPTCP);
    assert_eq!(parse_probe(&run_in(None, &other, &["tcp4"]))["tcp4"]["proto"], IPPROTO_TCP);
    fails(&["enable", "--comm", "a-name-longer-than-15"], "at most 15");
    let status = status_json();
    assert_eq!(status["rules"][0]["kind"], "comm");
    assert_eq!(status["rules"][0]["key"], "sockprobe");
    assert!(status["counters"]["upgraded_by_comm"].as_u64().unwrap() >= 1);
}

/// Servers name their threads (`worker-3`, `tokio-runtime-w`): a command-name rule is about the
/// program, so it decides for every thread of it. An exclusion that missed a named thread would
/// hand a program that needs kTLS or TCP_MD5SIG an MPTCP socket.
#[test]
fn comm_rules_match_the_program_not_its_named_threads() {
    let _g = setup();
    ok(&["enable", "--all"]);
    ok(&["exclude", "--comm", "sockprobe"]);
    let got = protocols(None, &["tcp4", "tcp4@worker-3", "tcp6@tokio-runtime-w"]);
    assert_eq!(got["tcp4"], IPPROTO_TCP, "the main thread is excluded");
    assert_eq!(got["tcp4@worker-3"], IPPROTO_TCP, "a named thread of an excluded program is excluded");
    assert_eq!(got["tcp6@tokio-runtime-w"], IPPROTO_TCP, "{got:?}");
    ok(&["reset"]);
    ok(&["enable", "--comm", "sockprobe"]);
    let got = protocols(None, &["tcp4@worker-3"]);
    assert_eq!(got["tcp4@worker-3"], IPPROTO_MPTCP, "a named thread of an enabled program is upgraded");
    // A thread named like an enabled program does not make another program selected.
    let other = renamed_probe("otherprobe");
    let out = parse_probe(&run_in(None, &other, &["tcp4@sockprobe"]));
    assert_eq!(out["tcp4@sockprobe"]["proto"], IPPROTO_TCP, "{out:?}");
}

#[test]
fn a_uid_rule_selects_by_user() {
    let _g = setup();
    ok(&["enable", "--uid", "nobody"]);
    assert_eq!(proto_as_nobody(None), IPPROTO_MPTCP);
    assert_eq!(proto_of(None, "tcp4"), IPPROTO_TCP, "root is not selected");
    assert_eq!(status_json()["rules"][0]["key"], 65534);
    fails(&["enable", "--uid", "no-such-user-xyz"], "no user named");
}

#[test]
fn all_with_exclusions_is_the_fleet_default() {
    let _g = setup();
    let excluded = TestCgroup::new("mptcpify-t-excl");
    let excluded_child = TestCgroup::new("mptcpify-t-excl/child");
    let other = renamed_probe("otherprobe");
    ok(&["enable", "--all"]);
    assert_eq!(proto_of(None, "tcp4"), IPPROTO_MPTCP);
    ok(&["exclude", "--cgroup", &excluded.relative, "--comm", "otherprobe", "--uid", "65534"]);
    assert_eq!(proto_of(Some(&excluded), "tcp4"), IPPROTO_TCP);
    assert_eq!(proto_of(Some(&excluded_child), "tcp4"), IPPROTO_TCP, "exclusions cover descendants");
    assert_eq!(parse_probe(&run_in(None, &other, &["tcp4"]))["tcp4"]["proto"], IPPROTO_TCP);
    assert_eq!(proto_as_nobody(None), IPPROTO_TCP);
    assert_eq!(proto_of(None, "tcp4"), IPPROTO_MPTCP, "everyone else is still upgraded");
    let status = status_json();
    assert!(status["counters"]["excluded"].as_u64().unwrap() >= 4, "{status}");
    assert!(status["counters"]["upgraded_by_all"].as_u64().unwrap() >= 2, "{status}");
    let actions: Vec<_> =
        status["rules"].as_array().unwrap().iter().map(|r| (r["action"].clone(), r["kind"].clone())).collect();
    assert!(actions.contains(&("exclude".into(), "cgroup".into())), "{actions:?}");
    assert!(actions.contains(&("enable".into(), "all".into())), "{actions:?}");
    ok(&["disable", "--all"]);
    assert_eq!(proto_of(None, "tcp4"), IPPROTO_TCP);
}

#[test]
fn an_exclusion_wins_at_any_depth() {
    let _g = setup();
    let parent = TestCgroup::new("mptcpify-t-depth");
    let child = TestCgroup::new("mptcpify-t-depth/a/b");
    ok(&["enable", "--cgroup", &child.relative]);
    ok(&["exclude", "--cgroup", &parent.relative]);
    assert_eq!(proto_of(Some(&child), "tcp4"), IPPROTO_TCP, "excluded ancestor beats enabled leaf");
    ok(&["disable", "--cgroup", &parent.relative, "--cgroup", &child.relative]);
    ok(&["enable", "--cgroup", &parent.relative]);
    ok(&["exclude", "--cgroup", &child.relative]);
    assert_eq!(proto_of(Some(&child), "tcp4"), IPPROTO_TCP, "excluded leaf beats enabled ancestor");
    assert_eq!(proto_of(Some(&parent), "tcp4"), IPPROTO_MPTCP);
}

/// The program caches each caller cgroup's walk through the cgroup rules; every edit must show
/// on the very next socket of a caller whose answer is cached. `other` keeps a cgroup rule in
/// place throughout, so the program keeps consulting its cache.
#[test]
fn cached_cgroup_decisions_follow_every_rule_change() {
    use std::os::unix::fs::MetadataExt as _;
    let _g = setup();
    let parent = TestCgroup::new("mptcpify-t-cache");
    let leaf = TestCgroup::new("mptcpify-t-cache/a/b");
    let other = TestCgroup::new("mptcpify-t-cache-other");
    let unrelated = TestCgroup::new("mptcpify-t-cache-unrelated");
    let rule_hits = |cg: &TestCgroup| -> u64 {
        let id = std::fs::metadata(&cg.path).unwrap().ino();
        let status = status_json();
        let rule = status["rules"].as_array().unwrap().iter().find(|r| r["key"] == id);
        rule.unwrap_or_else(|| panic!("no rule for {}: {status}", cg.relative))["hits"].as_u64().unwrap()
    };
    ok(&["enable", "--cgroup", &other.relative]);
    assert_eq!(proto_of(Some(&leaf), "tcp4"), IPPROTO_TCP, "no rule above the leaf (walk cached)");
    assert_eq!(proto_of(Some(&leaf), "tcp4"), IPPROTO_TCP, "same answer from the cache");
    ok(&["enable", "--cgroup", &parent.relative]);
    assert_eq!(proto_of(Some(&leaf), "tcp4"), IPPROTO_MPTCP, "a new ancestor rule beats a cached no-match");
    let hits = rule_hits(&parent);
    assert_eq!(proto_of(Some(&leaf), "tcp4"), IPPROTO_MPTCP);
    assert_eq!(rule_hits(&parent), hits + 1, "a cached decision still counts its rule's hit");
    ok(&["exclude", "--cgroup", &leaf.relative]);
    assert_eq!(proto_of(Some(&leaf), "tcp4"), IPPROTO_TCP, "a new exclusion beats a cached enable");
    ok(&["disable", "--cgroup", &leaf.relative]);
    assert_eq!(proto_of(Some(&leaf), "tcp4"), IPPROTO_MPTCP, "a removed exclusion no longer decides");
    ok(&["enable", "--cgroup", &unrelated.relative]);
    ok(&["disable", "--cgroup", &unrelated.relative]);
    assert_eq!(proto_of(Some(&leaf), "tcp4"), IPPROTO_MPTCP, "unrelated edits change nothing here");
    ok(&["disable", "--cgroup", &parent.relative]);
    assert_eq!(proto_of(Some(&leaf), "tcp4"), IPPROTO_TCP, "a removed ancestor rule no longer decides");
    assert_eq!(proto_of(Some(&other), "tcp4"), IPPROTO_MPTCP);
}

#[test]
fn enable_and_exclude_of_one_target_conflict_and_change_nothing() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-conflict");
    ok(&["enable", "--cgroup", &cg.relative]);
    let before = state_snapshot();
    fails(&["exclude", "--cgroup", &cg.relative, "--comm", "x"], "is enabled; `mptcpify disable` it first");
    assert_eq!(state_snapshot(), before);
    fails(&["exclude"], "nothing to exclude");
    ok(&["disable", "--cgroup", &cg.relative]);
    ok(&["exclude", "--cgroup", &cg.relative]);
    assert_eq!(status_json()["rules"][0]["action"], "exclude");
}

#[test]
fn a_namespace_with_mptcp_disabled_keeps_working_tcp_sockets() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-netns");
    let ns = "mptcpify-t-off";
    let ip = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
    let _ = Command::new("ip").args(["netns", "del", ns]).stderr(std::process::Stdio::null()).status();
    ip(&["netns", "add", ns]);
    ip(&["netns", "exec", ns, "sysctl", "-qw", "net.mptcp.enabled=0"]);
    ip(&["-n", ns, "link", "set", "lo", "up"]);
    ok(&["enable", "--cgroup", &cg.relative]);
    let probe = sockprobe_bin();
    let out = run_in(
        Some(&cg),
        std::path::Path::new("/usr/sbin/ip"),
        &["netns", "exec", ns, probe.to_str().unwrap(), "tcp4", "tcp6", "connect4"],
    );
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
    let p = parse_probe(&out);
    assert_eq!(p["tcp4"]["proto"], IPPROTO_TCP, "a working TCP socket, not ENOPROTOOPT: {out}");
    assert_eq!(p["tcp6"]["proto"], IPPROTO_TCP, "{out}");
    assert_eq!(p["connect4"]["client"], IPPROTO_TCP, "a real TCP connection works: {out}");
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_MPTCP, "the host namespace still upgrades");
    let status = status_json();
    assert!(status["counters"]["kept_tcp_mptcp_disabled"].as_u64().unwrap() >= 3, "{status}");
}

#[test]
fn a_recreated_cgroup_is_marked_stale_and_sync_follows_it() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-recreate");
    ok(&["enable", "--cgroup", &cg.relative]);
    let old = status_json()["rules"][0]["key"].as_u64().unwrap();
    std::fs::remove_dir(&cg.path).unwrap();
    std::fs::create_dir(&cg.path).unwrap();
    let rule = status_json()["rules"][0].clone();
    assert_eq!(rule["freshness"]["state"], "recreated", "{rule}");
    assert_eq!(rule["origin"]["kind"], "path");
    assert_eq!(rule["origin"]["text"], "/mptcpify-t-recreate");
    assert!(ok(&["status"]).contains("STALE: recreated"));
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_TCP, "the old id matches nothing");
    let out = ok(&["sync"]);
    assert!(out.contains(&format!("cgroup id {old} ->")), "{out}");
    let rule = status_json()["rules"][0].clone();
    assert_eq!(rule["freshness"]["state"], "current", "{rule}");
    assert_ne!(rule["key"].as_u64().unwrap(), old);
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_MPTCP);
    assert!(ok(&["sync"]).contains("0 rule(s) changed"));
}
