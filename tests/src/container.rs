//! The DaemonSet's container run by a real OCI runtime (podman with crun), with exactly what the
//! manifest says (image, args, environment, security context, volumes, limits) translated into
//! the runtime's options here, and what the kubelet adds done as the kubelet does it: the pod's
//! network namespace joined to the node by a veth pair, a ConfigMap volume as a directory of
//! `..data` symlinks, the probes as HTTP requests to the pod's address.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::text;

/// podman as the suite runs it in the VM: no systemd there (cgroupfs, events to a file), and
/// a store on the VM's tmpfs.
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
    cmd
}

/// `podman ARGS`, which must succeed; its stdout.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman().args(args).output().unwrap();
    assert!(out.status.success(), "podman {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn podman_out(args: &[&str]) -> Output {
    podman().args(args).output().unwrap()
}

/// What a node gives a pod beside its manifest.
pub struct Node<'a> {
    /// `spec.nodeName`, for `fieldRef` environment variables.
    pub name: &'a str,
    /// The pod's network namespace (`/run/netns/NAME`).
    pub netns: &'a str,
    /// Where each ConfigMap volume's directory is, by ConfigMap name.
    pub config_maps: BTreeMap<String, PathBuf>,
}

/// `podman run` options for `container` of `pod` on `node`, everything the manifest sets
/// translated; an unknown setting is an error, so that the suite never runs something other
/// than what the manifest says.
pub fn run_options(pod: &PodSpec, container: &Container, node: &Node) -> Result<Vec<String>, String> {
    let mut o =
        vec!["--pull=never".to_owned(), "--cgroupns=private".into(), format!("--network=ns:/run/netns/{}", node.netns)];
    if pod.host_pid == Some(true) {
        o.push("--pid=host".into());
    }
    if pod.host_network == Some(true) {
        return Err("hostNetwork is not translated".into());
    }
    environment(container, node, &mut o)?;
    security(container, &mut o)?;
    mounts(pod, container, node, &mut o)?;
    limits(container, &mut o)?;
    if let Some(command) = &container.command {
        o.push(format!("--entrypoint={}", serde_json::to_string(command).unwrap()));
    }
    o.push(container.image.clone().ok_or("the container names no image")?);
    o.extend(container.args.iter().flatten().cloned());
    Ok(o)
}

fn environment(container: &Container, node: &Node, o: &mut Vec<String>) -> Result<(), String> {
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), None) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("spec.nodeName") => node.name.to_owned(),
                other => return Err(format!("env {}: valueFrom {other:?} is not translated", var.name)),
            },
            _ => return Err(format!("env {}: neither a value nor a fieldRef", var.name)),
        };
        o.push(format!("--env={}={value}", var.name));
    }
    Ok(())
}

fn security(container: &Container, o: &mut Vec<String>) -> Result<(), String> {
    let Some(sc) = &container.security_context else { return Ok(()) };
    if sc.privileged == Some(true) {
        o.push("--privileged".into());
    }
    if let Some(uid) = sc.run_as_user {
        o.push(format!("--user={uid}"));
    }
    if sc.allow_privilege_escalation == Some(false) {
        o.push("--security-opt=no-new-privileges".into());
    }
    if sc.read_only_root_filesystem == Some(true) {
        // The kubelet adds no tmpfs of its own, unlike podman's default.
        o.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    if let Some(caps) = &sc.capabilities {
        for cap in caps.drop.iter().flatten() {
            o.push(format!("--cap-drop={}", cap.to_lowercase()));
        }
        for cap in caps.add.iter().flatten() {
            o.push(format!("--cap-add=CAP_{cap}"));
        }
    }
    match sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) {
        None | Some("RuntimeDefault") => {}
        Some("Unconfined") => o.push("--security-opt=seccomp=unconfined".into()),
        Some(other) => return Err(format!("seccompProfile {other} is not translated")),
    }
    match sc.app_armor_profile.as_ref().map(|p| p.type_.as_str()) {
        None | Some("RuntimeDefault") => {}
        Some("Unconfined") => o.push("--security-opt=apparmor=unconfined".into()),
        Some(other) => return Err(format!("appArmorProfile {other} is not translated")),
    }
    if sc.run_as_group.is_some() || sc.se_linux_options.is_some() {
        return Err("runAsGroup and SELinux options are not translated".into());
    }
    Ok(())
}

fn mounts(pod: &PodSpec, container: &Container, node: &Node, o: &mut Vec<String>) -> Result<(), String> {
    for m in container.volume_mounts.iter().flatten() {
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .ok_or_else(|| format!("volumeMount {} names no volume", m.name))?;
        let source = if let Some(host) = &volume.host_path {
            PathBuf::from(&host.path)
        } else if let Some(cm) = &volume.config_map {
            node.config_maps.get(&cm.name).cloned().ok_or_else(|| format!("no directory for ConfigMap {}", cm.name))?
        } else {
            return Err(format!("volume {}: only hostPath and configMap are translated", volume.name));
        };
        let propagation = match m.mount_propagation.as_deref() {
            None | Some("None") => "rprivate",
            Some("HostToContainer") => "rslave",
            Some("Bidirectional") => "rshared",
            Some(other) => return Err(format!("mountPropagation {other}")),
        };
        let ro = if m.read_only == Some(true) || volume.config_map.is_some() { ",ro" } else { "" };
        o.push(format!(
            "--mount=type=bind,source={},destination={}{ro},bind-propagation={propagation}",
            source.display(),
            m.mount_path
        ));
    }
    Ok(())
}

fn limits(container: &Container, o: &mut Vec<String>) -> Result<(), String> {
    let Some(limits) = container.resources.as_ref().and_then(|r| r.limits.as_ref()) else { return Ok(()) };
    for (what, quantity) in limits {
        match what.as_str() {
            "memory" => o.push(format!("--memory={}", memory_bytes(&quantity.0)?)),
            "cpu" => o.push(format!("--cpus={}", cpus(&quantity.0)?)),
            other => return Err(format!("limit {other} is not translated")),
        }
    }
    Ok(())
}

/// A Kubernetes memory quantity (`128Mi`, `1G`, `5000`) in bytes.
pub fn memory_bytes(q: &str) -> Result<u64, String> {
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (n, unit) = q.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("memory quantity {q}"))?;
    let scale: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return Err(format!("memory quantity {q}")),
    };
    Ok(n * scale)
}

/// A Kubernetes CPU quantity (`500m`, `2`) in CPUs.
fn cpus(q: &str) -> Result<f64, String> {
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
        None => q.parse::<f64>(),
    }
    .map_err(|_| format!("cpu quantity {q}"))
}

/// Where the kubelet sends a probe's HTTP GET: the path and the port (a named port resolved
/// through the container's ports).
pub fn http_probe(container: &Container, probe: Option<&Probe>) -> Result<(String, u16), String> {
    let get: &HTTPGetAction = probe.and_then(|p| p.http_get.as_ref()).ok_or("no httpGet probe")?;
    let port = match &get.port {
        IntOrString::Int(p) => *p,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .ok_or_else(|| format!("probe port {name} is not a port of the container"))?,
    };
    Ok((get.path.clone().unwrap_or_else(|| "/".into()), port as u16))
}

/// A ConfigMap volume as the kubelet writes it: each version in a directory of its own,
/// `..data` a symlink to the current one, and each key a symlink through `..data`. An update
/// swaps `..data` with one rename.
pub struct ConfigMapDir {
    pub dir: PathBuf,
    version: u32,
}

impl ConfigMapDir {
    pub fn new(dir: &Path, files: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut cm = Self { dir: dir.to_owned(), version: 0 };
        cm.update(files);
        for (key, _) in files {
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).unwrap();
        }
        cm
    }

    /// Writes the new version beside the old one, then points `..data` at it atomically and
    /// removes the old one, as the kubelet's atomic writer does.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        let name = format!("..2026_12_07_00_00_00.{:09}", self.version);
        let version = self.dir.join(&name);
        std::fs::create_dir(&version).unwrap();
        for (key, text) in files {
            std::fs::write(version.join(key), text).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

/// A pod's network namespace joined to the node by a veth pair, as a CNI plugin makes it:
/// the node at `10.N.0.1`, the pod at `10.N.0.2`, the pod's default route through the node.
pub struct PodNetwork {
    pub netns: String,
    pub node_ip: String,
    pub pod_ip: String,
    host_end: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", text(&out));
}

impl PodNetwork {
    pub fn new(netns: &str, net: u8) -> Self {
        let n = Self {
            netns: netns.to_owned(),
            node_ip: format!("10.{net}.0.1"),
            pod_ip: format!("10.{net}.0.2"),
            host_end: format!("veth-pod{net}"),
        };
        n.remove();
        ip(&["netns", "add", netns]);
        ip(&["link", "add", &n.host_end, "type", "veth", "peer", "name", "eth0", "netns", netns]);
        ip(&["addr", "add", &format!("{}/24", n.node_ip), "dev", &n.host_end]);
        ip(&["link", "set", &n.host_end, "up"]);
        ip(&["-n", netns, "addr", "add", &format!("{}/24", n.pod_ip), "dev", "eth0"]);
        ip(&["-n", netns, "link", "set", "eth0", "up"]);
        ip(&["-n", netns, "link", "set", "lo", "up"]);
        ip(&["-n", netns, "route", "add", "default", "via", &n.node_ip]);
        n
    }

    fn remove(&self) {
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_end]).output();
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        self.remove();
    }
}
