//! `mptcpify guard`: the compatibility guard — which programs it keeps TCP and why, the
//! refusals it saw, and the operator's say: forget a decision, allow a program anyway, switch
//! the guard off or on. `status` shows the same view.
use anyhow::{Result, bail};
use mptcpify_common::{GuardEntry, RefusalKey, RuleKind, RuleRef};
use nix::time::{ClockId, clock_gettime};
use serde::Serialize;

use crate::{
    compat::names,
    host::preconditions,
    state::{
        guard::{Guard, Verdict},
        maps::State,
        pins::{self, Lock},
        rules::{Key, comm_str},
    },
};

/// What the operator asks of the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardAction {
    /// Show it.
    Show { json: bool },
    /// Upgrade the program again (`None`: every program), until it has an option refused again.
    Forget(Option<Key>),
    /// Upgrade the program under every rule, whatever it has refused.
    Allow(Key),
    /// Keep programs TCP after a refusal (the default), or never.
    Switch { on: bool },
}

/// The guard as `status --json` and `guard --json` show it. Field names are a stable interface.
#[derive(Debug, Serialize, Default)]
pub struct GuardStatus {
    /// Whether programs are kept TCP after a refusal (`mptcpify guard off` says no).
    pub enabled: bool,
    /// The options this kernel refuses on MPTCP but accepts on TCP, as the loader probed them
    /// (empty: the probe could not run, and nothing is counted or guarded).
    pub refused_options: Vec<RefusedOption>,
    /// Programs kept TCP, with the refusal that decided it.
    pub kept_tcp: Vec<KeptTcp>,
    /// Programs the operator allowed to be upgraded anyway.
    pub allowed: Vec<String>,
    /// Refusals seen on upgraded sockets, and (`predicted`) calls audited sockets made that MPTCP
    /// would refuse, by rule, program, call and option.
    pub refusals: Vec<Refusal>,
    /// Whether the audit watchers are attached (they are while an audit rule exists).
    pub audit_watchers: bool,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RefusedOption {
    pub option: String,
    pub setsockopt: bool,
    pub getsockopt: bool,
}

#[derive(Debug, Serialize)]
pub struct KeptTcp {
    pub program: String,
    /// The rule within which it stays TCP: `kind` and `key` as `status` shows rules.
    pub rule_kind: &'static str,
    pub rule_key: u64,
    pub call: &'static str,
    pub option: String,
    /// `ENOPROTOOPT` or `EOPNOTSUPP`; empty when predicted.
    pub errno: String,
    /// Decided from an audit rule's prediction, before any refusal.
    pub predicted: bool,
    /// The process that was refused.
    pub pid: u32,
    /// How long ago it was decided.
    pub seconds_ago: f64,
}

#[derive(Debug, Serialize)]
pub struct Refusal {
    pub rule_kind: &'static str,
    pub rule_key: u64,
    pub program: String,
    pub call: &'static str,
    pub option: String,
    /// Calls on sockets an audit rule left TCP, which MPTCP would have refused (would-fail).
    pub predicted: bool,
    pub count: u64,
}

impl KeptTcp {
    /// A decision within the cgroup rule of cgroup `id` (a pod's, for the agent).
    pub fn is_under_cgroup(&self, id: u64) -> bool {
        self.rule_kind == RuleKind::Cgroup.name() && self.rule_key == id
    }
}

fn kind_name(rule: RuleRef) -> &'static str {
    RuleKind::from_u8(rule.kind as u8).map_or("unknown", RuleKind::name)
}

fn boot_seconds() -> f64 {
    clock_gettime(ClockId::CLOCK_BOOTTIME).map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9).unwrap_or(0.0)
}

fn kept(comm: &[u8; mptcpify_common::COMM_LEN], rule: RuleRef, e: &GuardEntry, now: f64) -> KeptTcp {
    KeptTcp {
        program: comm_str(comm),
        rule_kind: kind_name(rule),
        rule_key: rule.key,
        call: names::call_name(e.op),
        option: names::option_name(e.option),
        errno: if e.predicted != 0 { String::new() } else { names::errno_name(e.errno as i32) },
        predicted: e.predicted != 0,
        pid: e.pid,
        seconds_ago: (now - e.since_boot_ns as f64 / 1e9).max(0.0),
    }
}

fn refusal(k: &RefusalKey, count: u64) -> Refusal {
    Refusal {
        rule_kind: kind_name(k.rule),
        rule_key: k.rule.key,
        program: comm_str(&k.comm),
        call: names::call_name(k.op),
        option: names::option_name(k.option),
        predicted: k.predicted != 0,
        count,
    }
}

/// The guard's view of the pinned state.
pub fn guard_status(st: &State) -> Result<GuardStatus> {
    let guard: &Guard = st.guard();
    let refused_options = guard
        .refused_options()?
        .into_iter()
        .map(|(o, bits)| RefusedOption {
            option: names::option_name(o),
            setsockopt: bits & mptcpify_common::OPTION_SET != 0,
            getsockopt: bits & mptcpify_common::OPTION_GET != 0,
        })
        .collect();
    let now = boot_seconds();
    let mut status = GuardStatus {
        enabled: st.config()?.guard_off == 0,
        refused_options,
        audit_watchers: crate::bpf::audit_watch::attached(),
        ..Default::default()
    };
    for (comm, verdict) in guard.verdicts()? {
        match verdict {
            Verdict::KeepTcp { rule, entry } => status.kept_tcp.push(kept(&comm, rule, &entry, now)),
            Verdict::Allowed => status.allowed.push(comm_str(&comm)),
        }
    }
    let mut refusals = guard.refusals()?;
    refusals.sort_by_key(|(k, _)| (k.rule.kind, k.rule.key, k.comm, k.predicted, k.op, k.option));
    status.refusals = refusals.iter().map(|(k, n)| refusal(k, *n)).collect();
    Ok(status)
}

/// The lines `status` and `guard` print.
pub fn print(g: &GuardStatus) {
    let state = if g.enabled { "on" } else { "off (refusals are counted, nobody is kept TCP)" };
    println!("guard: {state}; {} options refused on MPTCP by this kernel", g.refused_options.len());
    for k in &g.kept_tcp {
        let result = if k.predicted { "would fail (audit)".to_owned() } else { format!("= {}", k.errno) };
        println!(
            "  kept TCP: {} under rule {} {}: {}({}) {result} (pid {}, {:.0} s ago); \
             `mptcpify guard allow {}` upgrades it anyway",
            super::shown(&k.program),
            k.rule_kind,
            k.rule_key,
            k.call,
            k.option,
            k.pid,
            k.seconds_ago,
            super::shown(&k.program)
        );
    }
    for a in &g.allowed {
        println!("  allowed: {} (upgraded whatever it is refused)", super::shown(a));
    }
    for r in &g.refusals {
        println!(
            "  {}: {} under rule {} {}: {}({}) x{}",
            if r.predicted { "would fail" } else { "refused" },
            super::shown(&r.program),
            r.rule_kind,
            r.rule_key,
            r.call,
            r.option,
            r.count
        );
    }
}

fn comm_of(key: &Key) -> Result<[u8; mptcpify_common::COMM_LEN]> {
    match key {
        Key::Comm(c) => Ok(*c),
        other => bail!("the guard names programs by command name, not {other}"),
    }
}

pub async fn guard(action: GuardAction) -> Result<()> {
    preconditions::require_privileges()?;
    if !pins::is_loaded() {
        bail!("mptcpify is not loaded: the guard has nothing to say (`mptcpify enable …` first)");
    }
    match action {
        GuardAction::Show { json } => {
            let g = guard_status(&State::open()?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&g)?);
            } else {
                print(&g);
            }
        }
        GuardAction::Forget(program) => {
            let comm = program.as_ref().map(comm_of).transpose()?;
            let lock = Lock::take()?;
            let gone = State::edit(&lock, |st| st.guard_mut().forget(comm.as_ref()))?;
            println!("guard: forgot {gone} decision(s); the next sockets are upgraded again");
        }
        GuardAction::Allow(program) => {
            let comm = comm_of(&program)?;
            let lock = Lock::take()?;
            State::edit(&lock, |st| st.guard_mut().allow(comm))?;
            println!("guard: {} is upgraded under every rule, whatever it is refused", comm_str(&comm));
        }
        GuardAction::Switch { on } => {
            let lock = Lock::take()?;
            State::edit(&lock, |st| {
                let mut c = st.config()?;
                c.guard_off = u32::from(!on);
                st.set_config(c)
            })?;
            println!("guard: {}", if on { "on" } else { "off: programs are upgraded whatever they are refused" });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use mptcpify_common::{GUARD_KEEP_TCP, OPTION_GET, OPTION_SET, SockOpt};

    use super::*;

    fn comm(name: &str) -> [u8; mptcpify_common::COMM_LEN] {
        let mut c = [0u8; mptcpify_common::COMM_LEN];
        c[..name.len()].copy_from_slice(name.as_bytes());
        c
    }

    #[test]
    fn a_decision_reads_as_the_refusal_or_the_prediction_that_made_it() {
        let rule = RuleRef { kind: RuleKind::Cgroup as u32, _pad: 0, key: 27 };
        let timeout = SockOpt { level: 6, name: 18 };
        let refused = GuardEntry {
            since_boot_ns: 10_000_000_000,
            verdict: GUARD_KEEP_TCP,
            op: OPTION_SET,
            option: timeout,
            errno: 92,
            pid: 5,
            predicted: 0,
            _pad: 0,
        };
        let k = kept(&comm("psql"), rule, &refused, 12.5);
        assert_eq!((k.program.as_str(), k.rule_kind, k.rule_key), ("psql", "cgroup", 27));
        assert_eq!((k.call, k.option.as_str(), k.errno.as_str()), ("setsockopt", "TCP_USER_TIMEOUT", "ENOPROTOOPT"));
        assert!(!k.predicted && (k.seconds_ago - 2.5).abs() < 1e-9);
        let predicted = GuardEntry { errno: 0, predicted: 1, op: OPTION_GET, ..refused };
        let k = kept(&comm("psql"), rule, &predicted, 5.0);
        assert!(k.predicted && k.errno.is_empty() && k.call == "getsockopt");
        assert_eq!(k.seconds_ago, 0.0, "a clock read before the decision shows 0, never a negative age");
    }

    #[test]
    fn the_guard_names_programs_by_command_name_only() {
        assert!(comm_of(&Key::Pid(1)).unwrap_err().to_string().contains("command name"));
        assert_eq!(comm_of(&Key::comm("psql").unwrap()).unwrap(), comm("psql"));
    }
}
