//! The pinned state in bpffs: link and maps under [`PIN_DIR`]. It outlives every CLI invocation;
//! each invocation opens it, edits it under a lock, and leaves.
use std::{fs::File, path::Path};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray},
    programs::links::{FdLink, PinnedLink},
};
use mptcpify_common::{
    CGROUP_RULES_MAP, CONFIG_MAP, COUNTERS_MAP, Config, Counter, MAX_CGROUP_RULES, MAX_PID_RULES,
    PID_RULES_MAP, Rule,
};

use crate::rules::{Full, RuleTable};

/// Where link and maps are pinned (bpffs, root-only).
pub const PIN_DIR: &str = "/sys/fs/bpf/mptcpify";
/// Pin of the link; unlinking it detaches the program.
pub const LINK_PIN: &str = "link";
/// A load pins into `PIN_DIR` + this + its PID, then renames that into place. bpffs refuses
/// names with dots.
pub const TMP_INFIX: &str = "_loading_";

/// Maps pinned beside the link.
pub const PINNED_MAPS: [&str; 4] = [CGROUP_RULES_MAP, PID_RULES_MAP, COUNTERS_MAP, CONFIG_MAP];

const BPF_NOEXIST: u64 = 1;

/// Serialises edits between concurrent invocations (an flock on the bpffs directory).
pub struct Lock(#[allow(dead_code)] File);

impl Lock {
    pub fn take() -> Result<Self> {
        let parent = Path::new(PIN_DIR).parent().expect("PIN_DIR has a parent");
        let f = File::open(parent).with_context(|| format!("opening {}", parent.display()))?;
        f.lock().with_context(|| format!("locking {}", parent.display()))?;
        Ok(Self(f))
    }
}

pub fn is_loaded() -> bool {
    Path::new(PIN_DIR).join(LINK_PIN).exists()
}

/// Handles on the pinned maps.
pub struct State {
    pub cgroups: KernelTable<u64>,
    pub pids: KernelTable<u32>,
    counters: PerCpuArray<MapData, u64>,
    config: Array<MapData, Config>,
}

/// A rule map in the kernel.
pub struct KernelTable<K: aya::Pod> {
    map: HashMap<MapData, K, Rule>,
    what: &'static str,
    capacity: u32,
}

/// Link and program ids, as `bpftool link` shows them.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LinkIds {
    pub link_id: u32,
    pub program_id: u32,
}

fn open_map(name: &str) -> Result<MapData> {
    let path = Path::new(PIN_DIR).join(name);
    MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
}

impl State {
    pub fn open() -> Result<Self> {
        Ok(Self {
            cgroups: KernelTable {
                map: HashMap::try_from(Map::HashMap(open_map(CGROUP_RULES_MAP)?))?,
                what: "cgroup",
                capacity: MAX_CGROUP_RULES,
            },
            pids: KernelTable {
                map: HashMap::try_from(Map::HashMap(open_map(PID_RULES_MAP)?))?,
                what: "pid",
                capacity: MAX_PID_RULES,
            },
            counters: PerCpuArray::try_from(Map::PerCpuArray(open_map(COUNTERS_MAP)?))?,
            config: Array::try_from(Map::Array(open_map(CONFIG_MAP)?))?,
        })
    }

    /// Recounts the rules into the program's config, which lets it skip empty tables.
    pub fn sync_config(&mut self) -> Result<()> {
        let config = Config {
            cgroup_rules: self.cgroups.entries()?.len() as u32,
            pid_rules: self.pids.entries()?.len() as u32,
        };
        self.config.set(0, config, 0).context("writing the program config")
    }

    /// Sum over CPUs of each counter slot.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        Counter::ALL
            .iter()
            .map(|&c| Ok((c, self.counters.get(&(c as u32), 0)?.iter().sum())))
            .collect()
    }

    pub fn link_ids() -> Result<LinkIds> {
        let pinned = PinnedLink::from_pin(Path::new(PIN_DIR).join(LINK_PIN))?;
        let info = FdLink::from(pinned).info()?;
        Ok(LinkIds { link_id: info.id(), program_id: info.program_id() })
    }
}

impl<K: aya::Pod + Copy> RuleTable<K> for KernelTable<K> {
    fn get(&self, key: K) -> Result<Option<Rule>> {
        match self.map.get(&key, 0) {
            Ok(rule) => Ok(Some(rule)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("reading the {} rules", self.what))),
        }
    }

    fn insert_new(&mut self, key: K, rule: Rule) -> Result<()> {
        match self.map.insert(key, rule, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                Err(Full { what: self.what, capacity: self.capacity }.into())
            }
            Err(e) => Err(anyhow!(e).context(format!("adding a {} rule", self.what))),
        }
    }

    fn remove(&mut self, key: K) -> Result<()> {
        self.map.remove(&key).with_context(|| format!("removing a {} rule", self.what))
    }

    fn entries(&self) -> Result<Vec<(K, Rule)>> {
        self.map
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("listing the {} rules", self.what))
    }

    fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// Detaches the program and removes every pin (and any leftover of an interrupted load).
/// Returns whether anything was there.
pub fn remove_all() -> Result<bool> {
    let dir = Path::new(PIN_DIR);
    let parent = dir.parent().expect("PIN_DIR has a parent");
    let name = dir.file_name().expect("PIN_DIR has a name").to_string_lossy().into_owned();
    let mut found = false;
    for entry in std::fs::read_dir(parent).with_context(|| format!("listing {}", parent.display()))? {
        let entry = entry?;
        let n = entry.file_name().to_string_lossy().into_owned();
        if n != name && !n.starts_with(&format!("{name}{TMP_INFIX}")) {
            continue;
        }
        found = true;
        let path = entry.path();
        // The link first: from here on new sockets are TCP again.
        let link = path.join(LINK_PIN);
        if link.exists() {
            std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(found)
}
