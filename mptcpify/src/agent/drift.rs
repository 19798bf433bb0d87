//! What the agent wants the kernel to hold, checked against the kernel between
//! reconciliations, so that changes made by others (`mptcpify reset`, a forced `disable`, a CLI
//! rule that covered a want going away, an edit killed midway) are undone within a second; and
//! the backoff between retries of a pass that failed.
use std::{collections::BTreeMap, time::Duration};

use tokio::time::Instant;

use super::reconcile::{Actual, Desired};
use crate::state::{
    maps::{Fingerprint, State},
    pins,
    rules::{Action, Key, Owner, RuleStore as _},
};

/// How often the state's [`Fingerprint`] is read (a few syscalls): every edit made through
/// mptcpify changes it, and so do a reset and a reload. No resolving here: systemd, the cgroup
/// tree and the API server are followed by their events.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How often every rule is compared even though the fingerprint stayed: catches map edits made
/// around mptcpify (bpftool), at O(rules) syscalls.
pub const COMPARE_EVERY: Duration = Duration::from_secs(2);

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    Nothing,
    /// Read every rule and compare.
    Compare,
    /// An edit was killed midway: a pass repairs it.
    Reconcile,
}

/// Decides, per check, whether the rules need a full read.
#[derive(Debug)]
pub struct Watcher {
    last: Option<Fingerprint>,
    compared: Instant,
}

impl Watcher {
    pub fn new(now: Instant) -> Self {
        Self { last: None, compared: now }
    }

    /// After a pass or a full comparison: what the kernel held then is the baseline.
    pub fn compared(&mut self, seen: Option<Fingerprint>, now: Instant) {
        self.last = seen;
        self.compared = now;
    }

    pub fn look(&self, seen: Option<Fingerprint>, now: Instant, alive: impl Fn(u32) -> bool) -> Look {
        match seen {
            Some(Fingerprint { edit_pid: Some(pid), .. }) if !alive(pid) => Look::Reconcile,
            _ if seen != self.last || now.duration_since(self.compared) >= COMPARE_EVERY => Look::Compare,
            _ => Look::Nothing,
        }
    }
}

/// The wanted rules, one action per key (an exclusion beats an enable, as in the kernel).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expected(BTreeMap<Key, Action>);

impl Expected {
    pub fn from_desired(desired: &[Desired]) -> Self {
        let mut wants = BTreeMap::new();
        for d in desired {
            let action = wants.entry(d.key).or_insert(d.action);
            if d.action == Action::Exclude {
                *action = Action::Exclude;
            }
        }
        Self(wants)
    }

    /// How many rules are wanted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Wanted rules the kernel lacks or holds with the other action (a CLI rule's conflict
    /// included): until there are none, the agent is not ready.
    pub fn missing(&self, actual: &[Actual]) -> usize {
        self.unmet(actual, |_| true)
    }

    /// Whether the kernel differs from what the agent wants in anything the agent would change:
    /// a CLI rule with the other action is a conflict it reports, not one it fights.
    pub fn drifted(&self, actual: &[Actual]) -> bool {
        self.unmet(actual, |a| a.owner == Owner::Agent) > 0
            || actual.iter().any(|a| a.owner == Owner::Agent && !self.0.contains_key(&a.key))
    }

    /// Wanted rules absent, or held with the other action by a rule `counts` picks.
    fn unmet(&self, actual: &[Actual], counts: impl Fn(&Actual) -> bool) -> usize {
        let have: BTreeMap<Key, &Actual> = actual.iter().map(|a| (a.key, a)).collect();
        self.0
            .iter()
            .filter(|(key, action)| match have.get(key) {
                None => true,
                Some(a) => a.action != **action && counts(a),
            })
            .count()
    }
}

/// Why the kernel's rules could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Unheld {
    #[error("the program is not attached")]
    NotAttached,
    #[error("the pinned state cannot be used: {0:#}")]
    Unreadable(anyhow::Error),
}

/// The kernel's rules as the reconciler sees them (a reconciliation repairs or reports what
/// keeps them from being read).
pub fn kernel_rules() -> Result<Vec<Actual>, Unheld> {
    if !pins::is_loaded() {
        return Err(Unheld::NotAttached);
    }
    let entries = State::open().and_then(|st| st.entries()).map_err(Unheld::Unreadable)?;
    Ok(entries
        .into_iter()
        .map(|(key, r)| Actual { key, action: Action::from_code(r.action), owner: Owner::from_code(r.owner) })
        .collect())
}

/// Doubling delays between retries of a failed reconciliation, from 100 ms up to 30 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Self::FIRST)
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    /// The delay before the next retry; each failure doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        d
    }

    pub fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::reconcile::fixtures::{have, want};

    #[test]
    fn what_others_change_is_drift_and_conflicts_are_not() {
        let e = Expected::from_desired(&[want(Key::Cgroup(1), Action::Enable), want(Key::Uid(5), Action::Exclude)]);
        let held = [have(Key::Cgroup(1), Action::Enable, Owner::Agent), have(Key::Uid(5), Action::Exclude, Owner::Cli)];
        assert!(!e.drifted(&held), "all wanted rules are there, whoever made them");
        assert!(e.drifted(&held[..1]), "the CLI rule that covered uid 5 went away");
        assert!(e.drifted(&[]), "reset");
        assert_eq!(e.missing(&[]), 2);
        let conflict = [held[0], have(Key::Uid(5), Action::Enable, Owner::Cli)];
        assert!(!e.drifted(&conflict), "a CLI rule with the other action is reported, not fought");
        assert_eq!(e.missing(&conflict), 1, "but the policy is not in force");
        let extra = [held[0], held[1], have(Key::Pid(9), Action::Enable, Owner::Agent)];
        assert!(e.drifted(&extra), "an agent rule nothing wants");
        assert!(!e.drifted(&[held[0], held[1], have(Key::Pid(9), Action::Enable, Owner::Cli)]), "CLI rules are theirs");
    }

    #[test]
    fn rules_are_read_when_the_fingerprint_moves_a_killed_edit_is_repaired_and_all_are_compared_now_and_then() {
        let t0 = Instant::now();
        let fp = |edits, edit_pid| Fingerprint { link_id: 1, config: Default::default(), edits, edit_pid };
        let mut w = Watcher::new(t0);
        w.compared(Some(fp(3, None)), t0);
        let alive = |_| true;
        assert_eq!(w.look(Some(fp(3, None)), t0 + CHECK_EVERY, alive), Look::Nothing);
        assert_eq!(w.look(Some(fp(4, None)), t0 + CHECK_EVERY, alive), Look::Compare, "an edit");
        assert_eq!(w.look(None, t0 + CHECK_EVERY, alive), Look::Compare, "reset");
        let reloaded = Fingerprint { link_id: 2, ..fp(3, None) };
        assert_eq!(w.look(Some(reloaded), t0 + CHECK_EVERY, alive), Look::Compare, "reset and loaded again");
        assert_eq!(w.look(Some(fp(3, Some(77))), t0 + CHECK_EVERY, |_| false), Look::Reconcile, "killed midway");
        assert_eq!(w.look(Some(fp(3, Some(77))), t0 + CHECK_EVERY, alive), Look::Compare, "an edit under way");
        assert_eq!(w.look(Some(fp(3, None)), t0 + COMPARE_EVERY, alive), Look::Compare, "edits around mptcpify");
    }

    #[test]
    fn an_exclusion_wins_the_key() {
        let e = Expected::from_desired(&[want(Key::Cgroup(3), Action::Enable), want(Key::Cgroup(3), Action::Exclude)]);
        assert!(!e.drifted(&[have(Key::Cgroup(3), Action::Exclude, Owner::Agent)]));
    }

    #[test]
    fn retries_back_off_to_a_ceiling_and_reset() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..12).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(&delays[..4], [100, 200, 400, 800]);
        assert_eq!(*delays.last().unwrap(), 30_000);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
