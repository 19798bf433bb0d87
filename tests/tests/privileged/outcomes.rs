//! Did it work: what became of upgraded connections (MPTCP, fell back, subflows), counted by the
//! kernel per rule and shown by `connections`, `status`, `monitor` and the agent's metrics; and
//! audit rules, which only count. Real connections between network namespaces.
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use mptcpify_tests::{two_paths::TwoPaths, *};

const MB: usize = 1 << 20;

/// `mptcpify monitor --json`, its lines gathered by a thread.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Monitor {
    fn start() -> Self {
        let mut child =
            Command::new(mptcpify_bin()).args(["monitor", "--json"]).stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let started = Instant::now();
        while status_json()["monitor"] != child.id() {
            assert!(started.elapsed() < Duration::from_secs(10), "monitor did not register");
            std::thread::sleep(Duration::from_millis(100));
        }
        Monitor { child, lines }
    }

    /// Events until one with `decision` arrives (10 s at most), that one last.
    fn until(&self, decision: &str) -> Vec<serde_json::Value> {
        let mut seen = Vec::new();
        loop {
            let line = self.lines.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| {
                panic!("no {decision} event within 10 s; saw {seen:?}");
            });
            let event: serde_json::Value = serde_json::from_str(&line).expect(&line);
            let done = event["decision"] == decision;
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn connections_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(&[&["connections", "--json"], args].concat())).unwrap()
}

/// The rule of `cg` in `status --json`.
fn rule_of(cg: &TestCgroup) -> serde_json::Value {
    let status = status_json();
    let id = std::fs::metadata(&cg.path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    let rules = status["rules"].as_array().unwrap();
    rules.iter().find(|r| r["key"] == id).cloned().unwrap_or_else(|| panic!("no rule for {}: {status}", cg.relative))
}

/// The connection whose local address is `local_ip`, in `connections --json`.
fn connection_from<'a>(report: &'a serde_json::Value, local_ip: &str) -> &'a serde_json::Value {
    let all = report["connections"].as_array().unwrap();
    let prefix = format!("{local_ip}:");
    all.iter()
        .find(|c| c["local"].as_str().unwrap().starts_with(&prefix))
        .unwrap_or_else(|| panic!("no connection from {local_ip}: {report}"))
}

/// The value of the first series of `name` whose line has every one of `labels`.
fn series(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn an_mptcp_connection_over_two_paths_is_counted_shown_live_and_exported() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-outcome");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, format!("[enable]\ncgroups = [\"{}\"]\n", cg.relative)).unwrap();
    let agent = AgentProcess::start(&policy, &[], &[]);
    let t = TwoPaths::new("mpt-oc", 72, true, None);
    let out = t.paths(&t.cli, &["auto"]);
    assert!(out.status.success(), "{}", text(&out));

    let held = t.hold(Some(&cg), Some(&cg), MB, 700, 6000);
    assert_eq!((held.client_proto, held.server_proto, held.fallback), (262, 262, false));
    assert_eq!(held.subflows, 1, "the second path joined");
    let live = connections_json(&[]);
    let client = connection_from(&live, &t.cli_addr(1));
    assert_eq!(client["outcome"], "mptcp", "{client}");
    assert_eq!(client["pid"], held.client.id(), "{client}");
    assert_eq!(client["rule"], format!("cgroup id {}", rule_of(&cg)["key"]), "{client}");
    assert!(client["bytes_sent"].as_u64().unwrap() >= MB as u64, "{client}");
    let subflows = client["subflows"].as_array().unwrap();
    assert_eq!(subflows.len(), 2, "{client}");
    let join = subflows.iter().find(|s| s["join"] == true).unwrap_or_else(|| panic!("no join: {client}"));
    assert_eq!(join["interface"], "c2", "{client}");
    assert!(join["local"].as_str().unwrap().starts_with(&format!("{}:", t.cli_addr(2))), "{client}");
    assert_eq!(join["backup"], false);
    let first = subflows.iter().find(|s| s["join"] == false).unwrap();
    assert_eq!(first["interface"], "c1", "{client}");
    let server = connection_from(&live, &t.srv_addr(1));
    assert_eq!(server["outcome"], "mptcp", "{server}");
    assert_ne!(server["netns"], client["netns"], "each end in its own namespace");
    // The kernel's own counters of the client's namespace, while a workload is in it.
    let namespaces = status_json()["namespaces"].clone();
    let ns = namespaces.as_array().unwrap().iter().find(|n| n["netns"] == client["netns"]);
    let ns = ns.unwrap_or_else(|| panic!("the client's namespace is not listed: {namespaces}"));
    assert!(ns["mptcp"]["MPJoinSynTx"].as_u64() >= Some(1), "{ns}");
    assert!(ns["mptcp"]["MPCapableSYNACKRX"].as_u64() >= Some(1), "{ns}");
    let netns = format!("netns=\"{}\"", client["netns"]);
    // The agent scans for namespaces every 5 s, not at each scrape.
    let joins = wait_for(Duration::from_secs(12), || {
        series(&agent.metrics(), "mptcpify_netns_mptcp_total", &[&netns, "counter=\"MPJoinSynTx\""])
            .filter(|j| *j >= 1.0)
    });
    assert!(joins.is_some(), "{}", agent.metrics());
    held.finish();

    let outcomes = rule_of(&cg)["outcomes"].clone();
    assert_eq!(outcomes["mptcp"], 2, "client and server: {outcomes}");
    assert_eq!(outcomes["subflows"], 2, "the join, seen from both ends: {outcomes}");
    assert_eq!((outcomes["fallback"].as_u64(), outcomes["subflows_failed"].as_u64()), (Some(0), Some(0)));
    let key = format!("key=\"{}\"", rule_of(&cg)["key"]);
    let metrics = agent.metrics();
    let conns = series(&metrics, "mptcpify_connections_total", &[&key, "outcome=\"mptcp\""]);
    assert_eq!(conns, Some(2.0), "{metrics}");
    let joined = series(&metrics, "mptcpify_subflows_total", &[&key, "result=\"established\""]);
    assert_eq!(joined, Some(2.0), "{metrics}");
}

#[test]
fn fallbacks_are_counted_per_rule_with_their_reason_shown_and_monitored() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-fallback");
    ok(&["enable", "--cgroup", &cg.relative]);
    let monitor = Monitor::start();
    let t = TwoPaths::new("mpt-fb", 73, false, None);

    // An upgraded client, a server left plain TCP: the SYN-ACK comes back without MP_CAPABLE.
    let held = t.hold(Some(&cg), None, 64 * 1024, 0, 3000);
    assert_eq!((held.client_proto, held.server_proto, held.fallback), (262, 6, true));
    let live = connections_json(&["--cgroup", &cg.relative]);
    assert_eq!(connection_from(&live, &t.cli_addr(1))["outcome"], "fallback", "{live}");
    held.finish();
    let peer = monitor.until("fallback-peer").pop().unwrap();
    assert_eq!((peer["rule"].as_str(), peer["pid"].as_u64()), (Some("cgroup"), Some(0)), "{peer}");
    assert_eq!(peer["remote_port"], 5201, "{peer}");

    // An upgraded server, a plain client: the kernel hands the server a plain TCP socket.
    let held = t.hold(None, Some(&cg), 64 * 1024, 0, 3000);
    assert_eq!((held.client_proto, held.server_proto), (6, 6), "accepted without MPTCP: a TCP socket");
    let live = connections_json(&[]);
    let accepted = connection_from(&live, &t.srv_addr(1));
    assert_eq!(
        (accepted["outcome"].as_str(), accepted["pid"].as_u64()),
        (Some("fallback"), Some(held.server.id().into()))
    );
    held.finish();
    let client = monitor.until("fallback-client").pop().unwrap();
    assert_eq!(client["local_port"], 5201, "{client}");

    let o = rule_of(&cg)["outcomes"].clone();
    assert_eq!(
        (o["fallback_peer"].as_u64(), o["fallback_client"].as_u64(), o["mptcp"].as_u64()),
        (Some(1), Some(1), Some(0)),
        "{o}"
    );
    assert_eq!(o["fallback"], 2);
    assert_eq!(status_json()["counters"]["events_dropped"], 0);
}

/// Subflows that die before they are established: a connection refused (an RST answers its
/// SYN) and a join over a path that drops everything (its SYNs time out). The connection itself
/// stays MPTCP over the other path.
#[test]
fn a_refused_connection_and_a_refused_join_are_counted_as_failed() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-failed");
    ok(&["enable", "--cgroup", &cg.relative]);
    let monitor = Monitor::start();
    let t = TwoPaths::new("mpt-fl", 74, true, None);
    let out = t.paths(&t.cli, &["auto"]);
    assert!(out.status.success(), "{}", text(&out));
    blackhole_path_2(&t);

    let refused = command_in(
        Some(&cg),
        Path::new("/usr/sbin/ip"),
        &["netns", "exec", &t.cli, "python3", "-c", REFUSED_CONNECT, &t.srv_addr(1)],
    )
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(said.trim(), "262 refused", "an upgraded socket, refused: {}", text(&refused));

    let held = t.hold(Some(&cg), Some(&cg), 64 * 1024, 700, 5000);
    assert_eq!((held.client_proto, held.server_proto, held.fallback), (262, 262, false));
    assert_eq!(held.subflows, 1, "the path manager started a join over path 2 (counted from its start)");
    held.finish();
    let failed = monitor.until("subflow-failed").pop().unwrap();
    assert_eq!((failed["rule"].as_str(), failed["remote_port"].as_u64()), (Some("cgroup"), Some(5201)), "{failed}");

    let o = rule_of(&cg)["outcomes"].clone();
    assert_eq!(
        (o["connect_failed"].as_u64(), o["mptcp"].as_u64(), o["subflows"].as_u64(), o["subflows_failed"].as_u64()),
        (Some(1), Some(2), Some(0), Some(1)),
        "{o}"
    );
    assert_eq!(o["fallback"], 0, "{o}");
}

/// Connects an upgraded socket to port 5202 of `argv[1]`, where nothing listens; prints its
/// protocol and `refused`.
const REFUSED_CONNECT: &str = r#"
import socket, sys
s = socket.socket()
proto = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
try:
    s.connect((sys.argv[1], 5202))
    print(proto, "connected")
except ConnectionRefusedError:
    print(proto, "refused")
"#;

/// Path 2 of the client drops every packet, and the client gives up on a SYN after one retry
/// (about 3 s) instead of six (two minutes).
fn blackhole_path_2(t: &TwoPaths) {
    for args in [
        &["tc", "qdisc", "add", "dev", "c2", "root", "netem", "loss", "100%"][..],
        &["sysctl", "-qw", "net.ipv4.tcp_syn_retries=1"][..],
    ] {
        let out = Command::new("ip").args(["netns", "exec", &t.cli]).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
}

#[test]
fn an_audit_rule_leaves_sockets_tcp_counts_and_reports_them_and_never_sits_beside_enable() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-audit");
    let quiet = TestCgroup::new("mptcpify-t-audit/quiet");
    assert!(ok(&["enable", "--audit", "--cgroup", &cg.relative]).contains("audited"));
    ok(&["exclude", "--cgroup", &quiet.relative]);
    let monitor = Monitor::start();
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_TCP, "audit: the socket stays TCP");
    let event = monitor.until("would-upgrade").pop().unwrap();
    assert_eq!((event["rule"].as_str(), event["comm"].as_str()), (Some("cgroup"), Some("sockprobe")), "{event}");
    assert_eq!(proto_of(Some(&quiet), "tcp6"), IPPROTO_TCP);
    monitor.until("excluded");
    let rule = rule_of(&cg);
    assert_eq!((rule["action"].as_str(), rule["hits"].as_u64()), (Some("audit"), Some(1)), "{rule}");
    assert!(rule.get("outcomes").is_none(), "audited sockets have no MPTCP outcome: {rule}");
    let counters = status_json()["counters"].clone();
    assert_eq!((counters["would_upgrade"].as_u64(), counters["excluded"].as_u64()), (Some(1), Some(1)), "{counters}");
    assert_eq!(counters["upgraded_by_cgroup"], 0, "{counters}");

    let before = state_snapshot();
    fails(&["enable", "--cgroup", &cg.relative], "is audited; `mptcpify disable` it first, then enable it");
    assert_eq!(state_snapshot(), before, "nothing changed");
    ok(&["disable", "--cgroup", &cg.relative]);
    ok(&["enable", "--cgroup", &cg.relative]);
    fails(&["enable", "--audit", "--cgroup", &cg.relative], "is enabled; `mptcpify disable` it first, then audit it");
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_MPTCP, "enforced now");
}

#[test]
fn connections_says_when_nothing_matches_and_skips_a_process_gone_from_its_namespace() {
    let _g = setup();
    let empty = TestCgroup::new("mptcpify-t-conns-empty");
    ok(&["enable", "--cgroup", &empty.relative]);
    fails(&["connections", "--cgroup", &empty.relative], "no running process matches the selector");
    // An exited child not yet reaped keeps its PID but no longer has a network namespace.
    let mut zombie = Command::new("true").spawn().unwrap();
    let gone = wait_for(Duration::from_secs(5), || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", zombie.id())).ok()?;
        stat.contains(") Z ").then_some(())
    });
    assert!(gone.is_some(), "the child did not become a zombie");
    let me = std::process::id().to_string();
    let report = connections_json(&["--pid", &zombie.id().to_string(), "--pid", &me]);
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{report}");
    assert_eq!(skipped[0]["pid"], zombie.id(), "{report}");
    assert!(skipped[0]["reason"].as_str().unwrap().contains("no network namespace"), "{report}");
    let _ = zombie.wait();
}

#[test]
fn the_agents_audit_table_makes_audit_rules_that_leave_sockets_tcp_and_export_what_they_would_change() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-audit-policy");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, format!("[audit]\ncgroups = [\"{}\"]\n", cg.relative)).unwrap();
    let agent = AgentProcess::start(&policy, &[], &[]);
    let rule = rule_of(&cg);
    assert_eq!((rule["action"].as_str(), rule["owner"].as_str()), (Some("audit"), Some("agent")), "{rule}");
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_TCP, "audited: left TCP");
    let key = format!("key=\"{}\"", rule["key"]);
    let m = agent.metrics();
    let would = series(&m, "mptcpify_rule_sockets_total", &[&key, "decision=\"would_upgrade\""]);
    assert_eq!(would, Some(1.0), "{m}");
    assert_eq!(metric(&m, "mptcpify_sockets_total{decision=\"would_upgrade\"}"), Some(1.0), "{m}");
    // The same target in [audit] and [enable] is refused whole: the rules stay as they were.
    replace_file(&policy, &format!("[enable]\ncgroups = [\"{0}\"]\n[audit]\ncgroups = [\"{0}\"]\n", cg.relative));
    let refused = wait_for(Duration::from_secs(10), || agent.log().contains("both enabled and audited").then_some(()));
    assert!(refused.is_some(), "{}", agent.log());
    assert_eq!(rule_of(&cg)["action"], "audit", "nothing changed");
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_TCP);
}

const LISTEN_ONCE_PER_LINE: &str = r#"
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 5302))
s.listen()
print(s.getsockopt(socket.SOL_SOCKET, 38), flush=True)
for line in sys.stdin:
    c, _ = s.accept()
    c.close()
    print("accepted", flush=True)
"#;

/// A listener upgraded by a rule since removed is still noted (its note lives in an LRU map
/// until evicted): what it accepts later must not bring back the outcome entry that the
/// removal dropped, with counts of a rule that is gone, filling the map.
#[test]
fn a_removed_rules_outcomes_never_come_back_from_the_sockets_it_upgraded() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-removed");
    ok(&["enable", "--cgroup", &cg.relative]);
    let monitor = Monitor::start();
    let mut server = command_in(Some(&cg), Path::new("/usr/bin/python3"), &["-c", LISTEN_ONCE_PER_LINE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(server.stdout.take().unwrap()).lines();
    assert_eq!(said.next().unwrap().unwrap(), "262", "an upgraded listener");
    let mut input = server.stdin.take().unwrap();
    let accept_one = |input: &mut std::process::ChildStdin, said: &mut std::io::Lines<_>| {
        use std::io::Write as _;
        writeln!(input).unwrap();
        std::net::TcpStream::connect("127.0.0.1:5302").unwrap();
        assert_eq!(said.next().unwrap().unwrap(), "accepted");
    };
    let rule = mptcpify_common::RuleRef { kind: mptcpify_common::RuleKind::Cgroup as u32, _pad: 0, key: cg.id() };
    let entry = || mptcpify::state::maps::State::open().unwrap().outcomes().unwrap().get(&rule).copied();
    // In force: a plain client's connection is counted (a fallback of the client).
    accept_one(&mut input, &mut said);
    monitor.until("fallback-client");
    assert_eq!(entry().map(|o| o.fallback_client), Some(1));
    // Removed: its entry goes, and the listener's next connection, which the program still
    // sees (the monitor reports it), does not make it again.
    ok(&["disable", "--cgroup", &cg.relative]);
    assert_eq!(entry(), None, "the removal drops the entry");
    accept_one(&mut input, &mut said);
    monitor.until("fallback-client");
    assert_eq!(entry(), None, "made again by a socket of the removed rule");
    drop(input);
    assert!(server.wait().unwrap().success());
}
