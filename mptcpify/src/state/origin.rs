//! What a cgroup rule was made from, kept beside it in the pinned `ORIGINS` map so that the rule
//! can be re-resolved when its cgroup is recreated (a restarted unit, a new pod sandbox).
use std::fmt;

use anyhow::{Result, bail};
use mptcpify_common::{ORIGIN_PATH, ORIGIN_POD, ORIGIN_RUN, ORIGIN_TEXT_LEN, ORIGIN_UNIT, Origin};
use serde::Serialize;

/// How the user named the cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginKind {
    /// A cgroup path, relative to the cgroup2 root.
    Path,
    /// A systemd unit.
    Unit,
    /// The cgroup `mptcpify run` made.
    Run,
    /// A Kubernetes pod, as `namespace/name`.
    Pod,
}

impl OriginKind {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::Unit => "unit",
            Self::Run => "run",
            Self::Pod => "pod",
        }
    }

    const fn code(self) -> u32 {
        match self {
            Self::Path => ORIGIN_PATH,
            Self::Unit => ORIGIN_UNIT,
            Self::Run => ORIGIN_RUN,
            Self::Pod => ORIGIN_POD,
        }
    }

    const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            ORIGIN_PATH => Self::Path,
            ORIGIN_UNIT => Self::Unit,
            ORIGIN_RUN => Self::Run,
            ORIGIN_POD => Self::Pod,
            _ => return None,
        })
    }
}

/// A rule's origin: its kind and what it said (`/system.slice/x.service`, `nginx.service`,
/// `shop/web`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleOrigin {
    pub kind: OriginKind,
    pub text: String,
}

impl RuleOrigin {
    /// Fails when `text` does not fit the map's fixed-size value.
    pub fn new(kind: OriginKind, text: &str) -> Result<Self> {
        if text.len() > ORIGIN_TEXT_LEN {
            bail!("{text:?} is longer than {ORIGIN_TEXT_LEN} bytes");
        }
        Ok(Self { kind, text: text.to_owned() })
    }

    /// The map's value.
    pub fn to_wire(&self) -> Origin {
        let mut o = Origin { kind: self.kind.code(), len: self.text.len() as u32, ..Default::default() };
        o.text[..self.text.len()].copy_from_slice(self.text.as_bytes());
        o
    }

    /// Reads a map value; `None` for a kind this version does not know.
    pub fn from_wire(o: &Origin) -> Option<Self> {
        let kind = OriginKind::from_code(o.kind)?;
        let text = String::from_utf8_lossy(&o.text[..(o.len as usize).min(ORIGIN_TEXT_LEN)]).into_owned();
        Some(Self { kind, text })
    }
}

/// As one phrase for logs and metric labels: `unit nginx.service`, `pod shop/web`.
impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.name(), self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_round_trip_and_refuse_oversize() {
        let o = RuleOrigin::new(OriginKind::Unit, "nginx.service").unwrap();
        assert_eq!(RuleOrigin::from_wire(&o.to_wire()), Some(o.clone()));
        assert_eq!(o.to_string(), "unit nginx.service");
        assert!(RuleOrigin::new(OriginKind::Path, &"x".repeat(ORIGIN_TEXT_LEN + 1)).is_err());
        assert_eq!(RuleOrigin::from_wire(&Origin { kind: 99, ..Default::default() }), None);
    }
}
