//! The kernel's socket diagnostics (`NETLINK_SOCK_DIAG`) in one network namespace: MPTCP
//! sockets with their `MPTCP_INFO`, TCP sockets with their MPTCP subflow attributes and the
//! cgroup each socket was made in. netlink-packet-sock-diag builds the request and parses the
//! replies; MPTCP's protocol number (262) does not fit the request's 8-bit field, so the
//! kernel's `INET_DIAG_REQ_PROTOCOL` attribute carries it, appended here.
use std::{fs::File, net::SocketAddr, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla as _, NlaBuffer, NlasIterator,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

/// `INET_DIAG_REQ_PROTOCOL`: a request attribute naming a protocol above 255.
const INET_DIAG_REQ_PROTOCOL: u16 = 3;
/// Reply attributes the crate leaves undecoded.
const INET_DIAG_ULP_INFO: u16 = 19;
const INET_DIAG_CGROUP_ID: u16 = 21;
/// Inside `INET_DIAG_ULP_INFO`: the MPTCP subflow attributes (nested).
const INET_ULP_INFO_MPTCP: u16 = 3;
const IPPROTO_MPTCP: u32 = 262;

/// Which sockets a dump asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Mptcp,
    Tcp,
}

/// One socket as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The TCP state number (`TCP_ESTABLISHED` = 1, `TCP_LISTEN` = 10, …).
    pub state: u8,
    /// The socket's inode: what `/proc/PID/fd` links name (`socket:[INODE]`).
    pub inode: u32,
    /// The interface it is bound to (0: none).
    pub interface: u32,
    pub cgroup_id: Option<u64>,
    /// `INET_DIAG_INFO`: `struct mptcp_info` of an MPTCP socket, `struct tcp_info` of a TCP one.
    pub info: Option<Vec<u8>>,
    /// The MPTCP subflow attributes of a TCP socket that is a subflow.
    pub subflow: Option<Vec<u8>>,
}

/// A socket for dumps in the namespace it was made in.
pub struct DiagSocket(Socket);

impl DiagSocket {
    /// In the caller's namespace.
    pub fn open_here() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag netlink socket")?;
        socket.bind_auto().context("binding the sock_diag socket")?;
        socket.connect(&NetlinkAddr::new(0, 0)).context("connecting the sock_diag socket")?;
        Ok(Self(socket))
    }

    /// In the namespace `path` names (`/proc/PID/ns/net`), entered by a short-lived thread so
    /// the caller's threads never move; the socket stays in that namespace.
    pub fn open_in(path: &Path) -> Result<Self> {
        let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| anyhow!("entering the network namespace: {e} (needs CAP_SYS_ADMIN)"))?;
            Self::open_here()
        })
        .join()
        .map_err(|_| anyhow!("the thread entering the network namespace panicked"))?
    }

    /// Every socket of `protocol`, IPv4 and IPv6, in any state.
    pub fn dump(&self, protocol: Protocol) -> Result<Vec<Diag>> {
        let mut all = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.0.send(&request(family, protocol), 0).context("sending a sock_diag request")?;
            self.receive(&mut all)?;
        }
        Ok(all)
    }

    fn receive(&self, into: &mut Vec<Diag>) -> Result<()> {
        loop {
            let mut buf = Vec::with_capacity(64 * 1024);
            let n = self.0.recv(&mut buf, 0).context("reading sock_diag replies")?;
            let mut at = 0;
            while at < n {
                let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[at..n])
                    .map_err(|e| anyhow!("a sock_diag reply the crate cannot parse: {e}"))?;
                let len = message.header.length as usize;
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => match e.code {
                        // No such protocol here (MPTCP's diag module not loaded): nothing to list.
                        Some(code) if -code.get() == libc::ENOENT => return Ok(()),
                        _ => bail!("the kernel refused the socket dump: {e:?}"),
                    },
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => into.push(diag_of(&r)),
                    _ => {}
                }
                if len == 0 {
                    bail!("a sock_diag reply of length 0");
                }
                at += len;
            }
        }
    }
}

/// A dump request; MPTCP's number travels in an attribute after the request.
fn request(family: u8, protocol: Protocol) -> Vec<u8> {
    let socket_id = if family == AF_INET6 { SocketId::new_v6() } else { SocketId::new_v4() };
    let body = InetRequest {
        family,
        // For MPTCP the attribute below overrides it, as the kernel's own selftest does.
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::INFO,
        states: StateFlags::all(),
        socket_id,
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut message = NetlinkMessage::new(header, SockDiagMessage::InetRequest(body).into());
    message.finalize();
    let mut bytes = vec![0u8; message.buffer_len()];
    message.serialize(&mut bytes);
    if protocol == Protocol::Mptcp {
        // struct nlattr { u16 len; u16 type; } + u32, already 4-byte aligned.
        bytes.extend(8u16.to_ne_bytes());
        bytes.extend(INET_DIAG_REQ_PROTOCOL.to_ne_bytes());
        bytes.extend(IPPROTO_MPTCP.to_ne_bytes());
        let len = bytes.len() as u32;
        bytes[..4].copy_from_slice(&len.to_ne_bytes());
    }
    bytes
}

fn diag_of(r: &netlink_packet_sock_diag::inet::InetResponse) -> Diag {
    let id = &r.header.socket_id;
    let mut d = Diag {
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        state: r.header.state,
        inode: r.header.inode,
        interface: id.interface_id,
        cgroup_id: None,
        info: None,
        subflow: None,
    };
    for nla in &r.nlas {
        match nla {
            Nla::TcpInfo(bytes) => d.info = Some(bytes.clone()),
            Nla::Other(other) if other.kind() == INET_DIAG_CGROUP_ID => {
                d.cgroup_id = value_of(other).get(..8).map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")));
            }
            Nla::Other(other) if other.kind() == INET_DIAG_ULP_INFO => d.subflow = mptcp_part(&value_of(other)),
            _ => {}
        }
    }
    d
}

fn value_of(nla: &netlink_packet_core::DefaultNla) -> Vec<u8> {
    let mut value = vec![0u8; nla.value_len()];
    nla.emit_value(&mut value);
    value
}

/// The nested MPTCP attributes inside `INET_DIAG_ULP_INFO`, if the ULP is MPTCP's.
fn mptcp_part(ulp: &[u8]) -> Option<Vec<u8>> {
    NlasIterator::new(ulp)
        .filter_map(Result::ok)
        .find(|nla: &NlaBuffer<&[u8]>| nla.kind() == INET_ULP_INFO_MPTCP)
        .map(|nla| nla.value().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mptcp_request_carries_the_protocol_in_an_attribute_counted_in_its_length() {
        let tcp = request(AF_INET, Protocol::Tcp);
        let mptcp = request(AF_INET, Protocol::Mptcp);
        assert_eq!(mptcp.len(), tcp.len() + 8);
        assert_eq!(u32::from_ne_bytes(mptcp[..4].try_into().unwrap()) as usize, mptcp.len());
        let attr = &mptcp[tcp.len()..];
        assert_eq!(u16::from_ne_bytes([attr[2], attr[3]]), INET_DIAG_REQ_PROTOCOL);
        assert_eq!(u32::from_ne_bytes(attr[4..8].try_into().unwrap()), 262);
    }

    #[test]
    fn the_mptcp_part_of_ulp_info_is_found_among_its_attributes() {
        // INET_ULP_INFO_NAME "mptcp\0" (padded to 8), then INET_ULP_INFO_MPTCP with 4 bytes.
        let mut ulp = vec![10, 0, 1, 0];
        ulp.extend(b"mptcp\0\0\0");
        ulp.extend([8, 0, 3, 0x80, 1, 2, 3, 4]);
        assert_eq!(mptcp_part(&ulp), Some(vec![1, 2, 3, 4]));
        assert_eq!(mptcp_part(&ulp[..12]), None);
    }
}
