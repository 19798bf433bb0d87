//! The kernel's MPTCP counters of the namespaces upgraded workloads are in, for `/metrics`:
//! found by a scan of `/proc` that the agent's loop runs off its thread at most every
//! [`REFRESH_EVERY`], never a scrape, so that a scrape costs O(rules + pods) whoever sends it.
//! Also whether each namespace's kernel is avoiding MPTCP after a blackhole: the kernel only
//! counts the blackholes it finds (`Blackhole`), then avoids MPTCP for the namespace's
//! `net.mptcp.blackhole_timeout` seconds, so a rise this agent saw is what makes one active.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use super::metrics::SharedHealth;
use crate::{
    connections::mib::{self, NamespaceCounters},
    paths::connection::{Netns, in_netns},
};

pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The kernel's default `blackhole_timeout`.
const DEFAULT_BLACKHOLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// One namespace as the metrics show it.
#[derive(Debug, Clone)]
pub struct NamespaceRow {
    pub counters: NamespaceCounters,
    pub blackhole_active: bool,
}

/// What the last scan found.
#[derive(Debug, Default, Clone)]
pub struct Namespaces {
    pub rows: Vec<NamespaceRow>,
    /// Selected pods whose processes run but none is visible to the agent (no hostPID): their
    /// namespaces cannot be found, so their counters are missing, not zero.
    pub unseen_pods: usize,
}

/// A namespace's `Blackhole` counter as this agent saw it, keyed by nsfs inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Blackholes {
    count: u64,
    /// When this agent saw it rise, and the namespace's timeout then.
    rose: Option<(Instant, Duration)>,
}

impl Blackholes {
    /// The counter seen now after `before`. A first sight is a baseline, not a rise (a
    /// restarted agent would report an old blackhole as new); a counter lower than before is
    /// another namespace that got the inode, a baseline too. `timeout` is asked at a rise only.
    fn seen(before: Option<Blackholes>, count: u64, now: Instant, timeout: impl FnOnce() -> Duration) -> Self {
        match before {
            Some(b) if count == b.count => b,
            Some(b) if count > b.count => Self { count, rose: Some((now, timeout())) },
            _ => Self { count, rose: None },
        }
    }

    /// Within the first avoidance period after the rise (the kernel doubles the period for a
    /// blackhole found again soon after; that is not followed).
    fn active(&self, now: Instant) -> bool {
        self.rose.is_some_and(|(at, timeout)| now.duration_since(at) < timeout)
    }
}

/// Kept between scans.
#[derive(Debug, Default)]
pub struct NamespaceWatch {
    blackholes: BTreeMap<u64, Blackholes>,
}

/// Refreshes the health record's [`Namespaces`] every [`REFRESH_EVERY`] from a task of its own:
/// the agent's loop never waits for a scan.
pub fn spawn(health: SharedHealth, root: PathBuf) {
    tokio::spawn(async move {
        let mut watch = NamespaceWatch::default();
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (pods, last) = {
                let h = health.lock().expect("health lock");
                (h.pods.clone(), h.namespaces.clone())
            };
            let cgroups =
                pods.iter().filter_map(|p| Some(root.join(p.path.as_ref()?.trim_start_matches('/')))).collect();
            let found = watch.refresh(cgroups, last).await;
            health.lock().expect("health lock").namespaces = found;
        }
    });
}

impl NamespaceWatch {
    /// Turns a scan into rows; namespaces no longer listed are forgotten. `timeout_of` is asked
    /// once per rise of a namespace's blackholes.
    fn note(
        &mut self,
        scan: Vec<NamespaceCounters>,
        now: Instant,
        timeout_of: impl Fn(&NamespaceCounters) -> Duration,
    ) -> Vec<NamespaceRow> {
        let before = std::mem::take(&mut self.blackholes);
        scan.into_iter()
            .map(|counters| {
                let count = counters.mptcp.get("Blackhole").copied().unwrap_or(0);
                let b = Blackholes::seen(before.get(&counters.netns).copied(), count, now, || timeout_of(&counters));
                self.blackholes.insert(counters.netns, b);
                NamespaceRow { blackhole_active: b.active(now), counters }
            })
            .collect()
    }

    /// Scans `/proc` on a blocking thread; `pod_cgroups` are the selected pods' cgroup
    /// directories, to tell which of them the agent cannot see into. A scan that fails keeps
    /// what the last one found.
    async fn refresh(&mut self, pod_cgroups: Vec<PathBuf>, last: Namespaces) -> Namespaces {
        let scanned = tokio::task::spawn_blocking(move || {
            (mib::upgraded_namespaces(), pod_cgroups.iter().filter(|d| runs_unseen(d)).count())
        })
        .await;
        match scanned {
            Ok((Ok(scan), unseen_pods)) => {
                let rows = self.note(scan, Instant::now(), |c| blackhole_timeout(c.pid));
                Namespaces { rows, unseen_pods }
            }
            Ok((Err(e), _)) => {
                log::debug!("namespaces: {e:#}; the last scan's stand");
                last
            }
            Err(_) => last,
        }
    }
}

/// `net.mptcp.blackhole_timeout` of the namespace process `pid` is in: `/proc/sys/net` shows
/// the reader's own, so it is read from a thread that enters it (with CAP_SYS_ADMIN, which
/// `podPaths` grants); otherwise the agent's own namespace's value stands in.
fn blackhole_timeout(pid: u32) -> Duration {
    let read = || -> anyhow::Result<u64> {
        Ok(std::fs::read_to_string("/proc/sys/net/mptcp/blackhole_timeout")?.trim().parse()?)
    };
    let theirs = in_netns(&Netns::File(format!("/proc/{pid}/ns/net").into()), read);
    theirs.or_else(|_| read()).map_or(DEFAULT_BLACKHOLE_TIMEOUT, Duration::from_secs)
}

/// Whether the cgroup `dir` runs processes (`cgroup.events` says populated) of which the
/// agent's PID namespace shows none.
fn runs_unseen(dir: &std::path::Path) -> bool {
    let populated =
        std::fs::read_to_string(dir.join("cgroup.events")).is_ok_and(|e| e.lines().any(|l| l == "populated 1"));
    populated && super::pod_paths::pids_below(dir).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(netns: u64, blackholes: u64) -> NamespaceCounters {
        NamespaceCounters { netns, pid: 1, pods: Vec::new(), mptcp: [("Blackhole".to_string(), blackholes)].into() }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_blackhole_is_active_only_after_a_rise_this_agent_saw_and_for_the_namespaces_timeout() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let timeout = |c: &NamespaceCounters| if c.netns == 7 { Duration::from_secs(60) } else { HOUR };
        let mut w = NamespaceWatch::default();
        let rows = w.note(vec![counters(7, 3), counters(8, 0)], t0, timeout);
        assert!(rows.iter().all(|r| !r.blackhole_active), "first sight (a restarted agent): a baseline");
        let rows = w.note(vec![counters(7, 4), counters(8, 1)], at(5), timeout);
        assert!(rows.iter().all(|r| r.blackhole_active), "risen");
        let rows = w.note(vec![counters(7, 4), counters(8, 1)], at(70), |_| panic!("asked at a rise only"));
        assert!(!rows[0].blackhole_active, "namespace 7's own timeout (60 s) has passed");
        assert!(rows[1].blackhole_active, "namespace 8's (an hour) has not");
    }

    #[test]
    fn a_namespace_gone_is_forgotten_and_one_reusing_its_inode_starts_afresh() {
        let t0 = Instant::now();
        let mut w = NamespaceWatch::default();
        w.note(vec![counters(7, 0)], t0, |_| HOUR);
        assert!(w.note(vec![counters(7, 2)], t0, |_| HOUR)[0].blackhole_active);
        w.note(vec![counters(8, 0)], t0, |_| HOUR);
        assert!(!w.blackholes.contains_key(&7), "pruned");
        let rows = w.note(vec![counters(7, 1)], t0, |_| HOUR);
        assert!(!rows[0].blackhole_active, "inode 7 again, seen afresh: a baseline");
        w.note(vec![counters(8, 5)], t0, |_| HOUR);
        let rows = w.note(vec![counters(8, 2)], t0, |_| HOUR);
        assert!(!rows[0].blackhole_active, "lower than before: another namespace with the inode");
    }

    #[test]
    fn a_populated_cgroup_whose_processes_are_all_invisible_is_unseen() {
        let t = tempfile::tempdir().unwrap();
        let pod = t.path().join("pod1");
        std::fs::create_dir_all(pod.join("cri-a")).unwrap();
        std::fs::write(pod.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        std::fs::write(pod.join("cgroup.procs"), "").unwrap();
        std::fs::write(pod.join("cri-a/cgroup.procs"), "").unwrap();
        assert!(runs_unseen(&pod));
        std::fs::write(pod.join("cri-a/cgroup.procs"), "4242\n").unwrap();
        assert!(!runs_unseen(&pod));
        std::fs::write(pod.join("cgroup.events"), "populated 0\n").unwrap();
        std::fs::write(pod.join("cri-a/cgroup.procs"), "").unwrap();
        assert!(!runs_unseen(&pod), "nothing runs: nothing missed");
    }
}
