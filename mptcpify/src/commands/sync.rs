//! `mptcpify sync`: moves every path and unit rule to its cgroup's current id (a restart
//! recreated it) and drops the rules of `run` cgroups that are gone (their `run` was killed
//! before it could clean up).
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
    let _lock = Lock::take()?;
    let mut st = State::open()?;
    let mut changed = 0;
    for (id, rule, origin, now) in planned {
        match now {
            Some(now) if now == id => {}
            Some(now) => {
                if st.get(&Key::Cgroup(now))?.is_none() {
                    st.insert_new(
                        &Key::Cgroup(now),
                        new_rule(Action::from_code(rule.action), Owner::from_code(rule.owner)),
                    )?;
                    st.set_origin(now, &origin)?;
                }
                st.remove(&Key::Cgroup(id))?;
                println!("sync: {}: cgroup id {id} -> {now}", super::shown(&origin.to_string()));
                changed += 1;
            }
            None if origin.kind == OriginKind::Run => {
                st.remove(&Key::Cgroup(id))?;
                println!("sync: {}: cgroup gone, rule removed", super::shown(&origin.to_string()));
                changed += 1;
            }
            None => println!(
                "sync: {}: cgroup gone; the rule is kept until it reappears",
                super::shown(&origin.to_string())
            ),
        }
    }
    st.recount()?;
    println!("sync: {changed} rule(s) changed");
    Ok(())
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
