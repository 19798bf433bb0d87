//! One namespace's [`Snapshot`], read over netlink and turned into mptcpify's types.
use std::net::IpAddr;

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use mptcp_pm::{
    MptcpPathManagerAddressAttr as AddrAttr, MptcpPathManagerAddressAttrFlag as Flag, MptcpPathManagerAttr,
};
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope},
    link::{LinkAttribute, LinkFlags, LinkMessage},
    route::{RouteAttribute, RouteHeader, RouteMessage, RouteProtocol},
    rule::{RuleAttribute, RuleMessage},
};
use rtnetlink::IpVersion;

use super::{
    ROUTING_PROTOCOL, TABLE_BASE, TABLE_END,
    connection::Netlink,
    model::{Address, DefaultRoute, Endpoint, EndpointFlags, Limits, Link, Snapshot, SourceRule, TableRoute},
    routing::ip_of,
};

/// The main routing table (`RT_TABLE_MAIN`).
const MAIN_TABLE: u32 = 254;

pub async fn snapshot(nl: &Netlink) -> Result<Snapshot> {
    let links: Vec<Link> = nl.route.link().get().execute().map_ok(link).try_collect().await.context("listing links")?;
    let addresses: Vec<Address> = nl
        .route
        .address()
        .get()
        .execute()
        .try_filter_map(|m| async move { Ok(address(&m)) })
        .try_collect()
        .await
        .context("listing addresses")?;
    let mut routes = Vec::new();
    for family in [IpVersion::V4, IpVersion::V6] {
        let mut dump = RouteMessage::default();
        dump.header.address_family = if family == IpVersion::V4 { AddressFamily::Inet } else { AddressFamily::Inet6 };
        // Only what paths reads is kept: a host with full BGP tables dumps a million routes.
        let kept = nl.route.route().get(dump).execute().try_filter(|m| std::future::ready(route_matters(m)));
        routes.extend(kept.try_collect::<Vec<_>>().await.context("listing routes")?);
    }
    let mut rules = Vec::new();
    for family in [IpVersion::V4, IpVersion::V6] {
        rules.extend(nl.route.rule().get(family).execute().try_collect::<Vec<_>>().await.context("listing rules")?);
    }
    let ours = |m: &RouteMessage| m.header.protocol == RouteProtocol::Other(ROUTING_PROTOCOL) && in_range(table(m));
    Ok(Snapshot {
        path_manager: nl.path_manager.clone(),
        default_routes: routes.iter().filter_map(default_route).collect(),
        marked_routes: routes.iter().filter(|m| ours(m)).filter_map(table_route).collect(),
        foreign_tables: routes.iter().filter(|m| in_range(table(m)) && !ours(m)).map(table).collect(),
        marked_rules: rules.iter().filter_map(marked_rule).collect(),
        endpoints: endpoints(nl).await?,
        limits: limits(nl).await?,
        links,
        addresses,
    })
}

fn link(m: LinkMessage) -> Link {
    let name = m.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None });
    let hardware =
        m.attributes.iter().find_map(|a| if let LinkAttribute::Address(b) = a { Some(b.clone()) } else { None });
    Link {
        hardware: hardware.unwrap_or_default().iter().map(|b| format!("{b:02x}")).collect(),
        index: m.header.index,
        name: name.unwrap_or_else(|| format!("if{}", m.header.index)),
        up: usable(m.header.flags),
        loopback: m.header.flags.contains(LinkFlags::Loopback),
    }
}

/// Administratively up, with a carrier (a veth whose peer is down has none) and not dormant
/// (802.1X not yet authenticated). Judged by the carrier, not by `IFF_RUNNING`: the kernel sets
/// that from the operational state, which its link watcher updates up to a second after the
/// carrier came (events are batched), so a link just brought up read as down.
fn usable(flags: LinkFlags) -> bool {
    flags.contains(LinkFlags::Up | LinkFlags::LowerUp) && !flags.contains(LinkFlags::Dormant)
}

fn address(m: &AddressMessage) -> Option<Address> {
    let mut ip = None;
    let mut flags = AddressFlags::from_bits_truncate(u32::from(m.header.flags.bits()));
    for attr in &m.attributes {
        match attr {
            // IFA_LOCAL is the address itself on point-to-point links, IFA_ADDRESS the peer's.
            AddressAttribute::Local(a) => ip = Some(*a),
            AddressAttribute::Address(a) if ip.is_none() => ip = Some(*a),
            AddressAttribute::Flags(f) => flags = *f,
            _ => {}
        }
    }
    Some(Address {
        ifindex: m.header.index,
        ip: ip?,
        prefix_len: m.header.prefix_len,
        global: m.header.scope == AddressScope::Universe,
        tentative: flags.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed),
        deprecated: flags.contains(AddressFlags::Deprecated),
        // IFA_F_TEMPORARY is IFA_F_SECONDARY's value; only IPv6 has temporary addresses.
        temporary: ip?.is_ipv6() && flags.contains(AddressFlags::Secondary),
    })
}

fn table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(u32::from(m.header.table))
}

struct RouteParts {
    destination: Option<IpAddr>,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    metric: u32,
}

fn parts(m: &RouteMessage) -> RouteParts {
    let mut p = RouteParts { destination: None, gateway: None, oif: None, metric: 0 };
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Destination(a) => p.destination = ip_of(a),
            RouteAttribute::Gateway(a) => p.gateway = ip_of(a),
            RouteAttribute::Oif(i) => p.oif = Some(*i),
            RouteAttribute::Priority(n) => p.metric = *n,
            _ => {}
        }
    }
    p
}

fn in_range(table: u32) -> bool {
    (TABLE_BASE..TABLE_END).contains(&table)
}

/// Whether `paths` reads this route: a default route of the main table, or any route of
/// mptcpify's table range. Others (a full BGP table) neither change a plan nor are kept.
pub fn route_matters(m: &RouteMessage) -> bool {
    let t = table(m);
    in_range(t) || (t == MAIN_TABLE && m.header.destination_prefix_length == 0)
}

fn default_route(m: &RouteMessage) -> Option<DefaultRoute> {
    let p = parts(m);
    let unicast = m.header.kind == netlink_packet_route::route::RouteType::Unicast;
    (table(m) == MAIN_TABLE && unicast && m.header.destination_prefix_length == 0).then_some(())?;
    Some(DefaultRoute { ifindex: p.oif?, v6: is_v6(&m.header), gateway: p.gateway, metric: p.metric })
}

fn is_v6(h: &RouteHeader) -> bool {
    h.address_family == AddressFamily::Inet6
}

fn table_route(m: &RouteMessage) -> Option<TableRoute> {
    let p = parts(m);
    let len = m.header.destination_prefix_length;
    let destination = if len == 0 { None } else { Some((p.destination?, len)) };
    Some(TableRoute { table: table(m), v6: is_v6(&m.header), destination, gateway: p.gateway, ifindex: p.oif? })
}

fn marked_rule(m: &RuleMessage) -> Option<SourceRule> {
    let (mut source, mut table, mut priority, mut ours) = (None, u32::from(m.header.table), 0, false);
    for attr in &m.attributes {
        match attr {
            RuleAttribute::Source(ip) => source = Some(*ip),
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Protocol(p) => ours = *p == RouteProtocol::Other(ROUTING_PROTOCOL),
            _ => {}
        }
    }
    (ours && (TABLE_BASE..TABLE_END).contains(&table)).then_some(SourceRule { source: source?, table, priority })
}

async fn endpoints(nl: &Netlink) -> Result<Vec<Endpoint>> {
    let mut dump = nl.pm.address().get().execute().await;
    let mut all = Vec::new();
    while let Some(msg) = dump.try_next().await.context("listing MPTCP endpoints")? {
        let (mut id, mut ip, mut ifindex, mut flags) = (None, None, None, EndpointFlags::default());
        for attr in &msg.payload.nlas {
            match attr {
                MptcpPathManagerAttr::Address(AddrAttr::Id(i)) => id = Some(*i),
                MptcpPathManagerAttr::Address(AddrAttr::Addr4(a)) => ip = Some(IpAddr::V4(*a)),
                MptcpPathManagerAttr::Address(AddrAttr::Addr6(a)) => ip = Some(IpAddr::V6(*a)),
                MptcpPathManagerAttr::Address(AddrAttr::IfIndex(i)) if *i > 0 => ifindex = Some(*i as u32),
                MptcpPathManagerAttr::Address(AddrAttr::Flags(f)) => flags = endpoint_flags(f),
                _ => {}
            }
        }
        if let (Some(id), Some(ip)) = (id, ip) {
            all.push(Endpoint { id, ip, ifindex, flags });
        }
    }
    Ok(all)
}

fn endpoint_flags(flags: &[Flag]) -> EndpointFlags {
    let has = |f: Flag| flags.contains(&f);
    EndpointFlags {
        signal: has(Flag::Signal),
        subflow: has(Flag::Subflow),
        backup: has(Flag::Backup),
        fullmesh: has(Flag::Fullmesh),
    }
}

async fn limits(nl: &Netlink) -> Result<Limits> {
    use mptcp_pm::MptcpPathManagerLimitsAttr as L;
    let mut reply = nl.pm.limits().get().execute().await;
    let mut limits = Limits { subflows: 0, add_addr_accepted: 0 };
    while let Some(msg) = reply.try_next().await.context("reading MPTCP limits")? {
        for attr in &msg.payload.nlas {
            match attr {
                MptcpPathManagerAttr::Limits(L::Subflows(n)) => limits.subflows = *n,
                MptcpPathManagerAttr::Limits(L::RcvAddAddrs(n)) => limits.add_addr_accepted = *n,
                _ => {}
            }
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_usable_by_its_carrier_before_its_operational_state_follows() {
        // Just up: the carrier is there, the link watcher has not set RUNNING yet.
        assert!(usable(LinkFlags::Up | LinkFlags::LowerUp));
        assert!(usable(LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Running));
        assert!(!usable(LinkFlags::Up), "no carrier");
        assert!(!usable(LinkFlags::LowerUp | LinkFlags::Running), "administratively down");
        assert!(!usable(LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Dormant), "dormant");
    }

    #[test]
    fn only_default_routes_of_main_and_routes_of_mptcpifys_tables_matter() {
        let route = |table: u32, prefix: u8| {
            let mut m = RouteMessage::default();
            m.header.destination_prefix_length = prefix;
            m.attributes.push(RouteAttribute::Table(table));
            m
        };
        assert!(route_matters(&route(MAIN_TABLE, 0)), "a default route");
        assert!(!route_matters(&route(MAIN_TABLE, 24)), "a BGP prefix in main");
        assert!(!route_matters(&route(100, 0)), "another table's default");
        assert!(route_matters(&route(TABLE_BASE + 3, 24)), "mptcpify's table");
        assert!(!route_matters(&route(TABLE_END, 0)));
    }
}
