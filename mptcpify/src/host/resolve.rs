//! Selectors resolved against the live system into rule keys, before anything changes.
use std::path::Path;

use anyhow::{Context as _, Result, bail};

use super::{
    cgroup,
    mounts::Mounts,
    process,
    selector::{CgroupPath, Selector},
    systemd,
};
use crate::state::{
    origin::{OriginKind, RuleOrigin},
    rules::Key,
};

/// A rule key, what it was made from (cgroup rules), and how to name it to the user.
#[derive(Debug, Clone)]
pub struct Target {
    pub key: Key,
    pub origin: Option<RuleOrigin>,
    pub label: String,
}

impl Target {
    /// A key that needs no resolving (`--all`, `--cgroup-id`).
    pub fn plain(key: Key, label: impl Into<String>) -> Self {
        Self { key, origin: None, label: label.into() }
    }
}

/// What the resolved targets are for: removing a rule needs less to exist now (an exited PID
/// can still have a rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Add,
    Remove,
}

/// Resolves every selector, in order.
pub async fn resolve(selectors: &[Selector], mounts: &Mounts, purpose: Purpose) -> Result<Vec<Target>> {
    let mut out = Vec::with_capacity(selectors.len());
    for selector in selectors {
        out.push(match selector {
            Selector::Cgroup(path) => resolve_cgroup(path, mounts, purpose)?,
            Selector::Unit(unit) => resolve_unit(unit, mounts).await?,
            Selector::Key(key) => resolve_key(*key, purpose)?,
        });
    }
    Ok(out)
}

fn resolve_cgroup(path: &CgroupPath, mounts: &Mounts, purpose: Purpose) -> Result<Target> {
    let root = mounts.cgroup2_root()?;
    let cg = cgroup::resolve(&root, &path.as_arg()).map_err(|e| match purpose {
        Purpose::Remove => {
            e.context("a rule for a removed cgroup is disabled with --cgroup-id ID (see `mptcpify status`)")
        }
        Purpose::Add => e,
    })?;
    Ok(Target {
        key: Key::Cgroup(cg.id),
        origin: Some(RuleOrigin::new(OriginKind::Path, &cg.relative)?),
        label: format!("cgroup {} (id {})", cg.relative, cg.id),
    })
}

async fn resolve_unit(unit: &str, mounts: &Mounts) -> Result<Target> {
    let root = mounts.cgroup2_root()?;
    let Some(relative) = systemd::unit_cgroup(unit).await? else {
        bail!("systemd does not know {unit} as a running unit, so it has no cgroup: start it first");
    };
    let cg = cgroup::resolve(&root, relative.trim_start_matches('/'))
        .with_context(|| format!("systemd says {unit} is in {relative}"))?;
    Ok(Target {
        key: Key::Cgroup(cg.id),
        origin: Some(RuleOrigin::new(OriginKind::Unit, unit)?),
        label: format!("unit {unit}: cgroup {} (id {})", cg.relative, cg.id),
    })
}

fn resolve_key(key: Key, purpose: Purpose) -> Result<Target> {
    let label = match key {
        Key::Pid(pid) if purpose == Purpose::Add => {
            let p = process::resolve(pid)?;
            format!("pid {} ({})", p.pid, p.comm)
        }
        Key::All => "all processes".into(),
        other => other.to_string(),
    };
    Ok(Target::plain(key, label))
}

/// The cgroup id a rule's origin resolves to now; `Ok(None)` when it is gone. Pods are found
/// through the Kubernetes API, which only the agent watches: an error here.
pub async fn origin_cgroup_id(root: &Path, origin: &RuleOrigin) -> Result<Option<u64>> {
    let relative = match origin.kind {
        OriginKind::Path | OriginKind::Run => origin.text.clone(),
        OriginKind::Unit => match systemd::unit_cgroup(&origin.text).await? {
            Some(p) => p,
            None => return Ok(None),
        },
        OriginKind::Pod => bail!("pod {} is resolved by the agent", origin.text),
    };
    Ok(cgroup::resolve(root, relative.trim_start_matches('/')).ok().map(|c| c.id))
}
