//! The DaemonSet's container, run for real: the image `cargo xtask image` built offline, loaded
//! into podman and run by crun in the 6.12 VM with the manifest's own settings
//! (`mptcpify_tests::container` translates them), checked from outside as a node sees it.
//! Workloads are second containers of the same runtime under kubepods-style cgroup parents
//! (the kubelet's cgroupfs layout); the Kubernetes API is the tests' stand-in server.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Once,
    time::{Duration, Instant},
};

use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Container};
use mptcpify_tests::{
    container::{ConfigMapDir, Node, PodNetwork, http_probe, podman_ok, podman_out, run_options},
    kube_api::{FakeApi, pod},
    *,
};
use serde_json::json;

const NODE: &str = "node-a";
const AGENT: &str = "mptcpify-agent";
/// Where the tests' kubeconfig is mounted: it stands in for the service account token the
/// kubelet would project, and points the agent at the stand-in API server.
const KUBECONFIG_DIR: &str = "/var/run/mptcpify-test";

/// The image, loaded once per VM.
fn load_image() {
    static LOADED: Once = Once::new();
    LOADED.call_once(|| {
        let archive = std::env::var("MPTCPIFY_IMAGE_ARCHIVE")
            .expect("MPTCPIFY_IMAGE_ARCHIVE not set: run through `cargo xtask test` (it builds the image)");
        podman_ok(&["load", "--quiet", "-i", &archive]);
        // A node's systemd makes every mount shared, so that HostToContainer volumes see mounts
        // made on the host later; the VM's init does not.
        let out = std::process::Command::new("mount").args(["--make-rshared", "/"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    });
}

fn daemonset() -> (DaemonSet, Container) {
    with_container(manifest_daemonset())
}

fn with_container(ds: DaemonSet) -> (DaemonSet, Container) {
    let c = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].clone();
    (ds, c)
}

/// The chart's DaemonSet with podPaths and nodePaths on, as `cargo xtask test` rendered it.
fn paths_chart_daemonset() -> (DaemonSet, Container) {
    let dir = std::env::var("MPTCPIFY_RENDERED_CHART_PATHS")
        .expect("MPTCPIFY_RENDERED_CHART_PATHS not set: run through `cargo xtask test` (it renders the chart)");
    let docs = yaml_documents(&Path::new(&dir).join("daemonset.yaml"));
    let ds = docs.into_iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet in the rendering");
    with_container(serde_json::from_value(ds).expect("the DaemonSet parses"))
}

/// The manifest's ConfigMap text (`policy.toml`), and the ConfigMap's name.
fn manifest_policy() -> (String, String) {
    let docs = yaml_documents(&deploy_dir().join("kubernetes/mptcpify.yaml"));
    let cm = docs.into_iter().find(|d| d["kind"] == "ConfigMap").expect("a ConfigMap in mptcpify.yaml");
    (cm["metadata"]["name"].as_str().unwrap().to_owned(), cm["data"]["policy.toml"].as_str().unwrap().to_owned())
}

/// The agent's pod: its network, its ConfigMap directory, the API server it watches, and its
/// container once started.
struct AgentPod {
    net: PodNetwork,
    config: ConfigMapDir,
    api: FakeApi,
    _dir: tempfile::TempDir,
    container: Container,
    options: Vec<String>,
}

impl AgentPod {
    fn new(net: u8, policy: &str) -> Self {
        Self::of(daemonset(), net, policy)
    }

    /// The agent pod of `ds` (its first container), with `policy` in its ConfigMap.
    fn of((ds, container): (DaemonSet, Container), net: u8, policy: &str) -> Self {
        load_image();
        let _ = podman_out(&["rm", "--force", "--time", "0", AGENT]);
        let net = PodNetwork::new("mptcpify-pod", net);
        let api = FakeApi::start_on(&net.node_ip);
        // The agent asks for this node's pods, and checks each one's node itself.
        api.ignore_field_selectors();
        let dir = tempfile::tempdir().unwrap();
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let cm_name = pod.volumes.iter().flatten().find_map(|v| Some(v.config_map.as_ref()?.name.clone()));
        let cm_name = cm_name.expect("the DaemonSet mounts a ConfigMap");
        let config = ConfigMapDir::new(&dir.path().join("policy"), &[("policy.toml", policy)]);
        let kubeconfig = dir.path().join("kube");
        std::fs::create_dir(&kubeconfig).unwrap();
        name_a_ca(&api.kubeconfig(&kubeconfig));
        let node = Node { name: NODE, netns: &net.netns, config_maps: BTreeMap::from([(cm_name, config.dir.clone())]) };
        let manifest = run_options(pod, &container, &node).unwrap_or_else(|e| panic!("the manifest: {e}"));
        let mut options = vec![
            "--name".to_owned(),
            AGENT.into(),
            format!("--mount=type=bind,source={},destination={KUBECONFIG_DIR},ro", kubeconfig.display()),
            format!("--env=KUBECONFIG={KUBECONFIG_DIR}/kubeconfig"),
        ];
        options.extend(manifest);
        Self { net, config, api, _dir: dir, container, options }
    }

    fn start(&self) {
        let mut args = vec!["run", "--detach"];
        args.extend(self.options.iter().map(String::as_str));
        podman_ok(&args);
    }

    /// The probe `which` (`liveness` or `readiness`) as the kubelet sends it: an HTTP GET to
    /// the pod's address on the port and path the manifest declares.
    fn probe(&self, which: &str) -> std::io::Result<(u16, String)> {
        let probe = match which {
            "liveness" => self.container.liveness_probe.as_ref(),
            _ => self.container.readiness_probe.as_ref(),
        };
        let (path, port) = http_probe(&self.container, probe).unwrap();
        http_get(&format!("{}:{port}", self.net.pod_ip), &path)
    }

    /// Waits (under TCG a start takes tens of seconds) until the readiness probe answers 200.
    fn wait_ready(&self, limit: Duration) {
        let ready = wait_for(limit, || (self.probe("readiness").ok()?.0 == 200).then_some(()));
        assert!(ready.is_some(), "not ready: {:?}\n{}", self.probe("readiness"), self.logs());
    }

    fn logs(&self) -> String {
        let out = podman_out(&["logs", AGENT]);
        format!("container log:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }
}

impl Drop for AgentPod {
    fn drop(&mut self) {
        let _ = podman_out(&["rm", "--force", "--time", "0", AGENT]);
    }
}

/// Adds a cluster CA to `kubeconfig`, as in-cluster configuration always has one (the service
/// account's `ca.crt`): the image carries no CA certificates of its own, so the client must be
/// given the cluster's. (The stand-in server speaks plain HTTP; the CA is never used.)
fn name_a_ca(kubeconfig: &Path) {
    let dir = kubeconfig.parent().unwrap();
    let (key, cert) = (dir.join("ca.key"), dir.join("ca.crt"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=mptcpify-test-ca", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {}", text(&out));
    let b64 = std::process::Command::new("base64").arg("-w0").arg(&cert).output().unwrap();
    let data = String::from_utf8(b64.stdout).unwrap();
    let config = std::fs::read_to_string(kubeconfig).unwrap();
    let config = config.replacen("    server:", &format!("    certificate-authority-data: {data}\n    server:"), 1);
    std::fs::write(kubeconfig, config).unwrap();
}

/// A pod's cgroup as the kubelet makes it before its containers (cgroupfs driver, BestEffort).
fn pod_cgroup(uid: &str) -> PathBuf {
    let p = cgroup_root().join(format!("kubepods/besteffort/pod{uid}"));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// The protocol a TCP socket of a container in pod `uid` gets: the static probe run by the same
/// runtime, in the agent's image, under the pod's cgroup.
fn workload_proto(uid: &str) -> i64 {
    let probe = static_sockprobe_bin();
    let out = podman_out(&[
        "run",
        "--rm",
        "--pull=never",
        "--network=none",
        &format!("--cgroup-parent=/kubepods/besteffort/pod{uid}"),
        &format!("--mount=type=bind,source={},destination=/sockprobe,ro", probe.display()),
        "--entrypoint=/sockprobe",
        "localhost/mptcpify:0.1.0",
        "--raw",
        "tcp4",
    ]);
    assert!(out.status.success(), "workload: {}", text(&out));
    parse_probe(&String::from_utf8_lossy(&out.stdout))["tcp4"]["proto"]
}

fn pod_rule(origin: &str) -> Option<serde_json::Value> {
    let status = status_json();
    status["rules"].as_array()?.iter().find(|r| r["origin"]["text"] == origin).cloned()
}

/// bpffs unmounted from its place on the host until dropped (also when a test fails).
struct BpffsUnmounted;

impl BpffsUnmounted {
    fn new() -> Self {
        let out = std::process::Command::new("umount").arg(mptcpify_common::BPFFS).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        Self
    }
}

impl Drop for BpffsUnmounted {
    fn drop(&mut self) {
        let out = std::process::Command::new("mount").args(["-t", "bpf", "bpf", mptcpify_common::BPFFS]).output();
        assert!(out.is_ok_and(|o| o.status.success()), "mounting bpffs again");
    }
}

fn remove_cgroup(p: &Path) {
    let _ = std::fs::remove_dir(p);
}

#[test]
fn the_daemonset_container_selects_pods_follows_its_configmap_and_is_adopted_after_a_restart() {
    let _g = setup();
    let (_, policy) = manifest_policy();
    let mut agent = AgentPod::new(97, &policy);
    let (web, other) = ("0c000000-0000-4000-8000-000000000001", "0c000000-0000-4000-8000-000000000002");
    agent.api.put_namespace("shop", json!({}));
    agent.api.put_pod(pod("shop", "web", web, NODE, "BestEffort", Some("true")));
    agent.api.put_pod(pod("shop", "other", other, NODE, "BestEffort", None));
    let (web_cg, other_cg) = (pod_cgroup(web), pod_cgroup(other));

    // A node whose bpffs is not mounted yet: the agent runs, is not ready, and says why.
    let bpffs = BpffsUnmounted::new();
    agent.start();
    let unready = wait_for(Duration::from_secs(90), || {
        let (code, body) = agent.probe("readiness").ok()?;
        (code == 503).then_some(body)
    });
    let unready = unready.unwrap_or_else(|| panic!("no 503: {:?}\n{}", agent.probe("readiness"), agent.logs()));
    assert_eq!(agent.probe("liveness").unwrap().0, 200, "alive while not ready");
    assert!(!Path::new(PIN_DIR).exists(), "nothing pinned without bpffs ({unready})");
    assert!(unready.contains("bpffs is not mounted"), "{unready}");
    // Mounted on the host, it reaches the container (HostToContainer), and the agent loads.
    drop(bpffs);
    agent.wait_ready(Duration::from_secs(60));
    assert!(Path::new(PIN_DIR).join(LINK_PIN).exists(), "pinned on the host's bpffs");

    // The agent inside found the host's cgroup tree: the pod's rule names the host's cgroup.
    let rule = pod_rule("shop/web").unwrap_or_else(|| panic!("no rule for shop/web: {}", status_json()));
    assert_eq!(rule["target"].as_str(), web_cg.to_str(), "{rule}");
    assert_eq!(rule["owner"], "agent");
    assert_eq!(workload_proto(web), IPPROTO_MPTCP, "a selected pod's container");
    assert_eq!(workload_proto(other), IPPROTO_TCP, "a pod not selected");
    // Under CAP_SYSLOG and the VM's kptr_restrict (below 2) the never-break check is on.
    let doctor: serde_json::Value = serde_json::from_slice(&mptcpify(&["doctor", "--json"]).stdout).unwrap();
    let never_break = doctor["checks"].as_array().unwrap().iter().find(|c| c["name"] == "never-break").cloned();
    assert_eq!(never_break.as_ref().map(|c| c["level"].clone()), Some(json!("OK")), "{doctor}");

    // A ConfigMap update, as the kubelet makes it: `..data` swapped to a new directory.
    let updated = policy.replacen("[enable]\n", "[enable]\ncomms = [\"cm-probe\"]\n", 1);
    assert_ne!(updated, policy, "the manifest's policy has an [enable] table");
    let started = Instant::now();
    agent.config.update(&[("policy.toml", &updated)]);
    let applied = wait_for(Duration::from_secs(10), || {
        status_json()["rules"].as_array()?.iter().any(|r| r["key"] == "cm-probe").then(|| started.elapsed())
    });
    let applied = applied.unwrap_or_else(|| panic!("the new policy never applied: {}", agent.logs()));
    eprintln!("the ConfigMap update applied after {applied:?}");
    assert!(applied < Duration::from_secs(1), "applied after {applied:?}");

    // Stopped (SIGTERM, as the kubelet stops it): the rules stay in force.
    let rules_before = status_json()["rules"].as_array().unwrap().len();
    podman_ok(&["stop", "--time", "10", AGENT]);
    assert_eq!(workload_proto(web), IPPROTO_MPTCP, "in force while the agent is stopped");
    // A new container in its place, as the kubelet makes one: it adopts the pinned state.
    podman_ok(&["rm", AGENT]);
    agent.start();
    let ready = wait_for(Duration::from_secs(60), || (agent.probe("readiness").ok()?.0 == 200).then_some(()));
    assert!(ready.is_some(), "not ready after a restart: {}", agent.logs());
    assert_eq!(status_json()["rules"].as_array().unwrap().len(), rules_before, "{}", status_json());
    assert_eq!(pod_rule("shop/web").unwrap()["owner"], "agent");
    assert_eq!(workload_proto(web), IPPROTO_MPTCP);
    assert_eq!(workload_proto(other), IPPROTO_TCP);
    podman_ok(&["rm", "--force", "--time", "0", AGENT]);
    remove_cgroup(&web_cg);
    remove_cgroup(&other_cg);
}

/// `kernel.kptr_restrict=2` hides kernel addresses even from CAP_SYSLOG: the agent loads
/// without the netns check, says so in its log, and `doctor` warns, as README documents.
#[test]
fn with_kernel_addresses_hidden_the_agent_loads_without_the_netns_check_and_says_so() {
    let _g = setup();
    let (_, policy) = manifest_policy();
    let agent = AgentPod::new(98, &policy);
    let restore = std::fs::read_to_string("/proc/sys/kernel/kptr_restrict").unwrap();
    std::fs::write("/proc/sys/kernel/kptr_restrict", "2").unwrap();
    agent.start();
    let ready = wait_for(Duration::from_secs(90), || (agent.probe("readiness").ok()?.0 == 200).then_some(()));
    std::fs::write("/proc/sys/kernel/kptr_restrict", restore.trim()).unwrap();
    assert!(ready.is_some(), "not ready: {:?}\n{}", agent.probe("readiness"), agent.logs());
    assert!(agent.logs().contains("netns check off"), "{}", agent.logs());
    let doctor: serde_json::Value = serde_json::from_slice(&mptcpify(&["doctor", "--json"]).stdout).unwrap();
    let never_break = doctor["checks"].as_array().unwrap().iter().find(|c| c["name"] == "never-break").cloned();
    assert_eq!(never_break.as_ref().map(|c| c["level"].clone()), Some(json!("WARN")), "{doctor}");
}

/// `ip [-n NETNS] mptcp endpoint show`.
fn endpoints(netns: Option<&str>) -> String {
    let mut cmd = std::process::Command::new("ip");
    if let Some(n) = netns {
        cmd.args(["-n", n]);
    }
    let out = cmd.args(["mptcp", "endpoint", "show"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process of pod `uid` on the pod's network, as its container's would be: put in the pod's
/// cgroup first, then into the namespace (`ip netns exec` remounts /sys).
fn pod_process(uid: &str, netns: &str) -> std::process::Child {
    let procs = pod_cgroup(uid).join("cgroup.procs");
    std::process::Command::new("/bin/sh")
        .args(["-c", r#"echo $$ > "$0" && exec ip netns exec "$1" sleep 600"#])
        .arg(&procs)
        .arg(netns)
        .spawn()
        .unwrap()
}

/// The chart's paths settings (podPaths and nodePaths: hostPID, the grants, the records on the
/// node) run `[paths]` in the node's namespace and `pod_paths` in a selected pod's, and a new
/// agent container whose policy has neither clears what the earlier one made, from the records
/// it left on the node.
#[test]
fn the_charts_paths_settings_keep_node_and_pod_paths_and_a_new_agent_clears_them() {
    let _g = setup();
    let node_link = "mpt-node0";
    let _ = std::process::Command::new("ip").args(["link", "del", node_link]).output();
    for args in [
        &["link", "add", node_link, "type", "veth", "peer", "name", "mpt-node0p"][..],
        &["addr", "add", "10.82.0.1/24", "dev", node_link],
        &["link", "set", "mpt-node0p", "up"],
        &["link", "set", node_link, "up"],
    ] {
        let out = std::process::Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", text(&out));
    }
    let policy = format!(
        "[kubernetes]\ncgroup_driver = \"auto\"\npod_paths = true\n\n[paths]\nauto = true\ndevs = [\"{node_link}\"]\n"
    );
    let mut agent = AgentPod::of(paths_chart_daemonset(), 95, &policy);
    let uid = "0c000000-0000-4000-8000-000000000003";
    agent.api.put_namespace("shop", json!({}));
    agent.api.put_pod(pod("shop", "multi", uid, NODE, "BestEffort", Some("true")));
    let pod_net = PodNetwork::new("mpt-multi", 94);
    let mut process = pod_process(uid, &pod_net.netns);
    agent.start();
    agent.wait_ready(Duration::from_secs(90));
    let node_made = wait_for(Duration::from_secs(60), || endpoints(None).contains("10.82.0.1").then_some(()));
    assert!(node_made.is_some(), "no endpoint on the node: {}\n{}", endpoints(None), agent.logs());
    let pod_ip = pod_net.pod_ip.clone();
    let pod_made =
        wait_for(Duration::from_secs(60), || endpoints(Some(&pod_net.netns)).contains(&pod_ip).then_some(()));
    assert!(pod_made.is_some(), "no endpoint in the pod: {}\n{}", endpoints(Some(&pod_net.netns)), agent.logs());

    // Replaced by an agent with the same policy: the pod's endpoint stays throughout, also
    // before the new agent has the pod list (until then no pod is known to be gone).
    podman_ok(&["stop", "--time", "10", AGENT]);
    podman_ok(&["rm", AGENT]);
    agent.start();
    let until = Instant::now() + Duration::from_secs(90);
    let mut ready_since = None;
    while ready_since.is_none_or(|t: Instant| t.elapsed() < Duration::from_secs(10)) {
        let pod_now = endpoints(Some(&pod_net.netns));
        assert!(pod_now.contains(&pod_ip), "removed while the agent restarted: {pod_now}\n{}", agent.logs());
        if ready_since.is_none() && agent.probe("readiness").is_ok_and(|(code, _)| code == 200) {
            ready_since = Some(Instant::now());
        }
        assert!(Instant::now() < until, "not ready after a restart: {}", agent.logs());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Replaced (a rollout) by an agent whose policy has neither.
    podman_ok(&["stop", "--time", "10", AGENT]);
    podman_ok(&["rm", AGENT]);
    assert!(endpoints(None).contains("10.82.0.1"), "a stopped agent leaves the paths");
    agent.config.update(&[("policy.toml", "[kubernetes]\ncgroup_driver = \"auto\"\n")]);
    agent.start();
    agent.wait_ready(Duration::from_secs(90));
    let cleared = wait_for(Duration::from_secs(60), || {
        let (node, pod) = (endpoints(None), endpoints(Some(&pod_net.netns)));
        (!node.contains("10.82.0.1") && !pod.contains(&pod_ip)).then_some(())
    });
    assert!(
        cleared.is_some(),
        "left: node {} pod {}\n{}",
        endpoints(None),
        endpoints(Some(&pod_net.netns)),
        agent.logs()
    );
    let _ = process.kill();
    let _ = process.wait();
    let _ = std::process::Command::new("ip").args(["link", "del", node_link]).output();
    remove_cgroup(&pod_cgroup(uid));
}
