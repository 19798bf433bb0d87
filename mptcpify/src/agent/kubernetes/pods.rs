//! Which pods are selected and where kubelet puts their cgroups. Pure: pods arrive already
//! reduced to [`PodInfo`], so every rule here is unit-tested without a cluster.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::{agent::policy::CgroupDriver, state::rules::Action};

/// The annotation (on a pod) and label (on a namespace) that select pods.
pub const SELECT_KEY: &str = "mptcpify.io/enabled";
/// Set by kubelet on the API's copy of a static pod: the UID its cgroup is named after.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// A pod's QoS class, which decides its cgroup's parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// What the agent needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// The API object's UID: what Events about the pod name (`kubectl describe` matches it).
    pub uid: Option<String>,
    /// `spec.hostNetwork`: the pod is on the node's network namespace, whose paths are not the
    /// pod's to have.
    pub host_network: bool,
    /// The UID its cgroup is named after (the mirror UID for static pods).
    pub cgroup_uid: String,
    pub qos: Qos,
    /// Value of the `mptcpify.io/enabled` annotation.
    pub annotation: Option<String>,
    /// Succeeded or Failed: its containers are gone, and so is its cgroup.
    pub finished: bool,
    /// `spec.nodeName`: the watch asks the API server for this node's pods only, and the agent
    /// checks again rather than trust every server and proxy on the way to honour that.
    pub node: Option<String>,
    /// What its selection asks for ([`selection`]): enable, or audit. Enable until selected.
    pub action: Action,
}

/// Why a pod from the API server is not considered: what it says would not name a pod cgroup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodRefused {
    #[error("it has no UID")]
    NoUid,
    #[error(
        "its mirror annotation names the cgroup of UID {0}, which another pod of this node names too and which is \
         not its own: anyone who may create pods can write that annotation"
    )]
    Alias(String),
    #[error("its {field} {value:?} is not a UID kubelet names cgroups after (a UUID or a static pod's config hash)")]
    BadUid {
        field: &'static str,
        /// The first characters only, so a hostile value cannot flood the log.
        value: String,
    },
}

/// kubelet's forms of the UID a pod cgroup is named after: a UUID as the API server assigns
/// it, or a static pod's config hash (an MD5 in hex), lower case.
pub fn is_kubelet_uid(uid: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let uuid = uid.split('-').map(str::len).eq([8, 4, 4, 4, 12]) && uid.split('-').all(hex);
    uuid || (uid.len() == 32 && hex(uid))
}

impl PodInfo {
    /// What the agent needs of `pod`; refused unless its cgroup UID is of kubelet's forms.
    pub fn from_pod(pod: &Pod) -> Result<Self, PodRefused> {
        let meta = &pod.metadata;
        let annotations = meta.annotations.as_ref();
        let (field, uid) = match annotations.and_then(|a| a.get(MIRROR_ANNOTATION)) {
            Some(mirror) => (MIRROR_ANNOTATION, mirror),
            None => ("uid", meta.uid.as_ref().ok_or(PodRefused::NoUid)?),
        };
        if !is_kubelet_uid(uid) {
            return Err(PodRefused::BadUid { field, value: uid.chars().take(64).collect() });
        }
        let uid = uid.clone();
        let status = pod.status.as_ref();
        let qos = match status.and_then(|s| s.qos_class.as_deref()) {
            Some("Guaranteed") => Qos::Guaranteed,
            Some("BestEffort") => Qos::BestEffort,
            Some("Burstable") => Qos::Burstable,
            _ => qos_from_spec(pod),
        };
        Ok(Self {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            host_network: pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false),
            cgroup_uid: uid,
            qos,
            annotation: annotations.and_then(|a| a.get(SELECT_KEY)).cloned(),
            finished: matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            action: Action::Enable,
        })
    }

    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// `pods` (of one node) less those that take another pod's cgroup: when several name the same
/// cgroup UID, only a pod whose own API UID it is keeps it (a static pod's mirror annotation is
/// the pod's word, which anyone who may create pods can write), and when none is, none does.
pub fn refuse_aliases(pods: Vec<PodInfo>) -> (Vec<PodInfo>, Vec<(String, PodRefused)>) {
    let mut claims: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &pods {
        *claims.entry(p.cgroup_uid.as_str()).or_default() += 1;
    }
    let shared: Vec<String> = claims.into_iter().filter(|(_, n)| *n > 1).map(|(uid, _)| uid.to_string()).collect();
    let (kept, aliases): (Vec<PodInfo>, Vec<PodInfo>) = pods
        .into_iter()
        .partition(|p| !shared.contains(&p.cgroup_uid) || p.uid.as_deref() == Some(p.cgroup_uid.as_str()));
    let refused = aliases.into_iter().map(|p| (p.label(), PodRefused::Alias(p.cgroup_uid))).collect();
    (kept, refused)
}

/// kubelet's QoS rule, for a pod whose status does not say yet: every container with equal
/// CPU and memory requests and limits is Guaranteed, none with any is BestEffort.
fn qos_from_spec(pod: &Pod) -> Qos {
    let Some(spec) = &pod.spec else { return Qos::BestEffort };
    let containers: Vec<_> = spec.containers.iter().chain(spec.init_containers.iter().flatten()).collect();
    let mut any = false;
    let mut all_guaranteed = true;
    for c in &containers {
        let res = c.resources.as_ref();
        let limits = res.and_then(|r| r.limits.as_ref());
        let requests = res.and_then(|r| r.requests.as_ref());
        any |= limits.is_some_and(|l| !l.is_empty()) || requests.is_some_and(|r| !r.is_empty());
        for resource in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(resource));
            // A request left out defaults to the limit.
            let request = requests.and_then(|r| r.get(resource)).or(limit);
            if limit.is_none() || request != limit {
                all_guaranteed = false;
            }
        }
    }
    match (any, all_guaranteed) {
        (false, _) => Qos::BestEffort,
        (true, true) => Qos::Guaranteed,
        (true, false) => Qos::Burstable,
    }
}

/// Whether a pod gets MPTCP (`true`: enable) or only counts what it would get (`audit`): its
/// annotation says so, or its namespace's label does and the pod does not opt out (`false`).
pub fn selection(pod: &PodInfo, namespace_labels: &BTreeMap<String, Option<String>>) -> Option<Action> {
    if pod.finished {
        return None;
    }
    let value = |v: Option<&str>| match v {
        Some("true") => Some(Some(Action::Enable)),
        Some("audit") => Some(Some(Action::Audit)),
        Some("false") => Some(None),
        _ => None,
    };
    match value(pod.annotation.as_deref()) {
        Some(decided) => decided,
        None => value(namespace_labels.get(&pod.namespace).and_then(|l| l.as_deref())).flatten(),
    }
}

/// Whether [`selection`] selects the pod at all.
pub fn selected(pod: &PodInfo, namespace_labels: &BTreeMap<String, Option<String>>) -> bool {
    selection(pod, namespace_labels).is_some()
}

/// Where a pod's cgroup may be: a path relative to the cgroup2 root, and the kubepods root of
/// its driver, which it must lie strictly below once resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    pub path: String,
    pub kubepods: &'static str,
}

impl PodCgroup {
    /// Whether `relative` (a resolved, normalised path) is strictly below this driver's root.
    pub fn contains(&self, relative: &str) -> bool {
        relative.strip_prefix(self.kubepods).is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'))
    }
}

/// The pod's cgroup relative to the cgroup2 root, as kubelet names it for `driver` (systemd
/// escapes the UID's `-` as `_`); `Auto` gives both candidates, systemd first.
pub fn cgroup_paths(uid: &str, qos: Qos, driver: CgroupDriver) -> Vec<PodCgroup> {
    let systemd = || {
        let uid = uid.replace('-', "_");
        match qos {
            Qos::Guaranteed => format!("/kubepods.slice/kubepods-pod{uid}.slice"),
            Qos::Burstable => format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice"),
            Qos::BestEffort => format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice"),
        }
    };
    let cgroupfs = || {
        let uid = uid.replace('_', "-");
        match qos {
            Qos::Guaranteed => format!("/kubepods/pod{uid}"),
            Qos::Burstable => format!("/kubepods/burstable/pod{uid}"),
            Qos::BestEffort => format!("/kubepods/besteffort/pod{uid}"),
        }
    };
    let systemd = || PodCgroup { path: systemd(), kubepods: "/kubepods.slice" };
    let cgroupfs = || PodCgroup { path: cgroupfs(), kubepods: "/kubepods" };
    match driver {
        CgroupDriver::Systemd => vec![systemd()],
        CgroupDriver::Cgroupfs => vec![cgroupfs()],
        CgroupDriver::Auto => vec![systemd(), cgroupfs()],
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{Container, PodSpec, PodStatus, ResourceRequirements},
        apimachinery::pkg::api::resource::Quantity,
    };

    use super::*;

    const UID: &str = "0f9e8a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b";
    /// A static pod's config hash, as kubelet writes it into the mirror annotation.
    const HASH: &str = "6d9c3a1e5b7f4c2a8e0d1f3b5a7c9e1d";

    fn info(annotation: Option<&str>, ns: &str) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: "web".into(),
            uid: Some(UID.into()),
            host_network: false,
            cgroup_uid: UID.into(),
            qos: Qos::Burstable,
            annotation: annotation.map(Into::into),
            finished: false,
            node: Some("node-a".into()),
            action: Action::Enable,
        }
    }

    #[test]
    fn selection_by_annotation_and_namespace_label() {
        let ns: BTreeMap<_, _> = [
            ("on".to_owned(), Some("true".to_owned())),
            ("off".to_owned(), None),
            ("other".to_owned(), Some("yes".to_owned())),
        ]
        .into();
        assert!(selected(&info(Some("true"), "off"), &ns), "annotation alone selects");
        assert!(selected(&info(None, "on"), &ns), "namespace label selects");
        assert!(!selected(&info(Some("false"), "on"), &ns), "annotation false opts out");
        assert!(!selected(&info(None, "off"), &ns));
        assert!(!selected(&info(None, "other"), &ns), "only the value true selects");
        assert!(!selected(&info(None, "unknown-namespace"), &ns));
        assert!(selected(&info(Some("maybe"), "on"), &ns), "other annotation values defer to the namespace");
        let audited: BTreeMap<_, _> = [("dry".to_owned(), Some("audit".to_owned()))].into();
        assert_eq!(selection(&info(None, "dry"), &audited), Some(Action::Audit), "namespace label audit");
        assert_eq!(selection(&info(Some("audit"), "off"), &audited), Some(Action::Audit), "annotation audit");
        assert_eq!(selection(&info(Some("true"), "dry"), &audited), Some(Action::Enable), "the pod's own word wins");
        assert_eq!(selection(&info(Some("false"), "dry"), &audited), None);
        let mut done = info(Some("true"), "on");
        done.finished = true;
        assert!(!selected(&done, &ns), "finished pods have no cgroup");
    }

    #[test]
    fn cgroup_paths_for_both_drivers_and_all_qos_classes() {
        let u = "0f9e8a4c_1b2d_4e5f_8a9b_0c1d2e3f4a5b";
        let cases = [
            (Qos::Guaranteed, CgroupDriver::Systemd, format!("/kubepods.slice/kubepods-pod{u}.slice")),
            (
                Qos::Burstable,
                CgroupDriver::Systemd,
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
            ),
            (
                Qos::BestEffort,
                CgroupDriver::Systemd,
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"),
            ),
            (Qos::Guaranteed, CgroupDriver::Cgroupfs, format!("/kubepods/pod{UID}")),
            (Qos::Burstable, CgroupDriver::Cgroupfs, format!("/kubepods/burstable/pod{UID}")),
            (Qos::BestEffort, CgroupDriver::Cgroupfs, format!("/kubepods/besteffort/pod{UID}")),
        ];
        for (qos, driver, want) in cases {
            let paths = |uid| cgroup_paths(uid, qos, driver).into_iter().map(|c| c.path).collect::<Vec<_>>();
            assert_eq!(paths(UID), std::slice::from_ref(&want), "{qos:?} {driver:?}");
            // A UID already written with underscores names the same cgroup.
            assert_eq!(paths(u), [want], "{qos:?} {driver:?} from _");
        }
        assert_eq!(cgroup_paths(UID, Qos::Burstable, CgroupDriver::Auto).len(), 2);
        let c = &cgroup_paths(UID, Qos::Guaranteed, CgroupDriver::Cgroupfs)[0];
        assert!(c.contains(&c.path));
        for outside in ["/", "/kubepods", "/kubepods/", "/kubepodsx/pod1", "/system.slice"] {
            assert!(!c.contains(outside), "{outside}");
        }
    }

    fn pod(qos_class: Option<&str>, containers: Vec<Container>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("web".into());
        p.metadata.namespace = Some("shop".into());
        p.metadata.uid = Some(UID.into());
        p.spec = Some(PodSpec { containers, ..Default::default() });
        p.status = Some(PodStatus {
            qos_class: qos_class.map(Into::into),
            phase: Some("Running".into()),
            ..Default::default()
        });
        p
    }

    fn container(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        let q = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| kv.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect())
        };
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements { requests: q(requests), limits: q(limits), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn qos_from_status_or_from_resources() {
        let both = [("cpu", "1"), ("memory", "1Gi")];
        assert_eq!(
            PodInfo::from_pod(&pod(Some("BestEffort"), vec![container(&[], &both)])).unwrap().qos,
            Qos::BestEffort
        );
        assert_eq!(PodInfo::from_pod(&pod(None, vec![container(&[], &both)])).unwrap().qos, Qos::Guaranteed);
        assert_eq!(PodInfo::from_pod(&pod(None, vec![container(&both, &both)])).unwrap().qos, Qos::Guaranteed);
        assert_eq!(PodInfo::from_pod(&pod(None, vec![container(&[("cpu", "1")], &[])])).unwrap().qos, Qos::Burstable);
        assert_eq!(
            PodInfo::from_pod(&pod(None, vec![container(&[], &both), container(&[], &[])])).unwrap().qos,
            Qos::Burstable
        );
        assert_eq!(PodInfo::from_pod(&pod(None, vec![container(&[], &[])])).unwrap().qos, Qos::BestEffort);
    }

    #[test]
    fn a_mirror_annotation_naming_another_pods_cgroup_is_refused_and_the_owner_keeps_it() {
        let pod = |name: &str, uid: &str, cgroup_uid: &str| PodInfo {
            name: name.into(),
            uid: Some(uid.into()),
            cgroup_uid: cgroup_uid.into(),
            ..info(None, "shop")
        };
        const OTHER: &str = "1f9e8a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b";
        let victim = pod("victim", UID, UID);
        let forged = pod("forged", OTHER, UID);
        let (kept, refused) = refuse_aliases(vec![forged.clone(), victim.clone()]);
        assert_eq!(kept, std::slice::from_ref(&victim));
        assert_eq!(refused, [("shop/forged".to_string(), PodRefused::Alias(UID.into()))]);
        // A static pod's mirror alone keeps its hash; two mirrors of one hash, neither its own: none.
        let mirror = pod("etcd", OTHER, HASH);
        assert_eq!(refuse_aliases(vec![mirror.clone(), victim.clone()]).0.len(), 2);
        let copy = pod("copy", "2f9e8a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b", HASH);
        let (kept, refused) = refuse_aliases(vec![mirror, copy, victim.clone()]);
        assert_eq!((kept, refused.len()), (vec![victim], 2));
    }

    #[test]
    fn static_pods_use_the_mirror_uid_and_finished_pods_are_marked() {
        let mut p = pod(Some("Burstable"), vec![]);
        p.metadata.annotations =
            Some([(MIRROR_ANNOTATION.to_owned(), HASH.to_owned()), (SELECT_KEY.to_owned(), "true".to_owned())].into());
        let i = PodInfo::from_pod(&p).unwrap();
        assert_eq!(i.cgroup_uid, HASH);
        assert_eq!(i.annotation.as_deref(), Some("true"));
        assert_eq!(i.label(), "shop/web");
        p.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(PodInfo::from_pod(&p).unwrap().finished);
    }

    /// A pod's UID names its cgroup: anything but the forms kubelet uses could point the agent
    /// at another cgroup of the node.
    #[test]
    fn uids_outside_kubelets_forms_are_refused() {
        let long = "a".repeat(300);
        let hostile = [
            "/../..",
            "../x",
            "/etc",
            "..",
            "%2e%2e",
            "%2e%2e%2f%2e%2e",
            "x/../..",
            "",
            " ",
            "abc123",
            &long,
            "0a000000-0000-4000-8000-00000000000/",
            "0a000000-0000-4000-8000-0000000000011",
            "0A000000-0000-4000-8000-000000000001",
            "0a000000_0000_4000_8000_000000000001",
            "6d9c3a1e5b7f4c2a8e0d1f3b5a7c9e1",
            "6d9c3a1e5b7f4c2a8e0d1f3b5a7c9e1/",
        ];
        for bad in hostile {
            let mut p = pod(Some("Guaranteed"), vec![]);
            p.metadata.annotations = Some([(MIRROR_ANNOTATION.to_owned(), bad.to_owned())].into());
            assert!(PodInfo::from_pod(&p).is_err(), "mirror annotation {bad:?} accepted");
            let mut p = pod(Some("Guaranteed"), vec![]);
            p.metadata.uid = Some(bad.to_owned());
            assert!(PodInfo::from_pod(&p).is_err(), "uid {bad:?} accepted");
        }
        let e = {
            let mut p = pod(Some("Guaranteed"), vec![]);
            p.metadata.annotations = Some([(MIRROR_ANNOTATION.to_owned(), long.clone())].into());
            PodInfo::from_pod(&p).unwrap_err().to_string()
        };
        assert!(e.contains(MIRROR_ANNOTATION) && e.len() < 200, "{e}");
        // kubelet's forms: an API server UID, and a static pod's config hash (hex MD5).
        let mut p = pod(Some("Guaranteed"), vec![]);
        assert_eq!(PodInfo::from_pod(&p).unwrap().cgroup_uid, UID);
        p.metadata.annotations = Some([(MIRROR_ANNOTATION.to_owned(), HASH.to_owned())].into());
        assert_eq!(PodInfo::from_pod(&p).unwrap().cgroup_uid, HASH);
    }
}
