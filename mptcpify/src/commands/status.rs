//! `mptcpify status`: whether the program is attached, its counters and every rule with its
//! target, origin and freshness. `--json`'s field names are a stable interface (see README).
use std::{collections::BTreeMap, path::Path};

use anyhow::Result;
use serde::Serialize;

use crate::{
    bpf::loader,
    connections::mib,
    host::{cgroup, mounts::Mounts, preconditions, process, resolve},
    state::{
        maps::{self, State},
        origin::{OriginKind, RuleOrigin},
        pins::{self, LinkIds},
        rules::{Action, Key, Owner, RuleStore as _, comm_str},
    },
};

/// Whether a cgroup rule still points at the cgroup it was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Freshness {
    Current,
    /// The path (or the unit's cgroup) no longer exists.
    Gone,
    /// It exists again under a new id: `mptcpify sync` moves the rule there.
    Recreated {
        now: u64,
    },
    /// Could not be checked (e.g. systemd unreachable).
    Unknown {
        reason: String,
    },
}

async fn freshness(root: Option<&Path>, exists: bool, id: u64, origin: Option<&RuleOrigin>) -> Freshness {
    // A pod's cgroup is found from the Kubernetes API, which only the agent watches.
    let origin = origin.filter(|o| o.kind != OriginKind::Pod);
    let (Some(root), Some(origin)) = (root, origin) else {
        return if exists { Freshness::Current } else { Freshness::Gone };
    };
    match resolve::origin_cgroup_id(root, origin).await {
        Ok(Some(now)) if now == id => Freshness::Current,
        Ok(Some(now)) => Freshness::Recreated { now },
        Ok(None) => Freshness::Gone,
        Err(e) => Freshness::Unknown { reason: format!("{e:#}") },
    }
}

/// `status --json` output. Field names are a stable interface (see README).
#[derive(Debug, Serialize)]
pub struct Status {
    pub loaded: bool,
    pub kernel: String,
    pub mptcp_sysctl: preconditions::MptcpSysctl,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkIds>,
    /// The attached program's size and run statistics (see [`maps::ProgramStats`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<maps::ProgramStats>,
    /// PID of the listening `mptcpify monitor`, if any.
    pub monitor: Option<u32>,
    /// Whether the outcome programs are attached (each rule's `outcomes` are counted).
    pub outcome_tracking: bool,
    /// The outcome programs' sizes and run statistics by role (`tag`, `established`, `listen`,
    /// `failed`), when attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome_programs: Option<BTreeMap<&'static str, Option<maps::ProgramStats>>>,
    pub counters: BTreeMap<&'static str, u64>,
    pub rules: Vec<RuleStatus>,
    /// The kernel's MPTCP counters of each network namespace an upgraded process is in.
    pub namespaces: Vec<mib::NamespaceCounters>,
    /// The compatibility guard (see `mptcpify guard`); absent while nothing is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<super::guard::GuardStatus>,
}

#[derive(Debug, Serialize)]
pub struct RuleStatus {
    pub action: Action,
    /// `cli` or `agent`: the agent only ever removes its own rules.
    pub owner: Owner,
    pub kind: &'static str,
    /// cgroup id, pid or uid; the command name for comm rules; null for `all`.
    pub key: serde_json::Value,
    /// Human description: cgroup path, process name, user name.
    pub target: Option<String>,
    /// Sockets the rule decided: upgraded (enable), kept TCP (exclude), would-upgrade (audit).
    pub hits: u64,
    /// What became of the connections this rule upgraded (enable rules, while tracking is on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<RuleOutcomes>,
    /// cgroup rules: what the rule was made from (`{"kind": "path"|"unit"|"run"|"pod", "text": …}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<RuleOrigin>,
    /// cgroup rules: `current`, `gone`, `recreated` (with `now`), `unknown`; PID rules: `current`
    /// or `gone` (exited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Freshness>,
}

/// [`mptcpify_common::Outcomes`] as `status --json` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RuleOutcomes {
    /// Connections that negotiated MPTCP.
    pub mptcp: u64,
    /// Connections that fell back to TCP (`fallback_peer` + `fallback_client`).
    pub fallback: u64,
    /// As a client: the peer answered without MPTCP.
    pub fallback_peer: u64,
    /// As a server: the client did not offer MPTCP.
    pub fallback_client: u64,
    /// Extra subflows established.
    pub subflows: u64,
    /// Extra subflows that failed before they were established.
    pub subflows_failed: u64,
    /// Connections that never got established.
    pub connect_failed: u64,
}

impl From<mptcpify_common::Outcomes> for RuleOutcomes {
    fn from(o: mptcpify_common::Outcomes) -> Self {
        Self {
            mptcp: o.mptcp,
            fallback: o.fallback(),
            fallback_peer: o.fallback_peer,
            fallback_client: o.fallback_client,
            subflows: o.subflows,
            subflows_failed: o.subflows_failed,
            connect_failed: o.connect_failed,
        }
    }
}

impl RuleStatus {
    pub fn stale(&self) -> bool {
        matches!(self.freshness, Some(Freshness::Gone | Freshness::Recreated { .. }))
    }
}

pub async fn status_data() -> Result<Status> {
    preconditions::require_privileges()?;
    let mut status = Status {
        loaded: pins::is_loaded(),
        kernel: loader::kernel_release(),
        mptcp_sysctl: preconditions::mptcp_sysctl(),
        link: None,
        program: None,
        monitor: None,
        outcome_tracking: false,
        outcome_programs: None,
        counters: Default::default(),
        rules: Vec::new(),
        namespaces: Vec::new(),
        guard: None,
    };
    if !status.loaded {
        return Ok(status);
    }
    let link = pins::link_ids()?;
    status.link = Some(link);
    status.program = maps::program_stats(link.program_id)?;
    if let Some(links) = pins::outcome_link_ids() {
        let stats = links.into_iter().map(|(role, ids)| Ok((role, maps::program_stats(ids.program_id)?)));
        status.outcome_programs = Some(stats.collect::<Result<_>>()?);
    }
    let st = State::open()?;
    let config = st.config()?;
    status.monitor = Some(config.monitor_pid).filter(|&p| p != 0);
    status.outcome_tracking = config.outcomes != 0;
    let outcomes = st.outcomes()?;
    status.counters = st.counters()?.into_iter().map(|(c, v)| (c.name(), v)).collect();
    let root = Mounts::read()?.cgroup2;
    // One walk of the cgroup tree, however many rules there are.
    let paths = root.as_deref().map(cgroup::index).unwrap_or_default();
    for (key, rule) in st.entries()? {
        let action = Action::from_code(rule.action);
        let mut r = RuleStatus {
            action,
            owner: Owner::from_code(rule.owner),
            kind: key.kind().name(),
            key: serde_json::Value::Null,
            target: None,
            hits: rule.hits,
            outcomes: (status.outcome_tracking && action == Action::Enable)
                .then(|| outcomes.get(&key.rule_ref()).copied().unwrap_or_default().into()),
            origin: None,
            freshness: None,
        };
        match key {
            Key::Cgroup(id) => {
                let origin = st.origin(id);
                r.key = id.into();
                r.target = paths.get(&id).map(|p| p.display().to_string());
                r.freshness = Some(freshness(root.as_deref(), r.target.is_some(), id, origin.as_ref()).await);
                r.origin = origin;
            }
            Key::Pid(pid) => {
                r.key = pid.into();
                r.target = process::comm(pid);
                r.freshness = Some(if r.target.is_some() { Freshness::Current } else { Freshness::Gone });
            }
            Key::Comm(c) => {
                r.key = comm_str(&c).into();
                r.target = Some(comm_str(&c));
            }
            Key::Uid(u) => {
                r.key = u.into();
                r.target = nix::unistd::User::from_uid(u.into()).ok().flatten().map(|u| u.name);
            }
            Key::All => r.target = Some("all processes".into()),
        }
        status.rules.push(r);
    }
    status.namespaces = mib::upgraded_namespaces().unwrap_or_default();
    status.guard = Some(super::guard::guard_status(&st)?);
    Ok(status)
}

pub async fn status(json: bool) -> Result<()> {
    let s = status_data().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let Some(link) = s.link else {
        println!("mptcpify: not loaded (no rules); kernel {}", s.kernel);
        return Ok(());
    };
    println!(
        "mptcpify: attached to update_socket_protocol (link {}, program {}); kernel {}; net.mptcp: {:?}",
        link.link_id, link.program_id, s.kernel, s.mptcp_sysctl
    );
    let counters: Vec<String> = s.counters.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k}={v}")).collect();
    println!("counters: {}", if counters.is_empty() { "none yet".into() } else { counters.join(" ") });
    if let Some(g) = &s.guard {
        super::guard::print(g);
    }
    if s.rules.is_empty() {
        println!("no rules");
        return Ok(());
    }
    println!(
        "{:<8} {:<7} {:<16} {:>8} {:>8} {:>8} {:>8}  TARGET",
        "ACTION", "KIND", "KEY", "HITS", "MPTCP", "FALLBACK", "SUBFLOWS"
    );
    for r in &s.rules {
        let key = match &r.key {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".into(),
            v => v.to_string(),
        };
        let mut target = r.target.clone().unwrap_or_else(|| "-".into());
        if let Some(o) = &r.origin {
            target.push_str(&format!("  [{o}]"));
        }
        match &r.freshness {
            Some(Freshness::Gone) => target.push_str("  STALE: gone"),
            Some(Freshness::Recreated { now }) => {
                target.push_str(&format!("  STALE: recreated as id {now}; run `mptcpify sync`"))
            }
            Some(Freshness::Unknown { reason }) => target.push_str(&format!("  (not checked: {reason})")),
            _ => {}
        }
        let [mptcp, fallback, subflows] = match &r.outcomes {
            Some(o) => [o.mptcp, o.fallback, o.subflows].map(|n| n.to_string()),
            None => ["-", "-", "-"].map(String::from),
        };
        println!(
            "{:<8} {:<7} {:<16} {:>8} {mptcp:>8} {fallback:>8} {subflows:>8}  {}",
            r.action.name(),
            r.kind,
            super::shown(&key),
            r.hits,
            super::shown(&target)
        );
    }
    for ns in &s.namespaces {
        let counters: Vec<String> = ns.mptcp.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let pods = if ns.pods.is_empty() { String::new() } else { format!(" (pods {})", ns.pods.join(", ")) };
        println!("netns {} (pid {}){}: {}", ns.netns, ns.pid, super::shown(&pods), counters.join(" "));
    }
    Ok(())
}
