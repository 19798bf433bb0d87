//! The agent's declarative policy file (TOML), in the CLI's vocabulary. Parsing and validation are
//! pure: every error names the line and says what is wrong, and a rejected file changes nothing.
use std::{ops::Range, path::Path};

use anyhow::{Context as _, bail};

use serde::Deserialize;
use toml::Spanned;

pub use crate::host::selector::Selector;
use crate::{
    host::users::{UidSpec, UserLookup},
    paths::plan::{self, AutoOptions},
    state::rules::Action,
};

/// A policy as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    enable: Selectors,
    #[serde(default)]
    exclude: Selectors,
    /// Dry run: counted and reported as `would-upgrade`, left TCP.
    #[serde(default)]
    audit: Selectors,
    #[serde(default)]
    kubernetes: Option<KubernetesFile>,
    /// `paths auto`'s options and `auto = true` to keep them in force.
    #[serde(default)]
    paths: Option<Spanned<toml::Table>>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubernetesFile {
    #[serde(default)]
    cgroup_driver: Option<Spanned<CgroupDriver>>,
    /// Endpoints and limits inside each selected pod's network namespace.
    #[serde(default)]
    pod_paths: bool,
}

/// How kubelet names pod cgroups on this node (kubelet's `--cgroup-driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupDriver {
    /// Whichever of `kubepods.slice` (systemd) and `kubepods` (cgroupfs) exists.
    #[default]
    Auto,
    Systemd,
    Cgroupfs,
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
    /// `[paths]` with `auto = true`: the agent keeps its namespace's paths so.
    pub paths: Option<AutoOptions>,
    /// `[kubernetes] pod_paths = true`: and each selected pod's.
    pub pod_paths: bool,
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

/// A want and where the file says it.
type Placed = (Wanted, Range<usize>);
/// Why an entry was refused, and where it is.
type Refusal = (Range<usize>, String);

/// Each entry of `list`, validated by `check`, as a want with its place in the file.
fn validated<T>(
    list: &[Spanned<T>],
    action: Action,
    check: impl Fn(&T) -> Result<Selector, String>,
) -> Result<Vec<Placed>, Refusal> {
    list.iter()
        .map(|item| {
            let selector = check(item.get_ref()).map_err(|reason| (item.span(), reason))?;
            Ok((Wanted { action, selector }, item.span()))
        })
        .collect()
}

/// The wants of one table (`[enable]`, `[exclude]` or `[audit]`), in the file's order of kinds.
fn table(sel: &Selectors, action: Action, users: UserLookup<'_>) -> Result<Vec<Placed>, Refusal> {
    let mut wanted = validated(&sel.cgroups, action, |c| Selector::cgroup_relative(c))?;
    wanted.extend(validated(&sel.units, action, |u| Selector::unit(u))?);
    wanted.extend(validated(&sel.comms, action, |c| Selector::comm(c))?);
    wanted.extend(validated(&sel.uids, action, |u| Selector::uid(u, users))?);
    if let Some(all) = sel.all.as_ref().filter(|a| *a.get_ref()) {
        if action == Action::Exclude {
            return Err((all.span(), "`all` cannot be excluded; remove it from [exclude]".into()));
        }
        wanted.push((Wanted { action, selector: Selector::ALL }, all.span()));
    }
    Ok(wanted)
}

/// The largest policy file read: a real one is a few hundred bytes.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// Reads the policy file: a regular file (a symlink to one, as a ConfigMap mounts it) of at most
/// [`MAX_POLICY_BYTES`]; a device, FIFO or directory is refused before it is opened.
pub fn read(path: &Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let what = || format!("the policy file {}", path.display());
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading {} (create it; an empty file means no rules)", what()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", what());
    }
    if meta.len() > MAX_POLICY_BYTES {
        bail!("{} is {} bytes; a policy may have at most {MAX_POLICY_BYTES}", what(), meta.len());
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_POLICY_BYTES + 1).read_to_string(&mut text))
        .with_context(|| format!("reading {}", what()))?;
    if text.len() as u64 > MAX_POLICY_BYTES {
        bail!("{} grew beyond {MAX_POLICY_BYTES} bytes while it was read", what());
    }
    Ok(text)
}

/// `[paths]`: the options when `auto = true`.
fn paths(table: Spanned<toml::Table>) -> Result<Option<AutoOptions>, Refusal> {
    let span = table.span();
    let mut table = table.into_inner();
    let refused = |e: String| (span.clone(), format!("[paths]: {e}"));
    let auto = match table.remove("auto") {
        None => false,
        Some(toml::Value::Boolean(b)) => b,
        Some(other) => return Err(refused(format!("auto must be true or false, not a {}", other.type_str()))),
    };
    let options = AutoOptions::deserialize(toml::Value::Table(table)).map_err(|e| refused(e.message().to_string()))?;
    plan::check_options(&options).map_err(|e| refused(e.to_string()))?;
    Ok(auto.then_some(options))
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
        let mut wanted = table(&file.enable, Action::Enable, users).map_err(|(span, r)| err(Some(span), r))?;
        wanted.extend(table(&file.exclude, Action::Exclude, users).map_err(|(span, r)| err(Some(span), r))?);
        wanted.extend(table(&file.audit, Action::Audit, users).map_err(|(span, r)| err(Some(span), r))?);
        // The same target in two tables is a contradiction, not a preference.
        for (i, (a, span)) in wanted.iter().enumerate() {
            if let Some((b, _)) = wanted[..i].iter().find(|(b, _)| b.selector == a.selector && b.action != a.action) {
                return Err(err(
                    Some(span.clone()),
                    format!(
                        "{} is both {} and {}; keep it in one of [{}] and [{}]",
                        a.selector,
                        b.action.done(),
                        a.action.done(),
                        b.action.name(),
                        a.action.name()
                    ),
                ));
            }
        }
        let pod_paths = file.kubernetes.as_ref().is_some_and(|k| k.pod_paths);
        let cgroup_driver =
            file.kubernetes.and_then(|k| k.cgroup_driver).map_or(CgroupDriver::Auto, Spanned::into_inner);
        let mut seen = std::collections::HashSet::new();
        let wanted = wanted.into_iter().map(|(w, _)| w).filter(|w| seen.insert(w.selector.clone())).collect();
        let paths = match file.paths {
            Some(p) => paths(p).map_err(|(span, reason)| err(Some(span), reason))?,
            None => None,
        };
        Ok(Policy { wanted, cgroup_driver, paths, pod_paths })
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
        let sel: Vec<_> = p.wanted.iter().map(|w| (w.action, w.selector.to_string())).collect();
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
    fn paths_are_kept_only_with_auto() {
        let text = "[paths]\nauto = true\ndevs = [\"eth0\", \"wlan0\"]\nbackup = [\"wlan0\"]\nsource_routing = true\nadd_addr_accepted = 4\n";
        let opts = parse(text).unwrap().paths.expect("auto = true");
        assert_eq!(opts.devs, ["eth0", "wlan0"]);
        assert_eq!(opts.backup, ["wlan0"]);
        assert!(opts.source_routing && !opts.signal);
        assert_eq!((opts.subflows, opts.add_addr_accepted), (None, Some(4)));
        assert_eq!(parse("[paths]\ndevs = [\"eth0\"]\n").unwrap().paths, None, "written down but not switched on");
        assert!(parse("[kubernetes]\npod_paths = true\n").unwrap().pod_paths);
        assert!(!parse("[kubernetes]\n").unwrap().pod_paths);
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
            ("[enable]\ncomms = [\"curl\"]\n[audit]\ncomms = [\"curl\"]\n", 4, "both enabled and audited"),
            ("[enable]\ncgroup = [\"x\"]\n", 2, "unknown field `cgroup`"),
            ("[enable\n", 1, ""),
            ("[kubernetes]\ncgroup_driver = \"docker\"\n", 2, "unknown variant `docker`"),
            ("[enable]\nall = \"yes\"\n", 2, ""),
            ("[paths]\nauto = true\nsubflows = 9\n", 1, "subflows 9 is above the kernel's maximum of 8"),
            ("[paths]\nauto = true\nsignal = true\nfullmesh = true\n", 1, "both signal and fullmesh"),
            ("[paths]\nauto = true\ndev = [\"eth0\"]\n", 1, "unknown field `dev`"),
            ("[paths]\nauto = \"yes\"\n", 1, "auto must be true or false"),
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

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let t = tempfile::tempdir().unwrap();
        let ok = t.path().join("policy.toml");
        std::fs::write(&ok, "[enable]\ncomms = [\"curl\"]\n").unwrap();
        assert!(read(&ok).unwrap().contains("curl"));
        let link = t.path().join("..data");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        assert!(read(&link).is_ok(), "a ConfigMap's symlink to a file is read");
        let e = read(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read(t.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let big = t.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_POLICY_BYTES as usize + 1]).unwrap();
        let e = read(&big).unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
        let e = read(&t.path().join("missing.toml")).unwrap_err().to_string();
        assert!(e.contains("create it"), "{e}");
    }
}
