//! Rules and their bookkeeping, independent of where they are stored: the kernel maps in
//! production ([`super::maps::State`]), memory in unit tests. Every change set is
//! all-or-nothing.
use std::fmt;

use anyhow::{Result, bail};
use mptcpify_common::{
    ACTION_AUDIT, ACTION_ENABLE, ACTION_EXCLUDE, COMM_LEN, OWNER_AGENT, OWNER_CLI, Rule, RuleKind, RuleRef,
};

/// What a rule matches, as the kernel program keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Cgroup(u64),
    Pid(u32),
    Comm([u8; COMM_LEN]),
    Uid(u32),
    /// Every process (a switch in the program's config, not a map entry).
    All,
}

impl Key {
    pub fn kind(&self) -> RuleKind {
        match self {
            Key::Cgroup(_) => RuleKind::Cgroup,
            Key::Pid(_) => RuleKind::Pid,
            Key::Comm(_) => RuleKind::Comm,
            Key::Uid(_) => RuleKind::Uid,
            Key::All => RuleKind::All,
        }
    }

    /// How the outcome program names this rule. Command rules share one (key 0): the kernel
    /// program keeps no name per socket.
    pub fn rule_ref(&self) -> RuleRef {
        let key = match *self {
            Key::Cgroup(id) => id,
            Key::Pid(p) => p.into(),
            Key::Uid(u) => u.into(),
            Key::Comm(_) | Key::All => 0,
        };
        RuleRef { kind: self.kind() as u32, _pad: 0, key }
    }

    /// `--comm NAME` as the kernel stores it; the kernel keeps 15 bytes of a command name.
    pub fn comm(name: &str) -> Result<Self> {
        if name.is_empty() {
            bail!("empty command name");
        }
        if name.len() > COMM_LEN - 1 {
            bail!(
                "command name {name:?} is {} bytes; the kernel's command name (comm) has at most {}: use {:?}",
                name.len(),
                COMM_LEN - 1,
                String::from_utf8_lossy(&name.as_bytes()[..COMM_LEN - 1])
            );
        }
        if name.contains('\0') {
            bail!("command name {name:?} contains a NUL byte");
        }
        let mut comm = [0u8; COMM_LEN];
        comm[..name.len()].copy_from_slice(name.as_bytes());
        Ok(Key::Comm(comm))
    }
}

pub fn comm_str(comm: &[u8; COMM_LEN]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Cgroup(id) => write!(f, "cgroup id {id}"),
            Key::Pid(p) => write!(f, "pid {p}"),
            Key::Comm(c) => write!(f, "comm {}", comm_str(c)),
            Key::Uid(u) => write!(f, "uid {u}"),
            Key::All => write!(f, "all"),
        }
    }
}

/// Who made a rule: the agent only ever removes its own, so it and the CLI share the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    Cli,
    Agent,
}

impl Owner {
    pub const fn name(self) -> &'static str {
        match self {
            Owner::Cli => "cli",
            Owner::Agent => "agent",
        }
    }

    pub const fn code(self) -> u32 {
        match self {
            Owner::Cli => OWNER_CLI,
            Owner::Agent => OWNER_AGENT,
        }
    }

    /// [`Rule::owner`] as stored; anything but the agent's code is the CLI's.
    pub const fn from_code(code: u32) -> Self {
        if code == OWNER_AGENT { Owner::Agent } else { Owner::Cli }
    }
}

/// Whether a rule upgrades, protects, or only counts what it would upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Enable,
    Exclude,
    /// Sockets stay TCP; counted and reported as `would-upgrade`.
    Audit,
}

impl Action {
    pub const fn code(self) -> u32 {
        match self {
            Action::Enable => ACTION_ENABLE,
            Action::Exclude => ACTION_EXCLUDE,
            Action::Audit => ACTION_AUDIT,
        }
    }

    pub const fn from_code(code: u32) -> Self {
        match code {
            ACTION_EXCLUDE => Action::Exclude,
            ACTION_AUDIT => Action::Audit,
            _ => Action::Enable,
        }
    }

    /// The command's name: `enable`, `exclude`, `audit` (`enable --audit`).
    pub const fn name(self) -> &'static str {
        match self {
            Action::Enable => "enable",
            Action::Exclude => "exclude",
            Action::Audit => "audit",
        }
    }

    /// What a rule with this action did: `enabled`, `excluded`, `audited`.
    pub const fn done(self) -> &'static str {
        match self {
            Action::Enable => "enabled",
            Action::Exclude => "excluded",
            Action::Audit => "audited",
        }
    }
}

/// A new rule's value in the kernel maps (no hits yet).
pub const fn new_rule(action: Action, owner: Owner) -> Rule {
    Rule { action: action.code(), owner: owner.code(), hits: 0 }
}

/// Storage of rules of every kind.
pub trait RuleStore {
    fn get(&self, key: &Key) -> Result<Option<Rule>>;
    /// Inserts a rule that must not exist yet; fails with [`Full`] when its table is full.
    fn insert_new(&mut self, key: &Key, rule: Rule) -> Result<()>;
    fn remove(&mut self, key: &Key) -> Result<()>;
    fn entries(&self) -> Result<Vec<(Key, Rule)>>;
    /// A rule that exists was asked for again: repair what an interrupted insert of it may
    /// have left behind (the kernel store: the cgroup cache's generation).
    fn confirm(&mut self, _key: &Key) -> Result<()> {
        Ok(())
    }
}

/// A table refused an insert because it is full.
#[derive(Debug, thiserror::Error)]
#[error("the {} rule table is full ({capacity} rules); disable some rules first", kind.name())]
pub struct Full {
    pub kind: RuleKind,
    pub capacity: u32,
}

/// What one requested change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Added,
    AlreadyPresent,
    Removed,
}

impl Outcome {
    pub fn describe(self, action: Action) -> &'static str {
        match (self, action) {
            (Outcome::Added, _) => action.done(),
            (Outcome::AlreadyPresent, Action::Enable) => "already enabled",
            (Outcome::AlreadyPresent, Action::Exclude) => "already excluded",
            (Outcome::AlreadyPresent, Action::Audit) => "already audited",
            (Outcome::Removed, _) => "removed",
        }
    }
}

/// Adds an `action` rule for every key, or none. A key that already has the other action fails
/// the whole call before any change; one with the same action is left as it is (hits kept).
pub fn add_all(store: &mut impl RuleStore, keys: &[Key], action: Action) -> Result<Vec<Outcome>> {
    let mut present = Vec::with_capacity(keys.len());
    for key in keys {
        if *key == Key::All && action == Action::Exclude {
            bail!("--all cannot be excluded; `mptcpify reset` or `disable --all` turns it off");
        }
        match store.get(key)? {
            Some(rule) if Action::from_code(rule.action) != action => {
                let is = Action::from_code(rule.action).done();
                // Audit and enable of one target would each hide what the other shows.
                bail!("{key} is {is}; `mptcpify disable` it first, then {} it", action.name());
            }
            existing => present.push(existing.is_some()),
        }
    }
    let mut outcomes = Vec::with_capacity(keys.len());
    let mut added: Vec<Key> = Vec::new();
    for (key, present) in keys.iter().zip(present) {
        if present || added.contains(key) {
            if present {
                store.confirm(key)?;
            }
            outcomes.push(Outcome::AlreadyPresent);
            continue;
        }
        if let Err(e) = store.insert_new(key, new_rule(action, Owner::Cli)) {
            for k in &added {
                let _ = store.remove(k);
            }
            return Err(e);
        }
        added.push(*key);
        outcomes.push(Outcome::Added);
    }
    Ok(outcomes)
}

/// Whether a CLI edit may touch the agent's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentRules {
    /// Refused: the agent would put them back; its policy is where they change.
    Refuse,
    /// `--force`, for emergencies.
    Override,
}

/// Removes the rule of every key, or none: a key without a rule, or one the agent owns (unless
/// overridden), fails the call before any change.
pub fn remove_all(store: &mut impl RuleStore, keys: &[Key], agent_rules: AgentRules) -> Result<Vec<Outcome>> {
    for key in keys {
        match store.get(key)? {
            None => bail!("{key} has no rule; `mptcpify status` lists the rules"),
            Some(rule) if Owner::from_code(rule.owner) == Owner::Agent && agent_rules == AgentRules::Refuse => bail!(
                "{key} is owned by the agent; change the agent's policy (or `mptcpify disable --force` in an emergency: \
                 the agent restores its rule at its next reconciliation)"
            ),
            Some(_) => {}
        }
    }
    for key in keys {
        store.remove(key)?;
    }
    Ok(vec![Outcome::Removed; keys.len()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::memstore::MemStore;

    fn store(capacity: usize) -> MemStore {
        MemStore { rules: Default::default(), capacity }
    }

    #[test]
    fn adding_twice_is_idempotent_and_keeps_hits() {
        let mut s = store(10);
        let keys = [Key::Cgroup(1), Key::Pid(2)];
        assert_eq!(add_all(&mut s, &keys, Action::Enable).unwrap(), [Outcome::Added, Outcome::Added]);
        s.rules.get_mut(&Key::Cgroup(1)).unwrap().hits = 7;
        assert_eq!(add_all(&mut s, &[Key::Cgroup(1)], Action::Enable).unwrap(), [Outcome::AlreadyPresent]);
        assert_eq!(s.rules[&Key::Cgroup(1)].hits, 7);
        assert_eq!(s.rules.len(), 2);
        // The same key twice in one call is added once.
        assert_eq!(
            add_all(&mut s, &[Key::Uid(5), Key::Uid(5)], Action::Enable).unwrap(),
            [Outcome::Added, Outcome::AlreadyPresent]
        );
    }

    #[test]
    fn a_full_table_rolls_back_the_whole_call() {
        let mut s = store(2);
        add_all(&mut s, &[Key::Pid(1)], Action::Enable).unwrap();
        let e = add_all(&mut s, &[Key::Cgroup(9), Key::Pid(2), Key::Pid(3)], Action::Enable).unwrap_err();
        assert!(e.downcast_ref::<Full>().is_some(), "{e}");
        assert_eq!(s.rules.keys().copied().collect::<Vec<_>>(), [Key::Pid(1)], "9 and 2 were rolled back");
    }

    #[test]
    fn enable_and_exclude_of_the_same_key_conflict_without_changes() {
        let mut s = store(10);
        add_all(&mut s, &[Key::Uid(1000)], Action::Exclude).unwrap();
        let e = add_all(&mut s, &[Key::Pid(1), Key::Uid(1000)], Action::Enable).unwrap_err();
        assert!(e.to_string().contains("uid 1000 is excluded"), "{e}");
        assert_eq!(s.rules.len(), 1, "pid 1 was not added");
        let e = add_all(&mut s, &[Key::All], Action::Exclude).unwrap_err();
        assert!(e.to_string().contains("--all cannot be excluded"), "{e}");
    }

    #[test]
    fn removing_something_without_a_rule_changes_nothing() {
        let mut s = store(10);
        add_all(&mut s, &[Key::Pid(1), Key::Pid(2)], Action::Enable).unwrap();
        let e = remove_all(&mut s, &[Key::Pid(1), Key::Pid(5)], AgentRules::Refuse).unwrap_err();
        assert!(e.to_string().contains("pid 5 has no rule"), "{e}");
        assert_eq!(s.rules.len(), 2);
        assert_eq!(remove_all(&mut s, &[Key::Pid(1), Key::Pid(2)], AgentRules::Refuse).unwrap().len(), 2);
        assert!(s.rules.is_empty());
    }

    #[test]
    fn command_names_follow_the_kernels_comm() {
        assert_eq!(Key::comm("nginx").unwrap().to_string(), "comm nginx");
        assert!(Key::comm("exactly15chars_").is_ok());
        let e = Key::comm("a-very-long-program-name").unwrap_err().to_string();
        assert!(e.contains("at most 15") && e.contains("\"a-very-long-pro\""), "{e}");
        assert!(Key::comm("").is_err());
    }

    #[test]
    fn the_agents_rules_are_removed_only_by_force() {
        let mut s = store(10);
        s.insert_new(&Key::Uid(7), new_rule(Action::Enable, Owner::Agent)).unwrap();
        add_all(&mut s, &[Key::Pid(1)], Action::Enable).unwrap();
        let e = remove_all(&mut s, &[Key::Pid(1), Key::Uid(7)], AgentRules::Refuse).unwrap_err();
        assert!(e.to_string().contains("uid 7 is owned by the agent"), "{e}");
        assert_eq!(s.rules.len(), 2, "nothing removed");
        remove_all(&mut s, &[Key::Uid(7)], AgentRules::Override).unwrap();
        assert_eq!(s.rules.keys().copied().collect::<Vec<_>>(), [Key::Pid(1)]);
    }
}
