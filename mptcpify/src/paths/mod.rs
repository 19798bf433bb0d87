//! The paths that make an upgrade pay off: MPTCP endpoints, limits and per-source routing of
//! one network namespace, kept by `mptcpify paths` and the agent's `[paths]`. mptcpify only ever
//! edits or removes what it made: endpoints per its [`record`], rules and routes per their
//! routing protocol [`ROUTING_PROTOCOL`] in its tables.
pub mod apply;
pub mod connection;
pub mod endpoints;
pub mod model;
pub mod plan;
pub mod read;
pub mod record;
pub mod report;
pub mod routing;

/// `rtm_protocol` of the rules and routes mptcpify makes (unassigned in the kernel's list).
pub const ROUTING_PROTOCOL: u8 = 77;
/// Interface N's table is `TABLE_BASE + N`, so tables never clash with small hand-made ones.
pub const TABLE_BASE: u32 = 0x6d70_0000;
/// Tables above this belong to mptcpify's range.
pub const TABLE_END: u32 = TABLE_BASE + 0x1_0000;
/// Before the main table's rule (32766), so an address's own table decides first.
pub const RULE_PRIORITY: u32 = 30_000;
