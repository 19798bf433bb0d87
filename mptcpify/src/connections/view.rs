//! One namespace's connections as `connections` shows them, assembled from its socket dumps
//! and the processes that own the sockets: pure, so each rule of assembly is unit-tested.
use std::{collections::HashMap, net::SocketAddr};

use serde::Serialize;

use super::{
    diag::Diag,
    info::{MptcpInfo, SubflowInfo},
};

const TCP_LISTEN: u8 = 10;

/// A process whose connections are shown, with what selected it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub pid: u32,
    pub comm: String,
    pub cgroup: Option<String>,
    /// `namespace/name` when a pod rule selected it.
    pub pod: Option<String>,
    /// The rule that upgrades its sockets (`cgroup 1234`, `comm curl`, `all`), if any does.
    pub rule: Option<String>,
}

/// Whether a connection negotiated MPTCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Mptcp,
    /// Runs as plain TCP: the peer (or a middlebox) did not take MPTCP.
    Fallback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subflow {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The interface its local address is on (or the one it is bound to).
    pub interface: Option<String>,
    pub backup: bool,
    /// An extra subflow (MP_JOIN), not the connection's first.
    pub join: bool,
    pub state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Connection {
    #[serde(flatten)]
    pub workload: Workload,
    /// The network namespace's inode (`/proc/PID/ns/net`).
    pub netns: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: &'static str,
    pub outcome: Outcome,
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    pub subflows: Vec<Subflow>,
}

/// The kernel's TCP state names (`include/net/tcp_states.h`).
pub fn state_name(state: u8) -> &'static str {
    const NAMES: [&str; 13] = [
        "unknown",
        "established",
        "syn_sent",
        "syn_recv",
        "fin_wait1",
        "fin_wait2",
        "time_wait",
        "close",
        "close_wait",
        "last_ack",
        "listen",
        "closing",
        "new_syn_recv",
    ];
    NAMES.get(state as usize).copied().unwrap_or("unknown")
}

/// What one namespace's dumps hold for the workloads that own sockets there.
pub struct Namespace<'a> {
    pub netns: u64,
    pub mptcp: &'a [Diag],
    pub tcp: &'a [Diag],
    /// Socket inode -> the workload holding it.
    pub owners: &'a HashMap<u32, Workload>,
}

impl Namespace<'_> {
    /// The workloads' MPTCP connections, and the TCP connections their MPTCP listeners accepted
    /// from clients without MPTCP (the kernel hands those over as plain TCP sockets).
    pub fn connections(&self, interface_of: &dyn Fn(&Diag) -> Option<String>) -> Vec<Connection> {
        let mut out: Vec<Connection> = self
            .mptcp
            .iter()
            .filter(|d| d.state != TCP_LISTEN)
            .filter_map(|d| Some((d, self.owners.get(&d.inode)?)))
            .map(|(d, w)| self.mptcp_connection(d, w, interface_of))
            .collect();
        out.extend(self.accepted_as_tcp());
        out.sort_by_key(|c| (c.workload.pid, c.local, c.remote));
        out
    }

    fn mptcp_connection(&self, d: &Diag, w: &Workload, interface_of: &dyn Fn(&Diag) -> Option<String>) -> Connection {
        let info = d.info.as_deref().and_then(MptcpInfo::parse).unwrap_or_default();
        let subflows = if info.token == 0 {
            Vec::new()
        } else {
            self.tcp
                .iter()
                .filter_map(|t| Some((t, SubflowInfo::parse(t.subflow.as_deref()?))))
                .filter(|(_, s)| s.token == info.token)
                .map(|(t, s)| Subflow {
                    local: t.local,
                    remote: t.remote,
                    interface: interface_of(t),
                    backup: s.backup,
                    join: s.join,
                    state: state_name(t.state),
                })
                .collect()
        };
        Connection {
            workload: w.clone(),
            netns: self.netns,
            local: d.local,
            remote: d.remote,
            state: state_name(d.state),
            outcome: if info.fallback { Outcome::Fallback } else { Outcome::Mptcp },
            bytes_sent: info.bytes_sent,
            bytes_received: info.bytes_received,
            subflows,
        }
    }

    /// Plain TCP sockets owned by a workload, on the port of an MPTCP listener of its own.
    fn accepted_as_tcp(&self) -> Vec<Connection> {
        let listeners: Vec<(u16, u32)> = self
            .mptcp
            .iter()
            .filter(|d| d.state == TCP_LISTEN)
            .filter_map(|d| Some((d.local.port(), self.owners.get(&d.inode)?.pid)))
            .collect();
        self.tcp
            .iter()
            .filter(|t| t.subflow.is_none() && t.state != TCP_LISTEN)
            .filter_map(|t| Some((t, self.owners.get(&t.inode)?)))
            .filter(|(t, w)| listeners.contains(&(t.local.port(), w.pid)))
            .map(|(t, w)| Connection {
                workload: w.clone(),
                netns: self.netns,
                local: t.local,
                remote: t.remote,
                state: state_name(t.state),
                outcome: Outcome::Fallback,
                bytes_sent: None,
                bytes_received: None,
                subflows: Vec::new(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn diag(local: &str, remote: &str, state: u8, inode: u32) -> Diag {
        Diag {
            local: addr(local),
            remote: addr(remote),
            state,
            inode,
            interface: 0,
            cgroup_id: None,
            info: None,
            subflow: None,
        }
    }

    fn info(token: u32, fallback: bool) -> Vec<u8> {
        let mut b = vec![0u8; 96];
        b[8..12].copy_from_slice(&u32::from(fallback).to_ne_bytes());
        b[12..16].copy_from_slice(&token.to_ne_bytes());
        b[56..64].copy_from_slice(&1000u64.to_ne_bytes());
        b
    }

    fn subflow_attrs(token: u32, flags: u32) -> Vec<u8> {
        let mut a = Vec::new();
        for (kind, v) in [(2u16, token), (8, flags)] {
            a.extend(8u16.to_ne_bytes());
            a.extend(kind.to_ne_bytes());
            a.extend(v.to_ne_bytes());
        }
        a
    }

    fn workload(pid: u32) -> Workload {
        Workload { pid, comm: "app".into(), cgroup: None, pod: None, rule: Some("comm app".into()) }
    }

    #[test]
    fn an_mptcp_connection_gathers_its_subflows_by_token_and_leaves_others_out() {
        let mut msk = diag("10.0.1.2:4000", "10.0.0.1:80", 1, 11);
        msk.info = Some(info(7, false));
        let mut first = diag("10.0.1.2:4000", "10.0.0.1:80", 1, 0);
        first.subflow = Some(subflow_attrs(7, 1 << 1));
        let mut join = diag("10.0.2.2:4001", "10.0.0.1:80", 1, 0);
        join.subflow = Some(subflow_attrs(7, (1 << 3) | (1 << 5)));
        join.interface = 3;
        let mut foreign = diag("10.0.1.2:5000", "10.0.0.9:80", 1, 0);
        foreign.subflow = Some(subflow_attrs(8, 0));
        let unowned = {
            let mut d = diag("10.0.1.2:6000", "10.0.0.1:80", 1, 99);
            d.info = Some(info(9, false));
            d
        };
        let owners = HashMap::from([(11, workload(5))]);
        let ns = Namespace { netns: 1, mptcp: &[msk, unowned], tcp: &[first, join, foreign], owners: &owners };
        let found = ns.connections(&|d| (d.interface != 0).then(|| format!("if{}", d.interface)));
        assert_eq!(found.len(), 1, "the socket no workload owns is not shown");
        let c = &found[0];
        assert_eq!((c.outcome, c.state, c.bytes_sent), (Outcome::Mptcp, "established", Some(1000)));
        assert_eq!(c.subflows.len(), 2);
        let j = c.subflows.iter().find(|s| s.join).unwrap();
        assert_eq!((j.backup, j.interface.as_deref()), (true, Some("if3")));
    }

    #[test]
    fn fallen_back_connections_and_plain_tcp_accepted_by_an_mptcp_listener_show_as_fallback() {
        let mut active = diag("10.0.1.2:4000", "10.0.0.1:80", 1, 11);
        active.info = Some(info(0, true));
        let listener = diag("0.0.0.0:8080", "0.0.0.0:0", TCP_LISTEN, 12);
        let accepted = diag("10.0.0.1:8080", "10.0.9.9:5555", 1, 13);
        let other_port = diag("10.0.0.1:9090", "10.0.9.9:5556", 1, 14);
        let owners = HashMap::from([(11, workload(5)), (12, workload(6)), (13, workload(6)), (14, workload(6))]);
        let ns = Namespace { netns: 1, mptcp: &[active, listener], tcp: &[accepted, other_port], owners: &owners };
        let found = ns.connections(&|_| None);
        let outcomes: Vec<(u32, u16, Outcome)> =
            found.iter().map(|c| (c.workload.pid, c.local.port(), c.outcome)).collect();
        assert_eq!(outcomes, [(5, 4000, Outcome::Fallback), (6, 8080, Outcome::Fallback)]);
        assert!(found.iter().all(|c| c.subflows.is_empty()));
    }

    #[test]
    fn state_names_follow_the_kernel_and_unknown_numbers_say_so() {
        assert_eq!(state_name(1), "established");
        assert_eq!(state_name(10), "listen");
        assert_eq!(state_name(200), "unknown");
    }
}
