//! What each CLI command does. Every command validates all its input before it changes anything,
//! and a failure part-way is rolled back.
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::{
    cgroup::{self, Cgroup},
    checks,
    cli::Targets,
    loader::{self, LogLevel},
    mounts::Mounts,
    process,
    rules::{self, Outcome, RuleTable as _},
    state::{self, LinkIds, State},
};

/// Targets checked against the live system.
struct Resolved {
    cgroups: Vec<Cgroup>,
    pids: Vec<process::Process>,
}

fn resolve_targets(targets: &Targets, mounts: &Mounts) -> Result<Resolved> {
    let cgroups = if targets.cgroups.is_empty() {
        Vec::new()
    } else {
        let root = mounts.cgroup2_root()?;
        targets.cgroups.iter().map(|c| cgroup::resolve(&root, c)).collect::<Result<_>>()?
    };
    let pids = targets.pids.iter().map(|&p| process::resolve(p)).collect::<Result<_>>()?;
    Ok(Resolved { cgroups, pids })
}

fn describe(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Added => "enabled",
        Outcome::AlreadyEnabled => "already enabled",
        Outcome::Removed => "disabled",
    }
}

pub fn enable(targets: &Targets, log_level: LogLevel) -> Result<()> {
    checks::require_privileges()?;
    if targets.is_empty() {
        bail!("nothing to enable: give --cgroup PATH or --pid PID");
    }
    let mounts = Mounts::read()?;
    mounts.require_bpffs()?;
    let resolved = resolve_targets(targets, &mounts)?;

    let _lock = state::Lock::take()?;
    let loaded_now = !state::is_loaded();
    if loaded_now {
        loader::load_and_pin(log_level)?;
    }
    let applied = (|| -> Result<(Vec<Outcome>, Vec<Outcome>)> {
        let mut st = State::open()?;
        let ids: Vec<u64> = resolved.cgroups.iter().map(|c| c.id).collect();
        let pids: Vec<u32> = resolved.pids.iter().map(|p| p.pid).collect();
        let cg = rules::enable_all(&mut st.cgroups, &ids)?;
        let pd = match rules::enable_all(&mut st.pids, &pids) {
            Ok(o) => o,
            Err(e) => {
                for (id, o) in ids.iter().zip(&cg) {
                    if *o == Outcome::Added {
                        let _ = st.cgroups.remove(*id);
                    }
                }
                return Err(e);
            }
        };
        st.sync_config()?;
        Ok((cg, pd))
    })();
    let (cg, pd) = match applied {
        Ok(x) => x,
        Err(e) => {
            if loaded_now {
                let _ = state::remove_all();
            }
            return Err(e);
        }
    };
    for (c, o) in resolved.cgroups.iter().zip(cg) {
        println!("{}: cgroup {} (id {})", describe(o), c.relative, c.id);
    }
    for (p, o) in resolved.pids.iter().zip(pd) {
        println!("{}: pid {} ({})", describe(o), p.pid, p.comm);
    }
    if let Some(w) = checks::mptcp_warning() {
        eprintln!("{w}");
    }
    Ok(())
}

pub fn disable(targets: &Targets, cgroup_ids: &[u64]) -> Result<()> {
    checks::require_privileges()?;
    if targets.is_empty() && cgroup_ids.is_empty() {
        bail!("nothing to disable: give --cgroup PATH, --cgroup-id ID or --pid PID");
    }
    let mounts = Mounts::read()?;
    mounts.require_bpffs()?;
    let mut ids = cgroup_ids.to_vec();
    if !targets.cgroups.is_empty() {
        let root = mounts.cgroup2_root()?;
        for c in &targets.cgroups {
            let resolved = cgroup::resolve(&root, c).with_context(|| {
                "a rule for a removed cgroup is disabled with --cgroup-id ID (see `mptcpify status`)"
            })?;
            ids.push(resolved.id);
        }
    }
    let _lock = state::Lock::take()?;
    if !state::is_loaded() {
        bail!("nothing is enabled: mptcpify is not loaded");
    }
    let mut st = State::open()?;
    // Check both tables before touching either.
    for &id in &ids {
        if st.cgroups.get(id)?.is_none() {
            bail!("cgroup id {id} is not enabled; `mptcpify status` lists the rules");
        }
    }
    for &pid in &targets.pids {
        if st.pids.get(pid)?.is_none() {
            bail!("pid {pid} is not enabled; `mptcpify status` lists the rules");
        }
    }
    rules::disable_all(&mut st.cgroups, &ids, |id| format!("cgroup id {id}"))?;
    rules::disable_all(&mut st.pids, &targets.pids, |p| format!("pid {p}"))?;
    st.sync_config()?;
    for id in ids {
        println!("disabled: cgroup id {id}");
    }
    for pid in &targets.pids {
        println!("disabled: pid {pid}");
    }
    Ok(())
}

/// `status --json` output. Field names are a stable interface.
#[derive(Debug, Serialize)]
pub struct Status {
    pub loaded: bool,
    pub kernel: String,
    pub mptcp_sysctl: checks::MptcpSysctl,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkIds>,
    pub counters: std::collections::BTreeMap<&'static str, u64>,
    pub rules: Vec<RuleStatus>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuleStatus {
    Cgroup {
        id: u64,
        /// Current path of the cgroup; `null` when it no longer exists.
        path: Option<PathBuf>,
        hits: u64,
    },
    Pid {
        pid: u32,
        /// Command name; `null` when the process has exited.
        comm: Option<String>,
        hits: u64,
    },
}

pub fn status_data() -> Result<Status> {
    checks::require_privileges()?;
    let mut status = Status {
        loaded: state::is_loaded(),
        kernel: loader::kernel_release(),
        mptcp_sysctl: checks::mptcp_sysctl(),
        link: None,
        counters: Default::default(),
        rules: Vec::new(),
    };
    if !status.loaded {
        return Ok(status);
    }
    status.link = Some(State::link_ids()?);
    let st = State::open()?;
    status.counters = st.counters()?.into_iter().map(|(c, v)| (c.name(), v)).collect();
    let root = Mounts::read()?.cgroup2;
    let mut cgroups = st.cgroups.entries()?;
    cgroups.sort_by_key(|(id, _)| *id);
    for (id, rule) in cgroups {
        let path = root.as_deref().and_then(|r| cgroup::find_by_id(r, id));
        status.rules.push(RuleStatus::Cgroup { id, path, hits: rule.hits });
    }
    let mut pids = st.pids.entries()?;
    pids.sort_by_key(|(pid, _)| *pid);
    for (pid, rule) in pids {
        status.rules.push(RuleStatus::Pid { pid, comm: process::comm(pid), hits: rule.hits });
    }
    Ok(status)
}

pub fn status(json: bool) -> Result<()> {
    let s = status_data()?;
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
    let counters: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("counters: {}", counters.join(" "));
    if s.rules.is_empty() {
        println!("no rules");
        return Ok(());
    }
    println!("{:<7} {:<12} {:>10}  TARGET", "KIND", "ID", "HITS");
    for r in &s.rules {
        match r {
            RuleStatus::Cgroup { id, path, hits } => {
                let target = path.as_ref().map_or("(cgroup gone)".into(), |p| p.display().to_string());
                println!("{:<7} {:<12} {:>10}  {}", "cgroup", id, hits, target);
            }
            RuleStatus::Pid { pid, comm, hits } => {
                let target = comm.as_deref().map_or("(exited)".into(), |c| format!("{pid} ({c})"));
                println!("{:<7} {:<12} {:>10}  {}", "pid", pid, hits, target);
            }
        }
    }
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

pub fn probe() -> Result<()> {
    checks::require_privileges()?;
    drop(loader::load_and_attach(LogLevel::Off)?);
    println!("probe: the kernel ({}) accepts the fmod_ret program on update_socket_protocol", loader::kernel_release());
    Ok(())
}
