//! Rule bookkeeping, independent of where the rules are stored: the kernel maps in production,
//! a `BTreeMap` in unit tests. Every change set is all-or-nothing.
use std::{collections::BTreeMap, fmt::Display};

use anyhow::{Result, bail};
use mptcpify_common::{ACTION_ENABLE, Rule};

/// Storage of one kind of rule, keyed by cgroup id or PID.
pub trait RuleTable<K> {
    fn get(&self, key: K) -> Result<Option<Rule>>;
    /// Inserts a rule that must not exist yet; fails with [`Full`] when the table is full.
    fn insert_new(&mut self, key: K, rule: Rule) -> Result<()>;
    fn remove(&mut self, key: K) -> Result<()>;
    fn entries(&self) -> Result<Vec<(K, Rule)>>;
    fn capacity(&self) -> u32;
}

/// A table refused an insert because it holds `capacity` rules already.
#[derive(Debug, thiserror::Error)]
#[error("the {what} rule table is full ({capacity} rules); disable some rules first")]
pub struct Full {
    pub what: &'static str,
    pub capacity: u32,
}

/// What one requested change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Added,
    AlreadyEnabled,
    Removed,
}

/// Enables every key, or none: on failure the keys this call added are removed again.
/// Keys already enabled keep their rule (and hit counter) untouched.
pub fn enable_all<K: Copy + Display>(table: &mut impl RuleTable<K>, keys: &[K]) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::with_capacity(keys.len());
    let mut added = Vec::new();
    for &key in keys {
        let result = match table.get(key) {
            Ok(Some(_)) => Ok(Outcome::AlreadyEnabled),
            Ok(None) => table
                .insert_new(key, Rule { action: ACTION_ENABLE, ..Default::default() })
                .map(|()| Outcome::Added),
            Err(e) => Err(e),
        };
        match result {
            Ok(outcome) => {
                if outcome == Outcome::Added {
                    added.push(key);
                }
                outcomes.push(outcome);
            }
            Err(e) => {
                for k in added {
                    let _ = table.remove(k);
                }
                return Err(e);
            }
        }
    }
    Ok(outcomes)
}

/// Disables every key, or none: a key that is not enabled fails the whole call before any change.
pub fn disable_all<K: Copy + Display>(
    table: &mut impl RuleTable<K>,
    keys: &[K],
    describe: impl Fn(K) -> String,
) -> Result<Vec<Outcome>> {
    for &key in keys {
        if table.get(key)?.is_none() {
            bail!("{} is not enabled; `mptcpify status` lists the rules", describe(key));
        }
    }
    for &key in keys {
        table.remove(key)?;
    }
    Ok(vec![Outcome::Removed; keys.len()])
}

/// In-memory table for the unit tests of the bookkeeping above.
#[derive(Debug, Default)]
pub struct MemTable<K: Ord> {
    pub rules: BTreeMap<K, Rule>,
    pub capacity: u32,
}

impl<K: Ord + Copy> RuleTable<K> for MemTable<K> {
    fn get(&self, key: K) -> Result<Option<Rule>> {
        Ok(self.rules.get(&key).copied())
    }
    fn insert_new(&mut self, key: K, rule: Rule) -> Result<()> {
        if self.rules.contains_key(&key) {
            bail!("rule exists");
        }
        if self.rules.len() as u32 >= self.capacity {
            return Err(Full { what: "test", capacity: self.capacity }.into());
        }
        self.rules.insert(key, rule);
        Ok(())
    }
    fn remove(&mut self, key: K) -> Result<()> {
        self.rules.remove(&key).map(drop).ok_or_else(|| anyhow::anyhow!("no such rule"))
    }
    fn entries(&self) -> Result<Vec<(K, Rule)>> {
        Ok(self.rules.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn capacity(&self) -> u32 {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(capacity: u32) -> MemTable<u32> {
        MemTable { rules: BTreeMap::new(), capacity }
    }

    #[test]
    fn enabling_twice_is_idempotent_and_keeps_hits() {
        let mut t = table(10);
        assert_eq!(enable_all(&mut t, &[1, 2]).unwrap(), [Outcome::Added, Outcome::Added]);
        t.rules.get_mut(&1).unwrap().hits = 7;
        assert_eq!(enable_all(&mut t, &[1]).unwrap(), [Outcome::AlreadyEnabled]);
        assert_eq!(t.rules[&1].hits, 7);
        assert_eq!(t.rules.len(), 2);
    }

    #[test]
    fn a_full_table_rolls_back_the_whole_call() {
        let mut t = table(3);
        enable_all(&mut t, &[1]).unwrap();
        let e = enable_all(&mut t, &[2, 1, 3, 4]).unwrap_err();
        assert!(e.downcast_ref::<Full>().is_some(), "{e}");
        assert_eq!(t.rules.keys().copied().collect::<Vec<_>>(), [1], "2 and 3 were rolled back, 1 kept");
    }

    #[test]
    fn disabling_something_not_enabled_changes_nothing() {
        let mut t = table(10);
        enable_all(&mut t, &[1, 2]).unwrap();
        let e = disable_all(&mut t, &[1, 5], |k| format!("pid {k}")).unwrap_err();
        assert!(e.to_string().contains("pid 5 is not enabled"), "{e}");
        assert_eq!(t.rules.len(), 2);
        assert_eq!(disable_all(&mut t, &[1, 2], |k| k.to_string()).unwrap().len(), 2);
        assert!(t.rules.is_empty());
    }
}
