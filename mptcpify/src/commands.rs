//! The rule commands: enable, exclude, disable, status, sync, reset, probe, logs. Every command
//! validates all its input before it changes anything, and a failure part-way is rolled back.
use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result, bail};
use mptcpify_common::{ORIGIN_PATH, ORIGIN_POD, ORIGIN_RUN, ORIGIN_UNIT, Origin};
use serde::Serialize;

use crate::{
    cgroup, checks,
    cli::Targets,
    loader::{self, LogLevel},
    mounts::Mounts,
    process,
    rules::{self, Action, Key, Outcome, RuleStore as _, comm_str},
    state::{self, LinkIds, State},
    systemd,
    targets::{self, Target},
};

/// Adds `action` rules for the targets (and `--all`), loading the program first if needed.
pub async fn add(targets: &Targets, all: bool, action: Action, log_level: LogLevel) -> Result<()> {
    checks::require_privileges()?;
    if targets.is_empty() && !all {
        let verb = if action == Action::Enable { "enable" } else { "exclude" };
        bail!("nothing to {verb}: give --cgroup, --unit, --pid, --comm, --uid{}", if action == Action::Enable { " or --all" } else { "" });
    }
    let mounts = Mounts::read()?;
    mounts.require_bpffs()?;
    let mut resolved = targets::resolve(targets, &mounts, false).await?;
    if all {
        resolved.push(Target { key: Key::All, origin: None, label: "all processes".into() });
    }
    let outcomes = add_resolved(&resolved, action, log_level)?;
    for (t, o) in resolved.iter().zip(outcomes) {
        println!("{}: {}", o.describe(action), t.label);
    }
    if let Some(w) = checks::mptcp_warning() {
        eprintln!("{w}");
    }
    Ok(())
}

/// Applies resolved targets under the lock; all or nothing, including a first load.
pub fn add_resolved(resolved: &[Target], action: Action, log_level: LogLevel) -> Result<Vec<Outcome>> {
    let _lock = state::Lock::take()?;
    let loaded_now = !state::is_loaded();
    if loaded_now {
        loader::load_and_pin(log_level)?;
    }
    let applied = (|| -> Result<Vec<Outcome>> {
        let mut st = State::open()?;
        let keys: Vec<Key> = resolved.iter().map(|t| t.key).collect();
        let outcomes = rules::add_all(&mut st, &keys, action)?;
        let added: Vec<&Target> =
            resolved.iter().zip(&outcomes).filter(|(_, o)| **o == Outcome::Added).map(|(t, _)| t).collect();
        let recorded = added.iter().try_for_each(|t| match (&t.key, &t.origin) {
            (Key::Cgroup(id), Some(origin)) => st.set_origin(*id, *origin),
            _ => Ok(()),
        });
        if let Err(e) = recorded {
            for t in added {
                let _ = st.remove(&t.key);
            }
            return Err(e);
        }
        Ok(outcomes)
    })();
    if applied.is_err() && loaded_now {
        let _ = state::remove_all();
    }
    applied
}

pub async fn disable(targets: &Targets, all: bool, cgroup_ids: &[u64]) -> Result<()> {
    checks::require_privileges()?;
    if targets.is_empty() && cgroup_ids.is_empty() && !all {
        bail!("nothing to disable: give --cgroup, --cgroup-id, --unit, --pid, --comm, --uid or --all");
    }
    let mounts = Mounts::read()?;
    mounts.require_bpffs()?;
    let mut resolved = targets::resolve(targets, &mounts, true).await?;
    resolved.extend(cgroup_ids.iter().map(|&id| Target { key: Key::Cgroup(id), origin: None, label: format!("cgroup id {id}") }));
    if all {
        resolved.push(Target { key: Key::All, origin: None, label: "all processes".into() });
    }
    let _lock = state::Lock::take()?;
    if !state::is_loaded() {
        bail!("nothing is enabled: mptcpify is not loaded");
    }
    let mut st = State::open()?;
    let keys: Vec<Key> = resolved.iter().map(|t| t.key).collect();
    rules::remove_all(&mut st, &keys)?;
    for t in &resolved {
        println!("removed: {}", t.label);
    }
    Ok(())
}

/// Whether a cgroup rule still points at the cgroup it was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Freshness {
    Current,
    /// The path (or the unit's cgroup) no longer exists.
    Gone,
    /// It exists again under a new id: `mptcpify sync` moves the rule there.
    Recreated { now: u64 },
    /// Could not be checked (e.g. systemd unreachable).
    Unknown { reason: String },
}

/// The cgroup id an origin resolves to now; `Ok(None)` when it is gone.
async fn current_id(root: &Path, origin: &Origin) -> Result<Option<u64>> {
    let (_, text) = targets::describe_origin(origin);
    let relative = match origin.kind {
        ORIGIN_PATH | ORIGIN_RUN => text,
        ORIGIN_UNIT => match systemd::unit_cgroup(&text).await? {
            Some(p) => p,
            None => return Ok(None),
        },
        _ => bail!("unknown origin kind {}", origin.kind),
    };
    Ok(cgroup::resolve(root, relative.trim_start_matches('/')).ok().map(|c| c.id))
}

async fn freshness(root: Option<&Path>, exists: bool, id: u64, origin: Option<&Origin>) -> Freshness {
    // A pod's cgroup is found from the Kubernetes API, which only the agent watches.
    let origin = origin.filter(|o| o.kind != ORIGIN_POD);
    let (Some(root), Some(origin)) = (root, origin) else {
        return if exists { Freshness::Current } else { Freshness::Gone };
    };
    match current_id(root, origin).await {
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
    pub mptcp_sysctl: checks::MptcpSysctl,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkIds>,
    /// The attached program's size and run statistics (see [`state::ProgramStats`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<state::ProgramStats>,
    /// PID of the listening `mptcpify monitor`, if any.
    pub monitor: Option<u32>,
    pub counters: BTreeMap<&'static str, u64>,
    pub rules: Vec<RuleStatus>,
}

#[derive(Debug, Serialize)]
pub struct RuleStatus {
    pub action: Action,
    /// `cli` or `agent`: the agent only ever removes its own rules.
    pub owner: &'static str,
    pub kind: &'static str,
    /// cgroup id, pid or uid; the command name for comm rules; null for `all`.
    pub key: serde_json::Value,
    /// Human description: cgroup path, process name, user name.
    pub target: Option<String>,
    pub hits: u64,
    /// cgroup rules: what the rule was made from (`{"kind": "path"|"unit"|"run", "text": …}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<serde_json::Value>,
    /// cgroup rules: `current`, `gone`, `recreated` (with `now`), `unknown`; PID rules: `current`
    /// or `gone` (exited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Freshness>,
}

impl RuleStatus {
    pub fn stale(&self) -> bool {
        matches!(self.freshness, Some(Freshness::Gone | Freshness::Recreated { .. }))
    }
}

pub async fn status_data() -> Result<Status> {
    checks::require_privileges()?;
    let mut status = Status {
        loaded: state::is_loaded(),
        kernel: loader::kernel_release(),
        mptcp_sysctl: checks::mptcp_sysctl(),
        link: None,
        program: None,
        monitor: None,
        counters: Default::default(),
        rules: Vec::new(),
    };
    if !status.loaded {
        return Ok(status);
    }
    let link = State::link_ids()?;
    status.link = Some(link);
    status.program = state::program_stats(link.program_id)?;
    let st = State::open()?;
    status.monitor = Some(st.config()?.monitor_pid).filter(|&p| p != 0);
    status.counters = st.counters()?.into_iter().map(|(c, v)| (c.name(), v)).collect();
    let root = Mounts::read()?.cgroup2;
    // One walk of the cgroup tree, however many rules there are.
    let paths = root.as_deref().map(cgroup::index).unwrap_or_default();
    for (key, rule) in st.entries()? {
        let action = Action::from_code(rule.action);
        let mut r = RuleStatus {
            action,
            owner: rules::owner_name(rule.owner),
            kind: key.kind().name(),
            key: serde_json::Value::Null,
            target: None,
            hits: rule.hits,
            origin: None,
            freshness: None,
        };
        match key {
            Key::Cgroup(id) => {
                let origin = st.origin(id);
                r.key = id.into();
                r.target = paths.get(&id).map(|p| p.display().to_string());
                r.origin = origin.as_ref().map(|o| {
                    let (kind, text) = targets::describe_origin(o);
                    serde_json::json!({ "kind": kind, "text": text })
                });
                r.freshness = Some(freshness(root.as_deref(), r.target.is_some(), id, origin.as_ref()).await);
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
    if s.rules.is_empty() {
        println!("no rules");
        return Ok(());
    }
    println!("{:<8} {:<7} {:<16} {:>8}  TARGET", "ACTION", "KIND", "KEY", "HITS");
    for r in &s.rules {
        let key = match &r.key {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".into(),
            v => v.to_string(),
        };
        let mut target = r.target.clone().unwrap_or_else(|| "-".into());
        if let Some(o) = &r.origin {
            target.push_str(&format!("  [{} {}]", o["kind"].as_str().unwrap_or(""), o["text"].as_str().unwrap_or("")));
        }
        match &r.freshness {
            Some(Freshness::Gone) => target.push_str("  STALE: gone"),
            Some(Freshness::Recreated { now }) => target.push_str(&format!("  STALE: recreated as id {now}; run `mptcpify sync`")),
            Some(Freshness::Unknown { reason }) => target.push_str(&format!("  (not checked: {reason})")),
            _ => {}
        }
        let action = if r.action == Action::Enable { "enable" } else { "exclude" };
        println!("{action:<8} {:<7} {key:<16} {:>8}  {target}", r.kind, r.hits);
    }
    Ok(())
}

/// Moves every path/unit rule to its cgroup's current id; drops rules of `run` cgroups that
/// are gone (their `run` was killed before it could clean up).
pub async fn sync() -> Result<()> {
    checks::require_privileges()?;
    let mounts = Mounts::read()?;
    mounts.require_bpffs()?;
    let root = mounts.cgroup2_root()?;
    if !state::is_loaded() {
        println!("sync: nothing is loaded");
        return Ok(());
    }
    // Resolve outside the lock (systemd may be slow), then apply under it.
    let planned = {
        let st = State::open()?;
        let mut planned = Vec::new();
        for (key, rule) in st.entries()? {
            let Key::Cgroup(id) = key else { continue };
            let Some(origin) = st.origin(id) else { continue };
            if origin.kind == ORIGIN_POD {
                continue;
            }
            let now = current_id(&root, &origin).await?;
            planned.push((id, rule, origin, now));
        }
        planned
    };
    let _lock = state::Lock::take()?;
    let mut st = State::open()?;
    let mut changed = 0;
    for (id, rule, origin, now) in planned {
        let (kind, text) = targets::describe_origin(&origin);
        match now {
            Some(now) if now == id => {}
            Some(now) => {
                let action = Action::from_code(rule.action);
                if st.get(&Key::Cgroup(now))?.is_none() {
                    st.insert_new(&Key::Cgroup(now), mptcpify_common::Rule { action: action.code(), ..Default::default() })?;
                    st.set_origin(now, origin)?;
                }
                st.remove(&Key::Cgroup(id))?;
                println!("sync: {kind} {text}: cgroup id {id} -> {now}");
                changed += 1;
            }
            None if origin.kind == ORIGIN_RUN => {
                st.remove(&Key::Cgroup(id))?;
                println!("sync: {kind} {text}: cgroup gone, rule removed");
                changed += 1;
            }
            None => println!("sync: {kind} {text}: cgroup gone; the rule is kept until it reappears"),
        }
    }
    st.recount()?;
    println!("sync: {changed} rule(s) changed");
    Ok(())
}

pub fn reset() -> Result<()> {
    checks::require_privileges()?;
    Mounts::read()?.require_bpffs()?;
    let _lock = state::Lock::take()?;
    if state::remove_all()? {
        println!("reset: program detached, pinned state removed");
    } else {
        println!("reset: nothing was loaded");
    }
    Ok(())
}

pub fn probe() -> Result<()> {
    checks::require_privileges()?;
    drop(loader::load_and_attach(LogLevel::Off)?);
    println!("probe: the kernel ({}) accepts the fmod_ret program on update_socket_protocol", loader::kernel_release());
    Ok(())
}

/// Streams the kernel program's aya-log records until Ctrl-C.
pub async fn logs() -> Result<()> {
    checks::require_privileges()?;
    if !state::is_loaded() {
        bail!("mptcpify is not loaded; `mptcpify enable --log-level debug …` loads it with logging");
    }
    let ids = State::link_ids()?;
    let logger = aya_log::EbpfLogger::init_from_id(ids.program_id)
        .context("opening the program's log ring buffer")?;
    let mut fd = crate::sys::async_fd(logger)?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
    }
}
