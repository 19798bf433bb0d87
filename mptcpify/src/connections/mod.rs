//! Live MPTCP connections of the workloads mptcpify selects, read from the kernel's socket
//! diagnostics in each workload's network namespace: [`diag`] (the netlink dumps), [`info`]
//! (the kernel structures in them), [`view`] (assembly, pure), [`collect`] (processes,
//! namespaces, sockets) and [`mib`] (each namespace's MPTCP counters).
pub mod collect;
pub mod diag;
pub mod info;
pub mod mib;
pub mod view;
