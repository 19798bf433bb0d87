//! What the agent wants the kernel to hold, checked against the kernel between
//! reconciliations, so that changes made by others (`mptcpify reset`, a forced `disable`, a CLI
//! rule that covered a want going away) are undone within a second; and the backoff between
//! retries of a pass that failed.
use std::{collections::BTreeMap, time::Duration};

use super::reconcile::{Actual, Desired};
use crate::state::{
    maps::State,
    pins,
    rules::{Action, Key, Owner, RuleStore as _},
};

/// How often the kernel's rules are compared with the wanted ones: a read of the rule maps, no
/// resolving (systemd, the cgroup tree and the API server are followed by their events).
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

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

/// The kernel's rules as the reconciler sees them; `None` when the program is not attached or
/// the state cannot be read (which a reconciliation repairs or reports).
pub fn kernel_rules() -> Option<Vec<Actual>> {
    if !pins::is_loaded() {
        return None;
    }
    let entries = State::open().and_then(|st| st.entries()).ok()?;
    Some(
        entries
            .into_iter()
            .map(|(key, r)| Actual { key, action: Action::from_code(r.action), owner: Owner::from_code(r.owner) })
            .collect(),
    )
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
