//! `mptcpify agent` on the real kernel: a policy applied, file edits and cgroup churn followed,
//! rules surviving a killed agent and adopted by the next one.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use mptcpify_tests::*;

const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

/// A scratch directory (removed on drop) and the policy file's path in it.
fn policy_dir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("policy.toml");
    (d, p)
}

fn rules_by_owner(owner: &str) -> Vec<serde_json::Value> {
    let s = status_json();
    s["rules"].as_array().unwrap().iter().filter(|r| r["owner"] == owner).cloned().collect()
}

#[test]
fn agent_applies_the_policy_and_follows_file_edits() {
    let _g = setup();
    let a = TestCgroup::new("agent-t/a");
    let b = TestCgroup::new("agent-t/b");
    let (_d, policy) = policy_dir();
    std::fs::write(&policy, "[enable]\ncgroups = [\"agent-t/a\"]\n").unwrap();
    // A CLI rule made before the agent starts is left alone.
    ok(&["enable", "--comm", "cli-owned"]);
    let agent = AgentProcess::start(&policy, &[], &[]);
    assert_eq!(proto_of(Some(&a), "tcp4"), IPPROTO_MPTCP, "{}", agent.log());
    assert_eq!(proto_of(Some(&b), "tcp4"), IPPROTO_TCP);
    let mine = rules_by_owner("agent");
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["origin"]["text"], "/agent-t/a");
    assert_eq!(rules_by_owner("cli").len(), 1);

    // Edit: a moves to b. Editors replace the file; the agent sees the rename.
    replace_file(&policy, "[enable]\ncgroups = [\"agent-t/b\"]\n");
    let switched = wait_for(Duration::from_secs(1), || {
        (proto_of(Some(&b), "tcp4") == IPPROTO_MPTCP && proto_of(Some(&a), "tcp4") == IPPROTO_TCP).then_some(())
    });
    assert!(switched.is_some(), "policy edit not applied within 1 s: {}", agent.log());
    assert_eq!(rules_by_owner("cli").len(), 1, "the CLI rule survived the reconcile");

    // An invalid file is rejected with its line; the running policy stays.
    replace_file(&policy, "[enable]\ncgroups = [\"agent-t/a\"]\ncomms = [\"this-name-is-too-long\"]\n");
    let rejected = wait_for(Duration::from_secs(5), || agent.log().contains("policy.toml:3:").then_some(()));
    assert!(rejected.is_some(), "no line-numbered rejection: {}", agent.log());
    assert!(agent.log().contains("at most 15"), "{}", agent.log());
    assert_eq!(proto_of(Some(&b), "tcp4"), IPPROTO_MPTCP, "the running policy stays in force");
    assert_eq!(proto_of(Some(&a), "tcp4"), IPPROTO_TCP);
    let m = agent.metrics();
    assert_eq!(metric(&m, "mptcpify_policy_valid"), Some(0.0), "{m}");
    assert_eq!(metric(&m, "mptcpify_program_attached"), Some(1.0), "{m}");
    assert!(metric(&m, "mptcpify_reconcile_runs_total").unwrap() >= 2.0, "{m}");
    assert!(metric(&m, "mptcpify_reconcile_errors_total").unwrap() >= 1.0, "{m}");
    let b_id =
        status_json()["rules"].as_array().unwrap().iter().find(|r| r["owner"] == "agent").unwrap()["key"].clone();
    let upgraded = metric(
        &m,
        &format!(
            "mptcpify_rule_sockets_total{{action=\"enable\",kind=\"cgroup\",key=\"{b_id}\",target=\"path /agent-t/b\",owner=\"agent\",decision=\"upgraded\"}}"
        ),
    );
    assert!(upgraded.is_some_and(|v| v >= 2.0), "per-rule upgrades missing: {m}");
    assert!(metric(&m, "mptcpify_sockets_total{decision=\"upgraded\"}").is_some_and(|v| v >= 3.0), "{m}");

    // SIGTERM keeps program and rules.
    assert_eq!(agent.stop(SIGTERM), Some(0));
    assert_eq!(proto_of(Some(&b), "tcp4"), IPPROTO_MPTCP, "rules outlive the agent");
    assert_eq!(rules_by_owner("agent").len(), 1);
}

/// A rule the agent owns belongs to its policy: the CLI refuses to remove it, except by force.
#[test]
fn the_cli_leaves_the_agents_rules_to_its_policy() {
    let _g = setup();
    let cg = TestCgroup::new("agent-o/a");
    let (_d, policy) = policy_dir();
    std::fs::write(&policy, "[enable]\ncgroups = [\"agent-o/a\"]\n").unwrap();
    let agent = AgentProcess::start(&policy, &[], &[]);
    fails(&["disable", "--cgroup", &cg.relative], "owned by the agent; change the agent's policy");
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_MPTCP, "the refused disable changed nothing");
    assert_eq!(rules_by_owner("agent").len(), 1);
    let out = ok(&["disable", "--cgroup", &cg.relative, "--force"]);
    assert!(out.contains("removed: cgroup /agent-o/a"), "--force removes it: {out}");
    // (The agent puts it back: the_agent_restores_its_policy_and_readiness_tells_the_truth.)
    drop(agent);
}

/// What others change in the pinned state is undone within a second, and `/readyz` says
/// whether the policy is in force.
#[test]
fn the_agent_restores_its_policy_and_readiness_tells_the_truth() {
    let _g = setup();
    let cg = TestCgroup::new("agent-c/a");
    let (_d, policy) = policy_dir();
    std::fs::write(&policy, "[enable]\ncgroups = [\"agent-c/a\"]\ncomms = [\"agent-c-probe\"]\n").unwrap();
    let agent = AgentProcess::start(&policy, &[], &[]);
    let restored_within = |what: &str| {
        let start = Instant::now();
        let back = wait_for(Duration::from_secs(10), || (proto_of(Some(&cg), "tcp4") == IPPROTO_MPTCP).then_some(()));
        assert!(back.is_some(), "not restored after {what}: {}", agent.log());
        eprintln!("restored {:?} after {what}", start.elapsed());
        start.elapsed()
    };

    ok(&["reset"]);
    let after_reset = restored_within("reset (the program reloaded)");
    ok(&["disable", "--cgroup", &cg.relative, "--force"]);
    let after_disable = restored_within("a forced disable");
    // The drift check runs every 250 ms; a reset also needs the program loaded again, which
    // takes about a second under emulation (bounds generous for a loaded machine).
    assert!(after_disable < Duration::from_secs(1), "{after_disable:?}");
    assert!(after_reset < Duration::from_secs(5), "{after_reset:?} (a reload under emulation)");
    assert_eq!(agent.get("/readyz").unwrap().0, 200);

    // A CLI rule that contradicts the policy: reported, not fought, and the agent is not ready.
    ok(&["exclude", "--comm", "agent-c-other"]);
    replace_file(&policy, "[enable]\ncgroups = [\"agent-c/a\"]\ncomms = [\"agent-c-probe\", \"agent-c-other\"]\n");
    let unready = wait_for(Duration::from_secs(3), || (agent.get("/readyz").ok()?.0 == 503).then_some(()));
    assert!(unready.is_some(), "ready with a wanted rule not in force: {}", agent.log());
    assert_eq!(metric(&agent.metrics(), "mptcpify_rules_missing"), Some(1.0));
    assert!(agent.get("/readyz").unwrap().1.contains("not in force"));
    ok(&["disable", "--comm", "agent-c-other"]);
    let ready = wait_for(Duration::from_secs(3), || (agent.get("/readyz").ok()?.0 == 200).then_some(()));
    assert!(ready.is_some(), "not ready again once the conflict is gone: {}", agent.log());
    assert_eq!(rules_by_owner("agent").len(), 3, "the agent's rule for agent-c-other is in force");
}

/// Writes the layout version of the pinned state, as a newer mptcpify would have pinned it.
fn set_layout(version: u32) {
    meta_map().set(mptcpify_common::MetaSlot::Layout as u32, version, 0).unwrap();
}

fn meta_map() -> aya::maps::Array<aya::maps::MapData, u32> {
    let path = std::path::Path::new(mptcpify_common::PIN_DIR).join(mptcpify_common::META_MAP);
    let map = aya::maps::MapData::from_pin(&path).expect("the pinned state has a META map");
    aya::maps::Array::try_from(aya::maps::Map::Array(map)).unwrap()
}

/// State of another layout is neither edited nor misread: the CLI refuses it with the reason,
/// the agent is not ready and says why, and the rules stay in force. State pinned before layouts
/// were numbered (no META map) is adopted by the next edit.
#[test]
fn state_of_another_layout_is_refused_and_unnumbered_state_adopted() {
    let _g = setup();
    let cg = TestCgroup::new("agent-l/a");
    let (_d, policy) = policy_dir();
    std::fs::write(&policy, "[enable]\ncgroups = [\"agent-l/a\"]\n").unwrap();
    let agent = AgentProcess::start(&policy, &[], &[]);
    set_layout(mptcpify_common::LAYOUT_VERSION + 97);
    let newer = format!("layout {}", mptcpify_common::LAYOUT_VERSION + 97);
    fails(&["enable", "--comm", "layout-probe"], &newer);
    fails(&["disable", "--cgroup", &cg.relative, "--force"], &newer);
    fails(&["status"], &newer);
    let doctor: serde_json::Value = serde_json::from_slice(&mptcpify(&["doctor", "--json"]).stdout).unwrap();
    let state = doctor["checks"].as_array().unwrap().iter().find(|c| c["name"] == "pinned-state").cloned();
    let state = state.unwrap_or_else(|| panic!("no pinned-state check: {doctor}"));
    assert!(state["level"] == "FAIL" && state["detail"].as_str().unwrap().contains(&newer), "{state}");
    let unready = wait_for(Duration::from_secs(5), || {
        let (code, body) = agent.get("/readyz").ok()?;
        (code == 503 && body.contains(&newer)).then_some(())
    });
    assert!(unready.is_some(), "ready beside state of another layout: {:?} {}", agent.get("/readyz"), agent.log());
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_MPTCP, "the rules stay in force");
    set_layout(mptcpify_common::LAYOUT_VERSION);
    // Noticed at the next retry, whose backoff has been doubling meanwhile.
    let ready = wait_for(Duration::from_secs(15), || (agent.get("/readyz").ok()?.0 == 200).then_some(()));
    assert!(ready.is_some(), "not ready once the layout is this version's again: {}", agent.log());

    // As the previous release pinned it: no META map. Read as it is, adopted by the next edit.
    std::fs::remove_file(std::path::Path::new(mptcpify_common::PIN_DIR).join(mptcpify_common::META_MAP)).unwrap();
    assert_eq!(rules_by_owner("agent").len(), 1);
    ok(&["enable", "--comm", "layout-probe"]);
    let layout = meta_map().get(&(mptcpify_common::MetaSlot::Layout as u32), 0).unwrap();
    assert_eq!(layout, mptcpify_common::LAYOUT_VERSION, "the edit adopted the state");
    assert_eq!(rules_by_owner("cli").len(), 1);
    assert_eq!(rules_by_owner("agent").len(), 1);
    assert_eq!(agent.get("/readyz").unwrap().0, 200);
    ok(&["disable", "--comm", "layout-probe"]);
}

/// An unprivileged client of the metrics port holding 1,100 idle connections and sending a
/// header a byte a second: the agent keeps reconciling, stays healthy and does not spin.
#[test]
fn the_metrics_endpoint_cannot_stop_the_agent() {
    let _g = setup();
    let a = TestCgroup::new("agent-h/a");
    let b = TestCgroup::new("agent-h/b");
    let (_d, policy) = policy_dir();
    std::fs::write(&policy, "[enable]\ncgroups = [\"agent-h/a\"]\n").unwrap();
    let agent = AgentProcess::start(&policy, &[], &[]);
    let (host, port) = agent.metrics.rsplit_once(':').unwrap();
    let flood = format!(
        r#"
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
idle = [socket.create_connection(("{host}", {port})) for _ in range(1100)]
slow = socket.create_connection(("{host}", {port}))
print("ready", flush=True)
for c in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
    try:
        slow.send(bytes([c]))
    except OSError:
        break
    time.sleep(1)
time.sleep(30)
"#
    );
    let mut attacker = std::process::Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", &flood])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(attacker.stdout.as_mut().unwrap()), &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready", "the flood did not connect");

    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", agent.child.id())).unwrap();
        let fields: Vec<u64> =
            stat.rsplit_once(')').unwrap().1.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        fields[10] + fields[11] // utime + stime, in clock ticks (fields 14 and 15 of stat)
    };
    let before = cpu();
    replace_file(&policy, "[enable]\ncgroups = [\"agent-h/b\"]\n");
    let applied = wait_for(Duration::from_secs(1), || (proto_of(Some(&b), "tcp4") == IPPROTO_MPTCP).then_some(()));
    assert!(applied.is_some(), "a policy edit was not applied within 1 s under the flood: {}", agent.log());
    assert_eq!(proto_of(Some(&a), "tcp4"), IPPROTO_TCP);
    let healthy = wait_for(Duration::from_secs(20), || matches!(agent.get("/healthz"), Ok((200, _))).then_some(()));
    assert!(healthy.is_some(), "/healthz did not answer under the flood: {}", agent.log());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu() - before;
    let _ = attacker.kill();
    let _ = attacker.wait();
    // 100 ticks a second: a spinning loop would use most of them.
    assert!(used < 150, "the agent used {used} ticks of CPU under the flood");
}

#[test]
fn a_killed_agents_rules_keep_working_and_its_successor_adopts_them() {
    let _g = setup();
    let a = TestCgroup::new("agent-k/a");
    let (_d, policy) = policy_dir();
    std::fs::write(&policy, "[enable]\ncgroups = [\"agent-k/a\"]\n[exclude]\ncomms = [\"nope\"]\n").unwrap();
    let agent = AgentProcess::start(&policy, &[], &[]);
    let loaded = wait_for(Duration::from_secs(5), || agent.log().contains("loaded and attached").then_some(()));
    assert!(loaded.is_some(), "{}", agent.log());
    let link = status_json()["link"].clone();
    assert_eq!(proto_of(Some(&a), "tcp4"), IPPROTO_MPTCP);
    assert_eq!(agent.stop(SIGKILL), None, "killed");
    assert_eq!(proto_of(Some(&a), "tcp4"), IPPROTO_MPTCP, "rules work without the agent");
    let hits_before: u64 = rules_by_owner("agent").iter().map(|r| r["hits"].as_u64().unwrap()).sum();
    assert!(hits_before >= 2);

    // The successor adopts: same link and program, rules untouched (their hits kept).
    let agent = AgentProcess::start(&policy, &["--cleanup-on-exit"], &[]);
    let log = agent.settled_log();
    assert!(log.contains("adopting the attached program"), "{log}");
    assert!(!log.contains("enabled:"), "nothing re-added: {log}");
    assert_eq!(status_json()["link"], link, "no detach, no reload");
    let hits_after: u64 = rules_by_owner("agent").iter().map(|r| r["hits"].as_u64().unwrap()).sum();
    assert!(hits_after >= hits_before, "{hits_after} < {hits_before}");

    // --cleanup-on-exit removes the agent's rules; with a CLI rule left, the program stays.
    ok(&["enable", "--comm", "keepme"]);
    assert_eq!(agent.stop(SIGTERM), Some(0));
    assert!(rules_by_owner("agent").is_empty());
    assert_eq!(status_json()["loaded"], true);
    assert_eq!(proto_of(Some(&a), "tcp4"), IPPROTO_TCP);
    ok(&["disable", "--comm", "keepme"]);
    let agent = AgentProcess::start(&policy, &["--cleanup-on-exit"], &[]);
    assert_eq!(agent.stop(SIGTERM), Some(0));
    assert_eq!(status_json()["loaded"], false, "nothing else left: the program is detached too");
    assert!(mptcpify_pins().is_empty());
}

#[test]
fn recreated_and_late_cgroups_are_covered_within_a_second() {
    let _g = setup();
    let svc = TestCgroup::new("agent-r/svc");
    let (_d, policy) = policy_dir();
    std::fs::write(&policy, "[enable]\ncgroups = [\"agent-r/svc\", \"agent-late/x/y\"]\n").unwrap();
    let agent = AgentProcess::start(&policy, &[], &[]);
    assert_eq!(proto_of(Some(&svc), "tcp4"), IPPROTO_MPTCP);
    let old_id = rules_by_owner("agent")[0]["key"].clone();
    // A restarted service: its cgroup is removed and made again (a new id).
    drop(svc);
    let start = Instant::now();
    let svc = TestCgroup::new("agent-r/svc");
    let covered = wait_for(Duration::from_secs(1), || (proto_of(Some(&svc), "tcp4") == IPPROTO_MPTCP).then_some(()));
    assert!(covered.is_some(), "recreated cgroup not covered within 1 s: {}", agent.log());
    eprintln!("recreated cgroup covered after {:?}", start.elapsed());
    let keys: Vec<_> = rules_by_owner("agent").iter().map(|r| r["key"].clone()).collect();
    assert!(!keys.contains(&old_id), "the stale id was dropped: {keys:?}");

    // A path none of whose parents existed at start: created in one go, covered as it appears.
    let start = Instant::now();
    let late = TestCgroup::new("agent-late/x/y");
    let covered = wait_for(Duration::from_secs(1), || (proto_of(Some(&late), "tcp4") == IPPROTO_MPTCP).then_some(()));
    assert!(covered.is_some(), "late cgroup not covered within 1 s: {}", agent.log());
    eprintln!("late cgroup covered after {:?}", start.elapsed());
    assert_eq!(metric(&agent.metrics(), "mptcpify_pending_cgroups"), Some(0.0));
    drop(agent);
    drop(late);
    let _ = std::fs::remove_dir(cgroup_root().join("agent-late/x"));
    let _ = std::fs::remove_dir(cgroup_root().join("agent-late"));
}

#[test]
fn a_bad_policy_or_port_stops_the_agent_before_it_changes_anything() {
    let _g = setup();
    let (_d, policy) = policy_dir();
    std::fs::write(&policy, "[enable]\nuids = [\"no-such-user-xyz\"]\n").unwrap();
    fails(&["agent", "--config", policy.to_str().unwrap()], "policy.toml:2: no user named");
    fails(&["agent", "--config", "/no/such/policy.toml"], "create it");
    std::fs::write(&policy, "").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    fails(&["agent", "--config", policy.to_str().unwrap(), "--metrics-addr", &addr], "listening for metrics");
    fails(&["agent", "--config", policy.to_str().unwrap(), "--kubernetes"], "NODE_NAME");
    assert!(mptcpify_pins().is_empty(), "nothing was loaded");
}

#[test]
fn the_daemonsets_capabilities_are_enough_for_the_agent() {
    let _g = setup();
    let caps = daemonset_capabilities();
    assert_eq!(caps, ["BPF", "PERFMON", "SYSLOG"]);
    let bounding =
        format!("-all,{}", caps.iter().map(|c| format!("+{}", c.to_lowercase())).collect::<Vec<_>>().join(","));
    let a = TestCgroup::new("agent-caps/a");
    let (_d, policy) = policy_dir();
    std::fs::write(&policy, "[enable]\ncgroups = [\"agent-caps/a\"]\n").unwrap();
    // Root with only those capabilities, as in the container (setpriv limits the bounding set,
    // so the exec'd agent's permitted and effective sets are exactly these).
    let agent = AgentProcess::start_with(&["setpriv", "--bounding-set", &bounding, "--"], &policy, &[], &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    let eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap().to_owned();
    assert_eq!(eff.split_whitespace().nth(1), Some("000000c400000000"), "{eff}");
    assert_eq!(proto_of(Some(&a), "tcp4"), IPPROTO_MPTCP, "{}", agent.log());
    let log = agent.settled_log();
    assert!(!log.contains("netns check off"), "the kallsyms read worked: {log}");
    assert_eq!(agent.stop(SIGTERM), Some(0));
}
