//! What the kernel holds about the paths of one network namespace, in mptcpify's own types:
//! read by [`super::netlink`], decided on by [`super::plan`] without touching the kernel.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The kernel's largest `subflows` and `add_addr_accepted` (`MPTCP_PM_ADDR_MAX`).
pub const KERNEL_LIMIT_MAX: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub loopback: bool,
    /// The hardware address, hex: a recreated interface (a new veth) has another.
    pub hardware: String,
}

/// One address of a link, with what makes it unusable for a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub prefix_len: u8,
    /// `scope global` (not host or link).
    pub global: bool,
    /// Still in duplicate address detection, or failed it.
    pub tentative: bool,
    pub deprecated: bool,
    /// An IPv6 privacy (temporary) address: it changes, so no endpoint is bound to it.
    pub temporary: bool,
}

/// A default route of the main table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DefaultRoute {
    pub ifindex: u32,
    pub v6: bool,
    pub gateway: Option<IpAddr>,
    pub metric: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointFlags {
    pub signal: bool,
    pub subflow: bool,
    pub backup: bool,
    pub fullmesh: bool,
}

impl EndpointFlags {
    /// The names `ip mptcp endpoint` uses.
    pub fn names(&self) -> Vec<&'static str> {
        let all =
            [(self.signal, "signal"), (self.subflow, "subflow"), (self.backup, "backup"), (self.fullmesh, "fullmesh")];
        all.iter().filter(|(on, _)| *on).map(|(_, name)| *name).collect()
    }

    /// Whether the endpoint gives a connection another path (the others only mark or tune).
    pub fn adds_a_path(&self) -> bool {
        self.signal || self.subflow
    }
}

/// An endpoint of the in-kernel path manager (`ip mptcp endpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: u8,
    pub ip: IpAddr,
    pub ifindex: Option<u32>,
    pub flags: EndpointFlags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub subflows: u32,
    pub add_addr_accepted: u32,
}

/// Who decides on subflows in the namespace (`net.mptcp.pm_type` / `net.mptcp.path_manager`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathManager {
    /// The in-kernel path manager, driven by endpoints and limits: the one mptcpify configures.
    Kernel,
    /// A daemon (mptcpd, say) decides through netlink: mptcpify leaves the namespace to it.
    Userspace,
    /// MPTCP is off here (`net.mptcp.enabled=0`).
    Disabled,
    /// No MPTCP in this kernel.
    Missing,
    Other(String),
}

impl std::fmt::Display for PathManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathManager::Kernel => f.write_str("in-kernel"),
            PathManager::Userspace => f.write_str("userspace (mptcpify leaves it alone)"),
            PathManager::Disabled => f.write_str("none: net.mptcp.enabled=0"),
            PathManager::Missing => f.write_str("none: no MPTCP in this kernel"),
            PathManager::Other(name) => write!(f, "{name}"),
        }
    }
}

/// A policy rule `from ADDR lookup TABLE`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceRule {
    pub source: IpAddr,
    pub table: u32,
    pub priority: u32,
}

/// A route in one of the tables mptcpify routes extra addresses through.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableRoute {
    pub table: u32,
    pub v6: bool,
    /// `None` for the default route.
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub ifindex: u32,
}

/// Everything [`super::plan`] decides from, read in one go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub path_manager: PathManager,
    pub links: Vec<Link>,
    pub addresses: Vec<Address>,
    pub default_routes: Vec<DefaultRoute>,
    pub endpoints: Vec<Endpoint>,
    pub limits: Limits,
    /// Source rules and table routes marked with mptcpify's routing protocol.
    pub marked_rules: Vec<SourceRule>,
    pub marked_routes: Vec<TableRoute>,
    /// Tables mptcpify would use that hold a route someone else made.
    pub foreign_tables: Vec<u32>,
}

impl Snapshot {
    pub fn link(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    pub fn link_named(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn link_name(&self, index: u32) -> String {
        self.link(index).map_or_else(|| format!("if{index}"), |l| l.name.clone())
    }
}
