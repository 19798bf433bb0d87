//! What the kernel program needs to read the caller's `net.mptcp.enabled` itself, found in the
//! running kernel: struct member offsets from its BTF and the address of `mptcp_pernet_id`.
//! With them a selected process in a namespace where MPTCP is disabled keeps getting working
//! TCP sockets instead of ENOPROTOOPT.
use anyhow::Result;

use super::{kallsyms, kernel_btf::KernelBtf};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetnsOffsets {
    pub task_nsproxy: u32,
    pub nsproxy_net_ns: u32,
    pub net_gen: u32,
    pub pernet_mptcp_enabled: u32,
    pub pernet_id_addr: u64,
}

/// Offsets from `btf` (the running kernel's, see [`super::loader::kernel_btf`]) and the address
/// of `mptcp_pernet_id`.
pub fn find(btf: &KernelBtf) -> Result<NetnsOffsets> {
    let pernet_id_addr = kallsyms::address("mptcp_pernet_id")?;
    Ok(NetnsOffsets {
        task_nsproxy: btf.member_offset("task_struct", "nsproxy")?,
        nsproxy_net_ns: btf.member_offset("nsproxy", "net_ns")?,
        net_gen: btf.member_offset("net", "gen")?,
        pernet_mptcp_enabled: btf.member_offset("mptcp_pernet", "mptcp_enabled")?,
        pernet_id_addr,
    })
}
