//! The kernel's per-namespace MPTCP counters (`MPTcpExt` in `/proc/PID/net/netstat`): how many
//! SYNs offered MPTCP, how many peers answered, fallbacks, joins, blackholes. They count every
//! connection of the namespace, not only the upgraded ones: the context for the outcome counters.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::collect::{self, Scope};

/// The counters worth a line of their own, as the kernel names them.
pub const SHOWN: [&str; 12] = [
    "MPCapableSYNTX",
    "MPCapableSYNACKRX",
    "MPCapableSYNRX",
    "MPCapableACKRX",
    "MPCapableFallbackSYNACK",
    "MPCapableFallbackACK",
    "MPCapableSYNTXDisabled",
    "MPJoinSynTx",
    "MPJoinSynAckRx",
    "MPJoinSynRx",
    "MPJoinAckRx",
    "Blackhole",
];

/// One namespace an upgraded workload is in, with its [`SHOWN`] counters: what `status` and the
/// agent's metrics show.
#[derive(Debug, Clone, Serialize)]
pub struct NamespaceCounters {
    pub netns: u64,
    /// An upgraded process in it.
    pub pid: u32,
    pub pods: Vec<String>,
    pub mptcp: BTreeMap<String, u64>,
}

/// The namespaces upgraded processes are in; one that cannot be read (gone meanwhile) is left
/// out. An error when the rules or processes cannot be read at all.
pub fn upgraded_namespaces() -> Result<Vec<NamespaceCounters>> {
    let (namespaces, _) = collect::workload_namespaces(&Scope::Upgraded)?;
    Ok(namespaces
        .iter()
        .filter_map(|ns| {
            let all = read(ns.pid()).ok()?;
            Some(NamespaceCounters {
                netns: ns.netns,
                pid: ns.pid(),
                pods: ns.pods().into_iter().map(String::from).collect(),
                mptcp: all.into_iter().filter(|(name, _)| SHOWN.contains(&name.as_str())).collect(),
            })
        })
        .collect())
}

/// `MPTcpExt` of the namespace `pid` is in.
pub fn read(pid: u32) -> Result<BTreeMap<String, u64>> {
    let path = format!("/proc/{pid}/net/netstat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(parse(&text))
}

/// The `MPTcpExt:` pair of lines (names, then values); empty without MPTCP.
pub fn parse(netstat: &str) -> BTreeMap<String, u64> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("MPTcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return BTreeMap::new() };
    names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mptcp_pair_of_lines_is_read_and_others_ignored() {
        let text = "TcpExt: SyncookiesSent X\nTcpExt: 0 1\nMPTcpExt: MPCapableSYNTX MPCapableFallbackSYNACK Blackhole\nMPTcpExt: 5 2 x\n";
        let m = parse(text);
        assert_eq!(m.get("MPCapableSYNTX"), Some(&5));
        assert_eq!(m.get("MPCapableFallbackSYNACK"), Some(&2));
        assert_eq!(m.get("Blackhole"), None, "an unparsable value is left out");
        assert!(parse("TcpExt: a\nTcpExt: 1\n").is_empty());
        assert!(parse("MPTcpExt: a b\n").is_empty(), "names without values");
    }
}
