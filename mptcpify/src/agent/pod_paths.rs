//! `[kubernetes] pod_paths = true`: each selected pod's own network namespace gets limits and
//! an endpoint for every interface (a second network attached by Multus, say), as `paths auto
//! --all-interfaces` would make them. The namespace is entered through a process of the pod's
//! cgroup; what is made there is recorded per namespace like the host's, cleared when the pod
//! is no longer selected while it runs, and forgotten when its namespace has gone with it. Only
//! a namespace proven to be the pod's own is touched (see [`not_a_pods`]): the node's paths are
//! `[paths]`'s. Audited pods are a dry run and get nothing.
use std::{
    collections::BTreeMap,
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::{
    fcntl::{OFlag, openat},
    sys::stat::Mode,
};
use tokio::time::Instant;

use mptcpify_common::MAX_CGROUP_DEPTH;

use super::desired::PodCoverage;
use crate::{
    paths::{
        apply,
        connection::Netlink,
        plan::AutoOptions,
        record::{KeptBy, RECORD_DIR, Record, RecordFile, same_namespace},
    },
    state::rules::Action,
};

/// Interfaces a CNI plugin adds after the pod's first process started are caught this late.
pub const RECHECK_EVERY: Duration = Duration::from_secs(30);

/// What was made in one pod's namespace.
#[derive(Debug, Clone)]
struct Made {
    inode: u64,
    /// The namespace's cookie: the inode alone may name a later namespace.
    cookie: Option<u64>,
    cgroup: String,
}

#[derive(Debug, Default)]
pub struct PodPaths {
    made: BTreeMap<String, Made>,
    checked: Option<Instant>,
    /// Pods whose paths could not be made, by label.
    failing: BTreeMap<String, Failing>,
}

/// A pod whose paths could not be made: tried again after a wait that doubles with each
/// failure, and its error logged once until it says something else.
#[derive(Debug)]
struct Failing {
    /// The pod's cgroup then: a pod made anew under the same name starts afresh.
    cgroup: String,
    next: Instant,
    delay: Duration,
    said: String,
}

const RETRY_FIRST: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(300);

impl Failing {
    fn new(cgroup: &str, now: Instant, said: String) -> Self {
        Self { cgroup: cgroup.to_string(), next: now + RETRY_FIRST, delay: RETRY_FIRST, said }
    }

    /// Failed again: the wait doubles (to [`RETRY_MAX`]); whether `said` is news to log.
    fn again(&mut self, now: Instant, said: String) -> bool {
        self.delay = (self.delay * 2).min(RETRY_MAX);
        self.next = now + self.delay;
        let news = self.said != said;
        self.said = said;
        news
    }
}

/// The processes in `dir` and below (a pod's cgroup holds its containers' cgroups), those of
/// `dir` first, then of each subdirectory in name order; at most [`PIDS_LOOKED_AT`], and no
/// deeper than [`MAX_CGROUP_DEPTH`] levels (a pod may make cgroups of its own below).
pub(super) fn pids_below(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    collect_pids(dir, 0, &mut out);
    out
}

fn collect_pids(dir: &Path, depth: u32, out: &mut Vec<u32>) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    out.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()).filter(|p| *p > 0));
    out.truncate(PIDS_LOOKED_AT);
    if depth >= MAX_CGROUP_DEPTH || out.len() >= PIDS_LOOKED_AT {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut subdirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    subdirs.sort();
    for d in subdirs {
        collect_pids(&d, depth + 1, out);
    }
}

/// How many of a pod's processes are looked at for its namespace.
const PIDS_LOOKED_AT: usize = 64;

/// The network namespaces a pod's must not be, by inode: the node's (PID 1's, with hostPID)
/// and the agent's own. Both must be known: a namespace that cannot be told from the node's is
/// never touched (under a runtime's default AppArmor profile, or without CAP_SYS_PTRACE, PID 1's
/// is unreadable, and the agent's own alone proves nothing).
fn not_a_pods(pod: u64, node: std::io::Result<u64>, own: std::io::Result<u64>) -> Result<()> {
    let node = node.map_err(|e| {
        anyhow::anyhow!(
            "/proc/1/ns/net: {e}: the node's network namespace cannot be told from a pod's, so none is touched \
             (pod_paths needs hostPID and CAP_SYS_PTRACE, and no AppArmor profile that hides PID 1)"
        )
    })?;
    let own = own.context("/proc/self/ns/net")?;
    if pod == node {
        bail!("it is on the node's network namespace (hostNetwork): left to [paths]");
    }
    if pod == own {
        bail!("it shares the agent's network namespace: left alone");
    }
    Ok(())
}

fn netns_inode(path: &str) -> std::io::Result<u64> {
    std::fs::metadata(path).map(|m| m.ino())
}

/// The pod's own network namespace, from the first of its processes in one (a runtime may keep
/// a process of its own in the pod's cgroup on the node's namespace, as CRI-O's conmon); `None`
/// when the pod has no process left.
fn pod_netns(root: &Path, cgroup: &str) -> Result<Option<(File, u64)>> {
    let dir = root.join(cgroup.trim_start_matches('/'));
    let mut last = None;
    for pid in pids_below(&dir) {
        match netns_of(&dir, pid) {
            Ok(found) => return Ok(Some(found)),
            Err(e) => last = Some(e),
        }
    }
    last.map_or(Ok(None), Err)
}

/// The network namespace of process `pid` of the pod's cgroup `dir`, opened once: through a
/// handle on its `/proc/PID` directory, which stops answering once that process ends (a reused
/// PID gets a directory of its own). The pod's cgroup is read again after the namespace is
/// opened and must still list the PID while the handle still answers: then the namespace opened
/// is that of a process of the pod, whatever became of the PID before or after.
fn netns_of(dir: &Path, pid: u32) -> Result<(File, u64)> {
    let proc_dir = File::open(format!("/proc/{pid}")).with_context(|| format!("/proc/{pid}"))?;
    let ns = openat(&proc_dir, "ns/net", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .with_context(|| format!("/proc/{pid}/ns/net (needs CAP_SYS_PTRACE)"))?;
    let listed = pids_below(dir).contains(&pid);
    let still_there = openat(&proc_dir, "stat", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).is_ok();
    if !listed || !still_there {
        bail!("its process {pid} ended or left while its namespace was opened; trying again later");
    }
    let ns = File::from(ns);
    let inode = ns.metadata()?.ino();
    not_a_pods(inode, netns_inode("/proc/1/ns/net"), netns_inode("/proc/self/ns/net"))?;
    Ok((ns, inode))
}

impl PodPaths {
    /// What earlier agents made in pods' namespaces, from the records on the node: kept while
    /// its pod is still selected, cleared when it is not (a rollout or a restart forgets
    /// nothing).
    pub fn from_records() -> Self {
        Self::from(RecordFile::all(Path::new(RECORD_DIR)))
    }

    fn from(records: Vec<(u64, Record)>) -> Self {
        let made = records.into_iter().filter_map(|(inode, r)| match r.kept_by {
            Some(KeptBy::Pod { name, cgroup }) => Some((name, Made { inode, cookie: r.netns_cookie, cgroup })),
            _ => None,
        });
        let made: BTreeMap<String, Made> = made.collect();
        for (label, m) in &made {
            log::info!("pod {label}: paths an earlier agent made (netns inode {}), kept while it is selected", m.inode);
        }
        Self { made, ..Default::default() }
    }

    /// Nothing made that a policy without `pod_paths` would still have to clear.
    pub fn is_idle(&self) -> bool {
        self.made.is_empty()
    }

    /// Makes the paths of newly selected pods (all of them again every [`RECHECK_EVERY`]),
    /// and clears or forgets those of pods no longer selected.
    pub async fn sync(&mut self, pods: &[PodCoverage], root: &Path, opts: &AutoOptions) {
        if apply::records_busy() {
            log::debug!("pod paths: the records are being edited; at the next look");
            return;
        }
        let now = Instant::now();
        let recheck = self.checked.is_none_or(|t| now.duration_since(t) >= RECHECK_EVERY);
        if recheck {
            self.checked = Some(now);
        }
        let mut wanted = BTreeMap::new();
        // Audited pods are a dry run (nothing of theirs changes); hostNetwork pods are on the
        // node's namespace by the API's word (checked again from the kernel's when entering).
        for pod in pods.iter().filter(|p| p.action == Action::Enable && !p.host_network) {
            let Some(cgroup) = &pod.path else { continue };
            wanted.insert(format!("{}/{}", pod.namespace, pod.name), cgroup.clone());
        }
        // A pod's failures are kept while it is wanted (to make) or made (to clear), and only
        // for the cgroup they were about.
        let current = |label: &String| wanted.get(label).or_else(|| self.made.get(label).map(|m| &m.cgroup));
        let failing = std::mem::take(&mut self.failing);
        self.failing = failing.into_iter().filter(|(l, f)| current(l) == Some(&f.cgroup)).collect();
        for (label, cgroup) in &wanted {
            if !recheck && self.made.get(label).is_some_and(|m| m.cgroup == *cgroup) {
                continue;
            }
            if !self.due(label, now) {
                continue;
            }
            match self.make(label, cgroup, root, opts).await {
                Ok(Some(made)) => {
                    if self.failing.remove(label).is_some() {
                        log::info!("pod {label}: paths made after earlier failures");
                    }
                    self.made.insert(label.clone(), made);
                }
                Ok(None) => {}
                Err(e) => self.failed(label, cgroup, now, format!("{e:#}")),
            }
        }
        let gone: Vec<String> =
            self.made.keys().filter(|l| !wanted.contains_key(*l) && self.due(l, now)).cloned().collect();
        for label in gone {
            let made = self.made.remove(&label).expect("listed");
            if let Err(e) = Self::unmake(&label, &made, root).await {
                // Not proven gone: kept, to clear at a later look.
                self.failed(&label, &made.cgroup, now, format!("clearing its paths: {e:#}"));
                self.made.insert(label, made);
            } else {
                self.failing.remove(&label);
            }
        }
    }

    /// Whether a pod that failed before may be tried again now.
    fn due(&self, label: &str, now: Instant) -> bool {
        self.failing.get(label).is_none_or(|f| now >= f.next)
    }

    /// Notes a failure; logged when it is the pod's first or says something new.
    fn failed(&mut self, label: &str, cgroup: &str, now: Instant, said: String) {
        let news = match self.failing.get_mut(label) {
            Some(f) => f.again(now, said.clone()),
            None => {
                self.failing.insert(label.to_string(), Failing::new(cgroup, now, said.clone()));
                true
            }
        };
        if news {
            log::warn!(
                "pod {label}: paths: {said} (tried again later, less and less often; logged again if this changes)"
            );
        }
    }

    async fn make(&self, label: &str, cgroup: &str, root: &Path, opts: &AutoOptions) -> Result<Option<Made>> {
        let Some((ns, inode)) = pod_netns(root, cgroup)? else { return Ok(None) };
        let nl = Netlink::open_file(ns)?;
        let kept_by = KeptBy::Pod { name: label.to_string(), cgroup: cgroup.to_string() };
        let plan = apply::auto(&nl, opts, &format!("pod {label}"), Some(kept_by)).await?;
        for e in &plan.add_endpoints {
            log::info!("pod {label}: endpoint {} id {} {}", e.ip, e.id, e.flags.names().join(" "));
        }
        if let Some(l) = plan.limits {
            log::info!("pod {label}: limits subflows {} add_addr_accepted {}", l.subflows, l.add_addr_accepted);
        }
        Ok(Some(Made { inode, cookie: nl.cookie, cgroup: cgroup.to_string() }))
    }

    /// Clears the namespace while a process of the pod still holds it; when none is left (or
    /// the pod's processes are in another namespace now) it went with the pod, and only its
    /// record is left to remove, if it is still the one written for that namespace (the kernel
    /// gives a freed inode to the next namespace, perhaps another pod's). A namespace that
    /// cannot be looked at now is an error: the record stays, and so does what it lists.
    async fn unmake(label: &str, made: &Made, root: &Path) -> Result<()> {
        if let Some((ns, inode)) = pod_netns(root, &made.cgroup)?
            && inode == made.inode
        {
            let nl = Netlink::open_file(ns)?;
            if same_namespace(made.cookie, nl.cookie) {
                let plan = apply::clear(&nl).await?;
                log::info!("pod {label}: removed {} endpoint(s) mptcpify made", plan.remove_endpoints.len());
                return Ok(());
            }
        }
        let file = RecordFile::for_netns(made.inode);
        if file.load()?.is_for(made.cookie) {
            file.save(&Record::default())?;
        }
        Ok(())
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
    fn an_agent_finds_the_pods_an_earlier_one_made_paths_for_in_their_records() {
        let pod = |name: &str| KeptBy::Pod { name: name.into(), cgroup: format!("/kubepods/{name}") };
        let record = |kept_by, cookie| Record { kept_by, netns_cookie: cookie, ..Default::default() };
        let p = PodPaths::from(vec![
            (11, record(Some(pod("shop/web")), Some(5))),
            (12, record(Some(KeptBy::AgentPaths), Some(6))),
            (13, record(None, None)),
        ]);
        assert_eq!(p.made.keys().collect::<Vec<_>>(), ["shop/web"]);
        let m = &p.made["shop/web"];
        assert_eq!((m.inode, m.cookie, m.cgroup.as_str()), (11, Some(5), "/kubepods/shop/web"));
        assert!(!p.is_idle(), "what it lists is cleared by a policy without pod_paths");
    }

    #[test]
    fn a_pods_process_is_found_in_its_containers_cgroups() {
        let t = tempfile::tempdir().unwrap();
        let pod = t.path().join("kubepods.slice/pod1.slice");
        std::fs::create_dir_all(pod.join("cri-a.scope")).unwrap();
        std::fs::create_dir_all(pod.join("cri-b.scope")).unwrap();
        std::fs::write(pod.join("cgroup.procs"), "").unwrap();
        std::fs::write(pod.join("cri-a.scope/cgroup.procs"), "0\n").unwrap();
        std::fs::write(pod.join("cri-b.scope/cgroup.procs"), "4242\n4243\n").unwrap();
        assert_eq!(pids_below(&pod), [4242, 4243]);
        assert!(pids_below(&t.path().join("nothing")).is_empty());
    }

    #[test]
    fn a_namespace_is_a_pods_only_when_proven_not_the_nodes_nor_the_agents() {
        let denied = || Err(std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(not_a_pods(7, Ok(1), Ok(2)).is_ok());
        let e = not_a_pods(7, denied(), Ok(2)).unwrap_err().to_string();
        assert!(e.contains("cannot be told from a pod's") && e.contains("CAP_SYS_PTRACE"), "{e}");
        assert!(not_a_pods(1, Ok(1), Ok(2)).unwrap_err().to_string().contains("hostNetwork"));
        assert!(not_a_pods(2, Ok(1), Ok(2)).unwrap_err().to_string().contains("agent's"));
        assert!(not_a_pods(7, Ok(1), denied()).is_err());
    }

    #[test]
    fn a_failing_pod_is_tried_less_and_less_often_and_logged_once_per_error() {
        let t0 = Instant::now();
        let mut p = PodPaths::default();
        p.failed("ns/web", "/pod1", t0, "denied".into());
        assert_eq!(p.failing["ns/web"].next, t0 + RETRY_FIRST);
        assert!(!p.due("ns/web", t0) && p.due("ns/web", t0 + RETRY_FIRST) && p.due("ns/db", t0));
        let mut f = Failing::new("/pod1", t0, "denied".into());
        assert!(!f.again(t0, "denied".into()), "the same error is not news");
        assert_eq!(f.next, t0 + RETRY_FIRST * 2);
        assert!(f.again(t0, "gone".into()), "another error is");
        for _ in 0..10 {
            f.again(t0, "gone".into());
        }
        assert_eq!(f.next, t0 + RETRY_MAX);
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
