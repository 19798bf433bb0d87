//! mptcpify: make unmodified programs use Multipath TCP.
//!
//! A kernel program on `update_socket_protocol` (fmod_ret) turns `socket(AF_INET[6],
//! SOCK_STREAM, 0|IPPROTO_TCP)` into `IPPROTO_MPTCP` for the processes the rules select. The
//! crate is layered, each folder one layer:
//! - [`bpf`]: everything that talks BPF to the kernel (the only `unsafe`, in [`bpf::sys`]);
//! - [`state`]: the pinned state, its lock, the rules and the user-space model of the decision;
//! - [`compat`]: what an upgraded program may meet that TCP would have allowed (refused options);
//! - [`host`]: what selectors name on this host (cgroups, units, processes, users, mounts);
//! - [`paths`]: MPTCP endpoints, limits and routing per network namespace;
//! - [`connections`]: the live connections of selected workloads, from socket diagnostics;
//! - [`commands`]: one module per CLI command, thin over the layers above;
//! - [`agent`]: the daemon that keeps a declarative policy (and pods) in force.
#![deny(unsafe_code)]

pub mod agent;
pub mod bpf;
pub mod commands;
pub mod compat;
pub mod connections;
pub mod host;
pub mod paths;
pub mod state;
