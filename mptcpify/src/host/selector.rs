//! What a user names to select processes: the one vocabulary of the CLI's flags and the policy
//! file. Each kind of selector has one validator here, lexical and pure, run before anything is
//! resolved against the live system ([`super::resolve`], the agent's `desired`).
use std::{fmt, path::PathBuf};

use super::{
    cgroup,
    systemd::UnitType,
    users::{UidSpec, UserLookup, uid_of},
};
use crate::state::rules::Key;

/// One thing to select.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// A cgroup, and every cgroup below it.
    Cgroup(CgroupPath),
    /// A systemd unit's cgroup (its full name: `nginx.service`).
    Unit(String),
    /// Already in the kernel's form: a pid, command name, uid, or all processes.
    Key(Key),
}

/// How a cgroup was named.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CgroupPath {
    /// A filesystem path under the cgroup2 mount (`/sys/fs/cgroup/system.slice`; CLI only).
    Mounted(PathBuf),
    /// Relative to the cgroup2 root as written (`system.slice/nginx.service`; the policy's are
    /// normalised to start with `/`).
    Relative(String),
}

impl CgroupPath {
    /// The path as `cgroup::resolve` takes it: absolute, or relative to the root.
    pub fn as_arg(&self) -> String {
        match self {
            CgroupPath::Mounted(p) => p.display().to_string(),
            CgroupPath::Relative(r) => r.trim_start_matches('/').to_owned(),
        }
    }
}

const EMPTY_CGROUP: &str = "empty cgroup path; give a path such as system.slice/nginx.service";

impl Selector {
    /// `--cgroup PATH`: absolute under the cgroup2 mount, or relative to its root. Where it
    /// leads (`..` included) is checked when it is resolved.
    pub fn cgroup_arg(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.contains('\0') {
            return Err(EMPTY_CGROUP.into());
        }
        let path = PathBuf::from(raw);
        Ok(Selector::Cgroup(if path.is_absolute() {
            CgroupPath::Mounted(path)
        } else {
            CgroupPath::Relative(raw.into())
        }))
    }

    /// A policy's cgroup: relative to the cgroup2 root (a leading `/` is that root), so one file
    /// works on hosts that mount it elsewhere; no empty, `.` or `..` component.
    pub fn cgroup_relative(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.contains('\0') {
            return Err(EMPTY_CGROUP.into());
        }
        if raw.starts_with("/sys/") {
            return Err(format!(
                "cgroup path {raw:?} looks like a mount path; policies name cgroups relative to the cgroup2 root \
                 (e.g. \"system.slice/nginx.service\"), so the same file works on hosts that mount it elsewhere"
            ));
        }
        let trimmed = raw.trim_matches('/');
        if !trimmed.is_empty() && trimmed.split('/').any(|c| c == ".." || c == "." || c.is_empty()) {
            return Err(format!("cgroup path {raw:?} has an empty, `.` or `..` component"));
        }
        if !trimmed.is_empty() {
            cgroup::reachable_level(trimmed.split('/').count()).map_err(|e| format!("cgroup path {raw:?}: {e}"))?;
        }
        Ok(Selector::Cgroup(CgroupPath::Relative(format!("/{trimmed}"))))
    }

    /// A systemd unit with a cgroup, by its full name.
    pub fn unit(raw: &str) -> Result<Self, String> {
        if UnitType::of(raw).is_none() {
            return Err(format!(
                "{raw:?} is not a unit with a cgroup: give the full name, e.g. nginx.service, user.slice or session-1.scope"
            ));
        }
        if raw.contains('/') || raw.contains('\0') || raw.chars().any(char::is_whitespace) {
            return Err(format!("{raw:?} is not a valid unit name"));
        }
        Ok(Selector::Unit(raw.to_owned()))
    }

    /// A process by its thread-group id.
    pub fn pid(pid: u32) -> Result<Self, String> {
        if pid == 0 {
            return Err("pid 0 is not a process".into());
        }
        Ok(Selector::Key(Key::Pid(pid)))
    }

    /// A command name as the kernel keeps it (at most 15 bytes).
    pub fn comm(raw: &str) -> Result<Self, String> {
        Key::comm(raw).map(Selector::Key).map_err(|e| e.to_string())
    }

    /// A user by numeric uid or by name in `users`.
    pub fn uid(spec: &UidSpec, users: UserLookup<'_>) -> Result<Self, String> {
        uid_of(spec, users).map(|u| Selector::Key(Key::Uid(u)))
    }

    /// Every process (exclusions still apply).
    pub const ALL: Selector = Selector::Key(Key::All);
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Cgroup(CgroupPath::Mounted(p)) => write!(f, "cgroup {}", p.display()),
            Selector::Cgroup(CgroupPath::Relative(r)) => write!(f, "cgroup {r}"),
            Selector::Unit(u) => write!(f, "unit {u}"),
            Selector::Key(k) => write!(f, "{k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_cgroups_are_absolute_or_relative() {
        assert_eq!(
            Selector::cgroup_arg("/sys/fs/cgroup/a").unwrap(),
            Selector::Cgroup(CgroupPath::Mounted("/sys/fs/cgroup/a".into()))
        );
        let rel = Selector::cgroup_arg("a/b").unwrap();
        assert_eq!(rel, Selector::Cgroup(CgroupPath::Relative("a/b".into())));
        let Selector::Cgroup(p) = rel else { unreachable!() };
        assert_eq!(p.as_arg(), "a/b");
        assert!(Selector::cgroup_arg("").is_err());
    }

    #[test]
    fn policy_cgroups_are_relative_and_plain() {
        assert_eq!(Selector::cgroup_relative("/kubepods.slice/").unwrap().to_string(), "cgroup /kubepods.slice");
        assert_eq!(Selector::cgroup_relative("/").unwrap().to_string(), "cgroup /");
        let deep = (0..32).map(|i| format!("d{i}")).collect::<Vec<_>>().join("/");
        assert!(Selector::cgroup_relative(&deep).unwrap_err().contains("never match"));
        for bad in ["", "/sys/fs/cgroup/x", "a/../b", "a//b", "./a"] {
            assert!(Selector::cgroup_relative(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn units_need_a_type_with_a_cgroup() {
        assert_eq!(Selector::unit("nginx.service").unwrap(), Selector::Unit("nginx.service".into()));
        for bad in ["nginx", ".service", "x.target", "a/b.service", "a b.service"] {
            assert!(Selector::unit(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn uids_by_number_or_name_and_pids_above_zero() {
        let users = |n: &str| (n == "alice").then_some(1000);
        assert_eq!(Selector::uid(&UidSpec::parse("alice"), &users).unwrap(), Selector::Key(Key::Uid(1000)));
        assert_eq!(Selector::uid(&UidSpec::parse("42"), &users).unwrap(), Selector::Key(Key::Uid(42)));
        assert!(Selector::uid(&UidSpec::parse("-1"), &users).unwrap_err().contains("out of range"));
        assert!(Selector::uid(&UidSpec::parse("4294967295"), &users).is_err());
        assert!(Selector::uid(&UidSpec::parse("bob"), &users).unwrap_err().contains("no user named \"bob\""));
        assert!(Selector::pid(0).is_err());
        assert_eq!(Selector::pid(7).unwrap().to_string(), "pid 7");
    }
}
