//! Kubernetes Events on a pod when the compatibility guard keeps one of its programs TCP: the
//! pod's owner sees it in `kubectl describe pod` and `kubectl get events`, without node access.
//! Each decision is told once per agent (an agent that restarts tells the standing ones once
//! more); a decision the operator forgot and the guard makes again is told again.
use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::{agent::desired::PodCoverage, commands::guard::KeptTcp, state::rules::Action};

/// `reason` of the Event (PascalCase, as kubelet's own).
pub const REASON: &str = "MptcpKeptTcp";
/// `action` of the Event: what mptcpify did about it.
pub const ACTION: &str = "KeepTcp";

/// One decision about one pod's program, as told. The refused process tells a decision made
/// again (after `guard forget`) from the one before, even between two looks.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Told {
    namespace: String,
    pod: String,
    program: String,
    option: String,
    predicted: bool,
    pid: u32,
}

/// A decision to tell, with the pod it is about.
#[derive(Debug, PartialEq)]
pub struct Tell {
    told: Told,
    pub regarding: ObjectReference,
    pub note: String,
}

/// The decisions about selected pods not told yet: a pod's decisions are those of its cgroup rule.
fn to_tell(pods: &[PodCoverage], kept: &[KeptTcp], told: &BTreeSet<Told>) -> Vec<Tell> {
    let mut out = Vec::new();
    for p in pods {
        let Some(id) = p.cgroup else { continue };
        for k in kept.iter().filter(|k| k.is_under_cgroup(id)) {
            let t = Told {
                namespace: p.namespace.clone(),
                pod: p.name.clone(),
                program: k.program.clone(),
                option: k.option.clone(),
                predicted: k.predicted,
                pid: k.pid,
            };
            if !told.contains(&t) {
                out.push(Tell { told: t, regarding: pod_reference(p), note: note(k, p.action == Action::Audit) });
            }
        }
    }
    out
}

fn pod_reference(p: &PodCoverage) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(p.namespace.clone()),
        name: Some(p.name.clone()),
        uid: p.uid.clone(),
        ..Default::default()
    }
}

/// What the pod's owner reads: which program, why, and how to change it. In an audited pod
/// (where every socket is TCP anyway) it is what enforcing will do.
fn note(k: &KeptTcp, audited: bool) -> String {
    let why = if k.predicted {
        format!("audit saw it {} {}, which MPTCP refuses on this kernel", k.call, k.option)
    } else {
        format!("MPTCP refused its {} {} ({})", k.call, k.option, k.errno)
    };
    let stays = if audited { "will stay TCP in this pod once it is enforced" } else { "stays TCP in this pod" };
    format!(
        "{} {stays}: {why}. Its other sockets keep working as TCP; on the node, \
         `mptcpify guard allow {}` upgrades it anyway",
        k.program, k.program
    )
}

/// The Events told so far, and how to tell more.
pub struct GuardEvents {
    client: Client,
    reporter: Reporter,
    told: Arc<Mutex<BTreeSet<Told>>>,
    /// The Events being recorded: off the agent's loop, so a slow API server delays nothing else.
    in_flight: Option<tokio::task::JoinHandle<()>>,
}

/// How long one Event may take to be recorded before it is tried again at a later look.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

impl GuardEvents {
    pub fn new(client: Client, node: &str) -> Self {
        let reporter = Reporter { controller: "mptcpify".into(), instance: Some(format!("mptcpify-{node}")) };
        Self { client, reporter, told: Default::default(), in_flight: None }
    }

    /// Starts recording each new decision about a selected pod, unless the last ones are still
    /// being recorded; one the API refuses is tried again at a later call.
    pub fn sync(&mut self, pods: &[PodCoverage], kept: &[KeptTcp]) {
        if self.in_flight.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let tells = {
            let mut told = self.told.lock().expect("told lock");
            let standing: BTreeSet<Told> = to_tell(pods, kept, &BTreeSet::new()).into_iter().map(|t| t.told).collect();
            told.retain(|t| standing.contains(t));
            to_tell(pods, kept, &told)
        };
        if tells.is_empty() {
            return;
        }
        let (client, reporter, told) = (self.client.clone(), self.reporter.clone(), self.told.clone());
        self.in_flight = Some(tokio::spawn(async move {
            for tell in tells {
                let event = Event {
                    type_: EventType::Warning,
                    reason: REASON.into(),
                    note: Some(tell.note.clone()),
                    action: ACTION.into(),
                    secondary: None,
                };
                // A recorder of its own: kube's recorder merges Events with the same reason about
                // the same pod into one series, which would hide a second program's note
                // (and needs `patch`: a fresh one only creates).
                let recorder = Recorder::new(client.clone(), reporter.clone());
                let (ns, pod) = (&tell.told.namespace, &tell.told.pod);
                match tokio::time::timeout(PUBLISH_TIMEOUT, recorder.publish(&event, &tell.regarding)).await {
                    Ok(Ok(())) => {
                        log::info!("event on pod {ns}/{pod}: {}", tell.note);
                        told.lock().expect("told lock").insert(tell.told);
                    }
                    Ok(Err(e)) => log::warn!("recording an Event on pod {ns}/{pod}: {e}"),
                    Err(_) => log::warn!("recording an Event on pod {ns}/{pod}: no answer in {PUBLISH_TIMEOUT:?}"),
                }
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, cgroup: Option<u64>) -> PodCoverage {
        PodCoverage {
            namespace: "shop".into(),
            name: name.into(),
            uid: Some(format!("uid-{name}")),
            action: Action::Enable,
            host_network: false,
            cgroup,
            path: None,
        }
    }

    fn kept(program: &str, kind: &'static str, key: u64, predicted: bool) -> KeptTcp {
        KeptTcp {
            program: program.into(),
            rule_kind: kind,
            rule_key: key,
            call: "setsockopt",
            option: "TCP_USER_TIMEOUT".into(),
            errno: if predicted { String::new() } else { "ENOPROTOOPT".into() },
            predicted,
            pid: 7,
            seconds_ago: 1.0,
        }
    }

    #[test]
    fn a_pods_decisions_are_those_of_its_cgroup_rule_told_once() {
        let pods = [pod("web", Some(10)), pod("db", Some(11)), pod("pending", None)];
        let decisions =
            [kept("psql", "cgroup", 11, false), kept("psql", "user", 11, false), kept("curl", "cgroup", 99, true)];
        let tell = to_tell(&pods, &decisions, &BTreeSet::new());
        assert_eq!(tell.len(), 1, "{tell:?}");
        assert_eq!(tell[0].regarding.name.as_deref(), Some("db"));
        assert_eq!(tell[0].regarding.uid.as_deref(), Some("uid-db"));
        assert_eq!(tell[0].regarding.kind.as_deref(), Some("Pod"));
        assert!(
            tell[0]
                .note
                .starts_with("psql stays TCP in this pod: MPTCP refused its setsockopt TCP_USER_TIMEOUT (ENOPROTOOPT)")
        );
        assert!(tell[0].note.contains("mptcpify guard allow psql"));
        let told: BTreeSet<Told> = tell.into_iter().map(|t| t.told).collect();
        assert!(to_tell(&pods, &decisions, &told).is_empty(), "told once");
        let again = [KeptTcp { pid: 8, ..kept("psql", "cgroup", 11, false) }];
        assert_eq!(to_tell(&pods, &again, &told).len(), 1, "decided again, by another process");
    }

    #[test]
    fn a_prediction_says_audit_saw_it_and_an_audited_pod_hears_what_enforcing_will_do() {
        let mut pods = [pod("web", Some(10))];
        let tell = to_tell(&pods, &[kept("psql", "cgroup", 10, true)], &BTreeSet::new());
        let note = &tell[0].note;
        assert!(
            note.starts_with("psql stays TCP in this pod: audit saw it setsockopt TCP_USER_TIMEOUT, which"),
            "{note}"
        );
        pods[0].action = Action::Audit;
        let tell = to_tell(&pods, &[kept("psql", "cgroup", 10, true)], &BTreeSet::new());
        let note = &tell[0].note;
        assert!(note.starts_with("psql will stay TCP in this pod once it is enforced: audit saw it"), "{note}");
    }
}
