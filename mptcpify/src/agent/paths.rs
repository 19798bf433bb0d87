//! The policy's `[paths]`: `paths auto` kept in force in the agent's network namespace. It is
//! applied at start, when the options change, when rtnetlink reports a link, address or route
//! change (no polling: a new address has its endpoint a [`DEBOUNCE`] later), and every
//! [`RECHECK_EVERY`] for endpoints others removed. When `[paths]` leaves the policy, what the
//! agent made is cleared.
use std::{collections::BTreeMap, path::Path, time::Duration};

use futures::StreamExt as _;
use rtnetlink::MulticastGroup;
use tokio::{sync::watch, time::Instant};

use super::metrics::{PathsHealth, SharedHealth};
use crate::paths::{
    apply,
    connection::{Netlink, Netns, in_netns},
    plan::{AutoOptions, Note, Plan, PlanError},
    read,
    record::{KeptBy, RECORD_DIR, RecordFile},
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

pub fn spawn(options: watch::Receiver<Option<AutoOptions>>, health: SharedHealth, netns: Netns) {
    tokio::spawn(async move {
        if let Err(e) = keep(options, health.clone(), netns).await {
            let error = format!("{e:#}");
            log::error!("paths: stopped: {error}");
            health.lock().expect("health lock").paths = Some(PathsHealth { error: Some(error), ..Default::default() });
        }
    });
}

/// Where `[paths]` keeps paths: on a host the agent's own namespace; in a DaemonSet the node's
/// (PID 1's, seen with hostPID: the chart's nodePaths), the agent's own being its pod's. (Run
/// without hostPID, PID 1 is the pod's own and so are the paths: the chart refuses `[paths]`
/// without nodePaths.)
pub fn netns(kubernetes: bool) -> Netns {
    if kubernetes { Netns::File(NODE_NETNS.into()) } else { Netns::Current }
}

const NODE_NETNS: &str = "/proc/1/ns/net";

/// The namespace's netlink sockets and its change notifications, opened once there is
/// something to keep: `[paths]` in the policy, or a record saying an earlier agent's `[paths]`
/// made something (on a node with podPaths alone, nothing of the node's is watched). A failure
/// to open is reported and tried again, later and later.
async fn open(
    netns: &Netns,
    options: &mut watch::Receiver<Option<AutoOptions>>,
    health: &SharedHealth,
) -> Option<(Netlink, Events)> {
    let earlier = RecordFile::all(Path::new(RECORD_DIR)).iter().any(|(_, r)| r.kept_by == Some(KeptBy::AgentPaths));
    let mut wait = RETRY_AFTER;
    loop {
        if !earlier && options.borrow().is_none() && options.wait_for(Option::is_some).await.is_err() {
            return None;
        }
        let opened = match in_netns(netns, || Ok(rtnetlink::new_multicast_connection(&GROUPS)?)) {
            Ok((connection, _, events)) => Netlink::open(netns).await.map(|nl| (nl, connection, events)),
            Err(e) => Err(e),
        };
        match opened {
            Ok((nl, connection, events)) => {
                tokio::spawn(connection);
                return Some((nl, events));
            }
            Err(e) => {
                let error = format!("{e:#} (tried again in {} s)", wait.as_secs());
                log::warn!("paths: {error}");
                health.lock().expect("health lock").paths =
                    Some(PathsHealth { error: Some(error), ..Default::default() });
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RECHECK_EVERY);
            }
        }
    }
}

type Events = futures::channel::mpsc::UnboundedReceiver<(
    netlink_packet_core::NetlinkMessage<netlink_packet_route::RouteNetlinkMessage>,
    netlink_sys::SocketAddr,
)>;

async fn keep(
    mut options: watch::Receiver<Option<AutoOptions>>,
    health: SharedHealth,
    netns: Netns,
) -> anyhow::Result<()> {
    let Some((nl, mut events)) = open(&netns, &mut options, &health).await else { return Ok(()) };
    // An earlier agent's [paths] (before a restart or a rollout) is cleared if the policy no
    // longer has it; a record that cannot be read is taken for one (the pass says why).
    let record = RecordFile::for_netns(nl.inode).load().map(|r| r.for_namespace(nl.cookie));
    let earlier = record.is_err() || record.is_ok_and(|r| r.kept_by == Some(KeptBy::AgentPaths));
    let kept = earlier.then(AutoOptions::default);
    let mut keeper = Keeper { nl, kept, last_error: None, last_notes: Vec::new(), health };
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
            Some((event, _)) = events.next() => {
                if matters(&event) {
                    due.get_or_insert(Instant::now() + DEBOUNCE);
                }
            }
            _ = recheck.tick() => { due.get_or_insert(Instant::now()); }
            _ = tokio::time::sleep_until(wake), if due.is_some() => {
                let wanted = options.borrow_and_update().clone();
                due = keeper.pass(wanted).await;
            }
        }
    }
}

/// Links and addresses always; routes only where `paths` reads them (a BGP host's churn
/// through its full tables wakes nothing).
fn matters(event: &netlink_packet_core::NetlinkMessage<netlink_packet_route::RouteNetlinkMessage>) -> bool {
    use netlink_packet_route::RouteNetlinkMessage::{DelRoute, NewRoute};
    match &event.payload {
        netlink_packet_core::NetlinkPayload::InnerMessage(NewRoute(m) | DelRoute(m)) => read::route_matters(m),
        _ => true,
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
            (Some(opts), _) => apply::auto(&self.nl, opts, "the agent's [paths]", Some(KeptBy::AgentPaths)).await,
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
