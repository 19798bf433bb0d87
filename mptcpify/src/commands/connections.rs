//! `mptcpify connections`: the live MPTCP connections of the upgraded processes, or of those the
//! selectors name. `--json`'s field names are a stable interface (see README).
use anyhow::Result;

use crate::{
    connections::{
        collect::{self, Scope},
        view::{Connection, Outcome},
    },
    host::{
        preconditions,
        resolve::{self, Purpose},
        selector::Selector,
    },
};

pub async fn show(selectors: &[Selector], json: bool) -> Result<()> {
    let mounts = preconditions::require_state_access()?;
    let scope = if selectors.is_empty() {
        Scope::Upgraded
    } else {
        let targets = resolve::resolve(selectors, &mounts, Purpose::Add).await?;
        Scope::Matching(targets.into_iter().map(|t| t.key).collect())
    };
    let report = collect::collect(&scope).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for skipped in &report.skipped {
        eprintln!(
            "skipped pid {} ({}): {}",
            skipped.pid,
            skipped.netns.map_or("-".into(), |n| n.to_string()),
            skipped.reason
        );
    }
    if report.connections.is_empty() {
        println!("no MPTCP connections");
        return Ok(());
    }
    println!(
        "{:>7} {:<16} {:<20} {:<46} {:<12} {:<9} {:>10} {:>10}",
        "PID", "COMM", "RULE", "LOCAL -> REMOTE", "STATE", "OUTCOME", "SENT", "RECEIVED"
    );
    for c in &report.connections {
        print_connection(c);
    }
    Ok(())
}

fn print_connection(c: &Connection) {
    let bytes = |b: Option<u64>| b.map_or("-".into(), |b| b.to_string());
    let outcome = match c.outcome {
        Outcome::Mptcp => "mptcp",
        Outcome::Fallback => "fallback",
    };
    let mut rule = c.workload.rule.clone().unwrap_or_else(|| "-".into());
    if let Some(pod) = &c.workload.pod {
        rule = format!("pod {pod}");
    }
    println!(
        "{:>7} {:<16} {:<20} {:<46} {:<12} {:<9} {:>10} {:>10}",
        c.workload.pid,
        super::shown(&c.workload.comm),
        super::shown(&rule),
        format!("{} -> {}", c.local, c.remote),
        c.state,
        outcome,
        bytes(c.bytes_sent),
        bytes(c.bytes_received)
    );
    for s in &c.subflows {
        let kind = if s.join { "join" } else { "first" };
        let backup = if s.backup { " backup" } else { "" };
        let dev = s.interface.as_deref().map_or(String::new(), |i| format!(" dev {}", super::shown(i)));
        println!("{:>7}   subflow {kind} {} -> {}{dev} {}{backup}", "", s.local, s.remote, s.state);
    }
}
