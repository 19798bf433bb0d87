//! Which socket options the running kernel refuses on an MPTCP socket but accepts on a TCP one,
//! asked of the kernel itself when the program is loaded: every option number of each level is
//! tried, `getsockopt` and `setsockopt`, on a fresh TCP socket and a fresh MPTCP socket. No table
//! typed by hand and no kernel-version comparison: kernels differ (34 options on 6.12, 33 on 7.3)
//! and change.
use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd as _, BorrowedFd},
};

use anyhow::{Context as _, Result, bail};
use mptcpify_common::{IPPROTO_MPTCP, OPTION_GET, OPTION_SET, SockOpt};

use crate::bpf::sys;

/// Each level probed, with a family whose sockets have it.
const LEVELS: [(i32, i32); 4] = [
    (libc::AF_INET, libc::SOL_SOCKET),
    (libc::AF_INET, libc::SOL_IP),
    (libc::AF_INET, libc::SOL_TCP),
    (libc::AF_INET6, libc::SOL_IPV6),
];
/// Every option number up to this is tried at each level: well above the highest any kernel
/// defines today (about 80).
const HIGHEST_OPTION: i32 = 127;

/// [`SockOpt`] -> [`OPTION_SET`] | [`OPTION_GET`]: refused on MPTCP, accepted on TCP.
pub type RefusedOptions = BTreeMap<SockOpt, u32>;

/// What MPTCP answers for an option it does not support: `ENOPROTOOPT` (`SOL_TCP`) or
/// `EOPNOTSUPP` (the other levels). A TCP socket that answers anything else knows the option,
/// even if it refuses the value the probe offers.
pub fn is_mptcp_refusal(errno: i32) -> bool {
    errno == libc::ENOPROTOOPT || errno == libc::EOPNOTSUPP
}

fn refused<T>(r: &io::Result<T>) -> bool {
    r.as_ref().is_err_and(|e| e.raw_os_error().is_some_and(is_mptcp_refusal))
}

/// Probes every level. Fails when MPTCP sockets cannot be made here (`net.mptcp.enabled=0` in
/// this network namespace, or no MPTCP in the kernel): then nothing can be learned.
pub fn probe() -> Result<RefusedOptions> {
    let mut table = RefusedOptions::new();
    for (family, level) in LEVELS {
        if family == libc::AF_INET6 && sys::socket(family, libc::SOCK_STREAM, 0).is_err() {
            log::info!("option probe: no IPv6 sockets here; IPv6 options are not probed");
            continue;
        }
        // One MPTCP socket for the level: MPTCP checks whether it supports an option before
        // anything else, so what was set before cannot change a refusal.
        let mptcp = match sys::socket(family, libc::SOCK_STREAM, IPPROTO_MPTCP) {
            Ok(fd) => fd,
            Err(e) => bail!(
                "cannot make an MPTCP socket here to learn which options MPTCP refuses ({e}); \
                 is net.mptcp.enabled=1 in this network namespace?"
            ),
        };
        for name in 1..=HIGHEST_OPTION {
            let bits = probe_one(family, level, name, mptcp.as_fd())?;
            if bits != 0 {
                table.insert(SockOpt { level: level as u32, name: name as u32 }, bits);
            }
        }
    }
    Ok(table)
}

/// [`OPTION_SET`] | [`OPTION_GET`] for one option, on a fresh TCP socket so that an option set
/// earlier cannot change TCP's answer.
fn probe_one(family: i32, level: i32, name: i32, mptcp: BorrowedFd<'_>) -> Result<u32> {
    let tcp = sys::socket(family, libc::SOCK_STREAM, libc::IPPROTO_TCP).context("making a TCP socket to probe")?;
    let mut buf = [0u8; 256];
    let tcp_get = sys::getsockopt(tcp.as_fd(), level, name, &mut buf);
    let mptcp_get = sys::getsockopt(mptcp, level, name, &mut [0u8; 256]);
    // SOL_SOCKET gets are answered by the socket layer for every protocol (`sk_getsockopt`):
    // MPTCP never sees them, so they cannot be refused because of it.
    let get_reaches_protocol = level != libc::SOL_SOCKET;
    let mut bits = if get_reaches_protocol && refused(&mptcp_get) && !refused(&tcp_get) { OPTION_GET } else { 0 };
    // Set what TCP reads back (a no-op set), else a zero int.
    let value = match tcp_get {
        Ok(len) if len > 0 => &buf[..len],
        _ => &[0u8; 4][..],
    };
    let tcp_set = sys::setsockopt(tcp.as_fd(), level, name, value);
    let mptcp_set = sys::setsockopt(mptcp, level, name, value);
    if refused(&mptcp_set) && !refused(&tcp_set) {
        bits |= OPTION_SET;
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_errnos_mptcp_gives_unsupported_options_are_refusals() {
        assert!(is_mptcp_refusal(libc::ENOPROTOOPT) && is_mptcp_refusal(libc::EOPNOTSUPP));
        for errno in [0, libc::EINVAL, libc::EPERM, libc::EFAULT, libc::ENOENT] {
            assert!(!is_mptcp_refusal(errno), "{errno}");
        }
    }
}
