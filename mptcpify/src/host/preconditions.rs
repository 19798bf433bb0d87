//! Preconditions checked before anything is changed, each failing with what to do about it.
use anyhow::{Result, bail};
use caps::{CapSet, Capability};

use super::mounts::Mounts;
use crate::bpf::sys;

/// Loading tracing programs and editing pinned maps needs root or its BPF capabilities.
pub fn require_privileges() -> Result<()> {
    let has = |c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    let admin = has(Capability::CAP_SYS_ADMIN);
    let bpf = has(Capability::CAP_BPF) && has(Capability::CAP_PERFMON);
    if admin || bpf {
        return Ok(());
    }
    bail!(
        "mptcpify needs root (uid {} lacks CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON); run it with sudo",
        sys::geteuid()
    )
}

/// What every command that edits or reads the pinned state checks first: privileges, then
/// bpffs at its place. Returns the mounts it read, for the cgroup2 root.
pub fn require_state_access() -> Result<Mounts> {
    require_privileges()?;
    let mounts = Mounts::read()?;
    mounts.require_bpffs()?;
    Ok(mounts)
}

/// State of `net.mptcp.enabled` in the caller's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MptcpSysctl {
    Enabled,
    Disabled,
    /// No `/proc/sys/net/mptcp`: the kernel was built without CONFIG_MPTCP.
    Missing,
}

pub fn mptcp_sysctl() -> MptcpSysctl {
    match std::fs::read_to_string("/proc/sys/net/mptcp/enabled") {
        Ok(s) if s.trim() == "0" => MptcpSysctl::Disabled,
        Ok(_) => MptcpSysctl::Enabled,
        Err(_) => MptcpSysctl::Missing,
    }
}

/// A warning to print, if MPTCP cannot work in this namespace.
pub fn mptcp_warning() -> Option<&'static str> {
    match mptcp_sysctl() {
        MptcpSysctl::Enabled => None,
        MptcpSysctl::Disabled => Some(
            "warning: net.mptcp.enabled=0 in this network namespace: upgraded sockets will fail \
             with ENOPROTOOPT here; enable it with `sysctl -w net.mptcp.enabled=1`",
        ),
        MptcpSysctl::Missing => {
            Some("warning: /proc/sys/net/mptcp is missing: this kernel has no MPTCP (CONFIG_MPTCP)")
        }
    }
}
