//! Finds the workloads (the processes the rules upgrade, or those a selector names), groups them
//! by network namespace, and reads each namespace's sockets. A namespace that cannot be read
//! (its last process exited meanwhile) is skipped with the reason, never fatal.
use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};
use mptcpify_common::Rule;
use procfs::process::FDTarget;
use serde::Serialize;

use super::{
    diag::{Diag, DiagSocket, Protocol},
    view::{Connection, Namespace, Workload},
};
use crate::{
    host::mounts::Mounts,
    paths::{
        connection::{Netlink, Netns},
        model::Snapshot,
        read,
    },
    state::{
        maps::State,
        origin::OriginKind,
        pins,
        rules::{Action, Key, RuleStore as _},
        selection::{self, Facts},
    },
};

/// Whose connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every process a rule upgrades.
    Upgraded,
    /// Processes any of these keys names (a cgroup covers its sub-tree).
    Matching(Vec<Key>),
}

/// `connections --json`. Field names are a stable interface (see README).
#[derive(Debug, Serialize)]
pub struct Report {
    pub connections: Vec<Connection>,
    /// Namespaces (or processes) that could not be read, and why.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Serialize)]
pub struct Skipped {
    pub netns: Option<u64>,
    pub pid: u32,
    pub reason: String,
}

/// The workloads of one network namespace.
#[derive(Debug, Clone)]
pub struct WorkloadNamespace {
    /// Its inode (`/proc/PID/ns/net`).
    pub netns: u64,
    pub workloads: Vec<Workload>,
}

impl WorkloadNamespace {
    /// A process in it, to read it through (`/proc/PID/net/…`, `/proc/PID/ns/net`).
    pub fn pid(&self) -> u32 {
        self.workloads[0].pid
    }

    /// The pods among its workloads (`namespace/name`).
    pub fn pods(&self) -> Vec<&str> {
        let mut pods: Vec<&str> = self.workloads.iter().filter_map(|w| w.pod.as_deref()).collect();
        pods.sort_unstable();
        pods.dedup();
        pods
    }
}

/// The workloads `scope` takes, grouped by network namespace, and those without one (exited).
pub fn workload_namespaces(scope: &Scope) -> Result<(Vec<WorkloadNamespace>, Vec<Skipped>)> {
    let root = Mounts::read()?.cgroup2_root()?;
    let state = if pins::is_loaded() { Some(State::open()?) } else { None };
    let rules: HashMap<Key, Rule> = match &state {
        Some(st) => st.entries()?.into_iter().collect(),
        None => HashMap::new(),
    };
    let mut by_netns: BTreeMap<u64, Vec<Workload>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for process in procfs::process::all_processes()?.filter_map(Result::ok) {
        let pid = process.pid as u32;
        let Some(facts) = selection::facts(pid, &root) else { continue };
        let Some(workload) = workload(&facts, &rules, scope, state.as_ref(), &root) else { continue };
        match netns_of(pid) {
            Some(netns) => by_netns.entry(netns).or_default().push(workload),
            None => skipped.push(Skipped { netns: None, pid, reason: "it has no network namespace (exited)".into() }),
        }
    }
    let namespaces = by_netns.into_iter().map(|(netns, workloads)| WorkloadNamespace { netns, workloads }).collect();
    Ok((namespaces, skipped))
}

pub async fn collect(scope: &Scope) -> Result<Report> {
    let (namespaces, skipped) = workload_namespaces(scope)?;
    if namespaces.is_empty() && skipped.is_empty() {
        match scope {
            Scope::Matching(_) => bail!("no running process matches the selector"),
            Scope::Upgraded if !pins::is_loaded() => bail!("no rules: nothing is upgraded (`mptcpify enable …` first)"),
            Scope::Upgraded => {}
        }
    }
    let mut report = Report { connections: Vec::new(), skipped };
    let own = netns_of(std::process::id());
    for ns in namespaces {
        match read_namespace(ns.netns, &ns.workloads, own == Some(ns.netns)).await {
            Ok(found) => report.connections.extend(found),
            Err(e) => report.skipped.push(Skipped { netns: Some(ns.netns), pid: ns.pid(), reason: format!("{e:#}") }),
        }
    }
    Ok(report)
}

/// The workload `facts` describe, if `scope` takes it.
fn workload(
    facts: &Facts,
    rules: &HashMap<Key, Rule>,
    scope: &Scope,
    state: Option<&State>,
    root: &Path,
) -> Option<Workload> {
    let decider = selection::decider(rules, facts).filter(|(_, action)| *action == Action::Enable).map(|(k, _)| k);
    let taken = match scope {
        Scope::Upgraded => decider.is_some(),
        Scope::Matching(keys) => keys.iter().any(|k| names(k, facts)),
    };
    if !taken {
        return None;
    }
    let pod = match (decider, state) {
        (Some(Key::Cgroup(id)), Some(st)) => st.origin(id).filter(|o| o.kind == OriginKind::Pod).map(|o| o.text),
        _ => None,
    };
    Some(Workload {
        pid: facts.pid,
        comm: crate::state::rules::comm_str(&facts.comm),
        cgroup: cgroup_path(facts.pid, root),
        pod,
        rule: decider.map(|k| k.to_string()),
    })
}

/// Whether `key` names the process `facts` describe.
fn names(key: &Key, facts: &Facts) -> bool {
    match *key {
        Key::Cgroup(id) => facts.cgroups.contains(&id),
        Key::Pid(p) => facts.pid == p,
        Key::Comm(c) => facts.comm == c,
        Key::Uid(u) => facts.uid == u,
        Key::All => true,
    }
}

fn cgroup_path(pid: u32, root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(root.join(rel.trim_start_matches('/')).display().to_string())
}

fn netns_of(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net")).ok().map(|m| m.ino())
}

/// The sockets each workload holds, by inode.
fn owners(workloads: &[Workload]) -> HashMap<u32, Workload> {
    let mut owners = HashMap::new();
    for w in workloads {
        let Ok(fds) = procfs::process::Process::new(w.pid as i32).and_then(|p| p.fd()) else { continue };
        for fd in fds.filter_map(Result::ok) {
            if let FDTarget::Socket(inode) = fd.target {
                owners.insert(inode as u32, w.clone());
            }
        }
    }
    owners
}

async fn read_namespace(netns: u64, workloads: &[Workload], own: bool) -> Result<Vec<Connection>> {
    let path = PathBuf::from(format!("/proc/{}/ns/net", workloads[0].pid));
    let socket = if own { DiagSocket::open_here()? } else { DiagSocket::open_in(&path)? };
    let (mptcp, tcp) = (socket.dump(Protocol::Mptcp)?, socket.dump(Protocol::Tcp)?);
    let owners = owners(workloads);
    log::debug!(
        "netns {netns}: {} MPTCP and {} TCP sockets, {} held by workloads",
        mptcp.len(),
        tcp.len(),
        owners.len()
    );
    // Interface names are a nicety: without them the subflows are still shown.
    let netns_file = if own { Netns::Current } else { Netns::File(path) };
    let snapshot = match Netlink::open(&netns_file).await {
        Ok(nl) => read::snapshot(&nl).await.ok(),
        Err(_) => None,
    };
    let interface_of = |d: &Diag| interface(snapshot.as_ref(), d);
    Ok(Namespace { netns, mptcp: &mptcp, tcp: &tcp, owners: &owners }.connections(&interface_of))
}

/// The interface a subflow is bound to, else the one its local address is on.
fn interface(snapshot: Option<&Snapshot>, d: &Diag) -> Option<String> {
    let s = snapshot?;
    if d.interface != 0 {
        return Some(s.link_name(d.interface));
    }
    let ip = d.local.ip().to_canonical();
    s.addresses.iter().find(|a| a.ip == ip).map(|a| s.link_name(a.ifindex))
}
