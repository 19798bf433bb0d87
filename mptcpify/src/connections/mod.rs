//! Live MPTCP connections of the workloads mptcpify selects, read from the kernel's socket
//! diagnostics in each workload's network namespace: [`diag`] (the netlink dumps), [`info`]
//! (the kernel structures in them), [`view`] (assembly, pure) and [`collect`] (processes,
//! namespaces, sockets).
pub mod collect;
pub mod diag;
pub mod info;
pub mod view;
