//! `mptcpify agent`: keeps the kernel's rules equal to a declarative policy (and, with
//! `--kubernetes`, to the selected pods of this node), reconciling at start, when the policy file
//! changes, when watched cgroups appear or vanish and when pods change. It adopts what is loaded
//! (never detaches to start), and on SIGTERM leaves program and rules pinned so sockets keep being
//! upgraded across restarts and upgrades.
pub mod desired;
mod drift;
pub mod http;
pub mod kubernetes;
pub mod metrics;
mod namespaces;
mod paths;
mod pod_paths;
pub mod policy;
pub mod reconcile;
mod watches;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Result, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::Instant,
};

use self::{
    kubernetes::{pods, watch::Cluster},
    metrics::{Health, SharedHealth},
    policy::Policy,
    reconcile::{Actual, Concern, Plan},
    watches::Watches,
};
use crate::{
    bpf::{
        loader::{self, LogLevel},
        sys,
    },
    host::{preconditions, users::system_users},
    paths::{apply, connection::Netlink, plan::AutoOptions},
    state::{
        maps::{self, State},
        origin::OriginKind,
        pins::{self, Lock},
        rules::{Action, Key, Owner, RuleStore as _, new_rule},
    },
};

/// Changes that arrive within this window are reconciled together.
const SETTLE: Duration = Duration::from_millis(20);
/// How often the rules of `mptcpify run`s that were killed are looked for (as `sync` removes
/// them): a read of the cgroup rules' origins.
const RUN_SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How often the guard's decisions are looked at for pods' Events (a read of two pinned maps).
const GUARD_EVENTS_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub metrics_addr: SocketAddr,
    pub cleanup_on_exit: bool,
    pub kubernetes: bool,
    pub node_name: Option<String>,
    pub log_level: LogLevel,
}

struct Agent {
    opts: Options,
    root: PathBuf,
    policy: Policy,
    /// The file's text as last read, valid or not, so a bad file is reported once.
    seen_text: String,
    cluster: Option<kubernetes::watch::Shared>,
    health: SharedHealth,
    /// Pods refused so far, each logged once.
    reported_refusals: std::collections::BTreeSet<String>,
    /// What the last pass wanted the kernel to hold.
    expected: drift::Expected,
    backoff: drift::Backoff,
    /// The last pass applied everything: until then retries, not the drift check, catch up.
    settled: bool,
    watcher: drift::Watcher,
    /// The policy's `[paths]`, handed to their keeper ([`paths`]).
    paths: tokio::sync::watch::Sender<Option<AutoOptions>>,
    pod_paths: pod_paths::PodPaths,
    /// With `--kubernetes`: Events on pods whose programs the guard keeps TCP.
    guard_events: Option<kubernetes::events::GuardEvents>,
}

pub async fn run(opts: Options) -> Result<()> {
    preconditions::require_privileges()?;
    let text = policy::read(&opts.config)?;
    let policy = Policy::parse(&text, &opts.config.display().to_string(), &system_users)?;
    let node = match (opts.kubernetes, &opts.node_name) {
        (false, _) => None,
        (true, Some(n)) if !n.is_empty() => Some(n.clone()),
        (true, _) => bail!(
            "--kubernetes needs this node's name: set NODE_NAME (the DaemonSet sets it from spec.nodeName) or give --node-name"
        ),
    };
    let client = match &node {
        Some(_) => Some(kubernetes::watch::client().await?),
        None => None,
    };
    let health: SharedHealth = Arc::new(Mutex::new(Health {
        policy_valid: true,
        kubernetes_synced: node.as_ref().map(|_| false),
        not_ready_reason: "starting".into(),
        ..Default::default()
    }));
    // Bind before loading anything: a taken port must not leave a half-started agent behind.
    let bound = http::serve(opts.metrics_addr, health.clone()).await?;
    log::info!("metrics, /healthz and /readyz on http://{bound}");
    let root = wait_for_bpffs(&health).await?.cgroup2_root()?;
    let watches = Watches::new(&opts.config)?;
    namespaces::spawn(health.clone(), root.clone());
    attach(opts.log_level)?;
    health.lock().expect("health lock").attached = true;

    let (tx, rx) = mpsc::unbounded_channel();
    let guard_events = match (&client, &node) {
        (Some(c), Some(n)) => Some(kubernetes::events::GuardEvents::new(c.clone(), n)),
        _ => None,
    };
    let cluster = node.map(|node| {
        let shared: kubernetes::watch::Shared =
            Arc::new(Mutex::new(Cluster { node: node.clone(), ..Default::default() }));
        log::info!("watching the pods of node {node} and the namespaces' {} label", pods::SELECT_KEY);
        tokio::spawn(kubernetes::watch::run(
            client.expect("client made with the node"),
            node,
            shared.clone(),
            tx.clone(),
        ));
        shared
    });
    let (paths_tx, paths_rx) = tokio::sync::watch::channel(policy.paths.clone());
    let paths_netns = paths::netns(opts.kubernetes);
    paths::spawn(paths_rx, health.clone(), paths_netns.clone());
    let agent = Agent {
        opts,
        root,
        policy,
        seen_text: text,
        cluster,
        health,
        reported_refusals: Default::default(),
        expected: Default::default(),
        backoff: Default::default(),
        settled: false,
        watcher: drift::Watcher::new(Instant::now()),
        paths: paths_tx,
        pod_paths: pod_paths::PodPaths::from_records(),
        guard_events,
    };
    let agent = serve(agent, watches, rx).await?;
    if agent.opts.cleanup_on_exit {
        cleanup()?;
        if agent.policy.paths.is_some() {
            let plan = apply::clear(&Netlink::open(&paths_netns).await?).await?;
            log::info!("cleanup: removed {} endpoint(s) mptcpify made", plan.remove_endpoints.len());
        }
    } else {
        log::info!("exiting; the program and rules stay pinned (`mptcpify reset` or --cleanup-on-exit removes them)");
    }
    Ok(())
}

/// The host's mounts once bpffs is mounted at its place. A node may mount it after the agent
/// starts (and a volume with HostToContainer propagation then shows it): until then the agent
/// is alive but not ready, and says why.
async fn wait_for_bpffs(health: &SharedHealth) -> Result<crate::host::mounts::Mounts> {
    let mut backoff = drift::Backoff::default();
    loop {
        let mounts = crate::host::mounts::Mounts::read()?;
        match mounts.require_bpffs() {
            Ok(()) => return Ok(mounts),
            Err(e) => {
                {
                    let reason = e.to_string();
                    let mut h = health.lock().expect("health lock");
                    if h.not_ready_reason != reason {
                        log::warn!("{reason}; waiting for it");
                        h.not_ready_reason = reason;
                    }
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Reconciles at start and whenever something changes, until SIGTERM or SIGINT: the file or a
/// watched cgroup directory (inotify), the cluster (`changed`), the kernel's rules changed by
/// others (checked every [`drift::CHECK_EVERY`] while the last pass succeeded), or a retry of a
/// failed pass coming due.
async fn serve(mut agent: Agent, mut watches: Watches, mut changed: mpsc::UnboundedReceiver<()>) -> Result<Agent> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut check = tokio::time::interval(drift::CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sweep = tokio::time::interval(RUN_SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut guard_events = tokio::time::interval(GUARD_EVENTS_EVERY);
    guard_events.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut due = Some(Instant::now());
    loop {
        let wake = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = term.recv() => return Ok(agent),
            _ = int.recv() => return Ok(agent),
            Some(event) = watches.next() => {
                watches.note(&event);
                due.get_or_insert(Instant::now() + SETTLE);
            }
            Some(()) = changed.recv() => { due.get_or_insert(Instant::now() + SETTLE); }
            _ = sweep.tick() => {
                agent.sweep_runs();
                agent.sync_pod_paths().await;
            }
            _ = guard_events.tick(), if agent.guard_events.is_some() => agent.tell_guard_decisions(),
            _ = check.tick(), if due.is_none() && agent.settled => {
                if agent.changed_under_it() {
                    due = Some(Instant::now());
                }
            }
            _ = tokio::time::sleep_until(wake), if due.is_some() => {
                let pass = agent.reconcile(&mut watches).await;
                agent.sync_pod_paths().await;
                due = if pass.added_watches {
                    // New watches may have missed what appeared before they were added: look again.
                    Some(Instant::now())
                } else if pass.retry {
                    let delay = agent.backoff.next_delay();
                    log::warn!("reconciliation incomplete; retrying in {delay:?}");
                    Some(Instant::now() + delay)
                } else {
                    agent.backoff.reset();
                    None
                };
            }
        }
    }
}

/// What a pass found, for [`Agent::record`].
struct PassOutcome {
    valid: bool,
    synced: bool,
    refused: usize,
    conflicts: usize,
    missing: usize,
    held: Result<Vec<Actual>, drift::Unheld>,
    retry: bool,
}

/// What one reconciliation asks of the loop.
struct Pass {
    /// Watches were added: look once more at once.
    added_watches: bool,
    /// Something failed or could not be resolved: try again after a backoff.
    retry: bool,
}

/// Loads and pins the program unless it is already attached, which is adopted as it is.
fn attach(log_level: LogLevel) -> Result<()> {
    let _lock = Lock::take()?;
    if pins::is_loaded() {
        let ids = pins::link_ids()?;
        log::info!("adopting the attached program (link {}, program {})", ids.link_id, ids.program_id);
    } else {
        loader::load_and_pin(log_level)?;
        let ids = pins::link_ids()?;
        log::info!("loaded and attached the program (link {}, program {})", ids.link_id, ids.program_id);
        sys::release_free_memory();
    }
    Ok(())
}

/// `--cleanup-on-exit`: removes the agent's rules, and the program too if no CLI rule is left.
fn cleanup() -> Result<()> {
    let lock = Lock::take()?;
    if !pins::is_loaded() {
        return Ok(());
    }
    let (entries, mine) = State::edit(&lock, |st| {
        let entries = st.entries()?;
        let mine: Vec<Key> =
            entries.iter().filter(|(_, r)| Owner::from_code(r.owner) == Owner::Agent).map(|(k, _)| *k).collect();
        mine.iter().try_for_each(|k| st.remove(k))?;
        Ok((entries, mine))
    })?;
    if entries.len() == mine.len() {
        pins::remove_all()?;
        log::info!("cleanup: removed {} rule(s) and detached the program", mine.len());
    } else {
        log::info!("cleanup: removed {} rule(s); CLI rules remain, so the program stays attached", mine.len());
    }
    Ok(())
}

impl Agent {
    /// Re-reads the policy if its file changed; an invalid file keeps the running policy.
    fn refresh_policy(&mut self) -> bool {
        let path = &self.opts.config;
        let text = match policy::read(path) {
            Ok(t) => t,
            Err(e) => {
                if !self.seen_text.is_empty() || self.health.lock().expect("health lock").policy_valid {
                    log::error!("{e:#}; the running policy stays in force");
                }
                self.seen_text.clear();
                return false;
            }
        };
        if text == self.seen_text {
            return self.health.lock().expect("health lock").policy_valid;
        }
        self.seen_text = text;
        match Policy::parse(&self.seen_text, &path.display().to_string(), &system_users) {
            Ok(p) => {
                if p != self.policy {
                    log::info!("policy {} changed: {} selector(s)", path.display(), p.wanted.len());
                }
                self.paths.send_if_modified(|kept| {
                    let changed = *kept != p.paths;
                    kept.clone_from(&p.paths);
                    changed
                });
                self.policy = p;
                true
            }
            Err(e) => {
                log::error!("rejected policy: {e}; the running policy stays in force");
                false
            }
        }
    }

    /// One reconciliation: resolve, apply, then record what the kernel holds against what is
    /// wanted (readiness and the drift check follow from that).
    async fn reconcile(&mut self, watches: &mut Watches) -> Pass {
        let valid = self.refresh_policy();
        let (selected, mut refused, synced) = self.cluster_view();
        let resolved = desired::resolve(&self.policy, &selected, &self.root).await;
        refused.extend(resolved.refused.iter().cloned());
        self.report_refusals(&refused);
        let result = self.apply(&resolved, synced);
        let added_watches = watches.update(&resolved.watch_dirs);
        for e in &resolved.errors {
            log::warn!("not resolved (no rule of the agent it could concern is removed until it is): {e}");
        }
        let conflicts = match &result {
            Ok(plan) => plan.conflicts.len(),
            Err(e) => {
                log::error!("reconcile failed: {e:#}");
                0
            }
        };
        self.expected = drift::Expected::from_desired(&resolved.desired);
        let seen = maps::fingerprint();
        let held = drift::kernel_rules();
        self.watcher.compared(seen, Instant::now());
        // State that cannot be read after an apply that worked (changed in between) is retried
        // too: unsettled, no drift check would ever look again.
        let retry = result.is_err() || !resolved.errors.is_empty() || held.is_err();
        let missing = held.as_ref().map_or(self.expected.len(), |a| self.expected.missing(a));
        // Until the pods are listed the agent removes no pod rule, so its rules may exceed the wants.
        self.settled = !retry && synced;
        let outcome = PassOutcome { valid, synced, refused: refused.len(), conflicts, missing, held, retry };
        self.record(resolved, &result, outcome);
        Pass { added_watches, retry }
    }

    /// Health, metrics and readiness after a pass.
    fn record(&self, resolved: desired::Resolved, result: &Result<Plan>, o: PassOutcome) {
        let PassOutcome { valid, synced, conflicts, missing, retry, .. } = o;
        let mut h = self.health.lock().expect("health lock");
        h.reconcile_runs += 1;
        h.policy_valid = valid;
        h.pending = resolved.pending.len();
        h.pods = resolved.pods;
        h.refused_pods = o.refused;
        h.conflicts = conflicts;
        h.attached = pins::is_loaded();
        h.missing_rules = missing;
        if let Some(s) = h.kubernetes_synced.as_mut() {
            *s = synced;
        }
        if retry || !valid || conflicts > 0 {
            h.reconcile_errors += 1;
        }
        h.not_ready_reason = match () {
            _ if let Err(unheld) = &o.held => unheld.to_string(),
            _ if !synced => "waiting for the first list of pods and namespaces".into(),
            _ if !resolved.errors.is_empty() => {
                format!("{} wanted rule(s) could not be resolved", resolved.errors.len())
            }
            _ if result.is_err() => "the last reconciliation failed; retrying".into(),
            _ if missing > 0 => format!("{missing} wanted rule(s) are not in force (conflicts: {conflicts})"),
            _ => String::new(),
        };
        h.ready = h.not_ready_reason.is_empty();
    }

    /// `[kubernetes] pod_paths`: the selected pods' own namespaces ([`pod_paths`]).
    async fn sync_pod_paths(&mut self) {
        if !self.policy.pod_paths && self.pod_paths.is_idle() {
            return;
        }
        let (pods, synced) = {
            let h = self.health.lock().expect("health lock");
            (h.pods.clone(), h.kubernetes_synced != Some(false))
        };
        // Until a pass has seen the whole pod list, a pod missing from it is not known to be
        // gone: a restarted agent would clear the paths of pods still selected.
        if !synced {
            return;
        }
        let pods = if self.policy.pod_paths { pods } else { Vec::new() };
        let opts = pod_paths::options(self.policy.paths.as_ref());
        self.pod_paths.sync(&pods, &self.root, &opts).await;
    }

    /// Records an Event on each selected pod whose program the guard newly keeps TCP.
    fn tell_guard_decisions(&mut self) {
        let Some(events) = self.guard_events.as_mut() else { return };
        let status = State::open().and_then(|st| crate::commands::guard::guard_status(&st));
        let Ok(status) = status.inspect_err(|e| log::debug!("reading the guard's decisions: {e:#}")) else { return };
        let pods = self.health.lock().expect("health lock").pods.clone();
        events.sync(&pods, &status.kept_tcp);
    }

    /// Removes the rules (and cgroups) that killed `mptcpify run`s left once their commands
    /// ended: CLI rules, but no one else would remove them.
    fn sweep_runs(&self) {
        let root = &self.root;
        let found = State::open().and_then(|st| crate::commands::run::leftovers(&st, root));
        let Ok(found) = found.inspect_err(|e| log::debug!("looking for what killed runs left: {e:#}")) else { return };
        if found.is_empty() {
            return;
        }
        let removed = Lock::take().and_then(|lock| {
            State::edit(&lock, |st| {
                // Looked at again under the lock: a run may have cleaned up meanwhile.
                let found = crate::commands::run::leftovers(st, root)?;
                crate::commands::run::remove_leftovers(st, &found).map(|()| found)
            })
        });
        match removed {
            Ok(found) => {
                found.iter().for_each(|(_, p)| log::info!("removed the rule a killed run left: {}", p.display()))
            }
            Err(e) => log::warn!("removing what killed runs left: {e:#}"),
        }
    }

    /// Whether the kernel no longer holds what the last pass left, or an edit was killed
    /// midway: the fingerprint on every check, every rule when it moved (and now and then).
    fn changed_under_it(&mut self) -> bool {
        let now = Instant::now();
        let seen = maps::fingerprint();
        match self.watcher.look(seen, now, |pid| std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            drift::Look::Nothing => false,
            drift::Look::Reconcile => {
                log::warn!("an edit of the pinned state was killed midway; reconciling repairs it");
                true
            }
            drift::Look::Compare => {
                self.watcher.compared(seen, now);
                let drifted = drift::kernel_rules().map_or(true, |held| self.expected.drifted(&held));
                if drifted {
                    log::info!("the kernel's rules changed under the agent (reset, or edited by hand); reconciling");
                }
                drifted
            }
        }
    }

    /// The selected pods of this node, the refused ones (`pod ns/name: reason`), and whether
    /// both lists arrived; without `--kubernetes`, none and synced.
    fn cluster_view(&self) -> (Vec<pods::PodInfo>, Vec<String>, bool) {
        let Some(c) = &self.cluster else { return (Vec::new(), Vec::new(), true) };
        let c = c.lock().expect("cluster lock");
        let mut here = Vec::new();
        let mut refused = Vec::new();
        for pod in c.pods.values() {
            match pod {
                Ok(p) if p.node.as_deref() == Some(c.node.as_str()) => here.push(p.clone()),
                Ok(_) => {}
                Err((name, reason)) => refused.push(format!("pod {name}: {reason}")),
            }
        }
        let (here, aliases) = pods::refuse_aliases(here);
        refused.extend(aliases.into_iter().map(|(name, reason)| format!("pod {name}: {reason}")));
        let selected = here
            .into_iter()
            .filter_map(|p| Some(pods::PodInfo { action: pods::selection(&p, &c.namespaces)?, ..p }))
            .collect();
        (selected, refused, c.synced())
    }

    /// Logs each refused pod once, when it is first refused.
    fn report_refusals(&mut self, refused: &[String]) {
        for r in refused {
            if !self.reported_refusals.contains(r) {
                log::warn!("refused, never enabled: {r}");
            }
        }
        self.reported_refusals = refused.iter().cloned().collect();
    }

    /// Diffs and applies under the lock (re-loading the program if someone reset it).
    fn apply(&self, resolved: &desired::Resolved, synced: bool) -> Result<Plan> {
        let lock = Lock::take()?;
        if !pins::is_loaded() {
            log::warn!("the program is not attached (was `mptcpify reset` run?); loading it again");
            loader::load_and_pin(self.opts.log_level)?;
            sys::release_free_memory();
        }
        State::edit(&lock, |st| apply_plan(st, resolved, synced))
    }
}

/// Brings the kernel's rules to `resolved`'s wants, as far as it can: removals that something
/// unresolved could concern wait for it.
fn apply_plan(st: &mut State, resolved: &desired::Resolved, synced: bool) -> Result<Plan> {
    let actual: Vec<Actual> = st
        .entries()?
        .into_iter()
        .map(|(key, r)| Actual { key, action: Action::from_code(r.action), owner: Owner::from_code(r.owner) })
        .collect();
    let mut plan = reconcile::plan(&resolved.desired, &actual);
    for c in &plan.conflicts {
        log::warn!("conflict: {c}");
    }
    let mut blockers: Vec<Concern> = resolved.errors.iter().map(|e| e.concerns.clone()).collect();
    if !synced {
        blockers.push(Concern::Kind(OriginKind::Pod));
    }
    plan.remove.retain(|key| {
        let origin = match key {
            Key::Cgroup(id) => st.origin(*id),
            _ => None,
        };
        let held = reconcile::held_back(key, origin.as_ref(), &blockers);
        if held {
            log::info!("kept until what could concern it is resolved: {key}");
        }
        !held
    });
    log::debug!("reconcile: {} kept, {} covered by CLI rules", plan.kept, plan.covered_by_cli);
    let plan = execute(st, plan)?;
    // The guard's decisions of the rules this plan removed for good (pods that left) go with
    // them; a replaced rule (audit, then enable) keeps them, and so does a CLI rule.
    let gone = plan.remove.iter().map(Key::rule_ref).collect();
    st.guard_mut().forget_decisions_of(&gone)?;
    Ok(plan)
}

/// Applies a plan: replacements, then additions, then removals; every rule it could not change
/// is reported together.
fn execute(st: &mut State, plan: Plan) -> Result<Plan> {
    let mut failures = Vec::new();
    for key in &plan.replace {
        if let Err(error) = st.remove(key) {
            failures.push(RuleFailure { rule: key.to_string(), error });
        }
    }
    for d in &plan.add {
        match add_desired(st, d) {
            Ok(()) => log::info!("{}: {}", d.action.done(), d.label),
            Err(error) => failures.push(RuleFailure { rule: d.label.clone(), error }),
        }
    }
    for key in &plan.remove {
        let rule = match key {
            Key::Cgroup(id) => st.origin(*id).map(|o| format!("{key} ({o})")),
            _ => None,
        }
        .unwrap_or_else(|| key.to_string());
        match st.remove(key) {
            Ok(()) => log::info!("removed: {rule}"),
            Err(error) => failures.push(RuleFailure { rule, error }),
        }
    }
    if !failures.is_empty() {
        return Err(ApplyFailed(failures).into());
    }
    Ok(plan)
}

/// Adds one wanted rule of the agent with its origin; neither stays if either fails.
fn add_desired(st: &mut State, d: &reconcile::Desired) -> Result<()> {
    st.insert_new(&d.key, new_rule(d.action, Owner::Agent))?;
    if let (Key::Cgroup(id), Some(o)) = (d.key, &d.origin) {
        st.set_origin(id, o).inspect_err(|_| {
            let _ = st.remove(&d.key);
        })?;
    }
    Ok(())
}

/// One rule a reconciliation could not change.
#[derive(Debug, thiserror::Error)]
#[error("{rule}: {error:#}")]
pub struct RuleFailure {
    pub rule: String,
    pub error: anyhow::Error,
}

/// The rules a reconciliation could not change; the others were applied.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ApplyFailed(pub Vec<RuleFailure>);
