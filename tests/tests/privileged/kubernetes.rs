//! `mptcpify agent --kubernetes` against a real HTTP server serving the pod and namespace API
//! (the unchanged kube-rs client), with a kubelet-style cgroup tree (systemd driver) made in the
//! VM and real processes inside the pods' container cgroups.
use std::time::{Duration, Instant};

use mptcpify_tests::{
    kube_api::{FakeApi, pod},
    *,
};
use serde_json::json;

const NODE: &str = "node-a";

/// A pod's container cgroup as kubelet + containerd make it with the systemd driver.
fn container_cgroup(qos: &str, uid: &str) -> TestCgroup {
    let u = uid.replace('-', "_");
    let rel = match qos {
        "Guaranteed" => format!("kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{u}.scope"),
        q => {
            let q = q.to_lowercase();
            format!("kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{u}.slice/cri-containerd-{u}.scope")
        }
    };
    TestCgroup::new(&rel)
}

#[test]
fn selected_pods_get_mptcp_until_they_are_deleted() {
    let _g = setup();
    let api = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[kubernetes]\ncgroup_driver = \"auto\"\n").unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    // The agent asks for this node's pods, and checks each one's node itself.
    api.ignore_field_selectors();

    let (web, db, batch, other) = (
        "0a000000-0000-4000-8000-000000000001",
        "0a000000-0000-4000-8000-000000000002",
        "0a000000-0000-4000-8000-000000000003",
        "0a000000-0000-4000-8000-000000000004",
    );
    api.put_namespace("shop", json!({}));
    api.put_namespace("data", json!({ "mptcpify.io/enabled": "true" }));
    // Selected by its annotation.
    api.put_pod(pod("shop", "web", web, NODE, "Burstable", Some("true")));
    // In a selected namespace but opted out.
    api.put_pod(pod("data", "batch", batch, NODE, "Guaranteed", Some("false")));
    // Selected, but on another node: the agent must not even see it.
    api.put_pod(pod("shop", "other", other, "node-b", "Guaranteed", Some("true")));
    let web_cg = container_cgroup("Burstable", web);
    let batch_cg = container_cgroup("Guaranteed", batch);
    let other_cg = container_cgroup("Guaranteed", other);

    let agent = AgentProcess::start(
        &policy,
        &["--kubernetes"],
        &[("NODE_NAME", NODE), ("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    assert_eq!(proto_of(Some(&web_cg), "tcp4"), IPPROTO_MPTCP, "{}", agent.log());
    assert_eq!(proto_of(Some(&batch_cg), "tcp4"), IPPROTO_TCP, "annotation false opts out");
    assert_eq!(proto_of(Some(&other_cg), "tcp4"), IPPROTO_TCP, "another node's pod");
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with("/api/v1/pods ") && r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{:?}",
        api.requests()
    );
    let rules = status_json()["rules"].clone();
    let web_rule = rules.as_array().unwrap().iter().find(|r| r["origin"]["kind"] == "pod").cloned().unwrap();
    assert_eq!(web_rule["origin"]["text"], "shop/web");
    assert_eq!(web_rule["owner"], "agent");

    // A pod of a labelled namespace whose cgroup appears only after the API shows the pod.
    api.put_pod(pod("data", "db", db, NODE, "BestEffort", None));
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let db_cg = container_cgroup("BestEffort", db);
    let covered = wait_for(Duration::from_secs(1), || (proto_of(Some(&db_cg), "tcp4") == IPPROTO_MPTCP).then_some(()));
    assert!(covered.is_some(), "late pod cgroup not covered within 1 s: {}", agent.log());
    eprintln!("pod cgroup covered {:?} after it appeared", start.elapsed());
    let m = agent.metrics();
    assert_eq!(metric(&m, "mptcpify_pod_enabled{namespace=\"data\",pod=\"db\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "mptcpify_kubernetes_synced"), Some(1.0), "{m}");
    assert!(
        metric(&m, "mptcpify_pod_sockets_upgraded_total{namespace=\"shop\",pod=\"web\"}").is_some_and(|v| v >= 1.0),
        "{m}"
    );

    // The namespace loses its label: db is no longer selected.
    api.put_namespace("data", json!({}));
    let off = wait_for(Duration::from_secs(2), || (proto_of(Some(&db_cg), "tcp4") == IPPROTO_TCP).then_some(()));
    assert!(off.is_some(), "unlabelled namespace still enabled: {}", agent.log());

    // The pod is deleted: its rule goes.
    api.delete_pod(web);
    let gone = wait_for(Duration::from_secs(2), || (proto_of(Some(&web_cg), "tcp4") == IPPROTO_TCP).then_some(()));
    assert!(gone.is_some(), "deleted pod still enabled: {}", agent.log());
    assert!(agent.log().contains("removed: cgroup id"), "{}", agent.log());
    let pod_rules: Vec<_> =
        status_json()["rules"].as_array().unwrap().iter().filter(|r| r["origin"]["kind"] == "pod").cloned().collect();
    assert!(pod_rules.is_empty(), "{pod_rules:?}");
    drop(agent);
    for cg in [web_cg, db_cg, batch_cg, other_cg] {
        let pod_dir = cg.path.parent().unwrap().to_path_buf();
        drop(cg);
        let _ = std::fs::remove_dir(pod_dir);
    }
    for d in ["kubepods.slice/kubepods-burstable.slice", "kubepods.slice/kubepods-besteffort.slice", "kubepods.slice"] {
        let _ = std::fs::remove_dir(cgroup_root().join(d));
    }
}

/// Where kubelet puts a pod of `qos` with cgroup UID `uid` under `driver`, relative to the root.
fn pod_cgroup(driver: &str, qos: &str, uid: &str) -> String {
    let q = qos.to_lowercase();
    match (driver, qos) {
        ("systemd", "Guaranteed") => format!("kubepods.slice/kubepods-pod{}.slice", uid.replace('-', "_")),
        ("systemd", _) => format!("kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{}.slice", uid.replace('-', "_")),
        (_, "Guaranteed") => format!("kubepods/pod{uid}"),
        _ => format!("kubepods/{q}/pod{uid}"),
    }
}

/// Everything read from the API server is untrusted: a pod whose UID or mirror annotation
/// climbs out of its kubelet path enables nothing outside its own pod cgroup, under both
/// drivers and all QoS classes, and is reported once; a real static pod still works.
#[test]
fn hostile_pod_uids_enable_nothing_outside_kubepods() {
    let _g = setup();
    let long = "a".repeat(300);
    let hostile = ["/../..", "../../mptcpify-victim", "/etc", "%2e%2e%2f%2e%2e", "/../burstable", long.as_str()];
    let hash = "6d9c3a1e5b7f4c2a8e0d1f3b5a7c9e1d";
    for driver in ["cgroupfs", "systemd"] {
        let api = FakeApi::start();
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, format!("[kubernetes]\ncgroup_driver = \"{driver}\"\n")).unwrap();
        let kubeconfig = api.kubeconfig(dir.path());
        api.put_namespace("evil", json!({ "mptcpify.io/enabled": "true" }));
        let victim = TestCgroup::new("mptcpify-victim");
        // The QoS parents exist, as on a node, so that climbing paths resolve.
        let qos_dirs: Vec<TestCgroup> = ["Burstable", "BestEffort"]
            .iter()
            .map(|q| {
                TestCgroup::new(std::path::Path::new(&pod_cgroup(driver, q, "x")).parent().unwrap().to_str().unwrap())
            })
            .collect();
        // Through the mirror annotation, every value under every QoS class; through the UID
        // itself (the watch's key, so once per value), the classes in turn.
        let qos_classes = ["Guaranteed", "Burstable", "BestEffort"];
        let mut n = 0;
        for (i, bad) in hostile.iter().enumerate() {
            for qos in qos_classes {
                n += 1;
                let uid = format!("0b000000-0000-4000-8000-{n:012}");
                let mut mirror = pod("evil", &format!("mirror-{n}"), &uid, NODE, qos, None);
                mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"] = json!(bad);
                api.put_pod(mirror);
            }
            n += 1;
            api.put_pod(pod("evil", &format!("uid-{n}"), bad, NODE, qos_classes[i % 3], None));
        }
        let mut static_pod =
            pod("kube-system", "etcd", "0c000000-0000-4000-8000-000000000001", NODE, "Burstable", Some("true"));
        static_pod["metadata"]["annotations"]["kubernetes.io/config.mirror"] = json!(hash);
        api.put_pod(static_pod);
        let static_cg = TestCgroup::new(&pod_cgroup(driver, "Burstable", hash));

        let agent = AgentProcess::start(
            &policy,
            &["--kubernetes"],
            &[("NODE_NAME", NODE), ("KUBECONFIG", kubeconfig.to_str().unwrap())],
        );
        let covered =
            wait_for(Duration::from_secs(5), || (proto_of(Some(&static_cg), "tcp4") == IPPROTO_MPTCP).then_some(()));
        assert!(covered.is_some(), "{driver}: the static pod is not covered: {}", agent.log());
        assert_eq!(proto_of(Some(&victim), "tcp4"), IPPROTO_TCP, "{driver}: a cgroup outside kubepods was enabled");
        assert_eq!(proto_of(None, "tcp4"), IPPROTO_TCP, "{driver}: the test's own cgroup was enabled");
        for q in &qos_dirs {
            assert_eq!(proto_of(Some(q), "tcp4"), IPPROTO_TCP, "{driver}: a QoS cgroup {} was enabled", q.relative);
        }
        let rules = status_json()["rules"].as_array().unwrap().clone();
        assert_eq!(rules.len(), 1, "{driver}: only the static pod's rule: {rules:?}");
        assert_eq!(rules[0]["origin"]["text"], "kube-system/etcd");
        // Each refusal is logged once, however often the agent reconciles.
        api.put_namespace("other", json!({}));
        std::thread::sleep(Duration::from_millis(300));
        let m = agent.metrics();
        assert_eq!(metric(&m, "mptcpify_pods_refused"), Some(f64::from(n)), "{driver}: {m}");
        let log = agent.log();
        assert_eq!(log.matches("refused, never enabled").count(), n as usize, "{driver}: {log}");
        assert!(!log.contains(&long), "{driver}: a hostile value is cut in the log");
        drop(agent);
        drop(static_cg);
        drop(qos_dirs);
        for d in ["kubepods.slice", "kubepods"] {
            let _ = std::fs::remove_dir(cgroup_root().join(d));
        }
    }
}

/// `[kubernetes] pod_paths = true`: a pod whose network namespace has two interfaces (the
/// second as Multus attaches it, without a default route) gets limits and an endpoint for each
/// inside that namespace, entered through the pod's process; they go when the pod does.
#[test]
fn pod_paths_are_made_inside_the_pods_namespace_and_go_with_the_pod() {
    let _g = setup();
    let (ns, peer) = ("mpt-pod", "mpt-pod-peer");
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", text(&out));
    };
    for n in [ns, peer] {
        let _ = std::process::Command::new("ip").args(["netns", "del", n]).output();
        ip(&["netns", "add", n]);
    }
    for (dev, net) in [("eth0", 1), ("net1", 2)] {
        ip(&["-n", ns, "link", "add", dev, "type", "veth", "peer", "name", &format!("p{net}"), "netns", peer]);
        ip(&["-n", ns, "addr", "add", &format!("10.75.{net}.1/24"), "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&["-n", peer, "link", "set", &format!("p{net}"), "up"]);
    }
    ip(&["-n", ns, "route", "add", "default", "via", "10.75.1.2", "dev", "eth0"]);

    let api = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[kubernetes]\ncgroup_driver = \"auto\"\npod_paths = true\n").unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    api.ignore_field_selectors();
    let uid = "0a000000-0000-4000-8000-0000000000aa";
    api.put_namespace("multi", json!({}));
    api.put_pod(pod("multi", "router", uid, NODE, "Burstable", Some("true")));
    let cg = container_cgroup("Burstable", uid);
    // The pod's process: in its container cgroup first, then its network namespace.
    let mut sleeper =
        command_in(Some(&cg), std::path::Path::new("/usr/sbin/ip"), &["netns", "exec", ns, "sleep", "600"])
            .spawn()
            .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || (!std::fs::read_to_string(cg.procs()).unwrap().trim().is_empty())
            .then_some(()))
        .is_some()
    );

    let agent = AgentProcess::start(
        &policy,
        &["--kubernetes"],
        &[("NODE_NAME", NODE), ("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    let view = || -> serde_json::Value { serde_json::from_str(&ok(&["paths", "--netns", ns, "--json"])).unwrap() };
    let ours = |v: &serde_json::Value| -> Vec<String> {
        let all = v["endpoints"].as_array().unwrap().iter();
        all.filter(|e| e["owner"] == "mptcpify").map(|e| e["ip"].as_str().unwrap().to_string()).collect()
    };
    let made = wait_for(Duration::from_secs(10), || (ours(&view()).len() == 2).then(view));
    let v = made.unwrap_or_else(|| panic!("no endpoints in the pod: {} {}", view(), agent.log()));
    assert_eq!(ours(&v), ["10.75.1.1", "10.75.2.1"], "both interfaces, the Multus one included: {v}");
    assert_eq!(v["limits"], json!({"subflows": 2, "add_addr_accepted": 2}), "{v}");
    let host: serde_json::Value = serde_json::from_str(&ok(&["paths", "--json"])).unwrap();
    assert!(ours(&host).is_empty(), "nothing made on the node: {host}");

    api.delete_pod(uid);
    let cleared = wait_for(Duration::from_secs(15), || ours(&view()).is_empty().then(view));
    let v = cleared.unwrap_or_else(|| panic!("the pod's endpoints stayed: {} {}", view(), agent.log()));
    assert_eq!(v["limits"], json!({"subflows": 2, "add_addr_accepted": 0}), "put back: {v}");
    drop(agent);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let pod_dir = cg.path.parent().unwrap().to_path_buf();
    drop(cg);
    let _ = std::fs::remove_dir(pod_dir);
    for d in ["kubepods.slice/kubepods-burstable.slice", "kubepods.slice"] {
        let _ = std::fs::remove_dir(cgroup_root().join(d));
    }
    for n in [ns, peer] {
        let _ = std::process::Command::new("ip").args(["netns", "del", n]).output();
    }
}

/// The agent of this node, with `cgroup_driver = "auto"`, watching `api` (its files in `dir`),
/// once it has enabled the pod `namespace/name`.
fn agent_enabling(api: &FakeApi, dir: &std::path::Path, namespace: &str, name: &str) -> AgentProcess {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "[kubernetes]\ncgroup_driver = \"auto\"\n").unwrap();
    let kubeconfig = api.kubeconfig(dir);
    let agent = AgentProcess::start(
        &policy,
        &["--kubernetes"],
        &[("NODE_NAME", NODE), ("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    let series = format!("mptcpify_pod_enabled{{namespace=\"{namespace}\",pod=\"{name}\"}}");
    let enabled = || (metric(&agent.metrics(), &series) == Some(1.0)).then_some(());
    assert!(wait_for(Duration::from_secs(15), enabled).is_some(), "{}", agent.log());
    agent
}

#[test]
fn a_pods_connections_are_counted_per_pod_and_an_audited_pod_stays_tcp() {
    let _g = setup();
    let ns = "mpt-podc";
    let _ = std::process::Command::new("ip").args(["netns", "del", ns]).output();
    for args in [&["netns", "add", ns][..], &["-n", ns, "link", "set", "lo", "up"]] {
        let out = std::process::Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", text(&out));
    }
    let api = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    api.ignore_field_selectors();
    let (web, dry) = ("0a000000-0000-4000-8000-0000000000c1", "0a000000-0000-4000-8000-0000000000c2");
    api.put_namespace("shop", json!({}));
    api.put_pod(pod("shop", "web", web, NODE, "Burstable", Some("true")));
    api.put_pod(pod("shop", "dry", dry, NODE, "Burstable", Some("audit")));
    let (web_cg, dry_cg) = (container_cgroup("Burstable", web), container_cgroup("Burstable", dry));
    let agent = agent_enabling(&api, dir.path(), "shop", "web");

    // A server and a client of the pod, over the pod's own loopback: both ends upgraded.
    let probe = pathprobe_bin().display().to_string();
    let ip = std::path::Path::new("/usr/sbin/ip");
    let serve = ["netns", "exec", ns, &probe, "serve", "127.0.0.1:5201", "hold", "65536", "4000"];
    let mut server = command_in(Some(&web_cg), ip, &serve).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(server.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let connect = ["netns", "exec", ns, &probe, "connect", "127.0.0.1:5201", "hold", "65536", "0", "15000"];
    let mut client = command_in(Some(&web_cg), ip, &connect).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let said = std::io::BufRead::lines(std::io::BufReader::new(client.stdout.take().unwrap())).next().unwrap().unwrap();
    assert!(said.starts_with("proto=262 ") && said.contains("fallback=0"), "{said}");
    let live: serde_json::Value = serde_json::from_str(&ok(&["connections", "--json"])).unwrap();
    let conns = live["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2, "client and server: {live}");
    assert!(conns.iter().all(|c| c["pod"] == "shop/web" && c["outcome"] == "mptcp"), "{live}");
    let netns = format!("netns=\"{}\"", conns[0]["netns"]);
    let syns = |m: &str| {
        m.lines().any(|l| {
            l.starts_with("mptcpify_netns_mptcp_total{")
                && l.contains(&netns)
                && l.contains("pods=\"shop/web\"")
                && l.contains("counter=\"MPCapableSYNTX\"")
                && l.ends_with(" 1")
        })
    };
    // The agent scans for namespaces every 5 s, not at each scrape.
    let seen = wait_for(Duration::from_secs(12), || syns(&agent.metrics()).then_some(()));
    assert!(seen.is_some(), "the pod's namespace, named by its pod: {}", agent.metrics());
    assert!(agent.metrics().contains("mptcpify_pods_unseen 0"), "the agent sees the pod's processes");
    assert!(client.wait().unwrap().success() && server.wait().unwrap().success());
    let counted = |m: &str| {
        metric(m, "mptcpify_pod_connections_total{namespace=\"shop\",pod=\"web\",outcome=\"mptcp\",reason=\"\"}")
    };
    assert_eq!(counted(&agent.metrics()), Some(2.0), "{}", agent.metrics());

    // The audited pod: its socket stays TCP and is counted as what enforcing would change.
    assert_eq!(proto_of(Some(&dry_cg), "tcp4"), IPPROTO_TCP);
    let would = metric(&agent.metrics(), "mptcpify_pod_sockets_would_upgrade_total{namespace=\"shop\",pod=\"dry\"}");
    assert_eq!(would, Some(1.0), "{}", agent.metrics());

    drop(agent);
    let pods: Vec<std::path::PathBuf> =
        [&web_cg, &dry_cg].iter().map(|c| c.path.parent().unwrap().to_path_buf()).collect();
    drop((web_cg, dry_cg));
    for d in pods {
        let _ = std::fs::remove_dir(d);
    }
    for d in ["kubepods.slice/kubepods-burstable.slice", "kubepods.slice"] {
        let _ = std::fs::remove_dir(cgroup_root().join(d));
    }
    let _ = std::process::Command::new("ip").args(["netns", "del", ns]).output();
}

/// The guard keeps a pod's program TCP after MPTCP refused it an option, and the agent says so
/// on the pod: one Warning Event naming the program, the option and the way back, recorded once;
/// decided again after the operator forgot it, recorded again.
#[test]
fn a_pod_whose_program_the_guard_keeps_tcp_gets_an_event() {
    const USER_TIMEOUT: &str = "setopt4:6:18";
    const ENOPROTOOPT: i64 = 92;
    let _g = setup();
    let api = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let uid = "0a000000-0000-4000-8000-0000000000d1";
    api.put_namespace("shop", json!({}));
    api.put_pod(pod("shop", "db", uid, NODE, "Burstable", Some("true")));
    let cg = container_cgroup("Burstable", uid);
    let agent = agent_enabling(&api, dir.path(), "shop", "db");
    assert!(api.events().is_empty(), "nothing to tell yet: {:?}", api.events());

    let refused = |cg: &TestCgroup| {
        let out = parse_probe(&run_in(Some(cg), &sockprobe_bin(), &[USER_TIMEOUT, "tcp4"]));
        assert_eq!((out[USER_TIMEOUT]["proto"], out[USER_TIMEOUT]["errno"]), (262, ENOPROTOOPT), "upgraded, refused");
        assert_eq!(out["tcp4"]["proto"], 6, "kept TCP from its next socket: {out:?}");
    };
    refused(&cg);
    let told = |n: usize| wait_for(Duration::from_secs(15), || (api.events().len() >= n).then(|| api.events()));
    let events = told(1).unwrap_or_else(|| panic!("no Event on the pod: {}", agent.log()));
    let e = &events[0];
    assert_eq!(
        (e["type"].as_str(), e["reason"].as_str(), e["action"].as_str()),
        (Some("Warning"), Some("MptcpKeptTcp"), Some("KeepTcp")),
        "{e}"
    );
    let r = &e["regarding"];
    assert_eq!(
        (r["kind"].as_str(), r["namespace"].as_str(), r["name"].as_str(), r["uid"].as_str()),
        (Some("Pod"), Some("shop"), Some("db"), Some(uid)),
        "{e}"
    );
    assert_eq!(e["metadata"]["namespace"], "shop");
    assert_eq!(e["reportingController"], "mptcpify");
    let note = e["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with(
            "sockprobe stays TCP in this pod: MPTCP refused its setsockopt TCP_USER_TIMEOUT (ENOPROTOOPT)"
        ) && note.contains("mptcpify guard allow sockprobe"),
        "{note}"
    );
    let m = agent.metrics();
    let kept =
        "mptcpify_pod_guard_kept_tcp{namespace=\"shop\",pod=\"db\",program=\"sockprobe\",option=\"TCP_USER_TIMEOUT\"}";
    assert_eq!(metric(&m, kept), Some(1.0), "{m}");

    // Told once: later looks (every 2 s) find nothing new.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(api.events().len(), 1, "{:?}", api.events());
    // Forgotten, refused again, decided again: told again.
    ok(&["guard", "forget", "sockprobe"]);
    refused(&cg);
    assert!(told(2).is_some(), "the new decision is told: {}", agent.log());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(api.events().len(), 2, "{:?}", api.events());
    drop(agent);
}

/// A network namespace with one interface up and addressed (`10.76.N.1/24`), made afresh.
fn addressed_netns(name: &str, n: u8) {
    let _ = std::process::Command::new("ip").args(["netns", "del", name]).output();
    let addr = format!("10.76.{n}.1/24");
    for args in [
        &["netns", "add", name][..],
        &["-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"],
        &["-n", name, "addr", "add", &addr, "dev", "eth0"],
        &["-n", name, "link", "set", "peer0", "up"],
        &["-n", name, "link", "set", "eth0", "up"],
    ] {
        let out = std::process::Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", text(&out));
    }
}

/// The endpoints mptcpify made in the namespace `ns`, and its limits.
fn pod_paths_of(ns: &str) -> (Vec<String>, serde_json::Value) {
    let v: serde_json::Value = serde_json::from_str(&ok(&["paths", "--netns", ns, "--json"])).unwrap();
    let ours = v["endpoints"].as_array().unwrap().iter().filter(|e| e["owner"] == "mptcpify");
    (ours.map(|e| e["ip"].as_str().unwrap().to_string()).collect(), v["limits"].clone())
}

/// A pod's process (`sleep`) in its container cgroup, then in the network namespace `ns`, with
/// `wrapper` (e.g. fewer capabilities) around it; returned once the cgroup lists it.
fn pod_process(cg: &TestCgroup, wrapper: &[&str], ns: &str) -> std::process::Child {
    let mut args: Vec<&str> = wrapper.to_vec();
    args.extend(["/usr/sbin/ip", "netns", "exec", ns, "sleep", "600"]);
    let (program, rest) = args.split_first().unwrap();
    let child = command_in(Some(cg), std::path::Path::new(program), rest).spawn().unwrap();
    let listed = || (!std::fs::read_to_string(cg.procs()).unwrap().trim().is_empty()).then_some(());
    assert!(wait_for(Duration::from_secs(5), listed).is_some());
    child
}

/// `pod_paths` touches only a namespace proven to be the pod's own and a pod that asked for it:
/// not a pod whose spec says hostNetwork (whatever namespace its process is in), not an audited
/// pod (a dry run), and nothing at all when the node's namespace cannot be read (an agent
/// without CAP_SYS_PTRACE, as under a runtime's default AppArmor profile): fail closed.
#[test]
fn pod_paths_touch_only_namespaces_proven_a_pods_own() {
    let _g = setup();
    let pods = [("ok", "true", false, 1u8), ("hn", "true", true, 2), ("dry", "audit", false, 3)];
    let api = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[kubernetes]\ncgroup_driver = \"auto\"\npod_paths = true\n").unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    api.put_namespace("safe", json!({}));
    let mut cgroups = Vec::new();
    let mut children = Vec::new();
    for (i, (name, selected, host_network, n)) in pods.iter().enumerate() {
        let uid = format!("0a000000-0000-4000-8000-0000000000e{i}");
        let ns = format!("mpt-{name}");
        addressed_netns(&ns, *n);
        let mut p = pod("safe", name, &uid, NODE, "Burstable", Some(selected));
        p["spec"]["hostNetwork"] = json!(host_network);
        api.put_pod(p);
        let cg = container_cgroup("Burstable", &uid);
        // Fewer capabilities than PID 1, as the agent below: readable by it without CAP_SYS_PTRACE.
        children.push(pod_process(&cg, &["/usr/bin/setpriv", "--bounding-set=-sys_ptrace", "--"], &ns));
        cgroups.push(cg);
    }
    let envs = [("NODE_NAME", NODE), ("KUBECONFIG", kubeconfig.to_str().unwrap())];
    let untouched = json!({"subflows": 2, "add_addr_accepted": 0});

    let agent = AgentProcess::start(&policy, &["--kubernetes"], &envs);
    let made = wait_for(Duration::from_secs(15), || (!pod_paths_of("mpt-ok").0.is_empty()).then_some(()));
    assert!(made.is_some(), "the selected pod gets its paths: {}", agent.log());
    // One pass goes over every pod: the others were looked at before the first got its paths.
    for ns in ["mpt-hn", "mpt-dry"] {
        assert_eq!(pod_paths_of(ns), (Vec::new(), untouched.clone()), "{ns}: {}", agent.log());
    }
    drop(agent);
    ok(&["paths", "--netns", "mpt-ok", "clear"]);

    // Without CAP_SYS_PTRACE PID 1's namespace is unreadable: no pod's is touched, and it says why.
    let drop_ptrace = ["/usr/bin/setpriv", "--bounding-set=-sys_ptrace", "--"];
    let agent = AgentProcess::start_with(&drop_ptrace, &policy, &["--kubernetes"], &envs);
    let said = || agent.log().contains("cannot be told from a pod's").then_some(());
    assert!(wait_for(Duration::from_secs(15), said).is_some(), "{}", agent.log());
    assert_eq!(pod_paths_of("mpt-ok"), (Vec::new(), untouched), "{}", agent.log());
    // Past the agent's next looks (every 10 s): tried again later, not said again.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(agent.log().matches("cannot be told from a pod's").count(), 1, "logged once: {}", agent.log());
    drop(agent);
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    for cg in cgroups {
        let pod_dir = cg.path.parent().unwrap().to_path_buf();
        drop(cg);
        let _ = std::fs::remove_dir(pod_dir);
    }
    for d in ["kubepods.slice/kubepods-burstable.slice", "kubepods.slice"] {
        let _ = std::fs::remove_dir(cgroup_root().join(d));
    }
    for (name, ..) in pods {
        let _ = std::process::Command::new("ip").args(["netns", "del", &format!("mpt-{name}")]).output();
    }
}
