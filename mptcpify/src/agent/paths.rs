//! The policy's `[paths]`: `paths auto` kept in force in the agent's network namespace. It is
//! applied at start, when the options change, when rtnetlink reports a link, address or route
//! change (no polling: a new address has its endpoint a [`DEBOUNCE`] later), and every
//! [`RECHECK_EVERY`] for endpoints others removed. When `[paths]` leaves the policy, what the
//! agent made is cleared.
use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt as _;
use rtnetlink::MulticastGroup;
use tokio::{sync::watch, time::Instant};

use super::metrics::{PathsHealth, SharedHealth};
use crate::paths::{
    apply,
    connection::{Netlink, Netns},
    plan::{AutoOptions, Note, Plan, PlanError},
    report::{self, Owner},
};

/// Changes come in bursts (an address, then its prefix route): one pass after the last.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
pub const RECHECK_EVERY: Duration = Duration::from_secs(30);
const RETRY_AFTER: Duration = Duration::from_secs(1);

const GROUPS: [MulticastGroup; 5] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
];

pub fn spawn(options: watch::Receiver<Option<AutoOptions>>, health: SharedHealth) {
    tokio::spawn(async move {
        if let Err(e) = keep(options, health).await {
            log::error!("paths: stopped: {e:#}");
        }
    });
}

async fn keep(mut options: watch::Receiver<Option<AutoOptions>>, health: SharedHealth) -> anyhow::Result<()> {
    let (connection, _, mut events) = rtnetlink::new_multicast_connection(&GROUPS)?;
    tokio::spawn(connection);
    let nl = Netlink::open(&Netns::Current).await?;
    let mut keeper = Keeper { nl, kept: None, last_error: None, last_notes: Vec::new(), health };
    let mut recheck = tokio::time::interval_at(Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
    let mut due = Some(Instant::now());
    loop {
        let wake = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            changed = options.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                due = Some(Instant::now());
            }
            Some(_) = events.next() => { due.get_or_insert(Instant::now() + DEBOUNCE); }
            _ = recheck.tick() => { due.get_or_insert(Instant::now()); }
            _ = tokio::time::sleep_until(wake), if due.is_some() => {
                let wanted = options.borrow_and_update().clone();
                due = keeper.pass(wanted).await;
            }
        }
    }
}

struct Keeper {
    nl: Netlink,
    /// The options last applied; `None` while the agent holds nothing to clear.
    kept: Option<AutoOptions>,
    last_error: Option<String>,
    /// The notes of the last pass, logged when they change.
    last_notes: Vec<Note>,
    health: SharedHealth,
}

impl Keeper {
    /// One pass; returns when to try again if it failed for a reason that may pass.
    async fn pass(&mut self, wanted: Option<AutoOptions>) -> Option<Instant> {
        let result = match (&wanted, &self.kept) {
            (Some(opts), _) => apply::auto(&self.nl, opts, "the agent's [paths]").await,
            (None, Some(_)) => apply::clear(&self.nl).await,
            (None, None) => return None,
        };
        match result {
            Ok(plan) => {
                log_changes(&plan);
                if plan.notes != self.last_notes {
                    for note in &plan.notes {
                        log::info!("paths: {}", note.text());
                    }
                    self.last_notes = plan.notes.clone();
                }
                self.last_error = None;
                self.kept = wanted;
                self.report().await;
                None
            }
            Err(e) => {
                let text = format!("{e:#}");
                if self.last_error.as_ref() != Some(&text) {
                    log::warn!("paths: {text}");
                }
                self.last_error = Some(text);
                self.report().await;
                // A refusal (another path manager, an unknown interface) waits for a change.
                (e.downcast_ref::<PlanError>().is_none()).then(|| Instant::now() + RETRY_AFTER)
            }
        }
    }

    async fn report(&self) {
        let mut paths = PathsHealth { error: self.last_error.clone(), ..Default::default() };
        match report::view(&self.nl).await {
            Ok(view) => {
                let mut endpoints = BTreeMap::new();
                for e in &view.endpoints {
                    let owner = if e.owner == Owner::Mptcpify { "mptcpify" } else { "other" };
                    for flag in &e.flag_names {
                        *endpoints.entry((*flag, owner)).or_insert(0) += 1;
                    }
                }
                paths.endpoints = endpoints;
                paths.unroutable = view.unroutable().count();
            }
            Err(e) => log::warn!("paths: reading them back: {e:#}"),
        }
        self.health.lock().expect("health lock").paths = Some(paths);
    }
}

fn log_changes(plan: &Plan) {
    for e in &plan.add_endpoints {
        log::info!("paths: endpoint {} id {} {}", e.ip, e.id, e.flags.names().join(" "));
    }
    for e in &plan.remove_endpoints {
        log::info!("paths: removed endpoint {} id {}", e.ip, e.id);
    }
    if let Some(l) = plan.limits {
        log::info!("paths: limits subflows {} add_addr_accepted {}", l.subflows, l.add_addr_accepted);
    }
    let routing = plan.add_rules.len() + plan.add_routes.len() + plan.remove_rules.len() + plan.remove_routes.len();
    if routing > 0 {
        log::info!("paths: source routing: {routing} rule(s)/route(s) changed");
    }
}
