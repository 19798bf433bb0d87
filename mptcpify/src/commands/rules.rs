//! `enable`, `exclude`, `disable`: rules for resolved selectors, all or nothing, including a
//! first load of the program.
use anyhow::{Result, bail};

use crate::{
    bpf::loader::{self, LogLevel},
    host::{
        preconditions,
        resolve::{self, Purpose, Target},
        selector::Selector,
    },
    state::{
        maps::State,
        pins::{self, Lock},
        rules::{self, Action, AgentRules, Key, Outcome, RuleStore as _},
    },
};

/// Adds `action` rules for `selectors`, loading the program first if needed.
pub async fn add(selectors: &[Selector], action: Action, log_level: LogLevel) -> Result<()> {
    let mounts = preconditions::require_state_access()?;
    if selectors.is_empty() {
        let all = if action == Action::Exclude { "" } else { " or --all" };
        bail!("nothing to {}: give --cgroup, --unit, --pid, --comm, --uid{all}", action.name());
    }
    let resolved = resolve::resolve(selectors, &mounts, Purpose::Add).await?;
    let outcomes = add_resolved(&resolved, action, log_level)?;
    for (t, o) in resolved.iter().zip(outcomes) {
        println!("{}: {}", o.describe(action), super::shown(&t.label));
    }
    if let Some(w) = preconditions::mptcp_warning() {
        eprintln!("{w}");
    }
    Ok(())
}

/// Applies resolved targets under the lock; all or nothing, including a first load.
pub fn add_resolved(resolved: &[Target], action: Action, log_level: LogLevel) -> Result<Vec<Outcome>> {
    let lock = Lock::take()?;
    let loaded_now = !pins::is_loaded();
    if loaded_now {
        loader::load_and_pin(log_level)?;
    }
    let applied = State::edit(&lock, |st| add_with_origins(st, resolved, action));
    if applied.is_err() && loaded_now {
        let _ = pins::remove_all();
    }
    applied
}

/// The rules and, for the ones added, their origins; a failure removes what this call added.
fn add_with_origins(st: &mut State, resolved: &[Target], action: Action) -> Result<Vec<Outcome>> {
    let keys: Vec<Key> = resolved.iter().map(|t| t.key).collect();
    let outcomes = rules::add_all(st, &keys, action)?;
    let added: Vec<&Target> =
        resolved.iter().zip(&outcomes).filter(|(_, o)| **o == Outcome::Added).map(|(t, _)| t).collect();
    let recorded = added.iter().try_for_each(|t| match (&t.key, &t.origin) {
        (Key::Cgroup(id), Some(origin)) => st.set_origin(*id, origin),
        _ => Ok(()),
    });
    if let Err(e) = recorded {
        for t in added {
            let _ = st.remove(&t.key);
        }
        return Err(e);
    }
    Ok(outcomes)
}

/// Removes the rules of `selectors` and of the cgroup ids given (for cgroups that are gone).
pub async fn disable(selectors: &[Selector], cgroup_ids: &[u64], agent_rules: AgentRules) -> Result<()> {
    let mounts = preconditions::require_state_access()?;
    if selectors.is_empty() && cgroup_ids.is_empty() {
        bail!("nothing to disable: give --cgroup, --cgroup-id, --unit, --pid, --comm, --uid or --all");
    }
    let mut resolved = resolve::resolve(selectors, &mounts, Purpose::Remove).await?;
    resolved.extend(cgroup_ids.iter().map(|&id| Target::plain(Key::Cgroup(id), format!("cgroup id {id}"))));
    let lock = Lock::take()?;
    if !pins::is_loaded() {
        bail!("nothing is enabled: mptcpify is not loaded");
    }
    let keys: Vec<Key> = resolved.iter().map(|t| t.key).collect();
    State::edit(&lock, |st| rules::remove_all(st, &keys, agent_rules))?;
    for t in &resolved {
        println!("removed: {}", super::shown(&t.label));
    }
    Ok(())
}
