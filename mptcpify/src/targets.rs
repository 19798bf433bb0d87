//! CLI selectors resolved against the live system into rule keys, before anything changes.
use anyhow::{Context as _, Result, bail};
use mptcpify_common::{ORIGIN_PATH, ORIGIN_POD, ORIGIN_RUN, ORIGIN_TEXT_LEN, ORIGIN_UNIT, Origin};

use crate::{cgroup, cli::Targets, mounts::Mounts, process, rules::Key, systemd};

/// A rule key, what it was made from (cgroup rules), and how to name it to the user.
#[derive(Debug, Clone)]
pub struct Target {
    pub key: Key,
    pub origin: Option<Origin>,
    pub label: String,
}

pub fn origin(kind: u32, text: &str) -> Result<Origin> {
    if text.len() > ORIGIN_TEXT_LEN {
        bail!("{text:?} is longer than {ORIGIN_TEXT_LEN} bytes");
    }
    let mut o = Origin { kind, len: text.len() as u32, ..Default::default() };
    o.text[..text.len()].copy_from_slice(text.as_bytes());
    Ok(o)
}

/// What an origin says: `(kind name, text)`.
pub fn describe_origin(o: &Origin) -> (&'static str, String) {
    let text = String::from_utf8_lossy(&o.text[..(o.len as usize).min(ORIGIN_TEXT_LEN)]).into_owned();
    let kind = match o.kind {
        ORIGIN_PATH => "path",
        ORIGIN_UNIT => "unit",
        ORIGIN_RUN => "run",
        ORIGIN_POD => "pod",
        _ => "unknown",
    };
    (kind, text)
}

/// An origin as one phrase for logs and metric labels: `unit nginx.service`, `pod shop/web`.
pub fn origin_label(o: &Origin) -> String {
    let (kind, text) = describe_origin(o);
    format!("{kind} {text}")
}

/// A user id from a number or a name in the user database.
pub fn uid(spec: &str) -> Result<u32> {
    if let Ok(n) = spec.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(spec) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => bail!("no user named {spec:?} (give a user name or a numeric uid)"),
        Err(e) => bail!("looking up user {spec:?}: {e}"),
    }
}

/// Resolves every selector. `for_removal` relaxes what must exist now (an exited PID can still
/// have a rule).
pub async fn resolve(targets: &Targets, mounts: &Mounts, for_removal: bool) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    if !targets.cgroups.is_empty() || !targets.units.is_empty() {
        let root = mounts.cgroup2_root()?;
        for arg in &targets.cgroups {
            let cg = cgroup::resolve(&root, arg).map_err(|e| {
                if for_removal {
                    e.context("a rule for a removed cgroup is disabled with --cgroup-id ID (see `mptcpify status`)")
                } else {
                    e
                }
            })?;
            out.push(Target {
                key: Key::Cgroup(cg.id),
                origin: Some(origin(ORIGIN_PATH, &cg.relative)?),
                label: format!("cgroup {} (id {})", cg.relative, cg.id),
            });
        }
        for unit in &targets.units {
            let Some(relative) = systemd::unit_cgroup(unit).await? else {
                bail!("systemd does not know {unit} as a running unit, so it has no cgroup: start it first");
            };
            let cg = cgroup::resolve(&root, relative.trim_start_matches('/'))
                .with_context(|| format!("systemd says {unit} is in {relative}"))?;
            out.push(Target {
                key: Key::Cgroup(cg.id),
                origin: Some(origin(ORIGIN_UNIT, unit)?),
                label: format!("unit {unit}: cgroup {} (id {})", cg.relative, cg.id),
            });
        }
    }
    for &pid in &targets.pids {
        let label = if for_removal {
            format!("pid {pid}")
        } else {
            let p = process::resolve(pid)?;
            format!("pid {} ({})", p.pid, p.comm)
        };
        out.push(Target { key: Key::Pid(pid), origin: None, label });
    }
    for name in &targets.comms {
        out.push(Target { key: Key::comm(name)?, origin: None, label: format!("comm {name}") });
    }
    for spec in &targets.uids {
        let u = uid(spec)?;
        out.push(Target { key: Key::Uid(u), origin: None, label: format!("uid {u}") });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_by_number_and_name() {
        assert_eq!(uid("0").unwrap(), 0);
        assert_eq!(uid("root").unwrap(), 0);
        assert_eq!(uid("4242").unwrap(), 4242);
        let e = uid("no-such-user-xyz").unwrap_err().to_string();
        assert!(e.contains("no user named"), "{e}");
    }

    #[test]
    fn origins_round_trip_and_refuse_oversize() {
        let o = origin(ORIGIN_UNIT, "nginx.service").unwrap();
        assert_eq!(describe_origin(&o), ("unit", "nginx.service".to_owned()));
        assert!(origin(ORIGIN_PATH, &"x".repeat(ORIGIN_TEXT_LEN + 1)).is_err());
    }
}
