//! Prometheus text exposition (prometheus-client) and the health endpoints, served over HTTP/1
//! (hyper). Kernel figures (rule hits, counters) are read from the pinned maps at each scrape, so
//! they are exact and survive agent restarts.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use mptcpify_common::Counter;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::ConstCounter,
        gauge::ConstGauge,
    },
    registry::Registry,
};

use super::desired::PodCoverage;
use crate::{
    rules::{Action, Key, RuleStore as _, comm_str, owner_name},
    state::{self, State},
    targets,
};

/// What the agent loop reports about itself; the HTTP side only reads it.
#[derive(Debug, Default, Clone)]
pub struct Health {
    pub attached: bool,
    /// A reconcile succeeded (and, with `--kubernetes`, after the first pod list).
    pub ready: bool,
    pub policy_valid: bool,
    pub reconcile_runs: u64,
    pub reconcile_errors: u64,
    pub conflicts: usize,
    pub pending: usize,
    pub kubernetes_synced: Option<bool>,
    pub pods: Vec<PodCoverage>,
    /// Why the agent is not ready, for `/readyz`.
    pub not_ready_reason: String,
}

pub type SharedHealth = Arc<Mutex<Health>>;

/// One rule as exported.
#[derive(Debug)]
struct RuleRow {
    action: Action,
    kind: &'static str,
    key: String,
    target: String,
    owner: &'static str,
    hits: u64,
}

/// Everything one scrape shows, read at once.
#[derive(Debug)]
struct Snapshot {
    health: Health,
    counters: Vec<(Counter, u64)>,
    rules: Vec<RuleRow>,
}

fn snapshot(health: &SharedHealth) -> Snapshot {
    let health = health.lock().expect("health lock").clone();
    let mut snap = Snapshot { health, counters: Vec::new(), rules: Vec::new() };
    if !state::is_loaded() {
        snap.health.attached = false;
        return snap;
    }
    let Ok(st) = State::open() else { return snap };
    snap.counters = st.counters().unwrap_or_default();
    for (key, rule) in st.entries().unwrap_or_default() {
        let (key_text, target) = match key {
            Key::Cgroup(id) => {
                (id.to_string(), st.origin(id).map(|o| targets::origin_label(&o)).unwrap_or_default())
            }
            Key::Pid(p) => (p.to_string(), String::new()),
            Key::Comm(c) => (comm_str(&c), String::new()),
            Key::Uid(u) => (u.to_string(), String::new()),
            Key::All => (String::new(), "all processes".into()),
        };
        snap.rules.push(RuleRow {
            action: Action::from_code(rule.action),
            kind: key.kind().name(),
            key: key_text,
            target,
            owner: owner_name(rule.owner),
            hits: rule.hits,
        });
    }
    snap
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.health;
        let gauge = |e: &mut DescriptorEncoder, name: &str, help: &str, v: i64| -> Result<(), std::fmt::Error> {
            ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
        };
        let counter = |e: &mut DescriptorEncoder, name: &str, help: &str, v: u64| -> Result<(), std::fmt::Error> {
            ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
        };
        gauge(&mut e, "mptcpify_program_attached", "1 when the kernel program is attached to update_socket_protocol", h.attached as i64)?;
        gauge(&mut e, "mptcpify_policy_valid", "1 when the policy file last read was valid (an invalid one is not applied)", h.policy_valid as i64)?;
        counter(&mut e, "mptcpify_reconcile_runs", "Reconciliations of the wanted rules with the kernel's", h.reconcile_runs)?;
        counter(&mut e, "mptcpify_reconcile_errors", "Reconciliations that failed or left something unresolved", h.reconcile_errors)?;
        gauge(&mut e, "mptcpify_reconcile_conflicts", "Wanted rules that conflict with a CLI rule or each other (last run)", h.conflicts as i64)?;
        gauge(&mut e, "mptcpify_pending_cgroups", "Wanted cgroups that do not exist yet (watched)", h.pending as i64)?;

        let mut m = e.encode_descriptor(
            "mptcpify_sockets",
            "TCP sockets the kernel program decided, by decision",
            None,
            MetricType::Counter,
        )?;
        let get = |c: Counter| self.counters.iter().find(|(k, _)| *k == c).map_or(0, |(_, v)| *v);
        let upgraded: u64 = [Counter::UpgradedByPid, Counter::UpgradedByCgroup, Counter::UpgradedByComm, Counter::UpgradedByUid, Counter::UpgradedByAll]
            .into_iter()
            .map(get)
            .sum();
        for (decision, v) in [
            ("upgraded", upgraded),
            ("excluded", get(Counter::Excluded)),
            ("kept_tcp_mptcp_disabled", get(Counter::KeptTcpMptcpDisabled)),
        ] {
            ConstCounter::new(v).encode(m.encode_family(&[("decision", decision)])?)?;
        }
        drop(m);
        counter(&mut e, "mptcpify_tcp_socket_calls", "socket() calls that could be upgraded (INET/INET6 stream, protocol 0 or TCP)", get(Counter::TcpCandidates))?;

        let mut m = e.encode_descriptor("mptcpify_rules", "Rules loaded, by action, kind and owner", None, MetricType::Gauge)?;
        let mut groups: std::collections::BTreeMap<(&str, &str, &str), i64> = Default::default();
        for r in &self.rules {
            *groups.entry((action_name(r.action), r.kind, r.owner)).or_default() += 1;
        }
        for ((action, kind, owner), n) in groups {
            ConstGauge::new(n).encode(m.encode_family(&[("action", action), ("kind", kind), ("owner", owner)])?)?;
        }
        drop(m);

        let mut m = e.encode_descriptor(
            "mptcpify_rule_sockets",
            "Sockets each rule decided: upgraded (enable rules) or declined (exclude rules)",
            None,
            MetricType::Counter,
        )?;
        for r in &self.rules {
            let decision = if r.action == Action::Enable { "upgraded" } else { "declined" };
            let labels = [
                ("action", action_name(r.action).to_owned()),
                ("kind", r.kind.to_owned()),
                ("key", r.key.clone()),
                ("target", r.target.clone()),
                ("owner", r.owner.to_owned()),
                ("decision", decision.to_owned()),
            ];
            ConstCounter::new(r.hits).encode(m.encode_family(&labels)?)?;
        }
        drop(m);

        if let Some(synced) = h.kubernetes_synced {
            gauge(&mut e, "mptcpify_kubernetes_synced", "1 once the node's pods and the namespaces were listed", synced as i64)?;
            let mut m = e.encode_descriptor(
                "mptcpify_pod_enabled",
                "Selected pods on this node: 1 when their cgroup is enabled, 0 while it does not exist yet",
                None,
                MetricType::Gauge,
            )?;
            for p in &h.pods {
                let labels = [("namespace", p.namespace.as_str()), ("pod", p.name.as_str())];
                ConstGauge::new(p.cgroup.is_some() as i64).encode(m.encode_family(&labels)?)?;
            }
            drop(m);
            let mut m = e.encode_descriptor(
                "mptcpify_pod_sockets_upgraded",
                "Sockets upgraded by each selected pod's cgroup rule",
                None,
                MetricType::Counter,
            )?;
            for p in &h.pods {
                let Some(id) = p.cgroup else { continue };
                let hits = self.rules.iter().find(|r| r.kind == "cgroup" && r.key == id.to_string()).map_or(0, |r| r.hits);
                let labels = [("namespace", p.namespace.as_str()), ("pod", p.name.as_str())];
                ConstCounter::new(hits).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Enable => "enable",
        Action::Exclude => "exclude",
    }
}

/// The exposition text for one scrape.
pub fn render(health: &SharedHealth) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot(health)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

fn respond(health: &SharedHealth, path: &str) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" => (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", render(health)),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let h = health.lock().expect("health lock");
            if h.ready && h.attached {
                (StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {}\n", h.not_ready_reason))
            }
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /healthz, /readyz\n".into()),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("a static response is valid")
}

/// Binds `addr` (an error here stops the agent before it changes anything) and serves in the
/// background.
pub async fn serve(addr: SocketAddr, health: SharedHealth) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr} (is another agent running? pick another --metrics-addr)"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let health = health.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let resp = respond(&health, req.uri().path());
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_without_a_loaded_program_shows_health() {
        let h: SharedHealth = Arc::new(Mutex::new(Health {
            policy_valid: true,
            reconcile_runs: 3,
            reconcile_errors: 1,
            kubernetes_synced: Some(true),
            pods: vec![PodCoverage { namespace: "shop".into(), name: "web".into(), cgroup: None }],
            ..Default::default()
        }));
        let text = render(&h);
        for line in [
            "mptcpify_program_attached 0",
            "mptcpify_policy_valid 1",
            "mptcpify_reconcile_runs_total 3",
            "mptcpify_reconcile_errors_total 1",
            "mptcpify_pod_enabled{namespace=\"shop\",pod=\"web\"} 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        assert_eq!(respond(&h, "/readyz").status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(respond(&h, "/healthz").status(), StatusCode::OK);
        assert_eq!(respond(&h, "/nope").status(), StatusCode::NOT_FOUND);
        h.lock().unwrap().ready = true;
        h.lock().unwrap().attached = true;
        assert_eq!(respond(&h, "/readyz").status(), StatusCode::OK);
    }
}
