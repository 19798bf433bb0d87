//! What the kernel program needs to keep Landlock-sandboxed processes TCP, found in the running
//! kernel: Landlock's TCP rules (`LANDLOCK_ACCESS_NET_BIND_TCP`, `_CONNECT_TCP`) do not apply to
//! MPTCP sockets (`sk_is_tcp()`), so an upgraded process would leave its sandbox. The program
//! reads the caller's Landlock domain itself (see `landlock_restricts_tcp` in it); whether this
//! kernel's Landlock holds MPTCP sockets too is asked of the kernel, not of its version.
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Result, anyhow};
use mptcpify_common::{IPPROTO_MPTCP, LANDLOCK_NO_NET_RULES, LANDLOCK_RESTRICTS_MPTCP};

use super::{kallsyms, kernel_btf::KernelBtf, sys};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LandlockOffsets {
    pub task_cred: u32,
    pub cred_security: u32,
    /// Address of `landlock_blob_sizes.lbs_cred`: Landlock's offset in a cred's security blob.
    pub blob_offset_addr: u64,
    pub domain: u32,
    pub num_layers: u32,
    pub access_masks: u32,
    pub net_bit: u32,
}

/// The layers' access masks: `landlock_ruleset.access_masks[]` until Landlock split the domain
/// off (7.x: `landlock_domain.handled_masks[]`); followed from the cred's `domain` pointer, so a
/// kernel that renames them again is found out here, not misread in the program.
const LAYER_MASKS: [&str; 2] = ["access_masks", "handled_masks"];

pub fn find(btf: &KernelBtf) -> Result<LandlockOffsets> {
    let sizes = kallsyms::address("landlock_blob_sizes")?;
    let domain = btf.member_pointee("landlock_cred_security", "domain")?;
    let masks = LAYER_MASKS
        .iter()
        .find(|m| btf.member_array_of(&domain, m).is_ok_and(|of| of == "access_masks"))
        .ok_or_else(|| anyhow!("struct {domain} has no array of access_masks per layer ({LAYER_MASKS:?})"))?;
    // The program reads the number of layers and one mask per layer, each as a u32.
    if btf.struct_size("access_masks")? != 4 || btf.member_size(&domain, "num_layers")? != 4 {
        return Err(anyhow!("struct access_masks or {domain}.num_layers is not 4 bytes in this kernel"));
    }
    Ok(LandlockOffsets {
        task_cred: btf.member_offset("task_struct", "cred")?,
        cred_security: btf.member_offset("cred", "security")?,
        blob_offset_addr: sizes + u64::from(btf.member_offset("lsm_blob_sizes", "lbs_cred")?),
        domain: btf.member_offset("landlock_cred_security", "domain")?,
        num_layers: btf.member_offset(&domain, "num_layers")?,
        access_masks: btf.member_offset(&domain, masks)?,
        net_bit: btf.member_bit_offset("access_masks", "net")?,
    })
}

/// Asks the kernel what a Landlock sandbox that refuses every TCP connect does to an MPTCP
/// connect, in a thread of its own (a Landlock domain binds the thread that makes it, and that
/// thread ends with the probe): [`LANDLOCK_RESTRICTS_MPTCP`] when it refuses it too,
/// [`LANDLOCK_NO_NET_RULES`] when no such sandbox can be made here, `None` when Landlock lets
/// it through (or the answer is unclear: then the program keeps sandboxed processes TCP).
pub fn probe() -> Option<u32> {
    std::thread::spawn(|| {
        if let Err(e) = sys::landlock_deny_tcp_connects_of_this_thread() {
            log::debug!("landlock probe: no TCP sandbox here ({e})");
            return Some(LANDLOCK_NO_NET_RULES);
        }
        let socket = sys::socket(libc::AF_INET, libc::SOCK_STREAM, IPPROTO_MPTCP).ok()?;
        // Port 1 on loopback: nothing listens there; only the sandbox can say EACCES.
        let result = sys::connect_v4(std::os::fd::AsFd::as_fd(&socket), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1));
        match result.map_err(|e| e.raw_os_error()) {
            Err(Some(libc::EACCES)) => Some(LANDLOCK_RESTRICTS_MPTCP),
            other => {
                log::debug!("landlock probe: an MPTCP connect in a TCP sandbox gave {other:?}");
                None
            }
        }
    })
    .join()
    .map_err(|_| anyhow!("the Landlock probe panicked"))
    .unwrap_or_else(|e| {
        log::warn!("{e}");
        None
    })
}
