//! Reconciliation as a pure diff: the rules the agent wants against the rules in the kernel. The
//! agent only removes rules it owns; a CLI rule for the same key satisfies the policy as it is,
//! and one with the opposite action is reported, never overwritten.
use std::collections::BTreeMap;

use crate::state::{
    origin::{OriginKind, RuleOrigin},
    rules::{Action, Key, Owner},
};

/// A rule the agent wants, resolved to its kernel key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub key: Key,
    pub action: Action,
    /// What a cgroup rule was made from (path, unit or pod), stored beside it.
    pub origin: Option<RuleOrigin>,
    /// For logs: `cgroup /system.slice/x.service (id 42)`, `pod default/web`.
    pub label: String,
}

/// A rule as the kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actual {
    pub key: Key,
    pub action: Action,
    pub owner: Owner,
}

/// What to change so that the kernel holds the desired rules.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Agent rules of the right key but the wrong action: removed before `add` re-adds them.
    pub replace: Vec<Key>,
    pub add: Vec<Desired>,
    /// Agent rules nothing wants any more: removed after `add`, so a moved cgroup has no gap.
    pub remove: Vec<Key>,
    /// Agent rules already in place (adopted as they are, hits kept).
    pub kept: usize,
    /// Wanted keys a CLI rule already covers with the same action.
    pub covered_by_cli: usize,
    /// Wants that cannot be met, for the log and the error metric.
    pub conflicts: Vec<String>,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.replace.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Which of the agent's rules something unresolved could concern: those it must not remove
/// until it is resolved, since it might still want them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concern {
    /// Rules made from this origin (a unit while systemd is unreachable).
    Origin(OriginKind, String),
    /// Every rule made from an origin of this kind (pods until the first list arrives).
    Kind(OriginKind),
    /// The rule of this cgroup.
    Cgroup(u64),
}

/// Whether removing the agent's rule for `key` (made from `origin`) must wait for `blockers`:
/// only cgroup rules are resolved, so only they can be concerned, and one whose origin is
/// unknown is concerned by any blocker.
pub fn held_back(key: &Key, origin: Option<&RuleOrigin>, blockers: &[Concern]) -> bool {
    let Key::Cgroup(id) = key else { return false };
    blockers.iter().any(|b| match (b, origin) {
        (Concern::Cgroup(c), _) => c == id,
        (_, None) => true,
        (Concern::Kind(kind), Some(o)) => o.kind == *kind,
        (Concern::Origin(kind, text), Some(o)) => o.kind == *kind && o.text == *text,
    })
}

/// Diffs `desired` against `actual`.
pub fn plan(desired: &[Desired], actual: &[Actual]) -> Plan {
    let mut out = Plan::default();
    // One want per key; an exclusion beats an enable of the same cgroup (as in the kernel).
    let mut wants: BTreeMap<Key, &Desired> = BTreeMap::new();
    for d in desired {
        match wants.get(&d.key) {
            None => {
                wants.insert(d.key, d);
            }
            Some(prev) if prev.action == d.action => {}
            Some(prev) => {
                out.conflicts.push(format!("{} and {} are the same {}: it is excluded", prev.label, d.label, d.key));
                if d.action == Action::Exclude {
                    wants.insert(d.key, d);
                }
            }
        }
    }
    let have: BTreeMap<Key, &Actual> = actual.iter().map(|a| (a.key, a)).collect();
    for (key, want) in &wants {
        match have.get(key) {
            None => out.add.push((*want).clone()),
            Some(a) if a.action == want.action && a.owner == Owner::Agent => out.kept += 1,
            Some(a) if a.action == want.action => out.covered_by_cli += 1,
            Some(a) if a.owner == Owner::Agent => {
                out.replace.push(*key);
                out.add.push((*want).clone());
            }
            Some(a) => out.conflicts.push(format!(
                "{} is wanted {} but a CLI rule {} it; `mptcpify disable` that rule to let the policy apply",
                want.label,
                want.action.done(),
                match a.action {
                    Action::Enable => "enables",
                    Action::Exclude => "excludes",
                    Action::Audit => "audits",
                },
            )),
        }
    }
    out.remove =
        actual.iter().filter(|a| a.owner == Owner::Agent && !wants.contains_key(&a.key)).map(|a| a.key).collect();
    out
}

/// Wanted and held rules in one line each, for the agent's unit tests.
#[cfg(test)]
pub(super) mod fixtures {
    use super::*;

    pub fn want(key: Key, action: Action) -> Desired {
        Desired { key, action, origin: None, label: key.to_string() }
    }

    pub fn have(key: Key, action: Action, owner: Owner) -> Actual {
        Actual { key, action, owner }
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};

    #[test]
    fn from_nothing_everything_is_added() {
        let d = [want(Key::Cgroup(1), Action::Enable), want(Key::Uid(5), Action::Exclude)];
        let p = plan(&d, &[]);
        assert_eq!(p.add, d);
        assert!(p.remove.is_empty() && p.replace.is_empty() && p.conflicts.is_empty());
    }

    #[test]
    fn a_restarted_agent_adopts_its_rules_without_change() {
        let d = [want(Key::Cgroup(1), Action::Enable), want(Key::All, Action::Enable)];
        let a = [have(Key::Cgroup(1), Action::Enable, Owner::Agent), have(Key::All, Action::Enable, Owner::Agent)];
        let p = plan(&d, &a);
        assert!(p.is_noop(), "{p:?}");
        assert_eq!(p.kept, 2);
    }

    #[test]
    fn a_recreated_cgroup_moves_add_before_remove() {
        let d = [want(Key::Cgroup(20), Action::Enable)];
        let a = [have(Key::Cgroup(10), Action::Enable, Owner::Agent)];
        let p = plan(&d, &a);
        assert_eq!(p.add, d);
        assert_eq!(p.remove, [Key::Cgroup(10)]);
    }

    #[test]
    fn cli_rules_are_never_removed_or_overwritten() {
        let d = [want(Key::Pid(7), Action::Enable), want(Key::Uid(9), Action::Enable)];
        let a = [
            have(Key::Pid(7), Action::Enable, Owner::Cli),
            have(Key::Uid(9), Action::Exclude, Owner::Cli),
            have(Key::Comm(*b"ssh\0\0\0\0\0\0\0\0\0\0\0\0\0"), Action::Exclude, Owner::Cli),
        ];
        let p = plan(&d, &a);
        assert!(p.is_noop(), "{p:?}");
        assert_eq!(p.covered_by_cli, 1);
        assert_eq!(p.conflicts.len(), 1);
        assert!(p.conflicts[0].contains("uid 9 is wanted enabled but a CLI rule excludes it"), "{:?}", p.conflicts);
    }

    #[test]
    fn an_agent_rule_with_the_wrong_action_is_replaced() {
        let d = [want(Key::Cgroup(3), Action::Exclude)];
        let a = [have(Key::Cgroup(3), Action::Enable, Owner::Agent)];
        let p = plan(&d, &a);
        assert_eq!(p.replace, [Key::Cgroup(3)]);
        assert_eq!(p.add, d);
        assert!(p.remove.is_empty());
    }

    #[test]
    fn dropped_wants_remove_only_agent_rules() {
        let a = [have(Key::Cgroup(3), Action::Enable, Owner::Agent), have(Key::Cgroup(4), Action::Enable, Owner::Cli)];
        let p = plan(&[], &a);
        assert_eq!(p.remove, [Key::Cgroup(3)]);
    }

    #[test]
    fn something_unresolved_holds_back_only_the_removals_it_concerns() {
        let unit = |u: &str| Some(RuleOrigin::new(OriginKind::Unit, u).unwrap());
        let pod = Some(RuleOrigin::new(OriginKind::Pod, "shop/web").unwrap());
        let path = Some(RuleOrigin::new(OriginKind::Path, "/a.slice").unwrap());
        let systemd_down = [Concern::Origin(OriginKind::Unit, "db.service".into())];
        assert!(held_back(&Key::Cgroup(1), unit("db.service").as_ref(), &systemd_down));
        assert!(!held_back(&Key::Cgroup(2), unit("web.service").as_ref(), &systemd_down), "another unit");
        assert!(!held_back(&Key::Cgroup(3), path.as_ref(), &systemd_down));
        assert!(!held_back(&Key::Uid(5), None, &systemd_down), "user rules need no resolving");
        assert!(held_back(&Key::Cgroup(4), None, &systemd_down), "an unknown origin could be anything");
        let unlisted = [Concern::Kind(OriginKind::Pod)];
        assert!(held_back(&Key::Cgroup(5), pod.as_ref(), &unlisted));
        assert!(!held_back(&Key::Cgroup(6), unit("db.service").as_ref(), &unlisted), "pods unlisted: units go");
        assert!(held_back(&Key::Cgroup(7), path.as_ref(), &[Concern::Cgroup(7)]));
        assert!(!held_back(&Key::Cgroup(7), path.as_ref(), &[]));
    }

    #[test]
    fn the_same_key_wanted_both_ways_is_excluded_and_reported() {
        let d = [want(Key::Cgroup(3), Action::Enable), want(Key::Cgroup(3), Action::Exclude)];
        let p = plan(&d, &[]);
        assert_eq!(p.add, [d[1].clone()]);
        assert_eq!(p.conflicts.len(), 1);
        let d = [want(Key::Cgroup(3), Action::Enable), want(Key::Cgroup(3), Action::Enable)];
        assert_eq!(plan(&d, &[]).add.len(), 1, "duplicates collapse");
    }
}
