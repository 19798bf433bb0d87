//! What selectors name on this host, resolved before anything changes: the user's selectors
//! ([`selector`]) and their resolution to rule keys ([`resolve`]) through cgroups
//! ([`cgroup`]), systemd units ([`systemd`]), processes ([`process`]) and users ([`users`]);
//! the mounts mptcpify needs ([`mounts`]) and the preconditions every command checks
//! ([`preconditions`]).
pub mod cgroup;
pub mod mounts;
pub mod preconditions;
pub mod process;
pub mod resolve;
pub mod selector;
pub mod systemd;
pub mod users;
