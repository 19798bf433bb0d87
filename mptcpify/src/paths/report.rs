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
    routing,
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
    /// Through the endpoint's own interface.
    Own,
    /// Through another interface: the subflow shares the first path.
    Through { dev: String },
    NoRoute,
    /// A signal-only endpoint is announced, not connected from.
    NotAsked,
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
    /// Endpoints that add a path whose subflows would not leave through their own interface.
    pub fn unroutable(&self) -> impl Iterator<Item = &EndpointView> {
        self.endpoints.iter().filter(|e| matches!(e.routing, Routing::Through { .. } | Routing::NoRoute))
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
            match routing::leaves_through(nl, e.ip).await? {
                None => Routing::NoRoute,
                Some(oif) if Some(oif) == own => Routing::Own,
                Some(oif) => Routing::Through { dev: snap.link_name(oif) },
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
