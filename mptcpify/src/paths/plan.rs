//! `paths auto` and `paths clear` decided from a [`Snapshot`] and the [`Record`], without
//! touching the kernel: which endpoints, limits, source rules and routes to make and remove.
//! Nothing someone else made is ever in a removal list.
use std::{collections::BTreeSet, net::IpAddr};

use serde::Serialize;

use super::{
    RULE_PRIORITY, TABLE_BASE,
    model::{
        Address, Endpoint, EndpointFlags, KERNEL_LIMIT_MAX, Limits, PathManager, Snapshot, SourceRule, TableRoute,
    },
    record::{RaisedLimits, Record},
};

/// What `paths auto` is asked for (the CLI's flags, or the policy's `[paths]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoOptions {
    /// Exactly these interfaces; empty: those that hold a default route.
    pub devs: Vec<String>,
    pub signal: bool,
    pub fullmesh: bool,
    pub backup: Vec<String>,
    pub subflows: Option<u32>,
    pub add_addr_accepted: Option<u32>,
    pub source_routing: bool,
    /// With no `devs`: every interface but loopback, not only those with a default route (a
    /// pod's second network, attached by Multus, has none).
    pub all_interfaces: bool,
}

/// Why `auto` changes nothing at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the {0} path manager is in charge of this network namespace: mptcpify leaves its endpoints to it")]
    OtherPathManager(&'static str),
    #[error(
        "MPTCP is disabled in this network namespace (net.mptcp.enabled=0); enable it with `sysctl -w net.mptcp.enabled=1`"
    )]
    MptcpDisabled,
    #[error("this kernel has no MPTCP (no /proc/sys/net/mptcp)")]
    MptcpMissing,
    #[error("no interface named {0:?} in this network namespace")]
    UnknownInterface(String),
    #[error("interface {dev} has no address an endpoint can use ({why})")]
    NoUsableAddress { dev: String, why: String },
    #[error("{which} {asked} is above the kernel's maximum of {max}", max = KERNEL_LIMIT_MAX)]
    LimitTooHigh { which: &'static str, asked: u32 },
    #[error("the kernel refuses endpoints that are both signal and fullmesh: choose one")]
    SignalWithFullmesh,
    #[error("no free endpoint id is left (1-255)")]
    NoFreeEndpointId,
}

/// Something `auto` did not do, or cannot promise, said to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "note", rename_all = "snake_case")]
pub enum Note {
    /// An endpoint for this address exists and mptcpify did not make it: left as it is.
    ForeignEndpointKept {
        ip: IpAddr,
        id: u8,
    },
    /// A limit stays higher than asked: someone else set it.
    LimitKept {
        which: &'static str,
        asked: u32,
        kept: u32,
    },
    /// No default route through this interface: subflows from it reach its own subnet only.
    NoRouteOfItsOwn {
        ip: IpAddr,
        dev: String,
    },
    /// The table mptcpify would route this interface through holds someone else's routes.
    TableTaken {
        table: u32,
        dev: String,
    },
    LinkDown {
        dev: String,
    },
    NothingSelected,
    /// `clear`: the limits were changed after mptcpify raised them, so they stay.
    LimitsChangedSince {
        set: Limits,
        now: Limits,
    },
}

impl Note {
    /// Said to the user (the CLI prints it, the agent logs it).
    pub fn text(&self) -> String {
        match self {
            Note::ForeignEndpointKept { ip, id } => {
                format!("endpoint {ip} id {id} was made by someone else: left as it is")
            }
            Note::LimitKept { which, asked, kept } => {
                format!("{which} stays {kept} (asked {asked}): someone else set it higher")
            }
            Note::NoRouteOfItsOwn { ip, dev } => {
                format!("{dev} holds no default route: subflows from {ip} can reach {dev}'s own subnet only")
            }
            Note::TableTaken { table, dev } => {
                format!("table {table} holds routes someone else made: {dev} is not source-routed")
            }
            Note::LinkDown { dev } => format!("{dev} is down or has no carrier: no endpoint for it until it is up"),
            Note::NothingSelected => {
                "no interface with a usable address was selected (no default route? try --dev)".into()
            }
            Note::LimitsChangedSince { set, now } => format!(
                "the limits were changed since mptcpify set them ({}/{} -> {}/{}): left as they are",
                set.subflows, set.add_addr_accepted, now.subflows, now.add_addr_accepted
            ),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub remove_endpoints: Vec<Endpoint>,
    pub add_endpoints: Vec<Endpoint>,
    pub remove_rules: Vec<SourceRule>,
    pub add_rules: Vec<SourceRule>,
    pub remove_routes: Vec<TableRoute>,
    pub add_routes: Vec<TableRoute>,
    pub limits: Option<Limits>,
    /// The limits record after the plan ran (`None`: mptcpify holds no raised limits).
    #[serde(skip)]
    pub raised: Option<RaisedLimits>,
    pub notes: Vec<Note>,
}

impl Plan {
    pub fn changes_nothing(&self) -> bool {
        self.remove_endpoints.is_empty()
            && self.add_endpoints.is_empty()
            && self.remove_rules.is_empty()
            && self.add_rules.is_empty()
            && self.remove_routes.is_empty()
            && self.add_routes.is_empty()
            && self.limits.is_none()
    }
}

/// Refuses a namespace whose path manager is not the in-kernel one mptcpify configures.
pub fn require_kernel_path_manager(pm: &PathManager) -> Result<(), PlanError> {
    match pm {
        PathManager::Kernel => Ok(()),
        PathManager::Userspace => Err(PlanError::OtherPathManager("userspace")),
        PathManager::Disabled => Err(PlanError::MptcpDisabled),
        PathManager::Missing => Err(PlanError::MptcpMissing),
        PathManager::Other(_) => Err(PlanError::OtherPathManager("unknown")),
    }
}

/// Why `a` cannot carry a subflow of its own, or `None` if it can.
pub fn unusable(a: &Address) -> Option<&'static str> {
    let link_local = match a.ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    if a.ip.is_loopback() {
        Some("loopback")
    } else if link_local || !a.global {
        Some("not global scope")
    } else if a.tentative {
        Some("tentative")
    } else if a.deprecated {
        Some("deprecated")
    } else if a.temporary {
        Some("temporary")
    } else {
        None
    }
}

pub fn auto(snap: &Snapshot, opts: &AutoOptions, record: &Record) -> Result<Plan, PlanError> {
    require_kernel_path_manager(&snap.path_manager)?;
    check_options(opts)?;
    let mut plan = Plan::default();
    let chosen = chosen_addresses(snap, opts, &mut plan.notes)?;
    plan_endpoints(snap, record, &chosen, &mut plan)?;
    let staying = snap.endpoints.iter().filter(|e| e.flags.adds_a_path() && !plan.remove_endpoints.contains(e));
    let paths_after = staying.count() + plan.add_endpoints.iter().filter(|e| e.flags.adds_a_path()).count();
    plan_limits(snap.limits, opts, record.limits, paths_after, &mut plan);
    let (rules, routes) =
        if opts.source_routing { routing(snap, &chosen, &mut plan.notes) } else { Default::default() };
    plan.remove_rules = snap.marked_rules.iter().filter(|r| !rules.contains(r)).cloned().collect();
    plan.add_rules = rules.into_iter().filter(|r| !snap.marked_rules.contains(r)).collect();
    plan.remove_routes = snap.marked_routes.iter().filter(|r| !routes.contains(r)).cloned().collect();
    plan.add_routes = routes.into_iter().filter(|r| !snap.marked_routes.contains(r)).collect();
    Ok(plan)
}

/// Removes what mptcpify made (per the record and its routing mark), and puts back the limits
/// it raised if nobody changed them since.
pub fn clear(snap: &Snapshot, record: &Record) -> Plan {
    let mut plan = Plan {
        remove_endpoints: snap.endpoints.iter().filter(|e| record.made(e)).cloned().collect(),
        remove_rules: snap.marked_rules.clone(),
        remove_routes: snap.marked_routes.clone(),
        ..Default::default()
    };
    if let Some(raised) = record.limits {
        if raised.holds(snap.limits) {
            plan.limits = (raised.before != snap.limits).then_some(raised.before);
        } else {
            plan.notes.push(Note::LimitsChangedSince { set: raised.set, now: snap.limits });
        }
    }
    plan
}

/// The options' own contradictions, found before anything is read.
pub fn check_options(opts: &AutoOptions) -> Result<(), PlanError> {
    if opts.signal && opts.fullmesh {
        return Err(PlanError::SignalWithFullmesh);
    }
    for (which, asked) in [("subflows", opts.subflows), ("add_addr_accepted", opts.add_addr_accepted)] {
        if let Some(asked) = asked.filter(|n| *n > KERNEL_LIMIT_MAX) {
            return Err(PlanError::LimitTooHigh { which, asked });
        }
    }
    Ok(())
}

/// The addresses to make endpoints for, each with the flags it gets.
fn chosen_addresses<'a>(
    snap: &'a Snapshot,
    opts: &AutoOptions,
    notes: &mut Vec<Note>,
) -> Result<Vec<(&'a Address, EndpointFlags)>, PlanError> {
    let mut links = Vec::new();
    for name in opts.devs.iter().chain(&opts.backup) {
        let link = snap.link_named(name).ok_or_else(|| PlanError::UnknownInterface(name.clone()))?;
        links.push(link);
    }
    if opts.devs.is_empty() && opts.all_interfaces {
        links.extend(snap.links.iter().filter(|l| !l.loopback));
    } else if opts.devs.is_empty() {
        let with_default: BTreeSet<u32> = snap.default_routes.iter().map(|r| r.ifindex).collect();
        links.extend(with_default.iter().filter_map(|i| snap.link(*i)));
    }
    let mut seen = BTreeSet::new();
    links.retain(|l| seen.insert(l.index));
    let asked = |name: &str| opts.devs.iter().chain(&opts.backup).any(|d| d == name);
    let mut chosen = Vec::new();
    for link in links {
        if link.loopback {
            let why = "it is the loopback interface".to_string();
            return Err(PlanError::NoUsableAddress { dev: link.name.clone(), why });
        }
        if !link.up {
            notes.push(Note::LinkDown { dev: link.name.clone() });
            continue;
        }
        let of_link: Vec<&Address> = snap.addresses.iter().filter(|a| a.ifindex == link.index).collect();
        let usable: Vec<&Address> = of_link.iter().copied().filter(|a| unusable(a).is_none()).collect();
        if usable.is_empty() && asked(&link.name) {
            let why = of_link.iter().map(|a| format!("{}: {}", a.ip, unusable(a).unwrap_or("?"))).collect::<Vec<_>>();
            let why = if why.is_empty() { "none at all".to_string() } else { why.join(", ") };
            return Err(PlanError::NoUsableAddress { dev: link.name.clone(), why });
        }
        let flags = EndpointFlags {
            subflow: true,
            signal: opts.signal,
            fullmesh: opts.fullmesh,
            backup: opts.backup.contains(&link.name),
        };
        chosen.extend(usable.into_iter().map(|a| (a, flags)));
    }
    if chosen.is_empty() {
        notes.push(Note::NothingSelected);
    }
    Ok(chosen)
}

fn plan_endpoints(
    snap: &Snapshot,
    record: &Record,
    chosen: &[(&Address, EndpointFlags)],
    plan: &mut Plan,
) -> Result<(), PlanError> {
    let mut taken: BTreeSet<u8> = snap.endpoints.iter().map(|e| e.id).collect();
    for (address, flags) in chosen {
        let wanted = |id| Endpoint { id, ip: address.ip, ifindex: Some(address.ifindex), flags: *flags };
        match snap.endpoints.iter().find(|e| e.ip == address.ip) {
            Some(e) if record.made(e) => {
                if *e != wanted(e.id) {
                    plan.remove_endpoints.push(e.clone());
                    plan.add_endpoints.push(wanted(e.id));
                }
            }
            Some(e) => plan.notes.push(Note::ForeignEndpointKept { ip: e.ip, id: e.id }),
            None => {
                let id = (1..=255u8).find(|id| !taken.contains(id)).ok_or(PlanError::NoFreeEndpointId)?;
                taken.insert(id);
                plan.add_endpoints.push(wanted(id));
            }
        }
    }
    let kept = |e: &Endpoint| chosen.iter().any(|(a, _)| a.ip == e.ip);
    plan.remove_endpoints.extend(snap.endpoints.iter().filter(|e| record.made(e) && !kept(e)).cloned());
    Ok(())
}

/// Raised to cover the paths, never below what someone else set: while the limits are still
/// what mptcpify set, they may come back down to what they were before it.
fn plan_limits(now: Limits, opts: &AutoOptions, raised: Option<RaisedLimits>, paths: usize, plan: &mut Plan) {
    let floor = match raised {
        Some(r) if r.holds(now) => r.before,
        _ => now,
    };
    let wanted_subflows = opts.subflows.unwrap_or((paths as u32).clamp(2, KERNEL_LIMIT_MAX));
    let wanted_accepted = opts.add_addr_accepted.unwrap_or(wanted_subflows);
    let target = Limits {
        subflows: wanted_subflows.max(floor.subflows),
        add_addr_accepted: wanted_accepted.max(floor.add_addr_accepted),
    };
    for (which, asked, kept) in [
        ("subflows", opts.subflows, target.subflows),
        ("add_addr_accepted", opts.add_addr_accepted, target.add_addr_accepted),
    ] {
        if let Some(asked) = asked.filter(|a| *a < kept) {
            plan.notes.push(Note::LimitKept { which, asked, kept });
        }
    }
    plan.limits = (target != now).then_some(target);
    plan.raised = (target != floor).then_some(RaisedLimits::new(floor, target));
}

/// A table per interface ([`TABLE_BASE`] + its index) with its subnets and its default route,
/// and a rule sending each chosen address there.
fn routing(
    snap: &Snapshot,
    chosen: &[(&Address, EndpointFlags)],
    notes: &mut Vec<Note>,
) -> (BTreeSet<SourceRule>, BTreeSet<TableRoute>) {
    let (mut rules, mut routes) = (BTreeSet::new(), BTreeSet::new());
    for (a, _) in chosen {
        let table = TABLE_BASE + a.ifindex;
        let dev = snap.link_name(a.ifindex);
        if snap.foreign_tables.contains(&table) {
            notes.push(Note::TableTaken { table, dev });
            continue;
        }
        rules.insert(SourceRule { source: a.ip, table, priority: RULE_PRIORITY });
        let subnet = (network(a.ip, a.prefix_len), a.prefix_len);
        let v6 = a.ip.is_ipv6();
        routes.insert(TableRoute { table, v6, destination: Some(subnet), gateway: None, ifindex: a.ifindex });
        let default = snap.default_routes.iter().filter(|r| r.ifindex == a.ifindex && r.v6 == a.ip.is_ipv6());
        match default.min_by_key(|r| r.metric) {
            Some(r) => {
                routes.insert(TableRoute { table, v6, destination: None, gateway: r.gateway, ifindex: a.ifindex });
            }
            None => notes.push(Note::NoRouteOfItsOwn { ip: a.ip, dev }),
        }
    }
    (rules, routes)
}

/// The first address of `ip`'s subnet.
pub fn network(ip: IpAddr, prefix_len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len.min(32))).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix_len.min(128))).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::model::{DefaultRoute, Link};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn address(ifindex: u32, s: &str, prefix_len: u8) -> Address {
        Address { ifindex, ip: ip(s), prefix_len, global: true, tentative: false, deprecated: false, temporary: false }
    }

    fn subflow() -> EndpointFlags {
        EndpointFlags { subflow: true, ..Default::default() }
    }

    /// A laptop: eth0 and wlan0 each with a default route, docker0 without, and loopback.
    fn host() -> Snapshot {
        let link = |index, name: &str| Link {
            index,
            name: name.into(),
            up: true,
            loopback: index == 1,
            hardware: String::new(),
        };
        Snapshot {
            path_manager: PathManager::Kernel,
            links: vec![link(1, "lo"), link(2, "eth0"), link(3, "wlan0"), link(4, "docker0")],
            addresses: vec![
                Address { global: false, ..address(1, "127.0.0.1", 8) },
                address(2, "10.1.0.5", 24),
                Address { global: false, ..address(2, "fe80::1", 64) },
                address(2, "2001:db8:1::5", 64),
                Address { temporary: true, ..address(2, "2001:db8:1::abcd", 64) },
                address(3, "10.2.0.5", 24),
                Address { tentative: true, ..address(3, "2001:db8:2::5", 64) },
                Address { deprecated: true, ..address(3, "10.2.0.6", 24) },
                address(4, "172.17.0.1", 16),
            ],
            default_routes: vec![
                DefaultRoute { ifindex: 2, v6: false, gateway: Some(ip("10.1.0.1")), metric: 100 },
                DefaultRoute { ifindex: 2, v6: true, gateway: Some(ip("fe80::ff")), metric: 100 },
                DefaultRoute { ifindex: 3, v6: false, gateway: Some(ip("10.2.0.1")), metric: 600 },
            ],
            endpoints: vec![],
            limits: Limits { subflows: 2, add_addr_accepted: 0 },
            marked_rules: vec![],
            marked_routes: vec![],
            foreign_tables: vec![],
        }
    }

    fn ips(endpoints: &[Endpoint]) -> Vec<IpAddr> {
        endpoints.iter().map(|e| e.ip).collect()
    }

    #[test]
    fn auto_makes_subflow_endpoints_for_the_usable_addresses_of_interfaces_with_a_default_route() {
        let plan = auto(&host(), &AutoOptions::default(), &Record::default()).unwrap();
        assert_eq!(ips(&plan.add_endpoints), [ip("10.1.0.5"), ip("2001:db8:1::5"), ip("10.2.0.5")]);
        assert_eq!(plan.add_endpoints[0], Endpoint { id: 1, ip: ip("10.1.0.5"), ifindex: Some(2), flags: subflow() });
        assert_eq!(plan.add_endpoints.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(plan.remove_endpoints.is_empty() && plan.add_rules.is_empty() && plan.notes.is_empty(), "{plan:?}");
        assert_eq!(plan.limits, Some(Limits { subflows: 3, add_addr_accepted: 3 }));
        assert_eq!(plan.raised.unwrap().before, Limits { subflows: 2, add_addr_accepted: 0 });
    }

    #[test]
    fn all_interfaces_takes_those_without_a_default_route_too() {
        let plan =
            auto(&host(), &AutoOptions { all_interfaces: true, ..Default::default() }, &Record::default()).unwrap();
        assert_eq!(ips(&plan.add_endpoints), [ip("10.1.0.5"), ip("2001:db8:1::5"), ip("10.2.0.5"), ip("172.17.0.1")]);
    }

    #[test]
    fn devs_choose_exactly_and_flags_follow_the_options() {
        let opts = AutoOptions {
            devs: vec!["docker0".into()],
            signal: true,
            backup: vec!["wlan0".into()],
            ..Default::default()
        };
        let plan = auto(&host(), &opts, &Record::default()).unwrap();
        assert_eq!(ips(&plan.add_endpoints), [ip("172.17.0.1"), ip("10.2.0.5")]);
        assert_eq!(plan.add_endpoints[0].flags, EndpointFlags { signal: true, subflow: true, ..Default::default() });
        assert!(plan.add_endpoints[1].flags.backup && plan.add_endpoints[1].flags.signal);
    }

    #[test]
    fn bad_options_are_refused_with_the_reason() {
        let refused = |opts: AutoOptions| auto(&host(), &opts, &Record::default()).unwrap_err();
        assert_eq!(
            refused(AutoOptions { devs: vec!["eth9".into()], ..Default::default() }),
            PlanError::UnknownInterface("eth9".into())
        );
        assert_eq!(
            refused(AutoOptions { backup: vec!["eth9".into()], ..Default::default() }),
            PlanError::UnknownInterface("eth9".into())
        );
        assert_eq!(
            refused(AutoOptions { signal: true, fullmesh: true, ..Default::default() }),
            PlanError::SignalWithFullmesh
        );
        let too_high = refused(AutoOptions { subflows: Some(9), ..Default::default() });
        assert_eq!(too_high.to_string(), "subflows 9 is above the kernel's maximum of 8");
        let no_address = refused(AutoOptions { devs: vec!["lo".into(), "wlan0".into()], ..Default::default() });
        assert_eq!(
            no_address.to_string(),
            "interface lo has no address an endpoint can use (it is the loopback interface)"
        );
        let mut snap = host();
        snap.addresses.retain(|a| a.ifindex != 4);
        snap.addresses.push(Address { global: false, ..address(4, "fe80::2", 64) });
        let err = auto(&snap, &AutoOptions { devs: vec!["docker0".into()], ..Default::default() }, &Record::default());
        assert_eq!(
            err.unwrap_err().to_string(),
            "interface docker0 has no address an endpoint can use (fe80::2: not global scope)"
        );
    }

    #[test]
    fn another_path_manager_or_no_mptcp_is_refused() {
        for (pm, words) in [
            (PathManager::Userspace, "userspace path manager is in charge"),
            (PathManager::Disabled, "net.mptcp.enabled=0"),
            (PathManager::Missing, "no MPTCP"),
        ] {
            let snap = Snapshot { path_manager: pm, ..host() };
            assert!(auto(&snap, &AutoOptions::default(), &Record::default()).unwrap_err().to_string().contains(words));
        }
    }

    #[test]
    fn what_someone_else_made_is_kept_and_never_removed() {
        let mut snap = host();
        let theirs = Endpoint {
            id: 1,
            ip: ip("10.2.0.5"),
            ifindex: None,
            flags: EndpointFlags { signal: true, ..Default::default() },
        };
        snap.endpoints.push(theirs.clone());
        let plan = auto(&snap, &AutoOptions::default(), &Record::default()).unwrap();
        assert_eq!(ips(&plan.add_endpoints), [ip("10.1.0.5"), ip("2001:db8:1::5")]);
        assert_eq!(plan.add_endpoints[0].id, 2, "id 1 is taken");
        assert_eq!(plan.notes, [Note::ForeignEndpointKept { ip: ip("10.2.0.5"), id: 1 }]);
        assert!(plan.remove_endpoints.is_empty());
        let opts = AutoOptions { devs: vec!["eth0".into()], ..Default::default() };
        assert!(
            auto(&snap, &opts, &Record::default()).unwrap().remove_endpoints.is_empty(),
            "not chosen, still not ours"
        );
        assert!(clear(&snap, &Record::default()).changes_nothing());
    }

    #[test]
    fn our_endpoints_follow_their_addresses_and_options() {
        let mut snap = host();
        let gone = Endpoint { id: 5, ip: ip("10.9.9.9"), ifindex: Some(2), flags: subflow() };
        let ours = Endpoint { id: 6, ip: ip("10.1.0.5"), ifindex: Some(2), flags: subflow() };
        snap.endpoints = vec![gone.clone(), ours.clone()];
        let record = Record { endpoints: snap.endpoints.clone(), ..Default::default() };
        let opts = AutoOptions { devs: vec!["eth0".into()], backup: vec![], ..Default::default() };
        let plan = auto(&snap, &opts, &record).unwrap();
        assert_eq!(plan.remove_endpoints, std::slice::from_ref(&gone), "its address went away");
        assert_eq!(ips(&plan.add_endpoints), [ip("2001:db8:1::5")], "10.1.0.5 is there as wanted");
        let backup = AutoOptions { backup: vec!["eth0".into()], ..opts };
        let plan = auto(&snap, &backup, &record).unwrap();
        assert_eq!(plan.remove_endpoints, [ours.clone(), gone.clone()]);
        assert!(
            plan.add_endpoints
                .contains(&Endpoint { flags: EndpointFlags { backup: true, ..subflow() }, ..ours.clone() })
        );
        let cleared = clear(&snap, &record);
        assert_eq!(cleared.remove_endpoints, [gone, ours]);
    }

    #[test]
    fn limits_are_raised_to_cover_the_paths_and_never_lowered_below_someone_elses() {
        let mut snap = host();
        snap.limits = Limits { subflows: 8, add_addr_accepted: 1 };
        let plan = auto(&snap, &AutoOptions { subflows: Some(4), ..Default::default() }, &Record::default()).unwrap();
        assert_eq!(plan.limits, Some(Limits { subflows: 8, add_addr_accepted: 4 }));
        assert_eq!(plan.notes, [Note::LimitKept { which: "subflows", asked: 4, kept: 8 }]);
        snap.limits = Limits { subflows: 8, add_addr_accepted: 8 };
        assert_eq!(auto(&snap, &AutoOptions::default(), &Record::default()).unwrap().limits, None);
    }

    #[test]
    fn limits_mptcpify_raised_come_back_down_to_what_they_were_and_only_then() {
        let before = Limits { subflows: 2, add_addr_accepted: 0 };
        let set = Limits { subflows: 3, add_addr_accepted: 3 };
        let record = Record { limits: Some(RaisedLimits::new(before, set)), ..Default::default() };
        let snap = Snapshot { limits: set, ..host() };
        let one_dev = AutoOptions { devs: vec!["wlan0".into()], ..Default::default() };
        let plan = auto(&snap, &one_dev, &record).unwrap();
        assert_eq!(plan.limits, Some(Limits { subflows: 2, add_addr_accepted: 2 }));
        assert_eq!(plan.raised, Some(RaisedLimits::new(before, Limits { subflows: 2, add_addr_accepted: 2 })));
        assert_eq!(clear(&snap, &record).limits, Some(before));
        let changed = Snapshot { limits: Limits { subflows: 5, add_addr_accepted: 3 }, ..host() };
        let cleared = clear(&changed, &record);
        assert_eq!(cleared.limits, None);
        assert_eq!(cleared.notes, [Note::LimitsChangedSince { set, now: changed.limits }]);
    }

    /// A run killed while moving raised limits to others leaves both claimed: whichever the
    /// kernel has, they come back down to what they were before mptcpify.
    #[test]
    fn limits_mid_move_are_still_mptcpifys() {
        let before = Limits { subflows: 2, add_addr_accepted: 0 };
        let (old, new) = (Limits { subflows: 4, add_addr_accepted: 3 }, Limits { subflows: 6, add_addr_accepted: 5 });
        let moving = RaisedLimits { moving_from: Some(old), ..RaisedLimits::new(before, new) };
        let record = Record { limits: Some(moving), ..Default::default() };
        for now in [old, new] {
            assert_eq!(clear(&Snapshot { limits: now, ..host() }, &record).limits, Some(before), "{now:?}");
        }
        let someone_elses = Snapshot { limits: Limits { subflows: 5, add_addr_accepted: 5 }, ..host() };
        assert_eq!(clear(&someone_elses, &record).limits, None);
    }

    #[test]
    fn source_routing_gives_each_address_its_interfaces_table() {
        let opts =
            AutoOptions { devs: vec!["wlan0".into(), "docker0".into()], source_routing: true, ..Default::default() };
        let plan = auto(&host(), &opts, &Record::default()).unwrap();
        let (wlan, docker) = (TABLE_BASE + 3, TABLE_BASE + 4);
        assert_eq!(
            plan.add_rules,
            [
                SourceRule { source: ip("10.2.0.5"), table: wlan, priority: RULE_PRIORITY },
                SourceRule { source: ip("172.17.0.1"), table: docker, priority: RULE_PRIORITY },
            ]
        );
        assert!(plan.add_routes.contains(&TableRoute {
            table: wlan,
            v6: false,
            destination: None,
            gateway: Some(ip("10.2.0.1")),
            ifindex: 3
        }));
        let subnet =
            TableRoute { table: wlan, v6: false, destination: Some((ip("10.2.0.0"), 24)), gateway: None, ifindex: 3 };
        assert!(plan.add_routes.contains(&subnet));
        assert_eq!(plan.notes, [Note::NoRouteOfItsOwn { ip: ip("172.17.0.1"), dev: "docker0".into() }]);
        let mut snap = host();
        snap.marked_rules = plan.add_rules.clone();
        snap.marked_routes = plan.add_routes.clone();
        snap.foreign_tables = vec![docker];
        let again = auto(&snap, &opts, &Record::default()).unwrap();
        assert!(again.add_rules.is_empty() && again.add_routes.is_empty(), "{again:?}");
        assert_eq!(again.remove_rules.len(), 1, "docker0's table is someone else's now");
        let without = auto(&snap, &AutoOptions { source_routing: false, ..opts }, &Record::default()).unwrap();
        assert_eq!((without.remove_rules.len(), without.remove_routes.len()), (2, 3));
    }

    #[test]
    fn networks_are_masked_per_family() {
        assert_eq!(network(ip("10.2.3.4"), 16), ip("10.2.0.0"));
        assert_eq!(network(ip("10.2.3.4"), 0), ip("0.0.0.0"));
        assert_eq!(network(ip("10.2.3.4"), 32), ip("10.2.3.4"));
        assert_eq!(network(ip("2001:db8:1:2::5"), 48), ip("2001:db8:1::"));
    }
}
