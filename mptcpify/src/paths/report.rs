//! What `paths` shows of a namespace, and what `doctor` and the agent's metrics take from it:
//! each interface with its addresses, each endpoint with its owner and whether a subflow from
//! it would leave through its own interface (asked of the kernel's route lookup).
use std::net::IpAddr;

use anyhow::Result;
use serde::Serialize;

use super::{
    apply,
    connection::Netlink,
    model::{Endpoint, Limits, PathManager, SourceRule, TableRoute},
    plan::unusable,
    routing::{self, Answer},
};

#[derive(Debug, Serialize)]
pub struct AddressView {
    pub ip: IpAddr,
    pub prefix_len: u8,
    /// Why no endpoint would be made for it; absent when one can be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unusable: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct InterfaceView {
    pub name: String,
    pub index: u32,
    pub up: bool,
    pub default_route: bool,
    pub addresses: Vec<AddressView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    Mptcpify,
    Other,
}

/// Where a subflow from an endpoint's address would go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Routing {
    /// Through the endpoint's own interface, by a route of its own.
    Own,
    /// Bound to its interface, which has no route beyond its subnet: the kernel then takes
    /// every destination for on-link, which only a peer on that link answers.
    SubnetOnly,
    /// Through another interface: the subflow shares the first path.
    Through {
        dev: String,
    },
    NoRoute,
    /// A signal-only endpoint is announced, not connected from.
    NotAsked,
}

/// The verdict from the kernel's lookup. `bound`: the endpoint names its interface (the path
/// manager binds its subflows there); `own`: the interface that holds its address;
/// `routed_there`: a route to the world through `own` exists (a gateway or an on-link default).
pub fn verdict(bound: bool, own: Option<u32>, answer: Option<Answer>, routed_there: bool) -> Routing {
    match answer {
        None => Routing::NoRoute,
        Some(a) if Some(a.oif) != own => Routing::Through { dev: format!("if{}", a.oif) },
        Some(a) if a.gateway.is_some() || routed_there || !bound => Routing::Own,
        Some(_) => Routing::SubnetOnly,
    }
}

#[derive(Debug, Serialize)]
pub struct EndpointView {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    pub dev: Option<String>,
    pub flag_names: Vec<&'static str>,
    pub owner: Owner,
    pub routing: Routing,
}

#[derive(Debug, Serialize)]
pub struct NamespaceView {
    pub netns_inode: u64,
    pub path_manager: PathManager,
    pub limits: Limits,
    /// The limits mptcpify raised them from, if it did.
    pub limits_before_mptcpify: Option<Limits>,
    pub interfaces: Vec<InterfaceView>,
    pub endpoints: Vec<EndpointView>,
    pub source_rules: Vec<SourceRule>,
    pub table_routes: Vec<TableRoute>,
}

impl NamespaceView {
    /// Endpoints that add a path whose subflows would not leave through their own interface,
    /// or not beyond its subnet.
    pub fn unroutable(&self) -> impl Iterator<Item = &EndpointView> {
        self.endpoints
            .iter()
            .filter(|e| matches!(e.routing, Routing::Through { .. } | Routing::NoRoute | Routing::SubnetOnly))
    }
}

pub async fn view(nl: &Netlink) -> Result<NamespaceView> {
    let (snap, record, _) = apply::current(nl).await?;
    let interfaces = snap
        .links
        .iter()
        .map(|l| InterfaceView {
            name: l.name.clone(),
            index: l.index,
            up: l.up,
            default_route: snap.default_routes.iter().any(|r| r.ifindex == l.index),
            addresses: snap
                .addresses
                .iter()
                .filter(|a| a.ifindex == l.index)
                .map(|a| AddressView { ip: a.ip, prefix_len: a.prefix_len, unusable: unusable(a) })
                .collect(),
        })
        .collect();
    let mut endpoints = Vec::new();
    for e in &snap.endpoints {
        let own = e.ifindex.or_else(|| snap.addresses.iter().find(|a| a.ip == e.ip).map(|a| a.ifindex));
        let routing = if !e.flags.subflow {
            Routing::NotAsked
        } else {
            let answer = routing::lookup(nl, e.ip, e.ifindex).await?;
            let routed_there = |i| {
                snap.default_routes.iter().any(|r| r.ifindex == i)
                    || snap.marked_routes.iter().any(|r| r.ifindex == i && r.destination.is_none())
            };
            match verdict(e.ifindex.is_some(), own, answer, own.is_some_and(routed_there)) {
                Routing::Through { .. } => Routing::Through { dev: snap.link_name(answer.map_or(0, |a| a.oif)) },
                other => other,
            }
        };
        endpoints.push(EndpointView {
            endpoint: e.clone(),
            dev: own.map(|i| snap.link_name(i)),
            flag_names: e.flags.names(),
            owner: if record.made(e) { Owner::Mptcpify } else { Owner::Other },
            routing,
        });
    }
    Ok(NamespaceView {
        netns_inode: nl.inode,
        path_manager: snap.path_manager.clone(),
        limits: snap.limits,
        limits_before_mptcpify: record.limits.filter(|r| r.set == snap.limits).map(|r| r.before),
        interfaces,
        endpoints,
        source_rules: snap.marked_rules.clone(),
        table_routes: snap.marked_routes.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(oif: u32, gateway: Option<&str>) -> Option<Answer> {
        Some(Answer { oif, gateway: gateway.map(|g| g.parse().unwrap()) })
    }

    #[test]
    fn a_subflow_routes_when_it_leaves_its_own_interface_by_a_route_of_its_own() {
        assert_eq!(verdict(true, Some(3), answer(3, Some("10.2.0.1")), false), Routing::Own, "a gateway through it");
        assert_eq!(verdict(true, Some(3), answer(3, None), true), Routing::Own, "an on-link default (ppp, wireguard)");
        assert_eq!(verdict(true, Some(3), answer(3, None), false), Routing::SubnetOnly, "the kernel's on-link guess");
        assert_eq!(verdict(false, Some(3), answer(3, None), false), Routing::Own, "unbound: the lookup found a route");
        assert_eq!(verdict(false, Some(3), answer(2, Some("10.1.0.1")), true), Routing::Through { dev: "if2".into() });
        assert_eq!(verdict(false, Some(3), None, false), Routing::NoRoute);
    }
}
