//! Endpoint and limit changes for the in-kernel path manager. mptcp-pm reads endpoints and
//! limits but has no requests that change them, so these few are built here on its attribute
//! types and its generic netlink handle.
use std::net::IpAddr;

use anyhow::{Result, anyhow};
use futures::StreamExt as _;
use mptcp_pm::{
    MptcpPathManagerAddressAttr as AddrAttr, MptcpPathManagerAddressAttrFlag as Flag, MptcpPathManagerLimitsAttr,
};
use netlink_packet_core::{
    DecodeError, Emitable, NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload, Nla,
    ParseableParametrized,
};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

use super::{
    connection::Netlink,
    model::{Endpoint, Limits},
};

/// `MPTCP_PM_CMD_*` of `include/uapi/linux/mptcp_pm.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    AddAddr = 1,
    DelAddr = 2,
    SetLimits = 5,
}

const MPTCP_PM_ATTR_ADDR: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[derive(Debug, Clone)]
enum Attr {
    /// `MPTCP_PM_ATTR_ADDR`: the endpoint's attributes, nested.
    Address(Vec<AddrAttr>),
    Limit(MptcpPathManagerLimitsAttr),
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Address(inner) => inner.as_slice().buffer_len(),
            Attr::Limit(l) => l.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::Address(_) => MPTCP_PM_ATTR_ADDR | NLA_F_NESTED,
            Attr::Limit(l) => l.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::Address(inner) => inner.as_slice().emit(buffer),
            Attr::Limit(l) => l.emit_value(buffer),
        }
    }
}

#[derive(Debug, Clone)]
struct Request {
    command: Command,
    attrs: Vec<Attr>,
}

impl GenlFamily for Request {
    fn family_name() -> &'static str {
        "mptcp_pm"
    }

    fn command(&self) -> u8 {
        self.command as u8
    }

    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for Request {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for Request {
    /// These commands answer with an acknowledgement only; nothing of a reply is read.
    fn parse_with_param(_: &[u8], _: GenlHeader) -> Result<Self, DecodeError> {
        Ok(Request { command: Command::AddAddr, attrs: vec![] })
    }
}

async fn send(nl: &Netlink, request: Request, what: &str) -> Result<()> {
    let mut message = NetlinkMessage::from(GenlMessage::from_payload(request));
    message.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut handle = nl.pm.handle.clone();
    let mut replies = handle.request(message).await.map_err(|e| anyhow!("{what}: {e}"))?;
    while let Some(reply) = replies.next().await {
        let reply = reply.map_err(|e| anyhow!("{what}: {e}"))?;
        if let NetlinkPayload::Error(e) = reply.payload
            && e.code.is_some()
        {
            return Err(anyhow!("{what}: {}", e.to_io()));
        }
    }
    Ok(())
}

fn address_attrs(e: &Endpoint, with_details: bool) -> Vec<AddrAttr> {
    let mut attrs = vec![AddrAttr::Id(e.id)];
    match e.ip {
        IpAddr::V4(v4) => attrs.extend([AddrAttr::Family(AF_INET), AddrAttr::Addr4(v4)]),
        IpAddr::V6(v6) => attrs.extend([AddrAttr::Family(AF_INET6), AddrAttr::Addr6(v6)]),
    }
    if with_details {
        let f = e.flags;
        let flags = [
            (f.signal, Flag::Signal),
            (f.subflow, Flag::Subflow),
            (f.backup, Flag::Backup),
            (f.fullmesh, Flag::Fullmesh),
        ];
        attrs.push(AddrAttr::Flags(flags.into_iter().filter(|(on, _)| *on).map(|(_, f)| f).collect()));
        if let Some(i) = e.ifindex {
            attrs.push(AddrAttr::IfIndex(i as i32));
        }
    }
    attrs
}

pub async fn add(nl: &Netlink, e: &Endpoint) -> Result<()> {
    let request = Request { command: Command::AddAddr, attrs: vec![Attr::Address(address_attrs(e, true))] };
    send(nl, request, &format!("adding endpoint {} id {}", e.ip, e.id)).await
}

pub async fn remove(nl: &Netlink, e: &Endpoint) -> Result<()> {
    let request = Request { command: Command::DelAddr, attrs: vec![Attr::Address(address_attrs(e, false))] };
    send(nl, request, &format!("removing endpoint {} id {}", e.ip, e.id)).await
}

pub async fn set_limits(nl: &Netlink, l: Limits) -> Result<()> {
    let attrs = vec![
        Attr::Limit(MptcpPathManagerLimitsAttr::RcvAddAddrs(l.add_addr_accepted)),
        Attr::Limit(MptcpPathManagerLimitsAttr::Subflows(l.subflows)),
    ];
    let what = format!("setting limits subflows {} add_addr_accepted {}", l.subflows, l.add_addr_accepted);
    send(nl, Request { command: Command::SetLimits, attrs }, &what).await
}
