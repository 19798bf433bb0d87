//! The contract between the kernel program and user space: map names, key and value layouts,
//! counter slots and limits. Both sides compile this crate, so a layout change is one edit.
#![no_std]

/// `IPPROTO_MPTCP`: what the program makes `socket()` use instead of TCP.
pub const IPPROTO_MPTCP: i32 = 262;
pub const IPPROTO_TCP: i32 = 6;
pub const AF_INET: i32 = 2;
pub const AF_INET6: i32 = 10;
pub const SOCK_STREAM: i32 = 1;
/// `type` arrives with `SOCK_NONBLOCK | SOCK_CLOEXEC` or'ed in; the socket type is the low nibble.
pub const SOCK_TYPE_MASK: i32 = 0xf;

/// Kernel function the program is attached to (Linux >= 6.6, called from `__sys_socket`).
pub const HOOK_FUNCTION: &str = "update_socket_protocol";
/// Name of the program function in the object file (section `fentry/update_socket_protocol`).
pub const PROGRAM_NAME: &str = "mptcpify";

/// Map of cgroup v2 ids (the inode number of the cgroup directory) to their rule.
pub const CGROUP_RULES_MAP: &str = "CGROUP_RULES";
/// Map of thread-group ids (PIDs in the initial PID namespace) to their rule.
pub const PID_RULES_MAP: &str = "PID_RULES";
/// Per-CPU array of [`Counter`] slots.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// One-slot array holding [`Config`].
pub const CONFIG_MAP: &str = "CONFIG";

/// Room for 10,000 cgroups and 10,000 processes, with headroom for hash collisions.
pub const MAX_CGROUP_RULES: u32 = 16384;
pub const MAX_PID_RULES: u32 = 16384;
/// Deepest cgroup level looked at. Kubernetes pods sit at level 4-6; 32 leaves ample room.
pub const MAX_CGROUP_DEPTH: u32 = 32;

/// A rule's value in the kernel maps. `hits` is bumped by the kernel program on each upgrade
/// it causes; user space only creates and deletes entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub action: u32,
    pub _pad: u32,
    pub hits: u64,
}

/// [`Rule::action`]: upgrade sockets of the matched process or cgroup.
pub const ACTION_ENABLE: u32 = 1;

/// Global switches, written by user space. Lets the program skip map lookups that cannot match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Number of entries in [`CGROUP_RULES_MAP`]; 0 skips the cgroup walk.
    pub cgroup_rules: u32,
    /// Number of entries in [`PID_RULES_MAP`]; 0 skips the PID lookup.
    pub pid_rules: u32,
}

/// Slots of [`COUNTERS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every call of the hook (any family, type, protocol).
    Calls = 0,
    /// Calls for AF_INET/AF_INET6 + SOCK_STREAM + protocol 0/TCP: the ones that could be upgraded.
    TcpCandidates = 1,
    /// Sockets upgraded because of a PID rule.
    UpgradedByPid = 2,
    /// Sockets upgraded because of a cgroup rule (the cgroup itself or an ancestor).
    UpgradedByCgroup = 3,
}

pub const COUNTER_SLOTS: u32 = 4;

impl Counter {
    pub const ALL: [Counter; COUNTER_SLOTS as usize] =
        [Counter::Calls, Counter::TcpCandidates, Counter::UpgradedByPid, Counter::UpgradedByCgroup];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::Calls => "calls",
            Counter::TcpCandidates => "tcp_candidates",
            Counter::UpgradedByPid => "upgraded_by_pid",
            Counter::UpgradedByCgroup => "upgraded_by_cgroup",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integers, no padding holes that could leak (the pad is explicit).
    unsafe impl aya::Pod for super::Rule {}
    unsafe impl aya::Pod for super::Config {}
}
