//! Source rules and table routes, each marked with [`ROUTING_PROTOCOL`], and the kernel's own
//! route lookup, which says where a subflow from an address would leave.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
};

use super::{
    ROUTING_PROTOCOL,
    connection::Netlink,
    model::{SourceRule, TableRoute},
};

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

fn full_len(ip: IpAddr) -> u8 {
    if ip.is_ipv6() { 128 } else { 32 }
}

fn rule_message(r: &SourceRule) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = family(r.source);
    m.header.src_len = full_len(r.source);
    m.header.action = RuleAction::ToTable;
    m.attributes = vec![
        RuleAttribute::Source(r.source),
        RuleAttribute::Table(r.table),
        RuleAttribute::Priority(r.priority),
        RuleAttribute::Protocol(RouteProtocol::Other(ROUTING_PROTOCOL)),
    ];
    m
}

pub async fn add_rule(nl: &Netlink, r: &SourceRule) -> Result<()> {
    let mut request = nl.route.rule().add();
    *request.message_mut() = rule_message(r);
    request.execute().await.with_context(|| format!("adding rule from {} lookup {}", r.source, r.table))
}

pub async fn remove_rule(nl: &Netlink, r: &SourceRule) -> Result<()> {
    nl.route
        .rule()
        .del(rule_message(r))
        .execute()
        .await
        .with_context(|| format!("removing rule from {} lookup {}", r.source, r.table))
}

fn route_message(r: &TableRoute) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = if r.v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    m.header.table = 252; // RT_TABLE_COMPAT: the real id is in RTA_TABLE
    m.header.protocol = RouteProtocol::Other(ROUTING_PROTOCOL);
    m.header.kind = RouteType::Unicast;
    m.header.scope =
        if r.gateway.is_some() || r.destination.is_none() { RouteScope::Universe } else { RouteScope::Link };
    m.attributes.push(RouteAttribute::Table(r.table));
    m.attributes.push(RouteAttribute::Oif(r.ifindex));
    if let Some((ip, len)) = r.destination {
        m.header.destination_prefix_length = len;
        m.attributes.push(RouteAttribute::Destination(route_address(ip)));
    }
    if let Some(gw) = r.gateway {
        m.attributes.push(RouteAttribute::Gateway(route_address(gw)));
    }
    m
}

fn describe(r: &TableRoute) -> String {
    let to = r.destination.map_or("default".to_string(), |(ip, len)| format!("{ip}/{len}"));
    let via = r.gateway.map_or(String::new(), |g| format!(" via {g}"));
    format!("{to}{via} dev if{} table {}", r.ifindex, r.table)
}

pub async fn add_route(nl: &Netlink, r: &TableRoute) -> Result<()> {
    nl.route.route().add(route_message(r)).execute().await.with_context(|| format!("adding route {}", describe(r)))
}

pub async fn remove_route(nl: &Netlink, r: &TableRoute) -> Result<()> {
    nl.route.route().del(route_message(r)).execute().await.with_context(|| format!("removing route {}", describe(r)))
}

/// A destination outside every local network (RFC 5737 / RFC 3849 documentation ranges): the
/// lookup answers where traffic to the rest of the world would go.
fn far_away(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))
    }
}

/// Where the kernel's lookup sends a packet to the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub oif: u32,
    pub gateway: Option<IpAddr>,
}

/// Where the kernel would send a packet from `source` to the world, bound to `oif` as the
/// path manager binds a subflow to its endpoint's interface; `None` if it has no route.
pub async fn lookup(nl: &Netlink, source: IpAddr, oif: Option<u32>) -> Result<Option<Answer>> {
    let destination = far_away(source.is_ipv6());
    let mut m = RouteMessage::default();
    m.header.address_family = family(source);
    m.header.destination_prefix_length = full_len(source);
    m.header.source_prefix_length = full_len(source);
    m.attributes =
        vec![RouteAttribute::Destination(route_address(destination)), RouteAttribute::Source(route_address(source))];
    m.attributes.extend(oif.map(RouteAttribute::Oif));
    let Ok(routes) = nl.route.route().get(m).execute().try_collect::<Vec<_>>().await else { return Ok(None) };
    let attrs = || routes.iter().flat_map(|r| &r.attributes);
    let gateway = attrs().find_map(|a| if let RouteAttribute::Gateway(g) = a { ip_of(g) } else { None });
    Ok(attrs()
        .find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None })
        .map(|oif| Answer { oif, gateway }))
}

/// The inverse of [`route_address`] (`None` for MPLS and other families).
pub(super) fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
