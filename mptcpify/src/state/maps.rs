//! Handles on the pinned maps ([`State`]), the rules' storage in production, and what the
//! kernel says about the attached program.
use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Pod,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
};
use mptcpify_common::{
    ACTION_AUDIT, ACTION_ENABLE, ACTION_EXCLUDE, CGROUP_RULES_MAP, COMM_LEN, COMM_RULES_MAP, CONFIG_MAP, COUNTERS_MAP,
    Config, Counter, EVENTS_MAP, FACTS_MAP, LoadFacts, MAX_RULES, ORIGINS_MAP, OUTCOMES_MAP, Origin, Outcomes,
    PID_RULES_MAP, PIN_DIR, Rule, RuleKind, RuleRef, UID_RULES_MAP,
};

use super::{
    guard::Guard,
    meta::{self, LayoutError, Meta},
    origin::RuleOrigin,
    pins::{self, Lock},
    rules::{Full, Key, RuleStore},
};

const BPF_NOEXIST: u64 = 1;

/// What `all` does; state from before audit rules has no `all_action` (0): enable.
fn all_action(c: &Config) -> u32 {
    if c.all_action == ACTION_AUDIT { ACTION_AUDIT } else { ACTION_ENABLE }
}

/// What the kernel says about the attached program: its size after verification and, while
/// `kernel.bpf_stats_enabled=1`, how often it ran and for how long (the program body only, not
/// the trampoline that calls it).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ProgramStats {
    pub verified_instructions: Option<u32>,
    pub jited_bytes: u32,
    pub run_count: u64,
    pub run_time_ns: u64,
}

pub fn program_stats(program_id: u32) -> Result<Option<ProgramStats>> {
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        if info.id() == program_id {
            return Ok(Some(ProgramStats {
                verified_instructions: info.verified_instruction_count(),
                jited_bytes: info.size_jitted(),
                run_count: info.run_count(),
                run_time_ns: info.run_time().as_nanos() as u64,
            }));
        }
    }
    Ok(None)
}

/// How the attached program was loaded; `None` for state pinned by a version without them.
pub fn load_facts() -> Option<LoadFacts> {
    let facts: Array<MapData, LoadFacts> = Array::try_from(Map::Array(open_map(FACTS_MAP).ok()?)).ok()?;
    facts.get(&0, 0).ok()
}

pub fn open_map(name: &str) -> Result<MapData> {
    let path = Path::new(PIN_DIR).join(name);
    MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
}

/// Handles on the pinned maps.
pub struct State {
    cgroups: HashMap<MapData, u64, Rule>,
    pids: HashMap<MapData, u32, Rule>,
    comms: HashMap<MapData, [u8; COMM_LEN], Rule>,
    uids: HashMap<MapData, u32, Rule>,
    origins: HashMap<MapData, u64, Origin>,
    counters: PerCpuArray<MapData, u64>,
    config: Array<MapData, Config>,
    outcomes: HashMap<MapData, RuleRef, Outcomes>,
    guard: Guard,
    /// `None` until state pinned before layouts were numbered is adopted by its first edit.
    meta: Option<Meta>,
}

/// What changes with every edit of the pinned state, read in a few syscalls however many rules
/// there are: the agent compares it between full comparisons of the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub link_id: u32,
    pub config: Config,
    pub edits: u32,
    /// An edit under way, or one killed midway (its PID).
    pub edit_pid: Option<u32>,
}

/// `None` while nothing is attached or the state cannot be read.
pub fn fingerprint() -> Option<Fingerprint> {
    let link_id = pins::link_ids().ok()?.link_id;
    let config: Array<MapData, Config> = Array::try_from(Map::Array(open_map(CONFIG_MAP).ok()?)).ok()?;
    let meta = Meta::open().ok()?;
    Some(Fingerprint {
        link_id,
        config: config.get(&0, 0).ok()?,
        edits: meta.as_ref().map_or(Ok(0), Meta::edits).ok()?,
        edit_pid: meta.as_ref().map_or(Ok(None), Meta::edit_pid).ok()?,
    })
}

/// Opens one pinned map with the shape this version expects; another shape means state of
/// another layout.
pub(super) fn shaped<T>(name: &'static str, typed: impl FnOnce(MapData) -> Result<T, MapError>) -> Result<T> {
    typed(open_map(name)?).map_err(|e| LayoutError::Unreadable { map: name, reason: e.to_string() }.into())
}

fn get<K: Pod>(map: &HashMap<MapData, K, Rule>, key: &K) -> Result<Option<Rule>> {
    match map.get(key, 0) {
        Ok(rule) => Ok(Some(rule)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(anyhow!(e).context("reading the rules")),
    }
}

fn insert<K: Pod>(map: &mut HashMap<MapData, K, Rule>, key: K, rule: Rule, kind: RuleKind) -> Result<()> {
    match map.insert(key, rule, BPF_NOEXIST) {
        Ok(()) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
            Err(Full { kind, capacity: MAX_RULES }.into())
        }
        Err(e) => Err(anyhow!(e).context(format!("adding a {} rule", kind.name()))),
    }
}

fn entries<K: Pod>(map: &HashMap<MapData, K, Rule>) -> Result<Vec<(K, Rule)>> {
    map.iter().collect::<Result<Vec<_>, _>>().context("listing the rules")
}

impl State {
    /// Opens the pinned maps, once [`super::pins::verify_dir`] trusts their directory and the
    /// state's layout is this version's.
    pub fn open() -> Result<Self> {
        pins::verify_dir()?;
        let meta = Meta::open()?;
        meta::check(meta.as_ref().map(Meta::layout).transpose()?)?;
        Ok(Self {
            cgroups: shaped(CGROUP_RULES_MAP, |m| HashMap::try_from(Map::HashMap(m)))?,
            pids: shaped(PID_RULES_MAP, |m| HashMap::try_from(Map::HashMap(m)))?,
            comms: shaped(COMM_RULES_MAP, |m| HashMap::try_from(Map::HashMap(m)))?,
            uids: shaped(UID_RULES_MAP, |m| HashMap::try_from(Map::HashMap(m)))?,
            origins: shaped(ORIGINS_MAP, |m| HashMap::try_from(Map::HashMap(m)))?,
            counters: shaped(COUNTERS_MAP, |m| PerCpuArray::try_from(Map::PerCpuArray(m)))?,
            config: shaped(CONFIG_MAP, |m| Array::try_from(Map::Array(m)))?,
            outcomes: shaped(OUTCOMES_MAP, |m| HashMap::try_from(Map::HashMap(m)))?,
            guard: Guard::open()?,
            meta,
        })
    }

    /// Runs one edit of the pinned state, crash-consistently: the journal names this process
    /// while `edit` runs, so that if it is killed midway the next edit (or the agent) finds its
    /// PID there and repairs what it left (counts, the cgroup cache, origins without a rule)
    /// before its own change. State pinned before layouts were numbered is adopted first.
    pub fn edit<T>(_lock: &Lock, edit: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut st = State::open()?;
        if st.meta.is_none() {
            log::info!("adopting pinned state of an unnumbered layout as layout {}", mptcpify_common::LAYOUT_VERSION);
            crate::bpf::loader::pin_meta(Path::new(PIN_DIR))?;
            st.meta = Meta::open()?;
        }
        let mut meta = st.meta.take().context("the pinned state has no META map")?;
        if let Some(pid) = meta.edit_pid()? {
            log::warn!("an edit (pid {pid}) was killed midway; repairing what it left");
            st.repair()?;
        }
        meta.begin_edit()?;
        let result = edit(&mut st);
        if result.is_err() {
            // Its rollback may have failed halfway too.
            st.repair()?;
        }
        meta.end_edit()?;
        st.meta = Some(meta);
        // After the edit, so a watcher is never attached for rules not yet there; a failure
        // costs only predictions, and the next edit tries again.
        if let Err(e) = st.config().and_then(|c| crate::bpf::audit_watch::sync(&c)) {
            log::warn!("audit watchers: {e:#}");
        }
        result
    }

    /// Makes the derived state agree with the rules again: counts, the cgroup generation, and
    /// no origin without its rule.
    fn repair(&mut self) -> Result<()> {
        self.recount()?;
        for id in self.orphan_origins() {
            self.origins.remove(&id).with_context(|| format!("removing the origin of cgroup id {id}"))?;
        }
        // A removal killed midway may have left some of its rule's refusal counts.
        let rules: std::collections::HashSet<RuleRef> = self.entries()?.iter().map(|(k, _)| k.rule_ref()).collect();
        self.guard.forget_counts_except(&rules)
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).context("reading the program config")
    }

    pub fn set_config(&mut self, config: Config) -> Result<()> {
        self.config.set(0, config, 0).context("writing the program config")
    }

    /// Keeps the program's per-table counts (which let it skip empty tables) in step with one
    /// insert (`delta` 1) or removal (-1), bumping the cgroup generation with it when asked;
    /// O(1), so edits stay fast with many rules loaded.
    fn adjust_counts(&mut self, key: &Key, action: u32, delta: i32, bump_generation: bool) -> Result<()> {
        let mut c = self.config()?;
        if bump_generation && matches!(key, Key::Cgroup(_)) {
            // After the map edit, so the program's cached cgroup walks never outlive it.
            c.cgroup_generation = c.cgroup_generation.wrapping_add(1);
        }
        let count = match key {
            Key::Cgroup(_) => &mut c.cgroup_rules,
            Key::Pid(_) => &mut c.pid_rules,
            Key::Comm(_) => &mut c.comm_rules,
            Key::Uid(_) => &mut c.uid_rules,
            Key::All => return Ok(()),
        };
        *count = count.saturating_add_signed(delta);
        if action == ACTION_EXCLUDE {
            c.exclusions = c.exclusions.saturating_add_signed(delta);
        }
        if action == ACTION_AUDIT {
            c.audits = c.audits.saturating_add_signed(delta);
        }
        self.set_config(c)
    }

    /// Recounts every table into the program's config and bumps the cgroup generation (repairs
    /// counts, and cached cgroup walks, that an interrupted edit left behind; `mptcpify sync`
    /// calls it).
    pub fn recount(&mut self) -> Result<()> {
        let mut config = self.counted()?;
        config.cgroup_generation = config.cgroup_generation.wrapping_add(1);
        self.set_config(config)
    }

    /// The program's config with every count taken from the tables.
    fn counted(&self) -> Result<Config> {
        let mut config = self.config()?;
        let all = self.entries()?;
        let count = |kind: RuleKind| all.iter().filter(|(k, _)| k.kind() == kind).count() as u32;
        config.cgroup_rules = count(RuleKind::Cgroup);
        config.pid_rules = count(RuleKind::Pid);
        config.comm_rules = count(RuleKind::Comm);
        config.uid_rules = count(RuleKind::Uid);
        config.exclusions = all.iter().filter(|(_, r)| r.action == ACTION_EXCLUDE).count() as u32;
        let audited = |(k, r): &&(Key, Rule)| r.action == ACTION_AUDIT && k.kind() != RuleKind::All;
        config.audits = all.iter().filter(audited).count() as u32;
        Ok(config)
    }

    /// Cgroup ids that have an origin but no rule.
    fn orphan_origins(&self) -> Vec<u64> {
        let gone = |id: &u64| matches!(self.cgroups.get(id, 0), Err(MapError::KeyNotFound));
        self.origins.keys().filter_map(Result::ok).filter(gone).collect()
    }

    /// What disagrees with the rules: per-table counts, origins without their rule, and an
    /// edit that was killed midway (or is under way). Empty when the state is consistent.
    pub fn inconsistencies(&self) -> Result<Vec<String>> {
        let (held, counted) = (self.config()?, self.counted()?);
        let mut found = Vec::new();
        for (what, held, counted) in [
            ("cgroup rules", held.cgroup_rules, counted.cgroup_rules),
            ("pid rules", held.pid_rules, counted.pid_rules),
            ("comm rules", held.comm_rules, counted.comm_rules),
            ("uid rules", held.uid_rules, counted.uid_rules),
            ("exclusions", held.exclusions, counted.exclusions),
            ("audit rules", held.audits, counted.audits),
        ] {
            if held != counted {
                found.push(format!("{what}: {counted} in the tables, {held} counted"));
            }
        }
        for id in self.orphan_origins() {
            found.push(format!("an origin for cgroup id {id}, which has no rule"));
        }
        if let Some(pid) = self.meta.as_ref().map(Meta::edit_pid).transpose()?.flatten() {
            found.push(format!("an edit by pid {pid} is under way or was killed midway"));
        }
        Ok(found)
    }

    /// Sum over CPUs of each counter slot.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        Counter::ALL.iter().map(|&c| Ok((c, self.counters.get(&(c as u32), 0)?.iter().sum()))).collect()
    }

    /// What became of the connections each rule upgraded, by rule.
    pub fn outcomes(&self) -> Result<std::collections::HashMap<RuleRef, Outcomes>> {
        self.outcomes.iter().collect::<Result<_, _>>().context("reading the outcome counters")
    }

    /// The compatibility guard's maps.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    pub fn guard_mut(&mut self) -> &mut Guard {
        &mut self.guard
    }

    pub fn origin(&self, cgroup: u64) -> Option<RuleOrigin> {
        self.origins.get(&cgroup, 0).ok().as_ref().and_then(RuleOrigin::from_wire)
    }

    pub fn set_origin(&mut self, cgroup: u64, origin: &RuleOrigin) -> Result<()> {
        self.origins.insert(cgroup, origin.to_wire(), 0).context("recording a rule's origin")
    }

    pub fn events() -> Result<RingBuf<MapData>> {
        Ok(RingBuf::try_from(Map::RingBuf(open_map(EVENTS_MAP)?))?)
    }
}

impl RuleStore for State {
    fn get(&self, key: &Key) -> Result<Option<Rule>> {
        match key {
            Key::Cgroup(id) => get(&self.cgroups, id),
            Key::Pid(p) => get(&self.pids, p),
            Key::Comm(c) => get(&self.comms, c),
            Key::Uid(u) => get(&self.uids, u),
            Key::All => {
                let c = self.config()?;
                Ok((c.all != 0).then(|| Rule { owner: c.all - 1, action: all_action(&c), ..Default::default() }))
            }
        }
    }

    /// Crash-consistent at every step: the count goes up first (killed here, a count one too
    /// high only costs the program a lookup), then the rule, then the cgroup generation (so no
    /// cached walk outlives the edit; killed before it, the next `enable` of the same key, or
    /// `sync`, bumps it: see [`RuleStore::confirm`]).
    fn insert_new(&mut self, key: &Key, rule: Rule) -> Result<()> {
        if *key == Key::All {
            let mut config = self.config()?;
            config.all = 1 + rule.owner;
            config.all_action = rule.action;
            return self.set_config(config);
        }
        self.adjust_counts(key, rule.action, 1, false)?;
        let inserted = match *key {
            Key::Cgroup(id) => insert(&mut self.cgroups, id, rule, key.kind()),
            Key::Pid(p) => insert(&mut self.pids, p, rule, key.kind()),
            Key::Comm(c) => insert(&mut self.comms, c, rule, key.kind()),
            Key::Uid(u) => insert(&mut self.uids, u, rule, key.kind()),
            Key::All => unreachable!("handled above"),
        };
        if let Err(e) = inserted {
            let _ = self.adjust_counts(key, rule.action, -1, false);
            return Err(e);
        }
        self.confirm(key)
    }

    fn confirm(&mut self, key: &Key) -> Result<()> {
        if !matches!(key, Key::Cgroup(_)) {
            return Ok(());
        }
        let mut c = self.config()?;
        c.cgroup_generation = c.cgroup_generation.wrapping_add(1);
        self.set_config(c)
    }

    fn remove(&mut self, key: &Key) -> Result<()> {
        let action = self.get(key)?.map(|r| r.action);
        let result = match key {
            Key::Cgroup(id) => {
                let _ = self.origins.remove(id);
                self.cgroups.remove(id)
            }
            Key::Pid(p) => self.pids.remove(p),
            Key::Comm(c) => self.comms.remove(c),
            Key::Uid(u) => self.uids.remove(u),
            Key::All => {
                let mut config = self.config()?;
                config.all = 0;
                config.all_action = 0;
                // The switch off first: an outcome counted between would make the entry again.
                self.set_config(config)?;
                let _ = self.outcomes.remove(&key.rule_ref());
                return self.guard.forget_counts(key);
            }
        };
        result.with_context(|| format!("removing the rule of {key}"))?;
        // A rule made again later starts counting afresh; a missing entry is no error.
        let _ = self.outcomes.remove(&key.rule_ref());
        self.guard.forget_counts(key)?;
        match action {
            // After the removal: killed before it, the count is one too high (a lookup more) and a
            // cached walk may name the removed rule, which then decides nothing.
            Some(action) => self.adjust_counts(key, action, -1, true),
            None => Ok(()),
        }
    }

    fn entries(&self) -> Result<Vec<(Key, Rule)>> {
        let mut all = Vec::new();
        all.extend(entries(&self.cgroups)?.into_iter().map(|(k, r)| (Key::Cgroup(k), r)));
        all.extend(entries(&self.pids)?.into_iter().map(|(k, r)| (Key::Pid(k), r)));
        all.extend(entries(&self.comms)?.into_iter().map(|(k, r)| (Key::Comm(k), r)));
        all.extend(entries(&self.uids)?.into_iter().map(|(k, r)| (Key::Uid(k), r)));
        let c = self.config()?;
        if c.all != 0 {
            let action = all_action(&c);
            // The switch has no map entry to count its hits in: its counter slot does.
            let slot = if action == ACTION_AUDIT { Counter::WouldUpgrade } else { Counter::UpgradedByAll };
            let hits = self.counters.get(&(slot as u32), 0)?.iter().sum();
            all.push((Key::All, Rule { action, owner: c.all - 1, hits }));
        }
        all.sort_by_key(|(k, _)| *k);
        Ok(all)
    }
}
