//! The program's decision rule, in user space: which running processes the rules select. Used
//! by `doctor` to find listeners that predate their rule; mirrors `select` in the program (any
//! exclusion wins, then any enable, then `all`).
use std::{collections::HashMap, os::unix::fs::MetadataExt as _, path::Path};

use mptcpify_common::{COMM_LEN, Rule};

use super::rules::{Action, Key};

/// What the program looks at for a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub pid: u32,
    pub uid: u32,
    pub comm: [u8; COMM_LEN],
    /// The process's cgroup and all its ancestors, as ids.
    pub cgroups: Vec<u64>,
}

/// `Some(Enable)` if the rules upgrade this process's new sockets, `Some(Audit)` if an audit
/// rule only counts them, `Some(Exclude)` if an exclusion protects it, `None` if no rule applies.
pub fn decide(rules: &HashMap<Key, Rule>, f: &Facts) -> Option<Action> {
    decider(rules, f).map(|(_, action)| action)
}

/// The rule that decides this process's new sockets, and what it does; in the program's order:
/// any exclusion, else the first of pid, uid, comm, the highest cgroup ancestor, `all`.
pub fn decider(rules: &HashMap<Key, Rule>, f: &Facts) -> Option<(Key, Action)> {
    let mut keys = vec![Key::Pid(f.pid), Key::Uid(f.uid), Key::Comm(f.comm)];
    // `cgroups` runs from the process's own cgroup up to the root.
    keys.extend(f.cgroups.iter().rev().map(|&id| Key::Cgroup(id)));
    keys.push(Key::All);
    let matched: Vec<(Key, Action)> =
        keys.into_iter().filter_map(|k| rules.get(&k).map(|r| (k, Action::from_code(r.action)))).collect();
    matched.iter().find(|(_, a)| *a == Action::Exclude).or(matched.first()).copied()
}

/// Facts of a live process, from /proc; `None` if it is gone or unreadable.
pub fn facts(pid: u32, cgroup_root: &Path) -> Option<Facts> {
    let p = procfs::process::Process::new(pid as i32).ok()?;
    let status = p.status().ok()?;
    let mut comm = [0u8; COMM_LEN];
    let name = status.name.as_bytes();
    let n = name.len().min(COMM_LEN - 1);
    comm[..n].copy_from_slice(&name[..n]);
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut cgroups = Vec::new();
    let mut dir = cgroup_root.join(path.trim_start_matches('/'));
    loop {
        if let Ok(m) = std::fs::metadata(&dir) {
            cgroups.push(m.ino());
        }
        if dir == cgroup_root || !dir.pop() {
            break;
        }
    }
    Some(Facts { pid, uid: status.ruid, comm, cgroups })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mptcpify_common::{ACTION_ENABLE, ACTION_EXCLUDE};

    fn rules(list: &[(Key, u32)]) -> HashMap<Key, Rule> {
        list.iter().map(|&(k, a)| (k, Rule { action: a, ..Default::default() })).collect()
    }

    fn proc_(pid: u32, uid: u32, comm: &str, cgroups: &[u64]) -> Facts {
        let Key::Comm(c) = Key::comm(comm).unwrap() else { unreachable!() };
        Facts { pid, uid, comm: c, cgroups: cgroups.to_vec() }
    }

    #[test]
    fn exclusions_beat_enables_at_any_depth() {
        let curl = proc_(10, 1000, "curl", &[1, 20, 300]);
        // Enable on the leaf, exclusion on an ancestor: excluded; and the other way round.
        assert_eq!(
            decide(&rules(&[(Key::Cgroup(300), ACTION_ENABLE), (Key::Cgroup(20), ACTION_EXCLUDE)]), &curl),
            Some(Action::Exclude)
        );
        assert_eq!(
            decide(&rules(&[(Key::Cgroup(20), ACTION_ENABLE), (Key::Cgroup(300), ACTION_EXCLUDE)]), &curl),
            Some(Action::Exclude)
        );
        assert_eq!(
            decide(&rules(&[(Key::All, ACTION_ENABLE), (Key::Uid(1000), ACTION_EXCLUDE)]), &curl),
            Some(Action::Exclude)
        );
        assert_eq!(
            decide(
                &rules(&[(Key::All, ACTION_ENABLE), Key::comm("curl").map(|k| (k, ACTION_EXCLUDE)).unwrap()]),
                &curl
            ),
            Some(Action::Exclude)
        );
    }

    #[test]
    fn any_selector_or_all_enables() {
        let p = proc_(10, 1000, "nginx", &[1, 20]);
        assert_eq!(decide(&rules(&[(Key::Pid(10), ACTION_ENABLE)]), &p), Some(Action::Enable));
        assert_eq!(decide(&rules(&[(Key::Uid(1000), ACTION_ENABLE)]), &p), Some(Action::Enable));
        assert_eq!(decide(&rules(&[(Key::Cgroup(1), ACTION_ENABLE)]), &p), Some(Action::Enable), "the root covers all");
        assert_eq!(decide(&rules(&[(Key::All, ACTION_ENABLE)]), &p), Some(Action::Enable));
        assert_eq!(decide(&rules(&[(Key::Pid(11), ACTION_ENABLE), (Key::Cgroup(21), ACTION_ENABLE)]), &p), None);
    }
}
