//! `mptcpify paths` and the agent's `[paths]` on real namespaces, links and connections. No
//! endpoint, limit or rule is made here but by mptcpify; someone else's are made through the
//! kernel's netlink interface directly (the library's calls, without its record), as another
//! tool would make them.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use mptcpify::paths::{
    connection::{Netlink, Netns},
    endpoints,
    model::{Endpoint, EndpointFlags, Limits},
};
use mptcpify_tests::{
    two_paths::{Direction, Shape, TwoPaths},
    *,
};

const MB: usize = 1 << 20;
const SHAPE: Shape = Shape { mbit: 40, delay_ms: 5 };

fn endpoint<'a>(view: &'a serde_json::Value, ip: &str) -> Option<&'a serde_json::Value> {
    view["endpoints"].as_array().unwrap().iter().find(|e| e["ip"] == ip)
}

fn routing(view: &serde_json::Value, ip: &str) -> serde_json::Value {
    endpoint(view, ip).unwrap_or_else(|| panic!("no endpoint {ip}: {view}"))["routing"].clone()
}

fn succeeds(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out));
}

#[test]
fn source_routing_sends_the_subflows_of_an_unbound_endpoint_out_of_its_own_interface() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-paths");
    ok(&["enable", "--cgroup", &cg.relative]);
    let t = TwoPaths::new("mpt-sr", 71, true, Some(SHAPE));
    let cli = Netns::File(format!("/run/netns/{}", t.cli).into());
    // Someone else's endpoint without `dev`, as many guides write it: the path manager does not
    // bind its subflows, so they follow the main table's lowest-metric default route (c1).
    let theirs = Endpoint {
        id: 60,
        ip: "10.71.2.1".parse().unwrap(),
        ifindex: None,
        flags: EndpointFlags { subflow: true, ..Default::default() },
    };
    foreign(&cli, &theirs, None);
    let said = succeeds(t.paths(&t.cli, &["auto"]));
    assert!(said.contains("endpoint 10.71.1.1") && said.contains("10.71.2.1 id 60 was made by someone else"), "{said}");
    let v = t.paths_json(&t.cli);
    assert_eq!(endpoint(&v, "10.71.2.1").unwrap()["owner"], "other", "{v}");
    assert_eq!(routing(&v, "10.71.2.1"), serde_json::json!({"verdict": "through", "dev": "c1"}), "{v}");

    let plain = t.transfer(&cg, Direction::Upload, 8 * MB, 1000);
    eprintln!("without source routing: {plain:?}");
    assert_eq!((plain.client_proto, plain.server_proto), (IPPROTO_MPTCP, IPPROTO_MPTCP));
    assert!(plain.subflows >= 1 && !plain.fallback, "{plain:?}");
    assert!(plain.through[1] < (MB as u64), "path 2's subflow left through c1: {plain:?}");

    succeeds(t.paths(&t.cli, &["auto", "--source-routing"]));
    let v = t.paths_json(&t.cli);
    assert_eq!(routing(&v, "10.71.2.1")["verdict"], "own", "{v}");
    assert_eq!(v["source_rules"].as_array().unwrap().len(), 2, "{v}");
    let routed = t.transfer(&cg, Direction::Upload, 8 * MB, 1000);
    eprintln!("with source routing: {routed:?}");
    assert!(routed.subflows >= 1, "{routed:?}");
    for (path, bytes) in routed.through.iter().enumerate() {
        assert!(*bytes > 2 * MB as u64, "path {} carried {bytes} bytes of 8 MiB: {routed:?}", path + 1);
    }

    succeeds(t.paths(&t.cli, &["clear"]));
    let v = t.paths_json(&t.cli);
    let left: Vec<_> = v["endpoints"].as_array().unwrap().iter().map(|e| e["ip"].clone()).collect();
    assert_eq!(left, ["10.71.2.1"], "only someone else's is left: {v}");
    assert!(
        v["source_rules"].as_array().unwrap().is_empty() && v["table_routes"].as_array().unwrap().is_empty(),
        "{v}"
    );
    assert_eq!(v["limits"], serde_json::json!({"subflows": 2, "add_addr_accepted": 0}), "put back: {v}");
    ok(&["disable", "--cgroup", &cg.relative]);
}

#[test]
fn a_client_with_one_endpoint_uses_the_address_a_server_announces() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-paths");
    ok(&["enable", "--cgroup", &cg.relative]);
    let t = TwoPaths::new("mpt-sig", 72, false, Some(SHAPE));
    let said = succeeds(t.paths(&t.srv, &["auto", "--signal", "--dev", "s1", "--dev", "s2"]));
    assert!(said.contains("endpoint 10.72.2.2 id") && said.contains("signal"), "{said}");

    let before = t.transfer(&cg, Direction::Download, 8 * MB, 1000);
    eprintln!("client with the kernel's limits: {before:?}");
    assert_eq!((before.add_addr_accepted, before.subflows), (0, 0), "add_addr_accepted 0 ignores the announcement");

    succeeds(t.paths(&t.cli, &["auto", "--dev", "c1"]));
    let v = t.paths_json(&t.cli);
    assert_eq!(v["endpoints"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["limits"]["add_addr_accepted"], 2, "{v}");
    let after = t.transfer(&cg, Direction::Download, 8 * MB, 1000);
    eprintln!("client after paths auto: {after:?}");
    assert!(after.add_addr_accepted >= 1 && after.subflows >= 1, "{after:?}");
    for (path, bytes) in after.through.iter().enumerate() {
        assert!(*bytes > 2 * MB as u64, "path {} carried {bytes} bytes of 8 MiB: {after:?}", path + 1);
    }

    // Both ends configured by `auto` alone: the client's second endpoint opens its own subflow.
    succeeds(t.paths(&t.cli, &["auto", "--dev", "c1", "--dev", "c2"]));
    let both = t.transfer(&cg, Direction::Download, 8 * MB, 1000);
    eprintln!("client and server by paths auto: {both:?}");
    assert!(both.subflows >= 1, "{both:?}");
    for (path, bytes) in both.through.iter().enumerate() {
        assert!(*bytes > 2 * MB as u64, "path {} carried {bytes} bytes of 8 MiB: {both:?}", path + 1);
    }
    ok(&["disable", "--cgroup", &cg.relative]);
}

#[test]
fn another_path_manager_and_bad_input_change_nothing() {
    let _g = setup();
    let t = TwoPaths::new("mpt-pm", 74, true, None);
    let before = t.paths_json(&t.cli);
    let sysctl = |v: &str| sh(&["ip", "netns", "exec", &t.cli, "sysctl", "-qw", &format!("net.mptcp.pm_type={v}")]);
    sysctl("1");
    let out = t.paths(&t.cli, &["auto", "--source-routing"]);
    assert!(!out.status.success() && text(&out).contains("the userspace path manager is in charge"), "{}", text(&out));
    assert_eq!(t.paths_json(&t.cli)["path_manager"], "userspace");
    sysctl("0");
    let cases: [(&[&str], &str); 5] = [
        (&["auto", "--dev", "c9"], "no interface named \"c9\""),
        (&["auto", "--subflows", "9"], "above the kernel's maximum of 8"),
        (&["auto", "--add-addr-accepted", "200"], "above the kernel's maximum of 8"),
        (&["auto", "--signal", "--fullmesh"], "both signal and fullmesh"),
        (&["auto", "--dev", "lo"], "loopback"),
    ];
    for (args, needle) in cases {
        let out = t.paths(&t.cli, args);
        assert!(!out.status.success() && text(&out).contains(needle), "{args:?}: {}", text(&out));
    }
    let nobody = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(world_runnable(&mptcpify_bin()))
        .args(["paths", "--netns", &t.cli, "auto"])
        .output()
        .unwrap();
    assert!(!nobody.status.success() && text(&nobody).contains("CAP_NET_ADMIN"), "{}", text(&nobody));
    let out = mptcpify(&["paths", "--netns", "mpt-no-such-netns"]);
    assert!(!out.status.success() && text(&out).contains("/run/netns/mpt-no-such-netns"), "{}", text(&out));
    assert_eq!(t.paths_json(&t.cli), before, "nothing changed");
}

/// Someone else's endpoint and limits in `netns`, made as `ip mptcp` would.
fn foreign(netns: &Netns, endpoint: &Endpoint, limits: Option<Limits>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let nl = Netlink::open(netns).await.unwrap();
        endpoints::add(&nl, endpoint).await.unwrap();
        if let Some(l) = limits {
            endpoints::set_limits(&nl, l).await.unwrap();
        }
    });
}

fn forget_foreign(endpoint: &Endpoint, limits: Limits) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let nl = Netlink::open(&Netns::Current).await.unwrap();
        let _ = endpoints::remove(&nl, endpoint).await;
        endpoints::set_limits(&nl, limits).await.unwrap();
    });
}

fn host_view() -> serde_json::Value {
    serde_json::from_str(&ok(&["paths", "--json"])).unwrap()
}

/// The host's endpoints by address, each with whether mptcpify made it: read in-process (a
/// netlink dump and the record, as `paths` reads them), so polling adds no process start.
fn host_endpoints(rt: &tokio::runtime::Runtime) -> std::collections::BTreeMap<String, bool> {
    rt.block_on(async {
        let nl = Netlink::open(&Netns::Current).await.unwrap();
        let (snap, record, _) = mptcpify::paths::apply::current(&nl).await.unwrap();
        snap.endpoints.iter().map(|e| (e.ip.to_string(), record.made(e))).collect()
    })
}

/// How long until `check` holds on the host's endpoints, polled every 20 ms.
fn until(limit: Duration, check: impl Fn(&std::collections::BTreeMap<String, bool>) -> bool) -> Option<Duration> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let t0 = Instant::now();
    wait_for(limit, || check(&host_endpoints(&rt)).then(|| t0.elapsed()))
}

/// A link `dev` of this host (made afresh) with `addrs`, up, whose far end `{dev}p` is up in the
/// namespace `peer` (made afresh too).
fn host_link(dev: &str, peer: &str, addrs: &[&str]) {
    let _ = Command::new("ip").args(["netns", "del", peer]).output();
    let _ = Command::new("ip").args(["link", "del", dev]).output();
    let far = format!("{dev}p");
    sh(&["ip", "netns", "add", peer]);
    sh(&["ip", "link", "add", dev, "type", "veth", "peer", "name", &far, "netns", peer]);
    for a in addrs {
        sh(&["ip", "addr", "add", a, "dev", dev]);
    }
    sh(&["ip", "link", "set", dev, "up"]);
    sh(&["ip", "-n", peer, "link", "set", &far, "up"]);
}

#[test]
fn the_agent_follows_addresses_and_leaves_what_others_made() {
    let _g = setup();
    let peer = "mpt-ag-peer";
    host_link("mpt0", peer, &["10.73.1.1/24", "10.73.9.1/24"]);
    let kernel_limits = Limits { subflows: 2, add_addr_accepted: 0 };
    let theirs = Endpoint {
        id: 50,
        ip: "10.73.9.1".parse().unwrap(),
        ifindex: None,
        flags: EndpointFlags { signal: true, ..Default::default() },
    };
    foreign(&Netns::Current, &theirs, Some(Limits { subflows: 5, add_addr_accepted: 1 }));

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[paths]\nauto = true\ndevs = [\"mpt0\"]\n").unwrap();
    let agent = AgentProcess::start(&policy, &[], &[]);
    let ours = |v: &serde_json::Value, ip| endpoint(v, ip).is_some_and(|e| e["owner"] == "mptcpify");
    let made = |m: &std::collections::BTreeMap<String, bool>, ip: &str| m.get(ip) == Some(&true);
    until(Duration::from_secs(10), |m| made(m, "10.73.1.1")).unwrap_or_else(|| panic!("no endpoint: {}", agent.log()));
    let v = host_view();
    let kept = endpoint(&v, "10.73.9.1").unwrap();
    assert_eq!((kept["id"].as_u64(), kept["owner"].as_str()), (Some(50), Some("other")), "{v}");
    assert_eq!(kept["flag_names"], serde_json::json!(["signal"]), "untouched: {v}");
    assert_eq!(v["limits"], serde_json::json!({"subflows": 5, "add_addr_accepted": 2}), "raised, never lowered: {v}");

    sh(&["ip", "addr", "add", "10.73.2.1/24", "dev", "mpt0"]);
    let added = until(Duration::from_secs(5), |m| made(m, "10.73.2.1")).expect("an endpoint for the new address");
    sh(&["ip", "addr", "del", "10.73.2.1/24", "dev", "mpt0"]);
    let removed = until(Duration::from_secs(5), |m| !m.contains_key("10.73.2.1")).expect("its endpoint removed");
    eprintln!("address added -> endpoint in {added:?}; removed -> endpoint gone in {removed:?}");
    assert!(added < Duration::from_secs(1) && removed < Duration::from_secs(1), "{added:?} {removed:?}");

    // The far end goes down: no carrier, no endpoint; back up, back again.
    sh(&["ip", "-n", peer, "link", "set", "mpt0p", "down"]);
    let down = until(Duration::from_secs(5), |m| !m.contains_key("10.73.1.1")).expect("no carrier, no endpoint");
    sh(&["ip", "-n", peer, "link", "set", "mpt0p", "up"]);
    let up = until(Duration::from_secs(5), |m| made(m, "10.73.1.1")).expect("carrier back, endpoint back");
    eprintln!("carrier lost -> endpoint gone in {down:?}; back -> endpoint back in {up:?}");

    let m = agent.metrics();
    assert_eq!(metric(&m, "mptcpify_path_endpoints{flag=\"subflow\",owner=\"mptcpify\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "mptcpify_path_endpoints{flag=\"signal\",owner=\"other\"}"), Some(1.0), "{m}");
    // 10.73.1.1 has no route of its own: the VM's default route leaves through its NIC.
    assert_eq!(metric(&m, "mptcpify_path_unroutable_addresses"), Some(1.0), "{m}");
    agent.stop(libc::SIGTERM);
    assert!(ours(&host_view(), "10.73.1.1"), "what the agent made stays after it exits");

    let said = ok(&["reset"]);
    assert!(said.contains("removed 1 endpoint(s)"), "{said}");
    let v = host_view();
    assert!(endpoint(&v, "10.73.1.1").is_none() && endpoint(&v, "10.73.9.1").is_some(), "{v}");
    assert_eq!(v["limits"], serde_json::json!({"subflows": 5, "add_addr_accepted": 1}), "put back to theirs: {v}");
    forget_foreign(&theirs, kernel_limits);
    let _ = Command::new("ip").args(["link", "del", "mpt0"]).output();
    let _ = Command::new("ip").args(["netns", "del", peer]).output();
}

/// The records' lock is root's alone: another user cannot even open its directory (it could
/// hold the lock and stall every `paths` command and the agent). One held by root elsewhere
/// delays the agent's `[paths]` pass, never its health endpoints (the wait used to put the
/// agent's one runtime thread to sleep for up to 10 s).
#[test]
fn the_paths_lock_is_roots_alone_and_a_held_one_never_freezes_the_agent() {
    let _g = setup();
    let peer = "mpt-lk-peer";
    host_link("mpt2", peer, &["10.74.1.1/24"]);
    // An older mptcpify made the directories 0755.
    std::fs::create_dir_all("/run/mptcpify/paths").unwrap();
    for d in ["/run/mptcpify", "/run/mptcpify/paths"] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    ok(&["paths", "auto", "--dev", "mpt2"]);
    let nobody = |args: &[&str]| {
        let mut cmd = Command::new("/usr/bin/setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).args(args);
        cmd.output().unwrap()
    };
    let out = nobody(&["flock", "-n", "/run/mptcpify/paths", "true"]);
    assert!(!out.status.success() && text(&out).contains("Permission denied"), "{}", text(&out));
    for d in ["/run/mptcpify", "/run/mptcpify/paths"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(d).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o700, "{d}");
    }

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[paths]\nauto = true\ndevs = [\"mpt2\"]\n").unwrap();
    let agent = AgentProcess::start(&policy, &[], &[]);
    let mut holder = Command::new("flock")
        .args(["/run/mptcpify/paths", "sh", "-c", "echo held; sleep 6"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut held = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.take().unwrap()), &mut held).unwrap();
    assert_eq!(held, "held\n");
    // A new address: the agent's keeper wants the lock now.
    sh(&["ip", "addr", "add", "10.74.2.1/24", "dev", "mpt2"]);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let asked = Instant::now();
        let answer = agent.get("/healthz");
        assert!(matches!(answer, Ok((200, _))), "{answer:?}: {}", agent.log());
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "/healthz took {:?} while the lock was held",
            asked.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(holder.wait().unwrap().success());
    let made = |m: &std::collections::BTreeMap<String, bool>| m.get("10.74.2.1") == Some(&true);
    assert!(until(Duration::from_secs(15), made).is_some(), "made once the lock was free: {}", agent.log());
    agent.stop(libc::SIGTERM);
    ok(&["paths", "clear"]);
    let _ = Command::new("ip").args(["link", "del", "mpt2"]).output();
    let _ = Command::new("ip").args(["netns", "del", peer]).output();
}

/// A command killed at each of its calls: what it is, its arguments, its calls by system call,
/// and what runs before each kill (none: the namespace as it was).
type KilledRun<'a> = (&'a str, &'a [&'a str], &'a [(String, usize)], Option<&'a [&'a str]>);

/// The calls that change the kernel or a record: netlink sends, the record's renames and removal.
const CHANGE_CALLS: &str = "sendto,sendmsg,rename,renameat,renameat2,unlink,unlinkat";

/// `paths auto` (raising the limits, adding an endpoint) and `paths clear` killed at each call
/// that changes the kernel or the record: the next `clear` always leaves the namespace as it was
/// (the record used to stop claiming the raised limits before they were put back, so a kill in
/// between left them raised for good).
#[test]
fn paths_auto_and_clear_killed_at_every_step_are_repaired_by_the_next_clear() {
    let _g = setup();
    let (ns, peer) = ("mpt-kill", "mpt-kill-peer");
    for n in [ns, peer] {
        let _ = Command::new("ip").args(["netns", "del", n]).output();
        sh(&["ip", "netns", "add", n]);
    }
    sh(&["ip", "-n", ns, "link", "add", "k1", "type", "veth", "peer", "name", "k1p", "netns", peer]);
    sh(&["ip", "-n", ns, "addr", "add", "10.78.1.1/24", "dev", "k1"]);
    sh(&["ip", "-n", ns, "link", "set", "k1", "up"]);
    sh(&["ip", "-n", peer, "link", "set", "k1p", "up"]);
    let auto = ["paths", "--netns", ns, "auto", "--dev", "k1", "--subflows", "4", "--add-addr-accepted", "3"];
    let clear = ["paths", "--netns", ns, "clear"];
    // Raised limits moved to other raised ones.
    let more = ["paths", "--netns", ns, "auto", "--dev", "k1", "--subflows", "6", "--add-addr-accepted", "5"];
    let pristine = |what: &str| {
        let v: serde_json::Value = serde_json::from_str(&ok(&["paths", "--netns", ns, "--json"])).unwrap();
        assert_eq!(v["limits"], serde_json::json!({"subflows": 2, "add_addr_accepted": 0}), "{what}: {v}");
        assert_eq!(v["endpoints"], serde_json::json!([]), "{what}: {v}");
    };
    pristine("before");
    let auto_calls = kill::per_syscall(&kill::calls(CHANGE_CALLS, &auto));
    let clear_calls = kill::per_syscall(&kill::calls(CHANGE_CALLS, &clear));
    ok(&auto);
    let more_calls = kill::per_syscall(&kill::calls(CHANGE_CALLS, &more));
    ok(&clear);
    for calls in [&auto_calls, &clear_calls] {
        let names: Vec<&str> = calls.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.iter().any(|n| n.starts_with("rename")) && names.contains(&"sendto"), "{calls:?}");
    }
    pristine("after auto and clear");
    // Each run killed at each call, after `set_up` (none: the namespace as it was), then `clear`.
    let mut rounds = 0;
    let runs: [KilledRun; 3] = [
        ("auto", &auto, &auto_calls, None),
        ("clear", &clear, &clear_calls, Some(&auto)),
        ("auto moving the limits", &more, &more_calls, Some(&auto)),
    ];
    for (what, run, calls, set_up) in runs {
        for (syscall, count) in calls {
            for n in 1..=*count {
                if let Some(set_up) = set_up {
                    ok(set_up);
                }
                let died = kill::killed_at(syscall, n, run);
                ok(&clear);
                pristine(&format!("{what} killed at {syscall} {n} (died: {died}), then clear"));
                rounds += 1;
            }
        }
    }
    eprintln!("{rounds} killed runs repaired (auto: {auto_calls:?}; clear: {clear_calls:?}; moving: {more_calls:?})");
    for n in [ns, peer] {
        let _ = Command::new("ip").args(["netns", "del", n]).output();
    }
}

/// A record outlives its namespace (`ip netns del` leaves it behind), and the kernel gives the
/// next namespace the freed inode at once: the old record must not speak for the new one.
#[test]
fn a_record_of_a_namespace_gone_never_speaks_for_the_next_one_with_its_inode() {
    let _g = setup();
    let (a, b, peer) = ("mpt-reuse-a", "mpt-reuse-b", "mpt-reuse-peer");
    for n in [a, b, peer] {
        let _ = Command::new("ip").args(["netns", "del", n]).output();
    }
    sh(&["ip", "netns", "add", peer]);
    sh(&["ip", "netns", "add", a]);
    sh(&["ip", "-n", a, "link", "add", "r1", "type", "veth", "peer", "name", "r1p", "netns", peer]);
    sh(&["ip", "-n", a, "addr", "add", "10.79.1.1/24", "dev", "r1"]);
    sh(&["ip", "-n", a, "link", "set", "r1", "up"]);
    ok(&["paths", "--netns", a, "auto", "--dev", "r1", "--subflows", "4", "--add-addr-accepted", "3"]);
    let inode = |n: &str| std::fs::metadata(format!("/run/netns/{n}")).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let old = inode(a).unwrap();
    let record = std::path::Path::new("/run/mptcpify/paths").join(format!("netns-{old}.json"));
    assert!(record.exists(), "auto wrote {}", record.display());
    sh(&["ip", "netns", "del", a]);
    // The namespace is freed by a kernel worker a little later: until then another inode.
    let reused = wait_for(Duration::from_secs(20), || {
        sh(&["ip", "netns", "add", b]);
        if inode(b).ok() == Some(old) {
            return Some(());
        }
        sh(&["ip", "netns", "del", b]);
        std::thread::sleep(Duration::from_millis(200));
        None
    });
    assert!(reused.is_some(), "the kernel never gave a new namespace inode {old}: nothing to check");
    assert!(record.exists(), "the gone namespace's record is still there");
    // In the new namespace someone else sets the same limits mptcpify had raised there.
    sh(&["ip", "-n", b, "mptcp", "limits", "set", "subflow", "4", "add_addr_accepted", "3"]);
    let view: serde_json::Value = serde_json::from_str(&ok(&["paths", "--netns", b, "--json"])).unwrap();
    assert_eq!(view["limits_before_mptcpify"], serde_json::Value::Null, "not raised by mptcpify here: {view}");
    ok(&["paths", "--netns", b, "clear"]);
    let view: serde_json::Value = serde_json::from_str(&ok(&["paths", "--netns", b, "--json"])).unwrap();
    assert_eq!(view["limits"], serde_json::json!({"subflows": 4, "add_addr_accepted": 3}), "someone else's: {view}");
    for n in [b, peer] {
        let _ = Command::new("ip").args(["netns", "del", n]).output();
    }
}
