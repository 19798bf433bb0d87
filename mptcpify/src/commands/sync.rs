//! `mptcpify sync`: moves every path and unit rule to its cgroup's current id (a restart
//! recreated it) and drops the rules of `run` cgroups that are gone or abandoned (their `run`
//! was killed before it could clean up, and they are empty).
use std::path::Path;

use anyhow::Result;
use mptcpify_common::Rule;

use crate::{
    host::{preconditions, resolve},
    state::{
        maps::State,
        origin::{OriginKind, RuleOrigin},
        pins::{self, Lock},
        rules::{Action, Key, Owner, RuleStore as _, new_rule},
    },
};

/// A rule, its origin and the id the origin resolves to now.
type Planned = (u64, Rule, RuleOrigin, Option<u64>);

pub async fn sync() -> Result<()> {
    let root = preconditions::require_state_access()?.cgroup2_root()?;
    if !pins::is_loaded() {
        println!("sync: nothing is loaded");
        return Ok(());
    }
    // Resolve outside the lock (systemd may be slow), then apply under it.
    let planned = plan(&root).await?;
    let lock = Lock::take()?;
    let changed = State::edit(&lock, |st| apply(st, &root, planned))?;
    println!("sync: {changed} rule(s) changed");
    Ok(())
}

/// Applies the planned steps and recounts; returns how many rules changed.
fn apply(st: &mut State, root: &Path, planned: Vec<Planned>) -> Result<usize> {
    let mut changed = 0;
    for (id, rule, origin, now) in planned {
        let what = super::shown(&origin.to_string());
        let done = step(st, root, (id, rule, &origin, now))?;
        changed += usize::from(done.changes());
        match done {
            Step::Current => {}
            Step::Abandoned => println!("sync: {what}: its run is gone and the cgroup empty: rule and cgroup removed"),
            Step::Moved(now) => println!("sync: {what}: cgroup id {id} -> {now}"),
            Step::RunGone => println!("sync: {what}: cgroup gone, rule removed"),
            Step::Kept => println!("sync: {what}: cgroup gone; the rule is kept until it reappears"),
        }
    }
    st.recount()?;
    Ok(changed)
}

/// What sync did with one rule.
enum Step {
    Current,
    /// A `run` cgroup whose `run` is gone, now empty: rule and cgroup removed.
    Abandoned,
    /// Moved to the recreated cgroup's new id.
    Moved(u64),
    /// A `run` cgroup that is gone: its rule removed.
    RunGone,
    /// Gone, kept until it reappears.
    Kept,
}

impl Step {
    fn changes(&self) -> bool {
        matches!(self, Step::Abandoned | Step::Moved(_) | Step::RunGone)
    }
}

fn step(st: &mut State, root: &Path, (id, rule, origin, now): (u64, Rule, &RuleOrigin, Option<u64>)) -> Result<Step> {
    let path = root.join(origin.text.trim_start_matches('/'));
    let run = origin.kind == OriginKind::Run;
    Ok(match now {
        Some(now) if now == id && run && super::run::abandoned(&path) => {
            st.remove(&Key::Cgroup(id))?;
            let _ = std::fs::remove_dir(&path);
            Step::Abandoned
        }
        Some(now) if now == id => Step::Current,
        Some(now) => {
            if st.get(&Key::Cgroup(now))?.is_none() {
                // The same owner: a rule the agent made stays the agent's.
                let moved = new_rule(Action::from_code(rule.action), Owner::from_code(rule.owner));
                st.insert_new(&Key::Cgroup(now), moved)?;
                st.set_origin(now, origin)?;
            }
            st.remove(&Key::Cgroup(id))?;
            Step::Moved(now)
        }
        None if run => {
            st.remove(&Key::Cgroup(id))?;
            Step::RunGone
        }
        None => Step::Kept,
    })
}

/// Every cgroup rule with a path, unit or run origin, and where that origin is now.
async fn plan(root: &Path) -> Result<Vec<Planned>> {
    let st = State::open()?;
    let mut planned = Vec::new();
    for (key, rule) in st.entries()? {
        let Key::Cgroup(id) = key else { continue };
        let Some(origin) = st.origin(id).filter(|o| o.kind != OriginKind::Pod) else { continue };
        let now = resolve::origin_cgroup_id(root, &origin).await?;
        planned.push((id, rule, origin, now));
    }
    Ok(planned)
}
