//! `[kubernetes] pod_paths = true`: each selected pod's own network namespace gets limits and
//! an endpoint for every interface (a second network attached by Multus, say), as `paths auto
//! --all-interfaces` would make them. The namespace is entered through a process of the pod's
//! cgroup; what is made there is recorded per namespace like the host's, cleared when the pod
//! is no longer selected while it runs, and forgotten when its namespace has gone with it. A
//! pod on the node's own network namespace (hostNetwork) is left alone: the node's paths are
//! `[paths]`'s.
use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::time::Instant;

use super::desired::PodCoverage;
use crate::paths::{
    apply,
    connection::{Netlink, Netns},
    plan::AutoOptions,
    record::{Record, RecordFile},
};

/// Interfaces a CNI plugin adds after the pod's first process started are caught this late.
pub const RECHECK_EVERY: Duration = Duration::from_secs(30);

/// What was made in one pod's namespace.
#[derive(Debug, Clone)]
struct Made {
    inode: u64,
    cgroup: String,
}

#[derive(Debug, Default)]
pub struct PodPaths {
    made: BTreeMap<String, Made>,
    checked: Option<Instant>,
}

/// The first process found in `dir` or below (a pod's cgroup holds its containers' cgroups).
fn first_pid(dir: &Path) -> Option<u32> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    if let Some(pid) = procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()).find(|p| *p > 0) {
        return Some(pid);
    }
    let mut subdirs: Vec<PathBuf> =
        std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    subdirs.sort();
    subdirs.iter().find_map(|d| first_pid(d))
}

/// The network namespace of a process of the pod, unless it is the node's own.
fn pod_netns(root: &Path, cgroup: &str) -> Result<Option<(PathBuf, u64)>> {
    let Some(pid) = first_pid(&root.join(cgroup.trim_start_matches('/'))) else { return Ok(None) };
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let inode = std::fs::metadata(&path).with_context(|| format!("{} (needs CAP_SYS_PTRACE)", path.display()))?.ino();
    let node = [Path::new("/proc/1/ns/net"), Path::new("/proc/self/ns/net")];
    if node.iter().any(|n| std::fs::metadata(n).is_ok_and(|m| m.ino() == inode)) {
        bail!("it is on the node's network namespace (hostNetwork): left to [paths]");
    }
    Ok(Some((path, inode)))
}

impl PodPaths {
    /// Nothing made that a policy without `pod_paths` would still have to clear.
    pub fn is_idle(&self) -> bool {
        self.made.is_empty()
    }

    /// Makes the paths of newly selected pods (all of them again every [`RECHECK_EVERY`]),
    /// and clears or forgets those of pods no longer selected.
    pub async fn sync(&mut self, pods: &[PodCoverage], root: &Path, opts: &AutoOptions) {
        let now = Instant::now();
        let recheck = self.checked.is_none_or(|t| now.duration_since(t) >= RECHECK_EVERY);
        if recheck {
            self.checked = Some(now);
        }
        let mut wanted = BTreeMap::new();
        for pod in pods {
            let Some(cgroup) = &pod.path else { continue };
            wanted.insert(format!("{}/{}", pod.namespace, pod.name), cgroup.clone());
        }
        for (label, cgroup) in &wanted {
            if !recheck && self.made.get(label).is_some_and(|m| m.cgroup == *cgroup) {
                continue;
            }
            match self.make(label, cgroup, root, opts).await {
                Ok(Some(made)) => {
                    self.made.insert(label.clone(), made);
                }
                Ok(None) => {}
                Err(e) => log::warn!("pod {label}: paths: {e:#}"),
            }
        }
        let gone: Vec<String> = self.made.keys().filter(|l| !wanted.contains_key(*l)).cloned().collect();
        for label in gone {
            let made = self.made.remove(&label).expect("listed");
            if let Err(e) = Self::unmake(&label, &made, root).await {
                log::warn!("pod {label}: clearing its paths: {e:#}");
            }
        }
    }

    async fn make(&self, label: &str, cgroup: &str, root: &Path, opts: &AutoOptions) -> Result<Option<Made>> {
        let Some((path, inode)) = pod_netns(root, cgroup)? else { return Ok(None) };
        let nl = Netlink::open(&Netns::File(path)).await?;
        let plan = apply::auto(&nl, opts, &format!("pod {label}")).await?;
        for e in &plan.add_endpoints {
            log::info!("pod {label}: endpoint {} id {} {}", e.ip, e.id, e.flags.names().join(" "));
        }
        if let Some(l) = plan.limits {
            log::info!("pod {label}: limits subflows {} add_addr_accepted {}", l.subflows, l.add_addr_accepted);
        }
        Ok(Some(Made { inode, cgroup: cgroup.to_string() }))
    }

    /// Clears the namespace while a process of the pod still holds it; otherwise it went with
    /// the pod, and only its record is left to remove.
    async fn unmake(label: &str, made: &Made, root: &Path) -> Result<()> {
        if let Ok(Some((path, inode))) = pod_netns(root, &made.cgroup)
            && inode == made.inode
        {
            let plan = apply::clear(&Netlink::open(&Netns::File(path)).await?).await?;
            log::info!("pod {label}: removed {} endpoint(s) mptcpify made", plan.remove_endpoints.len());
            return Ok(());
        }
        RecordFile::for_netns(made.inode).save(&Record::default())
    }
}

/// The options for a pod: the policy's `[paths]` limits and flags, over all its interfaces.
pub fn options(paths: Option<&AutoOptions>) -> AutoOptions {
    let base = paths.cloned().unwrap_or_default();
    AutoOptions { devs: Vec::new(), backup: Vec::new(), source_routing: false, all_interfaces: true, ..base }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_process_is_found_in_its_containers_cgroups() {
        let t = tempfile::tempdir().unwrap();
        let pod = t.path().join("kubepods.slice/pod1.slice");
        std::fs::create_dir_all(pod.join("cri-a.scope")).unwrap();
        std::fs::create_dir_all(pod.join("cri-b.scope")).unwrap();
        std::fs::write(pod.join("cgroup.procs"), "").unwrap();
        std::fs::write(pod.join("cri-a.scope/cgroup.procs"), "0\n").unwrap();
        std::fs::write(pod.join("cri-b.scope/cgroup.procs"), "4242\n4243\n").unwrap();
        assert_eq!(first_pid(&pod), Some(4242));
        assert_eq!(first_pid(&t.path().join("nothing")), None);
    }

    #[test]
    fn a_pod_gets_every_interface_and_the_policys_limits() {
        let paths =
            AutoOptions { devs: vec!["eth0".into()], subflows: Some(4), source_routing: true, ..Default::default() };
        let o = options(Some(&paths));
        assert!(o.all_interfaces && o.devs.is_empty() && !o.source_routing);
        assert_eq!(o.subflows, Some(4));
        assert!(options(None).all_interfaces);
    }
}
