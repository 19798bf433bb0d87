//! The agent's declarative policy file (TOML), in the CLI's vocabulary. Parsing and validation are
//! pure: every error names the line and says what is wrong, and a rejected file changes nothing.
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::rules::{Action, Key};

/// A policy as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    enable: Selectors,
    #[serde(default)]
    exclude: Selectors,
    #[serde(default)]
    kubernetes: Option<KubernetesFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Selectors {
    #[serde(default)]
    cgroups: Vec<Spanned<String>>,
    #[serde(default)]
    units: Vec<Spanned<String>>,
    #[serde(default)]
    comms: Vec<Spanned<String>>,
    #[serde(default)]
    uids: Vec<Spanned<UidSpec>>,
    #[serde(default)]
    all: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum UidSpec {
    Number(i64),
    Name(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubernetesFile {
    #[serde(default)]
    cgroup_driver: Option<Spanned<String>>,
}

/// How kubelet names pod cgroups on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupDriver {
    /// Whichever of `kubepods.slice` (systemd) and `kubepods` (cgroupfs) exists.
    #[default]
    Auto,
    Systemd,
    Cgroupfs,
}

/// What a policy selects, before it is resolved against the live system.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// A cgroup path relative to the cgroup2 root, normalised to start with `/`.
    Cgroup(String),
    Unit(String),
    /// Already in the kernel's form (comm, uid, all).
    Key(Key),
}

/// One validated entry of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub action: Action,
    pub selector: Selector,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub wanted: Vec<Wanted>,
    pub cgroup_driver: CgroupDriver,
}

/// A policy file was rejected.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}:{line}: {reason}")]
pub struct PolicyError {
    pub source_name: String,
    pub line: usize,
    pub reason: String,
}

fn line_of(text: &str, span: Option<Range<usize>>) -> usize {
    span.map_or(1, |s| text[..s.start.min(text.len())].matches('\n').count() + 1)
}

/// Looks up a user name in the user database (a seam so tests need no real users).
pub type UserLookup<'a> = &'a dyn Fn(&str) -> Option<u32>;

pub fn system_users(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
}

/// Checks a cgroup path lexically: relative to the cgroup2 root, no `..`, no empty components.
fn cgroup_path(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim_matches('/');
    if raw.is_empty() {
        return Err("empty cgroup path; give a path below the cgroup2 root such as system.slice/nginx.service".into());
    }
    if raw.starts_with("/sys/") {
        return Err(format!(
            "cgroup path {raw:?} looks like a mount path; policies name cgroups relative to the cgroup2 root \
             (e.g. \"system.slice/nginx.service\"), so the same file works on hosts that mount it elsewhere"
        ));
    }
    if trimmed.split('/').any(|c| c == ".." || c == "." || c.is_empty()) && !trimmed.is_empty() {
        return Err(format!("cgroup path {raw:?} has an empty, `.` or `..` component"));
    }
    Ok(format!("/{trimmed}"))
}

fn unit_name(raw: &str) -> Result<String, String> {
    const TYPES: [&str; 6] = [".service", ".scope", ".slice", ".socket", ".mount", ".swap"];
    if !TYPES.iter().any(|t| raw.len() > t.len() && raw.ends_with(t)) {
        return Err(format!(
            "{raw:?} is not a unit with a cgroup: give the full name, e.g. nginx.service, user.slice or session-1.scope"
        ));
    }
    if raw.contains('/') || raw.chars().any(char::is_whitespace) {
        return Err(format!("{raw:?} is not a valid unit name"));
    }
    Ok(raw.to_owned())
}

impl Policy {
    /// Parses and validates `text`; `source_name` (the file path) prefixes every error.
    pub fn parse(text: &str, source_name: &str, users: UserLookup<'_>) -> Result<Self, PolicyError> {
        let err = |span: Option<Range<usize>>, reason: String| PolicyError {
            source_name: source_name.to_owned(),
            line: line_of(text, span),
            reason,
        };
        let file: File = toml::from_str(text).map_err(|e| {
            // toml's message repeats the line in its own layout; keep only the reason.
            let reason = e.message().trim().to_owned();
            err(e.span(), reason)
        })?;
        let mut wanted: Vec<(Wanted, Range<usize>)> = Vec::new();
        for (action, sel) in [(Action::Enable, &file.enable), (Action::Exclude, &file.exclude)] {
            for c in &sel.cgroups {
                let path = cgroup_path(c.get_ref()).map_err(|r| err(Some(c.span()), r))?;
                wanted.push((Wanted { action, selector: Selector::Cgroup(path) }, c.span()));
            }
            for u in &sel.units {
                let unit = unit_name(u.get_ref()).map_err(|r| err(Some(u.span()), r))?;
                wanted.push((Wanted { action, selector: Selector::Unit(unit) }, u.span()));
            }
            for c in &sel.comms {
                let key = Key::comm(c.get_ref()).map_err(|e| err(Some(c.span()), e.to_string()))?;
                wanted.push((Wanted { action, selector: Selector::Key(key) }, c.span()));
            }
            for u in &sel.uids {
                let uid = match u.get_ref() {
                    UidSpec::Number(n) => u32::try_from(*n)
                        .ok()
                        .filter(|&n| n != u32::MAX)
                        .ok_or_else(|| err(Some(u.span()), format!("uid {n} is out of range (0 to 4294967294)")))?,
                    UidSpec::Name(name) => users(name).ok_or_else(|| {
                        err(Some(u.span()), format!("no user named {name:?} on this host (give a user name or a numeric uid)"))
                    })?,
                };
                wanted.push((Wanted { action, selector: Selector::Key(Key::Uid(uid)) }, u.span()));
            }
            if let Some(all) = &sel.all {
                if *all.get_ref() {
                    if action == Action::Exclude {
                        return Err(err(Some(all.span()), "`all` cannot be excluded; remove it from [exclude]".into()));
                    }
                    wanted.push((Wanted { action, selector: Selector::Key(Key::All) }, all.span()));
                }
            }
        }
        // The same target in [enable] and [exclude] is a contradiction, not a preference.
        for (i, (a, _)) in wanted.iter().enumerate() {
            if wanted[..i].iter().any(|(b, _)| b.selector == a.selector && b.action != a.action) {
                return Err(err(
                    Some(wanted[i].1.clone()),
                    format!("{} is both enabled and excluded; keep it in one of [enable] and [exclude]", describe(&a.selector)),
                ));
            }
        }
        let cgroup_driver = match file.kubernetes.and_then(|k| k.cgroup_driver) {
            None => CgroupDriver::Auto,
            Some(d) => match d.get_ref().as_str() {
                "auto" => CgroupDriver::Auto,
                "systemd" => CgroupDriver::Systemd,
                "cgroupfs" => CgroupDriver::Cgroupfs,
                other => {
                    return Err(err(
                        Some(d.span()),
                        format!("cgroup_driver {other:?} is not one of \"auto\", \"systemd\", \"cgroupfs\" (kubelet's --cgroup-driver)"),
                    ));
                }
            },
        };
        let mut seen = std::collections::HashSet::new();
        let wanted = wanted.into_iter().map(|(w, _)| w).filter(|w| seen.insert(w.selector.clone())).collect();
        Ok(Policy { wanted, cgroup_driver })
    }
}

pub fn describe(s: &Selector) -> String {
    match s {
        Selector::Cgroup(p) => format!("cgroup {p}"),
        Selector::Unit(u) => format!("unit {u}"),
        Selector::Key(k) => k.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(name: &str) -> Option<u32> {
        (name == "alice").then_some(1000)
    }

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(text, "policy.toml", &users)
    }

    #[test]
    fn a_full_policy_validates() {
        let p = parse(
            r#"
[enable]
cgroups = ["system.slice/nginx.service", "/kubepods.slice/"]
units = ["postgresql.service"]
comms = ["curl"]
uids = ["alice", 4242]
all = false

[exclude]
comms = ["sshd"]

[kubernetes]
cgroup_driver = "cgroupfs"
"#,
        )
        .unwrap();
        let sel: Vec<_> = p.wanted.iter().map(|w| (w.action, describe(&w.selector))).collect();
        assert_eq!(
            sel,
            [
                (Action::Enable, "cgroup /system.slice/nginx.service".to_owned()),
                (Action::Enable, "cgroup /kubepods.slice".to_owned()),
                (Action::Enable, "unit postgresql.service".to_owned()),
                (Action::Enable, "comm curl".to_owned()),
                (Action::Enable, "uid 1000".to_owned()),
                (Action::Enable, "uid 4242".to_owned()),
                (Action::Exclude, "comm sshd".to_owned()),
            ]
        );
        assert_eq!(p.cgroup_driver, CgroupDriver::Cgroupfs);
        assert_eq!(parse("").unwrap(), Policy::default(), "an empty policy is valid: no rules");
    }

    #[test]
    fn errors_name_the_line_and_the_reason() {
        let cases = [
            ("[enable]\ncomms = [\"a-very-long-program-name\"]\n", 2, "at most 15"),
            ("[enable]\nuids = [\"alice\",\n  \"mallory\"]\n", 3, "no user named \"mallory\""),
            ("[enable]\nuids = [-1]\n", 2, "out of range"),
            ("[enable]\ncgroups = [\"a/../../etc\"]\n", 2, "`..`"),
            ("[enable]\ncgroups = [\"/sys/fs/cgroup/x\"]\n", 2, "relative to the cgroup2 root"),
            ("[enable]\nunits = [\"nginx\"]\n", 2, "full name"),
            ("\n\n[exclude]\nall = true\n", 4, "cannot be excluded"),
            ("[enable]\ncomms = [\"curl\"]\n[exclude]\ncomms = [\"curl\"]\n", 4, "both enabled and excluded"),
            ("[enable]\ncgroup = [\"x\"]\n", 2, "unknown field `cgroup`"),
            ("[enable\n", 1, ""),
            ("[kubernetes]\ncgroup_driver = \"docker\"\n", 2, "not one of"),
            ("[enable]\nall = \"yes\"\n", 2, ""),
        ];
        for (text, line, reason) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.reason.contains(reason), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("policy.toml:{line}: ")), "{e}");
        }
    }

    #[test]
    fn duplicates_collapse() {
        let p = parse("[enable]\ncgroups = [\"a\", \"/a/\"]\ncomms = [\"x\", \"x\"]\n").unwrap();
        assert_eq!(p.wanted.len(), 2);
    }
}
