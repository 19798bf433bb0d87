//! The compatibility guard's pinned state: the options this kernel refuses on MPTCP (probed at
//! load), the refusals seen on upgraded sockets, and the programs kept TCP or allowed anyway.
//!
//! Scope: a program is its command name (the thread-group leader's `comm`, as `--comm` rules
//! match), within the rule that upgraded the refused socket; the same program under another rule
//! is still upgraded. An operator's "upgrade it anyway" covers the program under every rule.
use std::collections::HashSet;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData, MapError};
use mptcpify_common::{
    COMM_LEN, GUARD_ALLOW, GUARD_KEEP_TCP, GUARD_MAP, GuardEntry, GuardKey, REFUSALS_MAP, REFUSED_OPTIONS_MAP,
    RefusalKey, RuleRef, SockOpt,
};

use super::{maps::shaped, rules::Key};
use crate::compat::probe::RefusedOptions;

/// Handles on the guard's pinned maps.
pub struct Guard {
    entries: HashMap<MapData, GuardKey, GuardEntry>,
    refusals: HashMap<MapData, RefusalKey, u64>,
    refused_options: HashMap<MapData, SockOpt, u32>,
}

/// What the guard holds about one program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Kept TCP within `rule`, for the refusal in the entry.
    KeepTcp { rule: RuleRef, entry: GuardEntry },
    /// Upgraded anyway under every rule: the operator said so.
    Allowed,
}

impl Guard {
    pub fn open() -> Result<Self> {
        Ok(Self {
            entries: shaped(GUARD_MAP, |m| HashMap::try_from(Map::HashMap(m)))?,
            refusals: shaped(REFUSALS_MAP, |m| HashMap::try_from(Map::HashMap(m)))?,
            refused_options: shaped(REFUSED_OPTIONS_MAP, |m| HashMap::try_from(Map::HashMap(m)))?,
        })
    }

    /// The options the loader found refused on MPTCP; empty when its probe could not run.
    pub fn refused_options(&self) -> Result<RefusedOptions> {
        self.refused_options.iter().collect::<Result<_, _>>().context("reading the refused options")
    }

    /// Refusals on upgraded sockets, by rule, option, call and program.
    pub fn refusals(&self) -> Result<Vec<(RefusalKey, u64)>> {
        self.refusals.iter().collect::<Result<_, _>>().context("reading the option refusals")
    }

    /// Every program the guard decided about, with its command name.
    pub fn verdicts(&self) -> Result<Vec<([u8; COMM_LEN], Verdict)>> {
        let mut all = Vec::new();
        for item in self.entries.iter() {
            let (key, entry) = item.context("reading the guard")?;
            let verdict = match entry.verdict {
                GUARD_ALLOW => Verdict::Allowed,
                _ => Verdict::KeepTcp { rule: key.rule, entry },
            };
            all.push((key.comm, verdict));
        }
        all.sort_by_key(|(comm, v)| (*comm, matches!(v, Verdict::Allowed)));
        Ok(all)
    }

    /// Removes what the guard holds about `comm` (every program when `None`): its next sockets
    /// are upgraded again, until an option is refused again. How many entries went.
    pub fn forget(&mut self, comm: Option<&[u8; COMM_LEN]>) -> Result<usize> {
        let keys: Vec<GuardKey> = self
            .entries
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .context("reading the guard")?
            .into_iter()
            .filter(|k| comm.is_none_or(|c| &k.comm == c))
            .collect();
        for key in &keys {
            remove_if_present(&mut self.entries, key)?;
        }
        Ok(keys.len())
    }

    /// Upgrades `comm` under every rule, whatever it has refused: the allowance first, so that a
    /// refusal in between cannot keep it TCP again.
    pub fn allow(&mut self, comm: [u8; COMM_LEN]) -> Result<()> {
        let entry = GuardEntry { verdict: GUARD_ALLOW, ..GuardEntry::default() };
        self.entries.insert(GuardKey { comm, rule: RuleRef::ANY }, entry, 0).context("writing the guard")?;
        let kept: Vec<GuardKey> = self
            .entries
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, e)| k.comm == comm && e.verdict == GUARD_KEEP_TCP)
            .map(|(k, _)| k)
            .collect();
        for key in &kept {
            remove_if_present(&mut self.entries, key)?;
        }
        Ok(())
    }

    /// Drops the refusals counted under `rule`, which is being removed: a rule made again
    /// later starts counting afresh, as its outcome counters do. The guard's decisions stay: a
    /// rule replaced by one of another action (audit, then enable) keeps them.
    pub fn forget_counts(&mut self, key: &Key) -> Result<()> {
        let rule = key.rule_ref();
        match key {
            // Every command rule has the same rule reference (key 0); its program is its name.
            Key::Comm(name) => self.forget_where(|k| k.rule == rule && &k.comm == name),
            _ => self.forget_where(|k| k.rule == rule),
        }
    }

    /// Drops the refusals counted under rules not in `rules` (what a removal killed midway left).
    pub fn forget_counts_except(&mut self, rules: &HashSet<RuleRef>) -> Result<()> {
        self.forget_where(|k| !rules.contains(&k.rule))
    }

    /// Drops the guard's decisions under the rules in `rules` (the agent's pods that left); the
    /// operator's allowances, under no rule in particular, stay.
    pub fn forget_decisions_of(&mut self, rules: &HashSet<RuleRef>) -> Result<()> {
        let gone: Vec<GuardKey> =
            self.entries.keys().filter_map(Result::ok).filter(|k| rules.contains(&k.rule)).collect();
        for key in &gone {
            remove_if_present(&mut self.entries, key)?;
        }
        Ok(())
    }

    fn forget_where(&mut self, gone: impl Fn(&RefusalKey) -> bool) -> Result<()> {
        let refusals: Vec<RefusalKey> = self.refusals.keys().filter_map(Result::ok).filter(|k| gone(k)).collect();
        for key in &refusals {
            remove_if_present(&mut self.refusals, key)?;
        }
        Ok(())
    }
}

fn remove_if_present<K: aya::Pod, V: aya::Pod>(map: &mut HashMap<MapData, K, V>, key: &K) -> Result<()> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(anyhow::anyhow!(e).context("removing a guard entry")),
    }
}
