//! Rules kept in memory: the [`RuleStore`] the bookkeeping's unit tests run against, and a
//! stand-in for other crates' tests (feature `test-helpers`).
use std::collections::BTreeMap;

use anyhow::{Result, bail};
use mptcpify_common::Rule;

use super::rules::{Full, Key, RuleStore};

/// In-memory rules with a per-kind capacity, like the kernel tables.
#[derive(Debug, Default)]
pub struct MemStore {
    pub rules: BTreeMap<Key, Rule>,
    /// Per-kind capacity.
    pub capacity: usize,
}

impl RuleStore for MemStore {
    fn get(&self, key: &Key) -> Result<Option<Rule>> {
        Ok(self.rules.get(key).copied())
    }
    fn insert_new(&mut self, key: &Key, rule: Rule) -> Result<()> {
        if self.rules.contains_key(key) {
            bail!("rule exists");
        }
        if self.rules.keys().filter(|k| k.kind() == key.kind()).count() >= self.capacity {
            return Err(Full { kind: key.kind(), capacity: self.capacity as u32 }.into());
        }
        self.rules.insert(*key, rule);
        Ok(())
    }
    fn remove(&mut self, key: &Key) -> Result<()> {
        self.rules.remove(key).map(drop).ok_or_else(|| anyhow::anyhow!("no such rule"))
    }
    fn entries(&self) -> Result<Vec<(Key, Rule)>> {
        Ok(self.rules.iter().map(|(k, v)| (*k, *v)).collect())
    }
}
