//! Carries out a [`Plan`] in one namespace, writing the [`Record`] before each endpoint it makes
//! and after each it removes, under a lock shared by the CLI and the agent. If a change fails,
//! what this run made is taken back, so a namespace is left as it was found or as planned.
use std::path::Path;

use anyhow::Result;

use super::{
    connection::Netlink,
    endpoints,
    model::{Endpoint, Link, Snapshot, SourceRule, TableRoute},
    plan::{self, AutoOptions, Plan},
    read,
    record::{self, KeptBy, RECORD_DIR, RaisedLimits, Record, RecordFile},
    routing,
};
use crate::state::pins::Lock;

/// The lock on the records, on a directory only root can open (another user could otherwise
/// hold it and stall every `paths` command and the agent's passes).
async fn lock() -> Result<Lock> {
    record::private_dir(Path::new(RECORD_DIR))?;
    Lock::on_async(Path::new(RECORD_DIR)).await
}

/// Whether another command or task holds the records' lock now: the agent's pod pass then
/// waits for its next turn rather than wait for the lock once per pod.
pub fn records_busy() -> bool {
    std::fs::metadata(RECORD_DIR).is_ok() && matches!(Lock::try_on(Path::new(RECORD_DIR)), Ok(None))
}

/// The snapshot, and the record checked against it (what is gone from the kernel forgotten).
pub async fn current(nl: &Netlink) -> Result<(Snapshot, Record, RecordFile)> {
    let file = RecordFile::for_netns(nl.inode);
    let mut record = file.load()?.for_namespace(nl.cookie);
    let snap = read::snapshot(nl).await?;
    record.forget_missing(&snap.endpoints, &snap.links);
    Ok((snap, record, file))
}

/// `paths auto`: plans from the namespace as it is now and carries the plan out. The record
/// says `label` for people, and `kept_by` which of the agent's duties (if any) made it.
pub async fn auto(nl: &Netlink, opts: &AutoOptions, label: &str, kept_by: Option<KeptBy>) -> Result<Plan> {
    let _lock = lock().await?;
    let (snap, mut record, file) = current(nl).await?;
    let plan = plan::auto(&snap, opts, &record)?;
    record.label = label.to_string();
    if record.kept_by != kept_by {
        // Said before anything is made: a new agent learns from it what to clear (rules and
        // routes are made without touching the record otherwise).
        record.kept_by = kept_by;
        file.save(&record)?;
    }
    execute(nl, &snap, &plan, &mut record, &file).await?;
    Ok(plan)
}

/// `paths clear`: removes what mptcpify made and forgets the namespace.
pub async fn clear(nl: &Netlink) -> Result<Plan> {
    let _lock = lock().await?;
    let (snap, mut record, file) = current(nl).await?;
    let plan = plan::clear(&snap, &record);
    execute(nl, &snap, &plan, &mut record, &file).await?;
    file.save(&Record::default())?;
    Ok(plan)
}

async fn execute(nl: &Netlink, snap: &Snapshot, plan: &Plan, record: &mut Record, file: &RecordFile) -> Result<()> {
    for e in &plan.remove_endpoints {
        endpoints::remove(nl, e).await?;
        record.endpoints.retain(|m| !(m.id == e.id && m.ip == e.ip));
        file.save(record)?;
    }
    for r in &plan.remove_rules {
        routing::remove_rule(nl, r).await?;
    }
    for r in &plan.remove_routes {
        routing::remove_route(nl, r).await?;
    }
    match add(nl, plan, &snap.links, record, file, Made::default()).await {
        Ok(()) => Ok(()),
        Err((error, made)) => {
            made.take_back(nl, record, file).await;
            Err(error)
        }
    }
}

/// What one run added, to take back if a later step fails.
#[derive(Default)]
struct Made {
    routes: Vec<TableRoute>,
    rules: Vec<SourceRule>,
    endpoints: Vec<Endpoint>,
}

async fn add(
    nl: &Netlink,
    plan: &Plan,
    links: &[Link],
    record: &mut Record,
    file: &RecordFile,
    mut made: Made,
) -> Result<(), (anyhow::Error, Made)> {
    macro_rules! step {
        ($e:expr) => {
            if let Err(e) = $e {
                return Err((e, made));
            }
        };
    }
    for r in &plan.add_routes {
        step!(routing::add_route(nl, r).await);
        made.routes.push(r.clone());
    }
    for r in &plan.add_rules {
        step!(routing::add_rule(nl, r).await);
        made.rules.push(r.clone());
    }
    for e in &plan.add_endpoints {
        record.made_now(e, links);
        step!(file.save(record));
        if let Err(error) = endpoints::add(nl, e).await {
            // Never made: not in the record that take_back writes.
            record.endpoints.retain(|m| m != e);
            return Err((error, made));
        }
        made.endpoints.push(e.clone());
    }
    step!(set_limits(nl, plan, record, file).await);
    Ok(())
}

/// Sets the plan's limits with the record saying "raised by mptcpify" for as long as they may
/// be: before raising them, and until after putting them back. A run killed in between leaves
/// a record that claims limits the kernel may not have yet (checked and put back by the next
/// run), never raised limits that no record claims and nobody would lower.
async fn set_limits(nl: &Netlink, plan: &Plan, record: &mut Record, file: &RecordFile) -> Result<()> {
    let previous = record.limits;
    let putting_back = plan.raised.is_none();
    if let Some(raised) = plan.raised {
        // Moving from limits it raised to others: both claimed until the kernel has the new.
        let moving_from = previous.map(|p| p.set).filter(|set| *set != raised.set);
        record.limits = Some(RaisedLimits { moving_from, ..raised });
        file.save(record)?;
    }
    if let Some(limits) = plan.limits
        && let Err(e) = endpoints::set_limits(nl, limits).await
    {
        record.limits = previous;
        return Err(e);
    }
    if putting_back {
        record.limits = None;
        file.save(record)?;
    } else if record.limits != plan.raised {
        record.limits = plan.raised;
        file.save(record)?;
    }
    Ok(())
}

impl Made {
    /// Best effort: each failure is logged, and what is left is what the record says.
    async fn take_back(self, nl: &Netlink, record: &mut Record, file: &RecordFile) {
        for e in &self.endpoints {
            if let Err(err) = endpoints::remove(nl, e).await {
                log::warn!("taking back endpoint {}: {err:#}", e.ip);
                continue;
            }
            record.endpoints.retain(|m| m != e);
        }
        for r in &self.rules {
            if let Err(err) = routing::remove_rule(nl, r).await {
                log::warn!("taking back a rule: {err:#}");
            }
        }
        for r in &self.routes {
            if let Err(err) = routing::remove_route(nl, r).await {
                log::warn!("taking back a route: {err:#}");
            }
        }
        if let Err(err) = file.save(record) {
            log::warn!("writing {}: {err:#}", file.path().display());
        }
    }
}
