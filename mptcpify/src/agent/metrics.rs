//! Prometheus text exposition (prometheus-client) and the health endpoints' answers (served by
//! [`super::http`]). Kernel figures (rule hits, counters) are read from the pinned maps at each scrape, so
//! they are exact and survive agent restarts.
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::{Response, StatusCode, body::Bytes};
use mptcpify_common::{Counter, Outcomes, RuleKind};

use crate::commands::guard::GuardStatus;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::{desired::PodCoverage, namespaces::Namespaces};
use crate::{
    connections::mib,
    state::{
        maps::State,
        pins,
        rules::{Action, Key, Owner, RuleStore as _, comm_str},
    },
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
    /// Wanted rules the kernel does not hold as wanted (after the last pass); 0 when ready.
    pub missing_rules: usize,
    /// Pods of this node refused because their UID or cgroup path is not of kubelet's forms.
    pub refused_pods: usize,
    /// Why the agent is not ready, for `/readyz`.
    pub not_ready_reason: String,
    /// Present while the policy has `[paths]` (or had, until cleared).
    pub paths: Option<PathsHealth>,
    /// The upgraded workloads' namespaces, as the last scan found them.
    pub namespaces: Namespaces,
}

/// What the `[paths]` keeper found after its last pass.
#[derive(Debug, Default, Clone)]
pub struct PathsHealth {
    /// Endpoints by flag and owner (`mptcpify` or `other`).
    pub endpoints: std::collections::BTreeMap<(&'static str, &'static str), i64>,
    /// Subflow endpoints whose subflows would not leave through their own interface.
    pub unroutable: usize,
    pub error: Option<String>,
}

pub type SharedHealth = Arc<Mutex<Health>>;

/// One rule as exported.
#[derive(Debug)]
struct RuleRow {
    action: Action,
    key: Key,
    target: String,
    owner: Owner,
    hits: u64,
    /// What became of its upgraded connections (enable rules, while tracking is on).
    outcomes: Option<Outcomes>,
}

impl RuleRow {
    /// The key as a label value: the id, pid, uid or command name; empty for `all`.
    fn key_label(&self) -> String {
        match self.key {
            Key::Cgroup(id) => id.to_string(),
            Key::Pid(p) | Key::Uid(p) => p.to_string(),
            Key::Comm(c) => comm_str(&c),
            Key::All => String::new(),
        }
    }

    /// The labels every per-rule series carries, then `extra`.
    fn labels(&self, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut labels = vec![
            ("action", self.action.name().to_owned()),
            ("kind", self.key.kind().name().to_owned()),
            ("key", self.key_label()),
            ("target", self.target.clone()),
            ("owner", self.owner.name().to_owned()),
        ];
        labels.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        labels
    }
}

/// Connections by outcome and fallback reason, as the connection metrics label them.
fn connection_rows(o: &Outcomes) -> [(&'static str, &'static str, u64); 4] {
    [
        ("mptcp", "", o.mptcp),
        ("fallback", "peer", o.fallback_peer),
        ("fallback", "client", o.fallback_client),
        ("failed", "", o.connect_failed),
    ]
}

/// Everything one scrape shows, read at once.
#[derive(Debug)]
struct Snapshot {
    health: Health,
    counters: Vec<(Counter, u64)>,
    rules: Vec<RuleRow>,
    /// The compatibility guard, while loaded.
    guard: Option<GuardStatus>,
}

fn snapshot(health: &SharedHealth) -> Snapshot {
    let health = health.lock().expect("health lock").clone();
    let mut snap = Snapshot { health, counters: Vec::new(), rules: Vec::new(), guard: None };
    if !pins::is_loaded() {
        snap.health.attached = false;
        return snap;
    }
    let Ok(st) = State::open() else { return snap };
    snap.counters = st.counters().unwrap_or_default();
    let tracking = st.config().is_ok_and(|c| c.outcomes != 0);
    let outcomes = st.outcomes().unwrap_or_default();
    for (key, rule) in st.entries().unwrap_or_default() {
        let target = match key {
            Key::Cgroup(id) => st.origin(id).map(|o| o.to_string()).unwrap_or_default(),
            Key::All => "all processes".into(),
            _ => String::new(),
        };
        let action = Action::from_code(rule.action);
        snap.rules.push(RuleRow {
            action,
            key,
            target,
            owner: Owner::from_code(rule.owner),
            hits: rule.hits,
            outcomes: (tracking && action == Action::Enable)
                .then(|| outcomes.get(&key.rule_ref()).copied().unwrap_or_default()),
        });
    }
    snap.guard = crate::commands::guard::guard_status(&st).ok();
    snap
}

type EncodeResult = Result<(), std::fmt::Error>;

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> EncodeResult {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> EncodeResult {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> EncodeResult {
        self.encode_health(&mut e)?;
        self.encode_sockets(&mut e)?;
        self.encode_rules(&mut e)?;
        self.encode_outcomes(&mut e)?;
        self.encode_guard(&mut e)?;
        self.encode_namespaces(&mut e)?;
        if let Some(paths) = &self.health.paths {
            encode_paths(paths, &mut e)?;
        }
        if let Some(synced) = self.health.kubernetes_synced {
            gauge(
                &mut e,
                "mptcpify_kubernetes_synced",
                "1 once the node's pods and the namespaces were listed",
                synced as i64,
            )?;
            gauge(
                &mut e,
                "mptcpify_pods_refused",
                "Pods of this node never enabled because their UID or cgroup path is not one kubelet makes",
                self.health.refused_pods as i64,
            )?;
            self.encode_pods(&mut e)?;
        }
        Ok(())
    }
}

impl Snapshot {
    fn counter_value(&self, c: Counter) -> u64 {
        self.counters.iter().find(|(k, _)| *k == c).map_or(0, |(_, v)| *v)
    }

    fn encode_health(&self, e: &mut DescriptorEncoder) -> EncodeResult {
        let h = &self.health;
        gauge(
            e,
            "mptcpify_program_attached",
            "1 when the kernel program is attached to update_socket_protocol",
            h.attached as i64,
        )?;
        gauge(
            e,
            "mptcpify_policy_valid",
            "1 when the policy file last read was valid (an invalid one is not applied)",
            h.policy_valid as i64,
        )?;
        counter(
            e,
            "mptcpify_reconcile_runs",
            "Reconciliations of the wanted rules with the kernel's",
            h.reconcile_runs,
        )?;
        counter(
            e,
            "mptcpify_reconcile_errors",
            "Reconciliations that failed or left something unresolved",
            h.reconcile_errors,
        )?;
        gauge(
            e,
            "mptcpify_reconcile_conflicts",
            "Wanted rules that conflict with a CLI rule or each other (last run)",
            h.conflicts as i64,
        )?;
        gauge(e, "mptcpify_pending_cgroups", "Wanted cgroups that do not exist yet (watched)", h.pending as i64)?;
        gauge(
            e,
            "mptcpify_rules_missing",
            "Wanted rules the kernel does not hold as wanted after the last reconciliation (not ready while above 0)",
            h.missing_rules as i64,
        )
    }

    /// The program's counters: decisions, and the calls that could have been upgraded.
    fn encode_sockets(&self, e: &mut DescriptorEncoder) -> EncodeResult {
        let upgraded: u64 = [RuleKind::Pid, RuleKind::Cgroup, RuleKind::Comm, RuleKind::Uid, RuleKind::All]
            .into_iter()
            .map(|k| self.counter_value(Counter::upgraded_by(k)))
            .sum();
        let mut m = e.encode_descriptor(
            "mptcpify_sockets",
            "TCP sockets the kernel program decided, by decision",
            None,
            MetricType::Counter,
        )?;
        for (decision, v) in [
            ("upgraded", upgraded),
            (Counter::Excluded.name(), self.counter_value(Counter::Excluded)),
            (Counter::KeptTcpMptcpDisabled.name(), self.counter_value(Counter::KeptTcpMptcpDisabled)),
            (Counter::WouldUpgrade.name(), self.counter_value(Counter::WouldUpgrade)),
        ] {
            ConstCounter::new(v).encode(m.encode_family(&[("decision", decision)])?)?;
        }
        counter(
            e,
            "mptcpify_tcp_socket_calls",
            "socket() calls that could be upgraded (INET/INET6 stream, protocol 0 or TCP)",
            self.counter_value(Counter::TcpCandidates),
        )
    }

    /// Rules by action, kind and owner, and each rule's hits.
    fn encode_rules(&self, e: &mut DescriptorEncoder) -> EncodeResult {
        let mut groups: std::collections::BTreeMap<(&str, &str, &str), i64> = Default::default();
        for r in &self.rules {
            *groups.entry((r.action.name(), r.key.kind().name(), r.owner.name())).or_default() += 1;
        }
        let mut m =
            e.encode_descriptor("mptcpify_rules", "Rules loaded, by action, kind and owner", None, MetricType::Gauge)?;
        for ((action, kind, owner), n) in groups {
            ConstGauge::new(n).encode(m.encode_family(&[("action", action), ("kind", kind), ("owner", owner)])?)?;
        }
        let mut m = e.encode_descriptor(
            "mptcpify_rule_sockets",
            "Sockets each rule decided: upgraded (enable rules), declined (exclude rules) or would_upgrade (audit rules)",
            None,
            MetricType::Counter,
        )?;
        for r in &self.rules {
            let decision = match r.action {
                Action::Enable => "upgraded",
                Action::Exclude => "declined",
                Action::Audit => "would_upgrade",
            };
            ConstCounter::new(r.hits).encode(m.encode_family(&r.labels(&[("decision", decision)]))?)?;
        }
        Ok(())
    }

    /// What became of each enable rule's upgraded connections, and their extra subflows.
    fn encode_outcomes(&self, e: &mut DescriptorEncoder) -> EncodeResult {
        let tracked: Vec<(&RuleRow, &Outcomes)> =
            self.rules.iter().filter_map(|r| r.outcomes.as_ref().map(|o| (r, o))).collect();
        let mut m = e.encode_descriptor(
            "mptcpify_connections",
            "Upgraded connections by outcome: mptcp, fallback (reason peer: the peer answered without MPTCP; \
             client: the client did not offer it), failed (never established)",
            None,
            MetricType::Counter,
        )?;
        for (r, o) in &tracked {
            for (outcome, reason, n) in connection_rows(o) {
                let labels = r.labels(&[("outcome", outcome), ("reason", reason)]);
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = e.encode_descriptor(
            "mptcpify_subflows",
            "Extra subflows (MP_JOIN) of upgraded connections: established, or failed before that",
            None,
            MetricType::Counter,
        )?;
        for (r, o) in &tracked {
            for (result, n) in [("established", o.subflows), ("failed", o.subflows_failed)] {
                ConstCounter::new(n).encode(m.encode_family(&r.labels(&[("result", result)]))?)?;
            }
        }
        Ok(())
    }

    /// The rule a guard row names: by kind and key, and for command rules (all of key 0) by the
    /// program, which is the rule's command name.
    fn rule_named(&self, kind: &str, key: u64, program: &str) -> Option<&RuleRow> {
        self.rules.iter().find(|r| match r.key {
            Key::Comm(c) => kind == RuleKind::Comm.name() && comm_str(&c) == program,
            k => k.kind().name() == kind && k.rule_ref().key == key,
        })
    }

    /// The compatibility guard: options refused on upgraded sockets, programs kept TCP.
    fn encode_guard(&self, e: &mut DescriptorEncoder) -> EncodeResult {
        let Some(g) = &self.guard else { return Ok(()) };
        gauge(
            e,
            "mptcpify_guard_enabled",
            "1 while programs that had an option refused are kept TCP",
            g.enabled as i64,
        )?;
        for (name, help, predicted) in [
            (
                "mptcpify_option_refusals",
                "Socket option calls refused on upgraded sockets because they are MPTCP, by rule, program and option",
                false,
            ),
            (
                "mptcpify_option_would_fail",
                "Socket option calls on sockets an audit rule left TCP that MPTCP would refuse, by rule, program and \
                 option: what enforcing the rule would break (the guard keeps these programs TCP)",
                true,
            ),
        ] {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for f in g.refusals.iter().filter(|f| f.predicted == predicted) {
                let Some(r) = self.rule_named(f.rule_kind, f.rule_key, &f.program) else { continue };
                let labels = r.labels(&[("program", &f.program), ("call", f.call), ("option", &f.option)]);
                ConstCounter::new(f.count).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = e.encode_descriptor(
            "mptcpify_guard_kept_tcp",
            "Programs the guard keeps TCP within a rule (1), with the option that was refused",
            None,
            MetricType::Gauge,
        )?;
        for k in &g.kept_tcp {
            let Some(r) = self.rule_named(k.rule_kind, k.rule_key, &k.program) else { continue };
            let labels = r.labels(&[("program", &k.program), ("option", &k.option)]);
            ConstGauge::new(1).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// The kernel's MPTCP counters of each namespace holding an upgraded workload.
    fn encode_namespaces(&self, e: &mut DescriptorEncoder) -> EncodeResult {
        let mut m = e.encode_descriptor(
            "mptcpify_netns_mptcp",
            "The kernel's MPTcpExt counters (all connections) of each network namespace an upgraded workload is in",
            None,
            MetricType::Counter,
        )?;
        let rows = &self.health.namespaces.rows;
        for ns in rows.iter().map(|r| &r.counters) {
            let (netns, pods) = (ns.netns.to_string(), ns.pods.join(","));
            for name in mib::SHOWN {
                let Some(v) = ns.mptcp.get(name) else { continue };
                let labels = [("netns", netns.as_str()), ("pods", pods.as_str()), ("counter", name)];
                ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = e.encode_descriptor(
            "mptcpify_blackhole_active",
            "1 while the kernel of this namespace avoids MPTCP after finding a blackhole: its Blackhole counter rose, \
             as this agent saw it, within the namespace's net.mptcp.blackhole_timeout",
            None,
            MetricType::Gauge,
        )?;
        for row in rows {
            let (netns, pods) = (row.counters.netns.to_string(), row.counters.pods.join(","));
            let labels = [("netns", netns.as_str()), ("pods", pods.as_str())];
            ConstGauge::new(row.blackhole_active as i64).encode(m.encode_family(&labels)?)?;
        }
        gauge(
            e,
            "mptcpify_pods_unseen",
            "Selected pods whose processes run where the agent cannot see them (it needs hostPID): their namespaces \
             are missing from mptcpify_netns_mptcp and mptcpify_blackhole_active",
            self.health.namespaces.unseen_pods as i64,
        )?;
        Ok(())
    }

    /// The selected pods of this node: covered or not, and what their rule upgraded.
    fn encode_pods(&self, e: &mut DescriptorEncoder) -> EncodeResult {
        let pods = &self.health.pods;
        let mut m = e.encode_descriptor(
            "mptcpify_pod_enabled",
            "Selected pods on this node: 1 when their cgroup is enabled, 0 while it does not exist yet",
            None,
            MetricType::Gauge,
        )?;
        for p in pods {
            let labels = [("namespace", p.namespace.as_str()), ("pod", p.name.as_str())];
            ConstGauge::new(p.cgroup.is_some() as i64).encode(m.encode_family(&labels)?)?;
        }
        let rule_of = |p: &PodCoverage| p.cgroup.and_then(|id| self.rules.iter().find(|r| r.key == Key::Cgroup(id)));
        for (name, help, action) in [
            ("mptcpify_pod_sockets_upgraded", "Sockets upgraded by each selected pod's cgroup rule", Action::Enable),
            (
                "mptcpify_pod_sockets_would_upgrade",
                "Sockets each audited pod's rule would have upgraded (left TCP)",
                Action::Audit,
            ),
        ] {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in pods {
                let Some(r) = rule_of(p).filter(|r| r.action == action) else { continue };
                let labels = [("namespace", p.namespace.as_str()), ("pod", p.name.as_str())];
                ConstCounter::new(r.hits).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = e.encode_descriptor(
            "mptcpify_pod_connections",
            "Each selected pod's upgraded connections by outcome (mptcp, fallback, failed)",
            None,
            MetricType::Counter,
        )?;
        for p in pods {
            let Some(o) = rule_of(p).and_then(|r| r.outcomes.as_ref()) else { continue };
            for (outcome, reason, n) in connection_rows(o) {
                let labels = [
                    ("namespace", p.namespace.as_str()),
                    ("pod", p.name.as_str()),
                    ("outcome", outcome),
                    ("reason", reason),
                ];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        if let Some(g) = &self.guard {
            let mut m = e.encode_descriptor(
                "mptcpify_pod_guard_kept_tcp",
                "Programs of each selected pod the guard keeps TCP (1), with the option that was refused",
                None,
                MetricType::Gauge,
            )?;
            for p in pods {
                let Some(id) = p.cgroup else { continue };
                for k in g.kept_tcp.iter().filter(|k| k.is_under_cgroup(id)) {
                    let labels = [
                        ("namespace", p.namespace.as_str()),
                        ("pod", p.name.as_str()),
                        ("program", k.program.as_str()),
                        ("option", k.option.as_str()),
                    ];
                    ConstGauge::new(1).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        let mut m = e.encode_descriptor(
            "mptcpify_pod_subflows",
            "Each selected pod's extra subflows: established, or failed before that",
            None,
            MetricType::Counter,
        )?;
        for p in pods {
            let Some(o) = rule_of(p).and_then(|r| r.outcomes.as_ref()) else { continue };
            for (result, n) in [("established", o.subflows), ("failed", o.subflows_failed)] {
                let labels = [("namespace", p.namespace.as_str()), ("pod", p.name.as_str()), ("result", result)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// `[paths]`: the namespace's endpoints and whether their subflows can route.
fn encode_paths(paths: &PathsHealth, e: &mut DescriptorEncoder) -> EncodeResult {
    let mut m = e.encode_descriptor(
        "mptcpify_path_endpoints",
        "MPTCP endpoints of the agent's network namespace, by flag and by who made them",
        None,
        MetricType::Gauge,
    )?;
    for ((flag, owner), n) in &paths.endpoints {
        ConstGauge::new(*n).encode(m.encode_family(&[("flag", *flag), ("owner", *owner)])?)?;
    }
    gauge(
        e,
        "mptcpify_path_unroutable_addresses",
        "Subflow endpoints whose subflows would leave through another interface, or have no route",
        paths.unroutable as i64,
    )?;
    gauge(
        e,
        "mptcpify_paths_failing",
        "1 while the last [paths] pass failed (the agent's log says why)",
        paths.error.is_some() as i64,
    )
}

/// The exposition text for one scrape.
pub fn render(health: &SharedHealth) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot(health)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// The answer to a request for `path`.
pub(super) fn respond(health: &SharedHealth, path: &str) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" => (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", render(health)),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let h = health.lock().expect("health lock");
            if h.ready {
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
            pods: vec![PodCoverage {
                namespace: "shop".into(),
                name: "web".into(),
                uid: None,
                action: crate::state::rules::Action::Enable,
                host_network: false,
                cgroup: None,
                path: None,
            }],
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
