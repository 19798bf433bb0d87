//! The deployment files, checked as the API server would read them: every document of the plain
//! manifests and of the Helm chart as Helm renders it (`MPTCPIFY_RENDERED_CHART`, written by
//! `cargo xtask test`) must deserialize into its k8s-openapi type *without losing a field* (a
//! typo'd or misplaced key fails), and the agent's settings must hang together.
use std::{collections::BTreeMap, path::PathBuf};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Namespace, ServiceAccount},
    networking::v1::NetworkPolicy,
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use mptcpify_tests::*;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// Parses `doc` as `T` and checks that serializing it back gives the same document.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, file: &str) -> T {
    let t: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{file}: {} {e}", doc["kind"]));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(&back, doc, "{file}: {} lost or changed fields when read as the API type", doc["kind"]);
    t
}

#[derive(Default)]
struct Objects {
    daemonsets: Vec<DaemonSet>,
    configmaps: Vec<ConfigMap>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    accounts: Vec<ServiceAccount>,
    namespaces: Vec<Namespace>,
    network_policies: Vec<NetworkPolicy>,
}

fn load(files: &[PathBuf]) -> Objects {
    let mut o = Objects::default();
    for f in files {
        let name = f.display().to_string();
        for doc in yaml_documents(f) {
            match doc["kind"].as_str().unwrap_or_default() {
                "DaemonSet" => o.daemonsets.push(typed(&doc, &name)),
                "ConfigMap" => o.configmaps.push(typed(&doc, &name)),
                "ClusterRole" => o.roles.push(typed(&doc, &name)),
                "ClusterRoleBinding" => o.bindings.push(typed(&doc, &name)),
                "ServiceAccount" => o.accounts.push(typed(&doc, &name)),
                "Namespace" => o.namespaces.push(typed(&doc, &name)),
                "NetworkPolicy" => o.network_policies.push(typed(&doc, &name)),
                other => panic!("{name}: unexpected kind {other:?}"),
            }
        }
    }
    o
}

/// What both the manifests and the chart must get right.
fn check(o: &Objects) {
    assert_eq!(o.daemonsets.len(), 1);
    let ds = &o.daemonsets[0];
    let spec = ds.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    let labels = spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
    for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(labels.get(k), Some(v), "the selector matches the pod template");
    }
    let rolling = spec.update_strategy.as_ref().unwrap().rolling_update.as_ref().unwrap();
    assert_eq!(rolling.max_surge, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0)));

    // RBAC: the account the pods run as is bound to a read-only role over pods and namespaces,
    // and may create Events (nothing else of any other group).
    let sa = pod.service_account_name.as_deref().unwrap();
    assert!(o.accounts.iter().any(|a| a.metadata.name.as_deref() == Some(sa)));
    let binding = o.bindings.iter().find(|b| b.subjects.iter().flatten().any(|s| s.name == sa)).expect("a binding");
    let role = o.roles.iter().find(|r| r.metadata.name.as_deref() == Some(&binding.role_ref.name)).expect("its role");
    let mut events = false;
    for rule in role.rules.iter().flatten() {
        let resources = rule.resources.clone().unwrap();
        let verbs: Vec<&str> = rule.verbs.iter().map(String::as_str).collect();
        match rule.api_groups.as_deref() {
            Some([g]) if g.is_empty() => {
                assert!(verbs.iter().all(|v| ["get", "list", "watch"].contains(v)), "{verbs:?}");
                assert!(resources.iter().all(|r| r == "pods" || r == "namespaces"), "{resources:?}");
            }
            Some([g]) if g == "events.k8s.io" => {
                assert_eq!((&resources[..], &verbs[..]), (&["events".to_owned()][..], &["create"][..]));
                events = true;
            }
            other => panic!("a rule over {other:?}"),
        }
    }
    assert!(events, "the agent records Events on pods");

    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    assert!(args.contains(&"--kubernetes".to_owned()), "{args:?}");
    let env: BTreeMap<_, _> = c.env.iter().flatten().map(|e| (e.name.clone(), e)).collect();
    let node = env["NODE_NAME"].value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
    assert_eq!(node.field_path, "spec.nodeName");

    // Not privileged: all capabilities dropped but the three the agent needs.
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(caps.add.as_deref(), Some(&["BPF".to_owned(), "PERFMON".to_owned(), "SYSLOG".to_owned()][..]));

    // Probes hit the agent's endpoints on the metrics port, which the args bind.
    let port = c.ports.iter().flatten().find(|p| p.name.as_deref() == Some("metrics")).unwrap().container_port;
    assert!(args.contains(&format!("--metrics-addr=0.0.0.0:{port}")), "{args:?}");
    let probe_path =
        |p: &Option<k8s_openapi::api::core::v1::Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
    assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));

    // bpffs and the cgroup tree come from the host; the policy from the ConfigMap, and parses.
    let mounts: BTreeMap<_, _> = c.volume_mounts.iter().flatten().map(|m| (m.name.clone(), m)).collect();
    let volumes: BTreeMap<_, _> = pod.volumes.iter().flatten().map(|v| (v.name.clone(), v)).collect();
    for (path, read_only) in [("/sys/fs/bpf", None), ("/sys/fs/cgroup", Some(true))] {
        let m = mounts.values().find(|m| m.mount_path == path).unwrap_or_else(|| panic!("no mount at {path}"));
        assert_eq!(m.read_only, read_only, "{path}");
        assert_eq!(volumes[&m.name].host_path.as_ref().unwrap().path, path);
    }
    let config_arg = args.iter().find_map(|a| a.strip_prefix("--config=")).expect("--config=");
    let policy_mount = mounts.values().find(|m| config_arg.starts_with(&m.mount_path)).expect("the policy is mounted");
    let cm_name = &volumes[&policy_mount.name].config_map.as_ref().unwrap().name;
    let cm = o.configmaps.iter().find(|c| c.metadata.name == Some(cm_name.clone())).expect("the policy ConfigMap");
    let file = config_arg.rsplit('/').next().unwrap();
    let text = &cm.data.as_ref().unwrap()[file];
    mptcpify::agent::policy::Policy::parse(text, file, &|_| None).expect("the shipped policy is valid");
}

#[test]
fn plain_manifests_are_valid_kubernetes_objects() {
    let o = load(&[deploy_dir().join("kubernetes/mptcpify.yaml")]);
    assert_eq!(o.namespaces.len(), 1);
    check(&o);
}

#[test]
fn the_rendered_chart_is_valid_and_matches_the_manifests() {
    let dir = std::env::var_os("MPTCPIFY_RENDERED_CHART")
        .map(PathBuf::from)
        .expect("MPTCPIFY_RENDERED_CHART not set: run through `cargo xtask test`, which renders the chart with Helm");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    assert!(files.len() >= 3, "{files:?}");
    let o = load(&files);
    check(&o);
    // The chart renders the same agent as the plain manifests (names and labels aside).
    let plain = manifest_daemonset();
    let container = |ds: &DaemonSet| {
        let mut c = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].clone();
        c.image = None;
        c.image_pull_policy = None;
        c
    };
    assert_eq!(container(&o.daemonsets[0]), container(&plain));
}

fn rendered(var: &str) -> Objects {
    let dir = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} not set: run through `cargo xtask test`, which renders the chart with Helm"));
    load(&std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect::<Vec<_>>())
}

/// The metrics port is open to whoever reaches pod addresses unless the chart's NetworkPolicy
/// (off by default) admits only the named peers, to that port, of the agent's pods.
#[test]
fn the_chart_can_limit_who_scrapes_the_metrics() {
    assert!(rendered("MPTCPIFY_RENDERED_CHART").network_policies.is_empty(), "off by default");
    let o = rendered("MPTCPIFY_RENDERED_CHART_NETPOL");
    check(&o);
    assert_eq!(o.network_policies.len(), 1);
    let spec = o.network_policies[0].spec.as_ref().unwrap();
    let pod_labels = o.daemonsets[0].spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
    for (k, v) in spec.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap() {
        assert_eq!(pod_labels.get(k), Some(v), "the policy selects the agent's pods ({k})");
    }
    assert_eq!(spec.policy_types.as_deref(), Some(&["Ingress".to_owned()][..]));
    let ingress = spec.ingress.as_ref().unwrap();
    assert_eq!(ingress.len(), 1, "one rule: the metrics port, from the named peers");
    let from = ingress[0].from.as_ref().expect("peers named");
    assert!(!from.is_empty(), "an empty peer list admits everyone");
    let container = &o.daemonsets[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    let port = container.ports.as_ref().unwrap().iter().find(|p| p.name.as_deref() == Some("metrics")).unwrap();
    let allowed = ingress[0].ports.as_ref().unwrap();
    assert_eq!(allowed.len(), 1);
    assert_eq!(
        allowed[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port.container_port))
    );
}

/// `podPaths.enabled` and `nodePaths.enabled` add exactly what entering pods' and the node's
/// namespaces needs, and the records' directory on the node; off, nothing changes.
#[test]
fn the_chart_grants_what_pod_and_node_paths_need_only_when_asked() {
    let caps = |o: &Objects| -> Vec<String> {
        let spec = o.daemonsets[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let sc = spec.containers[0].security_context.as_ref().unwrap();
        sc.capabilities.as_ref().unwrap().add.clone().unwrap_or_default()
    };
    let host_pid = |o: &Objects| o.daemonsets[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap().host_pid;
    let default = rendered("MPTCPIFY_RENDERED_CHART");
    assert_eq!(caps(&default), ["BPF", "PERFMON", "SYSLOG"]);
    assert_eq!(host_pid(&default), None);
    let records = |o: &Objects| {
        let spec = o.daemonsets[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let volume = spec.volumes.iter().flatten().find(|v| v.name == "records")?;
        let mount = spec.containers[0].volume_mounts.iter().flatten().find(|m| m.name == "records")?;
        Some((volume.host_path.as_ref()?.path.clone(), mount.mount_path.clone(), mount.read_only))
    };
    assert_eq!(records(&default), None);
    let o = rendered("MPTCPIFY_RENDERED_CHART_PATHS");
    assert_eq!(caps(&o), ["BPF", "PERFMON", "SYSLOG", "SYS_PTRACE", "SYS_ADMIN", "NET_ADMIN"]);
    assert_eq!(host_pid(&o), Some(true));
    assert_eq!(records(&o), Some(("/run/mptcpify".into(), "/run/mptcpify".into(), None)), "kept on the node");
    let policy = &o.configmaps[0].data.as_ref().unwrap()["policy.toml"];
    assert!(policy.contains("pod_paths = true") && policy.contains("[paths]"), "{policy}");
}

/// The runtime options the container suite runs the agent with (`container::run_options`),
/// for `ds`'s agent container, its image left out: every rendering must translate (nothing in
/// it the suite would not run), whatever its ConfigMap is called.
fn runtime_options(ds: &DaemonSet) -> Vec<String> {
    use mptcpify_tests::container::{Node, run_options};
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let config_maps = pod.volumes.iter().flatten().filter_map(|v| v.config_map.as_ref());
    let node = Node {
        name: "node-a",
        netns: "pod",
        config_maps: config_maps.map(|c| (c.name.clone(), PathBuf::from("/cm"))).collect(),
    };
    let c = &pod.containers[0];
    let options = run_options(pod, c, &node).unwrap_or_else(|e| panic!("{e}"));
    options.into_iter().filter(|o| Some(o) != c.image.as_ref()).collect()
}

#[test]
fn the_container_suite_runs_what_the_manifest_and_every_chart_rendering_say() {
    let plain = runtime_options(&manifest_daemonset());
    for expected in [
        "--cap-drop=all",
        "--cap-add=CAP_BPF",
        "--cap-add=CAP_PERFMON",
        "--cap-add=CAP_SYSLOG",
        "--security-opt=no-new-privileges",
        "--security-opt=seccomp=unconfined",
        "--read-only",
        "--user=0",
        "--env=NODE_NAME=node-a",
        "--mount=type=bind,source=/sys/fs/bpf,destination=/sys/fs/bpf,bind-propagation=rslave",
        "--mount=type=bind,source=/sys/fs/cgroup,destination=/sys/fs/cgroup,ro,bind-propagation=rprivate",
        "--mount=type=bind,source=/cm,destination=/etc/mptcpify,ro,bind-propagation=rprivate",
        "--memory=134217728",
    ] {
        assert!(plain.contains(&expected.to_owned()), "{expected} missing from {plain:?}");
    }
    assert_eq!(runtime_options(&rendered("MPTCPIFY_RENDERED_CHART").daemonsets[0]), plain, "the chart's default");
    let pod_paths = runtime_options(&rendered("MPTCPIFY_RENDERED_CHART_PATHS").daemonsets[0]);
    let records = "--mount=type=bind,source=/run/mptcpify,destination=/run/mptcpify,bind-propagation=rprivate";
    assert!(pod_paths.contains(&records.to_owned()), "{pod_paths:?}");
    assert!(pod_paths.contains(&"--pid=host".to_owned()), "{pod_paths:?}");
    assert!(pod_paths.contains(&"--security-opt=apparmor=unconfined".to_owned()), "PID 1 readable: {pod_paths:?}");
    assert!(!plain.iter().any(|o| o.contains("apparmor")), "only podPaths needs it: {plain:?}");
    runtime_options(&rendered("MPTCPIFY_RENDERED_CHART_NETPOL").daemonsets[0]);
}
