//! The policy and the selected pods resolved against the live system into the rules the agent
//! wants, and the cgroup directories to watch so that a path appearing later is noticed.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use super::{
    kubernetes::pods::{PodCgroup, PodInfo, cgroup_paths},
    policy::{CgroupDriver, Policy, Selector},
    reconcile::{Concern, Desired},
};
use crate::{
    host::{cgroup, selector::CgroupPath, systemd},
    state::{
        origin::{OriginKind, RuleOrigin},
        rules::{Action, Key},
    },
};

/// A selected pod and the cgroup it was found in (`None`: not created yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCoverage {
    pub namespace: String,
    pub name: String,
    /// The API object's UID, for Events about it.
    pub uid: Option<String>,
    /// Enable, or audit (a dry run: nothing in the pod changes, its paths neither).
    pub action: Action,
    /// `spec.hostNetwork`: its network namespace is the node's.
    pub host_network: bool,
    pub cgroup: Option<u64>,
    /// Its cgroup's path relative to the cgroup2 root, when it exists.
    pub path: Option<String>,
}

#[derive(Debug, Default)]
pub struct Resolved {
    pub desired: Vec<Desired>,
    /// Every existing ancestor directory of every wanted cgroup path.
    pub watch_dirs: BTreeSet<PathBuf>,
    /// Wanted cgroups that do not exist yet.
    pub pending: Vec<String>,
    /// What could not be resolved this round (e.g. systemd unreachable): while any is set, the
    /// agent removes none of the rules it concerns, so a transient failure never drops coverage.
    pub errors: Vec<Unresolved>,
    pub pods: Vec<PodCoverage>,
    /// Pods whose cgroup would lie outside kubepods: never enabled, reported.
    pub refused: Vec<String>,
}

/// A wanted selector that could not be resolved this round, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {error:#}")]
pub struct Unresolved {
    pub what: String,
    pub error: anyhow::Error,
    pub concerns: Concern,
}

/// Existing directories from `root` down to the parent of `relative`.
fn ancestors(root: &Path, relative: &str) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut dir = root.to_path_buf();
    let parts: Vec<&str> = relative.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        dir.push(part);
        if !dir.is_dir() {
            break;
        }
        out.push(dir.clone());
    }
    out
}

impl Resolved {
    /// Resolves one cgroup path and watches where it appears; returns its id when it exists.
    fn path(
        &mut self,
        root: &Path,
        relative: &str,
        action: Action,
        origin: (OriginKind, &str),
        label: &str,
    ) -> Option<u64> {
        self.watch_dirs.extend(ancestors(root, relative));
        let cg = cgroup::resolve(root, relative.trim_start_matches('/')).ok()?;
        self.want(cg, action, origin, label)
    }

    /// A pod's candidate cgroup: resolved like any path, then refused unless it is the path
    /// itself, strictly below its driver's kubepods root (whatever the pod's UID made of it).
    fn pod_path(
        &mut self,
        root: &Path,
        pod: &PodCgroup,
        action: Action,
        origin: (OriginKind, &str),
        label: &str,
    ) -> Option<(u64, String)> {
        self.watch_dirs.extend(ancestors(root, &pod.path));
        let cg = cgroup::resolve(root, pod.path.trim_start_matches('/')).ok()?;
        // Resolution must not have moved the path (a `..` in it) and must stay below kubepods.
        if cg.relative != pod.path || !pod.contains(&cg.relative) {
            let path = pod.path.escape_debug();
            self.refused.push(format!("{label}: {path} is not a pod cgroup below {}", pod.kubepods));
            return None;
        }
        let relative = cg.relative.clone();
        self.want(cg, action, origin, label).map(|id| (id, relative))
    }

    fn want(&mut self, cg: cgroup::Cgroup, action: Action, origin: (OriginKind, &str), label: &str) -> Option<u64> {
        match RuleOrigin::new(origin.0, origin.1) {
            Ok(o) => {
                self.desired.push(Desired {
                    key: Key::Cgroup(cg.id),
                    action,
                    origin: Some(o),
                    label: format!("{label}: cgroup {} (id {})", cg.relative, cg.id),
                });
                Some(cg.id)
            }
            Err(error) => {
                self.errors.push(Unresolved { what: label.to_owned(), error, concerns: Concern::Cgroup(cg.id) });
                None
            }
        }
    }
}

/// Resolves `policy` and the selected `pods` (already filtered) under the cgroup2 mount `root`.
pub async fn resolve(policy: &Policy, pods: &[PodInfo], root: &Path) -> Resolved {
    let mut r = Resolved::default();
    for w in &policy.wanted {
        match &w.selector {
            Selector::Cgroup(CgroupPath::Relative(path)) => {
                if r.path(root, path, w.action, (OriginKind::Path, path), &format!("cgroup {path}")).is_none() {
                    r.pending.push(format!("cgroup {path}: does not exist yet"));
                }
            }
            // A policy names cgroups relative to the root (`Selector::cgroup_relative`).
            Selector::Cgroup(CgroupPath::Mounted(path)) => r.errors.push(Unresolved {
                what: format!("cgroup {}", path.display()),
                error: anyhow::anyhow!("a policy's cgroups are relative to the cgroup2 root"),
                concerns: Concern::Origin(OriginKind::Path, path.display().to_string()),
            }),
            Selector::Unit(unit) => match systemd::unit_cgroup_expected(unit).await {
                Ok(Some(path)) => {
                    if r.path(root, &path, w.action, (OriginKind::Unit, unit), &format!("unit {unit}")).is_none() {
                        r.pending.push(format!("unit {unit}: {path} does not exist yet"));
                    }
                }
                Ok(None) => r.pending.push(format!("unit {unit}: systemd has no such unit")),
                Err(error) => r.errors.push(Unresolved {
                    what: format!("unit {unit}"),
                    error,
                    concerns: Concern::Origin(OriginKind::Unit, unit.clone()),
                }),
            },
            Selector::Key(key) => {
                r.desired.push(Desired { key: *key, action: w.action, origin: None, label: key.to_string() })
            }
        }
    }
    let driver = match policy.cgroup_driver {
        CgroupDriver::Auto if root.join("kubepods.slice").is_dir() => CgroupDriver::Systemd,
        CgroupDriver::Auto if root.join("kubepods").is_dir() => CgroupDriver::Cgroupfs,
        d => d,
    };
    for pod in pods {
        let label = format!("pod {}", pod.label());
        let mut cgroup = None;
        for candidate in cgroup_paths(&pod.cgroup_uid, pod.qos, driver) {
            // Only the first existing candidate counts; the rest are still watched.
            if cgroup.is_none() {
                cgroup = r.pod_path(root, &candidate, pod.action, (OriginKind::Pod, &pod.label()), &label);
            } else {
                r.watch_dirs.extend(ancestors(root, &candidate.path));
            }
        }
        if cgroup.is_none() {
            r.pending.push(format!("{label}: its cgroup does not exist yet"));
        }
        let (cgroup, path) = cgroup.map_or((None, None), |(id, path)| (Some(id), Some(path)));
        r.pods.push(PodCoverage {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            action: pod.action,
            host_network: pod.host_network,
            cgroup,
            path,
        });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::kubernetes::pods::Qos;

    fn mkcg(root: &Path, rel: &str) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        let p = root.join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("cgroup.procs"), "").unwrap();
        std::fs::metadata(&p).unwrap().ino()
    }

    #[tokio::test]
    async fn paths_resolve_or_wait_with_their_ancestors_watched() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("cgroup.procs"), "").unwrap();
        let id = mkcg(t.path(), "/a.slice/b.service");
        let policy = Policy::parse(
            "[enable]\ncgroups = [\"a.slice/b.service\", \"a.slice/later.service\", \"x/y/z\"]\ncomms = [\"curl\"]\n",
            "p",
            &|_| None,
        )
        .unwrap();
        let r = resolve(&policy, &[], t.path()).await;
        assert_eq!(r.desired.len(), 2, "{r:?}");
        assert_eq!(r.desired[0].key, Key::Cgroup(id));
        assert_eq!(r.desired[1].key, Key::comm("curl").unwrap());
        assert_eq!(r.pending.len(), 2);
        let want: BTreeSet<PathBuf> = [t.path().to_path_buf(), t.path().join("a.slice")].into();
        assert_eq!(r.watch_dirs, want, "x does not exist, so only the root watches for it");
        assert!(r.errors.is_empty());
    }

    #[tokio::test]
    async fn pods_find_their_cgroup_under_the_driver_in_use() {
        let t = tempfile::tempdir().unwrap();
        let uid = "11111111-2222-3333-4444-555555555555";
        let id = mkcg(t.path(), "/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555");
        let pod = |qos| PodInfo {
            namespace: "ns".into(),
            name: "p".into(),
            uid: None,
            host_network: false,
            cgroup_uid: uid.into(),
            qos,
            annotation: None,
            finished: false,
            node: None,
            action: Action::Enable,
        };
        let r = resolve(&Policy::default(), &[pod(Qos::BestEffort)], t.path()).await;
        let path = Some("/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555".to_string());
        assert_eq!(
            r.pods,
            [PodCoverage {
                namespace: "ns".into(),
                name: "p".into(),
                uid: None,
                action: Action::Enable,
                host_network: false,
                cgroup: Some(id),
                path
            }]
        );
        assert_eq!(r.desired[0].key, Key::Cgroup(id));
        assert!(r.desired[0].label.starts_with("pod ns/p"), "{}", r.desired[0].label);
        // A pod whose cgroup is not there yet waits, watched where it will appear.
        let r = resolve(&Policy::default(), &[pod(Qos::Burstable)], t.path()).await;
        assert_eq!(r.pods[0].cgroup, None);
        assert!(r.desired.is_empty());
        assert!(r.watch_dirs.contains(&t.path().join("kubepods")), "{:?}", r.watch_dirs);
        assert_eq!(r.pending.len(), 1, "{:?}", r.pending);
    }

    /// Defence in depth behind the UID check: whatever a pod's UID says, its rule is for a cgroup
    /// strictly below the kubepods root of the driver in use.
    #[tokio::test]
    async fn pod_cgroups_never_leave_kubepods() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("cgroup.procs"), "").unwrap();
        for dir in [
            "/kubepods",
            "/kubepods/burstable",
            "/kubepods/besteffort",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods.slice/kubepods-besteffort.slice",
            "/system.slice",
        ] {
            mkcg(t.path(), dir);
        }
        let inside: Vec<u64> = ["/kubepods", "/kubepods.slice"].iter().map(|d| mkcg(t.path(), d)).collect();
        let pod = |uid: &str, qos| PodInfo {
            namespace: "ns".into(),
            name: "evil".into(),
            uid: None,
            host_network: false,
            cgroup_uid: uid.into(),
            qos,
            annotation: Some("true".into()),
            finished: false,
            node: None,
            action: Action::Enable,
        };
        let hostile = ["/../..", "/../../system.slice", "/..", "/", "/../burstable", "/../kubepods-burstable.slice"];
        for driver in ["auto", "systemd", "cgroupfs"] {
            let policy =
                Policy::parse(&format!("[kubernetes]\ncgroup_driver = \"{driver}\"\n"), "p", &|_| None).unwrap();
            for qos in [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort] {
                for uid in hostile {
                    let r = resolve(&policy, &[pod(uid, qos)], t.path()).await;
                    assert!(r.desired.is_empty(), "{driver} {qos:?} {uid:?}: {:?}", r.desired);
                    assert!(!inside.is_empty());
                }
            }
        }
    }
}
