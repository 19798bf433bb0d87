//! `mptcpify doctor`: every precondition, checked for real, with the fix for what fails.
use std::{collections::HashMap, path::PathBuf};

use anyhow::Result;
use mptcpify_common::LAYOUT_VERSION;
use serde::Serialize;

use super::shown;

use crate::{
    bpf::{
        kernel_btf::KERNEL_BTF,
        loader::{self, LogLevel},
        netns,
    },
    host::{
        mounts::{BPFFS, Mounts},
        preconditions::{self, MptcpSysctl},
    },
    paths::{
        connection::{Netlink, Netns},
        report::{self, NamespaceView, Routing},
    },
    state::{
        maps::{self, State},
        pins,
        rules::{Action, RuleStore as _, comm_str},
        selection,
    },
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: &'static str, level: Level, detail: impl Into<String>, fix: Option<String>) -> Check {
    Check { name, level, detail: detail.into(), fix }
}

/// `6.12.117+deb13-cloud-amd64` -> (6, 12).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// TCP listeners (inode -> port) from /proc/net/tcp{,6}.
fn tcp_listeners() -> HashMap<u64, u16> {
    let mut out = HashMap::new();
    for table in [procfs::net::tcp(), procfs::net::tcp6()].into_iter().flatten() {
        for e in table {
            if e.state == procfs::net::TcpState::Listen {
                out.insert(e.inode, e.local_address.port());
            }
        }
    }
    out
}

/// Selected processes that hold a plain-TCP listening socket: it was made before the rule.
fn stale_listeners(cgroup_root: &std::path::Path) -> Result<Vec<String>> {
    let st = State::open()?;
    let rules: HashMap<_, _> = st.entries()?.into_iter().collect();
    let listeners = tcp_listeners();
    let mut found = Vec::new();
    for p in procfs::process::all_processes()?.flatten() {
        let pid = p.pid as u32;
        let Some(facts) = selection::facts(pid, cgroup_root) else { continue };
        if selection::decide(&rules, &facts) != Some(Action::Enable) {
            continue;
        }
        let Ok(fds) = p.fd() else { continue };
        for fd in fds.flatten() {
            if let procfs::process::FDTarget::Socket(inode) = fd.target
                && let Some(port) = listeners.get(&inode)
            {
                let comm = comm_str(&facts.comm);
                found.push(format!("pid {pid} ({comm}) listens on TCP port {port}"));
            }
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// Every check, in the order `doctor` prints them.
pub async fn checks() -> Vec<Check> {
    let privileged = preconditions::require_privileges();
    let btf = loader::kernel_btf();
    let hook = btf.as_ref().map_err(|e| anyhow::anyhow!("{e:#}")).and_then(loader::hook_btf_id);
    let (bpffs, cgroup2) = match Mounts::read() {
        Ok(m) => (m.require_bpffs(), m.cgroup2_root()),
        Err(e) => (Err(anyhow::anyhow!("{e}")), Err(e)),
    };
    let mut out = vec![
        privileges_check(&privileged),
        kernel_check(),
        btf_file_check(),
        hook_check(&hook),
        program_check(privileged.is_ok() && hook.is_ok()),
        bpffs_check(&bpffs),
        cgroup2_check(&cgroup2),
        sysctl_check(),
        fallback_guards_check(),
        never_break_check(btf.as_ref().map_err(|e| anyhow::anyhow!("{e:#}")).and_then(netns::find)),
    ];
    out.extend(paths_checks().await);
    drop(btf);
    if pins::is_loaded()
        && privileged.is_ok()
        && let Ok(root) = &cgroup2
    {
        out.push(pinned_state_check());
        out.push(listeners_check(root));
        out.push(outcomes_check());
        out.push(compatibility_check());
        out.push(landlock_check());
    }
    out
}

/// For the loaded program: whether processes that restrict TCP with Landlock keep TCP sockets.
fn landlock_check() -> Check {
    use mptcpify_common::{LANDLOCK_CHECKED, LANDLOCK_NO_NET_RULES, LANDLOCK_RESTRICTS_MPTCP};
    match crate::state::maps::load_facts().map(|f| f.landlock) {
        Some(LANDLOCK_CHECKED) => check(
            "landlock",
            Level::Ok,
            "a process whose Landlock sandbox restricts TCP keeps TCP sockets (this kernel's Landlock does not \
             restrict MPTCP ones): kept_tcp_landlock counts them",
            None,
        ),
        Some(LANDLOCK_RESTRICTS_MPTCP) => {
            check("landlock", Level::Ok, "this kernel's Landlock restricts MPTCP sockets as TCP ones", None)
        }
        Some(LANDLOCK_NO_NET_RULES) => {
            check("landlock", Level::Ok, "no Landlock network rules on this kernel: no TCP sandbox to keep", None)
        }
        _ => check(
            "landlock",
            Level::Warn,
            "the program cannot see Landlock sandboxes: a selected process that restricts TCP with Landlock leaves \
             its sandbox once upgraded",
            Some(
                "exclude sandboxed programs (`mptcpify exclude --comm NAME`); the load's warning says what was missing"
                    .into(),
            ),
        ),
    }
}

/// The compatibility guard: this kernel's refused options, and every program kept TCP (or that
/// would have failed, with the guard off) with the option and the fix.
fn compatibility_check() -> Check {
    let read = State::open().and_then(|st| Ok((super::guard::guard_status(&st)?, st.config()?.audits)));
    let (g, audits) = match read {
        Ok(read) => read,
        Err(e) => return check("compatibility", Level::Warn, format!("not read: {e:#}"), None),
    };
    let report = compatibility_report(&g);
    match guard_trouble(g.kept_tcp.len() + g.allowed.len(), audits, g.audit_watchers) {
        None => report,
        Some((detail, fix)) => Check {
            level: Level::Warn,
            detail: format!("{detail}; {}", report.detail),
            fix: Some(report.fix.map_or(fix.clone(), |f| format!("{fix}; {f}"))),
            ..report
        },
    }
}

/// The refused options, and the programs kept TCP or predicted to fail.
fn compatibility_report(g: &super::guard::GuardStatus) -> Check {
    if g.refused_options.is_empty() {
        return check(
            "compatibility",
            Level::Warn,
            "the options MPTCP refuses were not probed at load (no MPTCP socket could be made): refusals are neither counted nor guarded against",
            Some(
                "enable MPTCP (net.mptcp.enabled=1) where mptcpify loads, then `mptcpify reset` and enable again"
                    .into(),
            ),
        );
    }
    let options: Vec<&str> = g.refused_options.iter().filter(|o| o.setsockopt).map(|o| o.option.as_str()).collect();
    let table = format!("{} options refused by setsockopt on MPTCP here: {}", options.len(), options.join(" "));
    if g.kept_tcp.is_empty() && g.refusals.is_empty() {
        return check("compatibility", Level::Ok, format!("no upgraded program had an option refused; {table}"), None);
    }
    let mut named: Vec<String> = g
        .kept_tcp
        .iter()
        .map(|k| {
            let result = if k.predicted { "would fail (audit)".to_owned() } else { format!("= {}", k.errno) };
            format!(
                "{} kept TCP under rule {} {}: {}({}) {result}",
                k.program, k.rule_kind, k.rule_key, k.call, k.option
            )
        })
        .collect();
    let predicted = g.refusals.iter().filter(|r| r.predicted);
    named.extend(predicted.map(|r| {
        format!(
            "{} would fail {}({}) x{} under audit rule {} {}",
            r.program, r.call, r.option, r.count, r.rule_kind, r.rule_key
        )
    }));
    if !g.enabled {
        let failing = g.refusals.iter().filter(|r| !r.predicted);
        named.extend(failing.map(|r| format!("{} fails {}({}) x{}", r.program, r.call, r.option, r.count)));
    }
    check(
        "compatibility",
        Level::Warn,
        format!("{}; {table}", named.join("; ")),
        Some(
            "these programs use an option MPTCP does not support: they stay TCP (the guard), or exclude them (`mptcpify exclude --comm NAME`); `mptcpify guard allow NAME` upgrades one anyway"
                .into(),
        ),
    )
}

/// What keeps the guard from doing its job: a full table of decisions (a newly refused program
/// is then counted but upgraded again), or audit rules whose option watchers are not attached
/// (then audit predicts nothing). Each with its fix.
fn guard_trouble(decisions: usize, audits: u32, watchers: bool) -> Option<(String, String)> {
    let max = mptcpify_common::MAX_GUARD_ENTRIES as usize;
    if decisions >= max {
        return Some((
            format!(
                "the guard holds {decisions} decisions, its most: a newly refused program is counted but not kept TCP"
            ),
            "`mptcpify guard forget NAME` for programs that no longer run, or `guard forget --all`".into(),
        ));
    }
    if audits > 0 && !watchers {
        return Some((
            format!("{audits} audit rule(s), but the option watchers are not attached: audit predicts no failing option"),
            "any rule edit attaches them again (e.g. the audit rule's `enable … --audit` once more); see the load's warning in the journal".into(),
        ));
    }
    None
}

/// Upgraded connections a workload needs before doctor judges its fallbacks.
const OUTCOME_MIN_CONNECTIONS: u64 = 10;

/// Workloads whose upgraded connections mostly fell back to TCP, with the likely cause.
fn outcomes_check() -> Check {
    let read = || -> Result<(bool, Vec<String>, u64)> {
        let st = State::open()?;
        let on = st.config()?.outcomes != 0;
        let outcomes = st.outcomes()?;
        let mut named = Vec::new();
        let mut tracked = 0;
        for (key, rule) in st.entries()? {
            let Some(o) = outcomes.get(&key.rule_ref()).filter(|_| Action::from_code(rule.action) == Action::Enable)
            else {
                continue;
            };
            tracked += o.mptcp + o.fallback();
            named.extend(mostly_fallback(&key.to_string(), o));
        }
        Ok((on, named, tracked))
    };
    match read() {
        Err(e) => check("outcomes", Level::Warn, format!("not read: {e:#}"), None),
        Ok((false, _, _)) => check(
            "outcomes",
            Level::Warn,
            "outcome tracking is off: whether upgraded connections negotiate MPTCP is not counted",
            Some(format!("unset {}, then `mptcpify reset` and enable again", loader::OUTCOMES_ENV)),
        ),
        Ok((true, named, tracked)) if named.is_empty() => check(
            "outcomes",
            Level::Ok,
            format!("no workload mostly falls back to TCP ({tracked} upgraded connections counted)"),
            None,
        ),
        Ok((true, named, _)) => check(
            "outcomes",
            Level::Warn,
            named.join("; "),
            Some("`mptcpify connections` shows them live; `mptcpify status` the namespace's MPTCP counters".into()),
        ),
    }
}

/// `label`'s connections, if most of at least [`OUTCOME_MIN_CONNECTIONS`] fell back, with why.
fn mostly_fallback(label: &str, o: &mptcpify_common::Outcomes) -> Option<String> {
    let total = o.mptcp + o.fallback();
    if total < OUTCOME_MIN_CONNECTIONS || o.fallback() * 2 <= total {
        return None;
    }
    let cause = if o.fallback_client > o.fallback_peer {
        "its clients do not offer MPTCP (expected for a server whose clients are not upgraded)"
    } else {
        "its peers do not answer MPTCP: servers without MPTCP, a middlebox that strips the option, or the \
         kernel sending plain SYNs after it found a blackhole (MPCapableSYNTXDisabled, Blackhole)"
    };
    Some(format!("{label}: {} of {total} connections fell back to TCP; likely cause: {cause}", o.fallback()))
}

/// The pinned state is of this version's layout and agrees with itself (an edit killed midway
/// leaves counts or origins that the next edit repairs).
fn pinned_state_check() -> Check {
    match State::open().and_then(|st| st.inconsistencies()) {
        Ok(found) if found.is_empty() => check(
            "pinned-state",
            Level::Ok,
            format!("layout {}; counts, origins and the edit journal agree with the rules", LAYOUT_VERSION),
            None,
        ),
        Ok(found) => check(
            "pinned-state",
            Level::Warn,
            format!("an interrupted edit left: {}", found.join("; ")),
            Some("any edit repairs it (`mptcpify sync`, or the agent within a second)".into()),
        ),
        Err(e) => check(
            "pinned-state",
            Level::Fail,
            format!("{e:#}"),
            Some("`mptcpify reset`, then add the rules again (or use the mptcpify that pinned it)".into()),
        ),
    }
}

fn privileges_check(privileged: &Result<()>) -> Check {
    match privileged {
        Ok(()) => check("privileges", Level::Ok, "root (CAP_SYS_ADMIN or CAP_BPF+CAP_PERFMON)", None),
        Err(e) => check("privileges", Level::Fail, e.to_string(), Some("run mptcpify with sudo".into())),
    }
}

fn kernel_check() -> Check {
    let release = loader::kernel_release();
    match kernel_version(&release) {
        Some(v) if v >= (6, 6) => check("kernel", Level::Ok, format!("Linux {release}"), None),
        _ => check(
            "kernel",
            Level::Fail,
            format!("Linux {release}: update_socket_protocol needs >= 6.6"),
            Some("boot a Linux >= 6.6 kernel (e.g. Debian 13's 6.12)".into()),
        ),
    }
}

fn btf_file_check() -> Check {
    if std::path::Path::new(KERNEL_BTF).exists() {
        check("btf", Level::Ok, KERNEL_BTF, None)
    } else {
        check(
            "btf",
            Level::Fail,
            format!("no {KERNEL_BTF}"),
            Some("use a kernel built with CONFIG_DEBUG_INFO_BTF=y".into()),
        )
    }
}

fn hook_check(hook: &Result<u32>) -> Check {
    match hook {
        Ok(id) => check("hook", Level::Ok, format!("update_socket_protocol in BTF (id {id})"), None),
        Err(e) => {
            check("hook", Level::Fail, e.to_string(), Some("boot a Linux >= 6.6 kernel with CONFIG_MPTCP".into()))
        }
    }
}

/// A real load and attach, detached again at once; only tried with privileges and the hook.
fn program_check(can_probe: bool) -> Check {
    if !can_probe {
        return check("program", Level::Fail, "not probed (needs privileges and the hook)", None);
    }
    match loader::load_and_attach(LogLevel::Off) {
        Ok(attached) => {
            drop(attached);
            check("program", Level::Ok, "fmod_ret program loads and attaches (probed)", None)
        }
        Err(e) => check(
            "program",
            Level::Fail,
            format!("{e:#}"),
            Some("check lockdown (/sys/kernel/security/lockdown) and LSM policy for BPF".into()),
        ),
    }
}

fn bpffs_check(bpffs: &Result<()>) -> Check {
    match bpffs {
        Ok(()) => check("bpffs", Level::Ok, format!("mounted at {BPFFS}"), None),
        Err(e) => check("bpffs", Level::Fail, e.to_string(), Some(format!("mount -t bpf bpf {BPFFS}"))),
    }
}

fn cgroup2_check(cgroup2: &Result<PathBuf>) -> Check {
    match cgroup2 {
        Ok(root) => check("cgroup2", Level::Ok, format!("mounted at {}", root.display()), None),
        Err(e) => check("cgroup2", Level::Fail, e.to_string(), Some("mount -t cgroup2 none /sys/fs/cgroup".into())),
    }
}

fn sysctl_check() -> Check {
    match preconditions::mptcp_sysctl() {
        MptcpSysctl::Enabled => check("net.mptcp.enabled", Level::Ok, "1 in this network namespace", None),
        MptcpSysctl::Disabled => check(
            "net.mptcp.enabled",
            Level::Warn,
            "0 in this network namespace: selected sockets here stay TCP",
            Some("sysctl -w net.mptcp.enabled=1".into()),
        ),
        MptcpSysctl::Missing => check(
            "net.mptcp.enabled",
            Level::Fail,
            "no /proc/sys/net/mptcp: kernel without MPTCP",
            Some("use a kernel built with CONFIG_MPTCP=y".into()),
        ),
    }
}

/// The kernel's own guards for paths that drop MPTCP (Linux >= 6.12): after how many SYN
/// retransmissions a connection falls back to TCP, and for how long MPTCP is then avoided.
/// With either off, an upgraded connection through such a middlebox can stall.
fn fallback_guards_check() -> Check {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/mptcp/{name}")).ok().and_then(|v| v.trim().parse::<u64>().ok())
    };
    match (read("syn_retrans_before_tcp_fallback"), read("blackhole_timeout")) {
        (None, None) => {
            check("fallback-guards", Level::Ok, "this kernel has no MPTCP blackhole guards (before 6.12)", None)
        }
        (syn, blackhole) if syn != Some(0) && blackhole != Some(0) => check(
            "fallback-guards",
            Level::Ok,
            format!(
                "syn_retrans_before_tcp_fallback {}, blackhole_timeout {} s",
                syn.map_or("-".into(), |v| v.to_string()),
                blackhole.map_or("-".into(), |v| v.to_string())
            ),
            None,
        ),
        (syn, blackhole) => check(
            "fallback-guards",
            Level::Warn,
            format!(
                "a guard is off (syn_retrans_before_tcp_fallback {:?}, blackhole_timeout {:?}): through a middlebox \
                 that drops MPTCP, upgraded connections can stall instead of falling back to TCP",
                syn, blackhole
            ),
            Some("sysctl -w net.mptcp.syn_retrans_before_tcp_fallback=2 net.mptcp.blackhole_timeout=3600".into()),
        ),
    }
}

/// Whether a selected socket in a namespace with MPTCP disabled stays TCP: for the attached
/// program, as it was loaded (a check off at load stays off); otherwise, as a load now would be.
fn never_break_check(netns: Result<netns::NetnsOffsets>) -> Check {
    let fix =
        || Some("allow kallsyms (sysctl -w kernel.kptr_restrict=1), then `mptcpify reset` and enable again".into());
    if pins::is_loaded() {
        return match maps::load_facts() {
            Some(f) if f.netns_check == 1 => {
                check("never-break", Level::Ok, "the loaded program reads each namespace's net.mptcp.enabled", None)
            }
            Some(_) => check(
                "never-break",
                Level::Warn,
                "the loaded program was loaded without the per-namespace net.mptcp.enabled check (kernel addresses \
                 were hidden then): in a namespace with MPTCP disabled, selected sockets would fail",
                fix(),
            ),
            None => {
                check("never-break", Level::Warn, "unknown: the attached program was loaded by an older mptcpify", None)
            }
        };
    }
    match netns {
        Ok(_) => check("never-break", Level::Ok, "a program loaded now reads each namespace's net.mptcp.enabled", None),
        Err(e) => check(
            "never-break",
            Level::Warn,
            format!(
                "cannot read net.mptcp.enabled per namespace ({e:#}): in a namespace with MPTCP disabled, \
                 selected sockets would fail"
            ),
            fix(),
        ),
    }
}

/// The endpoints and limits of the caller's namespace, and where their subflows would go.
async fn paths_checks() -> [Check; 2] {
    let view = match Netlink::open(&Netns::Current).await {
        Ok(nl) => report::view(&nl).await,
        Err(e) => Err(e),
    };
    match view {
        Ok(v) => [endpoints_check(&v), routing_check(&v)],
        Err(e) => {
            let why = format!("cannot ask the MPTCP path manager: {e:#}");
            [check("endpoints", Level::Warn, why.clone(), None), check("subflow-routing", Level::Warn, why, None)]
        }
    }
}

fn endpoints_check(v: &NamespaceView) -> Check {
    let paths = v.endpoints.iter().filter(|e| e.endpoint.flags.adds_a_path()).count();
    let limits = format!("limits: subflow {}, add_addr_accepted {}", v.limits.subflows, v.limits.add_addr_accepted);
    if paths == 0 {
        let detail =
            "no MPTCP endpoint with the subflow or signal flag in this namespace: connections will use one path only";
        check(
            "endpoints",
            Level::Warn,
            detail,
            Some("mptcpify paths auto (or --dev IFACE for chosen interfaces)".into()),
        )
    } else if v.limits.subflows == 0 {
        check(
            "endpoints",
            Level::Warn,
            format!("{paths} endpoint(s), but the subflow limit is 0"),
            Some("mptcpify paths auto --subflows 2".into()),
        )
    } else {
        check("endpoints", Level::Ok, format!("{paths} endpoint(s); {limits}"), None)
    }
}

fn routing_check(v: &NamespaceView) -> Check {
    let unroutable: Vec<String> = v
        .unroutable()
        .map(|e| match &e.routing {
            Routing::Through { dev } => format!("{} (leaves through {})", e.endpoint.ip, shown(dev)),
            Routing::SubnetOnly => format!("{} (its own subnet only)", e.endpoint.ip),
            _ => format!("{} (no route)", e.endpoint.ip),
        })
        .collect();
    if unroutable.is_empty() {
        return check("subflow-routing", Level::Ok, "every subflow endpoint routes out of its own interface", None);
    }
    check(
        "subflow-routing",
        Level::Warn,
        format!("subflows from these endpoints cannot use their own path: {}", unroutable.join(", ")),
        Some("mptcpify paths auto --source-routing".into()),
    )
}

fn listeners_check(cgroup_root: &std::path::Path) -> Check {
    match stale_listeners(cgroup_root) {
        Ok(l) if l.is_empty() => {
            check("listeners", Level::Ok, "no selected process holds a TCP listener from before its rule", None)
        }
        Ok(l) => check(
            "listeners",
            Level::Warn,
            format!("TCP listeners that predate their rule: {}", l.join("; ")),
            Some("restart those programs: their listening sockets become MPTCP when re-created".into()),
        ),
        Err(e) => check("listeners", Level::Warn, format!("could not check listeners: {e:#}"), None),
    }
}

pub async fn doctor(json: bool) -> Result<i32> {
    let checks = checks().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "checks": checks }))?);
    } else {
        for c in &checks {
            let level = match c.level {
                Level::Ok => "OK  ",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            println!("{level} {:<18} {}", c.name, super::shown(&c.detail));
            if let Some(fix) = &c.fix {
                println!("     {:<18} fix: {fix}", "");
            }
        }
    }
    Ok(if checks.iter().any(|c| c.level == Level::Fail) { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_guard_or_audit_without_watchers_is_trouble() {
        assert_eq!(guard_trouble(0, 0, false), None);
        assert_eq!(guard_trouble(10, 2, true), None);
        let full = guard_trouble(mptcpify_common::MAX_GUARD_ENTRIES as usize, 0, false).unwrap();
        assert!(full.0.contains("not kept TCP") && full.1.contains("guard forget"), "{full:?}");
        let blind = guard_trouble(0, 1, false).unwrap();
        assert!(blind.0.starts_with("1 audit rule(s), but the option watchers are not attached"), "{blind:?}");
    }

    #[test]
    fn a_workload_is_named_only_when_most_of_enough_connections_fell_back() {
        let o = |mptcp, fallback_peer, fallback_client| mptcpify_common::Outcomes {
            mptcp,
            fallback_peer,
            fallback_client,
            ..Default::default()
        };
        assert_eq!(mostly_fallback("comm curl", &o(0, 9, 0)), None, "too few to judge");
        assert_eq!(mostly_fallback("comm curl", &o(5, 5, 0)), None, "half is not most");
        let peer = mostly_fallback("comm curl", &o(2, 9, 0)).unwrap();
        assert!(peer.starts_with("comm curl: 9 of 11") && peer.contains("peers do not answer MPTCP"), "{peer}");
        let server = mostly_fallback("cgroup id 7", &o(1, 0, 20)).unwrap();
        assert!(server.contains("clients do not offer MPTCP"), "{server}");
    }

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(kernel_version("6.12.117+deb13-cloud-amd64"), Some((6, 12)));
        assert_eq!(kernel_version("6.1.0-50-cloud-amd64"), Some((6, 1)));
        assert!(kernel_version("6.1.0").unwrap() < (6, 6));
        assert_eq!(kernel_version("weird"), None);
    }
}
