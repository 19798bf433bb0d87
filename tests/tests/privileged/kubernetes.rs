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
