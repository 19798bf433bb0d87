//! `mptcpify paths [auto|clear]`: the paths of one network namespace (the caller's, or the one
//! `--netns` names), and the endpoints, limits and source routing `auto` makes for them.
use std::path::PathBuf;

use anyhow::{Result, bail};

use super::shown;
use crate::paths::{
    apply,
    connection::{Netlink, Netns, require_net_admin},
    plan::{AutoOptions, Plan},
    report::{self, NamespaceView, Owner, Routing},
};

/// `--netns NAME` is `/run/netns/NAME` (as `ip netns` names them); a path is taken as it is.
pub fn netns(arg: Option<&str>) -> Result<Netns> {
    match arg {
        None => Ok(Netns::Current),
        Some(a) if a.contains('/') => Ok(Netns::File(PathBuf::from(a))),
        Some(name) if name.is_empty() || name == "." || name == ".." => {
            bail!("{name:?} is not a network namespace name")
        }
        Some(name) => Ok(Netns::File(PathBuf::from("/run/netns").join(name))),
    }
}

pub async fn show(netns: &Netns, json: bool) -> Result<()> {
    let nl = Netlink::open(netns).await?;
    let view = report::view(&nl).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", render(&view));
    }
    Ok(())
}

pub async fn auto(netns: &Netns, opts: &AutoOptions, json: bool) -> Result<()> {
    require_net_admin()?;
    let nl = Netlink::open(netns).await?;
    let label = match netns {
        Netns::Current => "the caller's network namespace".to_string(),
        Netns::File(p) => p.display().to_string(),
    };
    let plan = apply::auto(&nl, opts, &label, None).await?;
    say("auto", &plan, json)
}

pub async fn clear(netns: &Netns, json: bool) -> Result<()> {
    require_net_admin()?;
    let nl = Netlink::open(netns).await?;
    let plan = apply::clear(&nl).await?;
    say("clear", &plan, json)
}

fn say(verb: &str, plan: &Plan, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(plan)?);
        return Ok(());
    }
    if plan.changes_nothing() {
        println!("paths {verb}: nothing to change");
    }
    for e in &plan.remove_endpoints {
        println!("paths {verb}: removed endpoint {} id {}", e.ip, e.id);
    }
    for e in &plan.add_endpoints {
        println!("paths {verb}: endpoint {} id {} {}", e.ip, e.id, e.flags.names().join(" "));
    }
    let routing = plan.add_rules.len() + plan.add_routes.len();
    let unrouted = plan.remove_rules.len() + plan.remove_routes.len();
    if routing + unrouted > 0 {
        println!("paths {verb}: source routing: {routing} rule(s)/route(s) made, {unrouted} removed");
    }
    if let Some(l) = plan.limits {
        println!("paths {verb}: limits subflows {} add_addr_accepted {}", l.subflows, l.add_addr_accepted);
    }
    for note in &plan.notes {
        println!("paths {verb}: note: {}", note.text());
    }
    Ok(())
}

fn render(v: &NamespaceView) -> String {
    let mut out = format!("network namespace {} (path manager: {})\n", v.netns_inode, v.path_manager);
    out += &format!("  limits: subflows {}, add_addr_accepted {}", v.limits.subflows, v.limits.add_addr_accepted);
    if let Some(b) = v.limits_before_mptcpify {
        out += &format!(" (raised by mptcpify from {}, {})", b.subflows, b.add_addr_accepted);
    }
    out += "\n  interfaces:\n";
    for i in &v.interfaces {
        let state = [(i.up, "up"), (!i.up, "down"), (i.default_route, "default route")];
        let state: Vec<&str> = state.iter().filter(|(on, _)| *on).map(|(_, s)| *s).collect();
        let addrs: Vec<String> = i
            .addresses
            .iter()
            .map(|a| match a.unusable {
                None => format!("{}/{}", a.ip, a.prefix_len),
                Some(why) => format!("{}/{} ({why})", a.ip, a.prefix_len),
            })
            .collect();
        out += &format!("    {} [{}]: {}\n", shown(&i.name), state.join(", "), addrs.join(", "));
    }
    out += "  endpoints:\n";
    if v.endpoints.is_empty() {
        out += "    none: connections use one path (mptcpify paths auto makes them)\n";
    }
    for e in &v.endpoints {
        let owner = if e.owner == Owner::Mptcpify { "mptcpify" } else { "someone else" };
        let dev = e.dev.as_deref().map(shown).unwrap_or_else(|| "any".into());
        let routing = match &e.routing {
            Routing::Own => "subflows leave through it".to_string(),
            Routing::Through { dev } => {
                format!("CANNOT ROUTE: subflows would leave through {} (try --source-routing)", shown(dev))
            }
            Routing::NoRoute => "CANNOT ROUTE: no route from this address".to_string(),
            Routing::SubnetOnly => {
                "reaches its own subnet only: no route beyond it through its interface (a gateway? --source-routing)"
                    .to_string()
            }
            Routing::NotAsked => "announced to peers".to_string(),
        };
        out += &format!(
            "    id {} {} dev {dev} {} (made by {owner}): {routing}\n",
            e.endpoint.id,
            e.endpoint.ip,
            e.flag_names.join(" ")
        );
    }
    if !v.source_rules.is_empty() {
        out += "  source routing (made by mptcpify):\n";
        for r in &v.source_rules {
            out += &format!("    from {} lookup {} (priority {})\n", r.source, r.table, r.priority);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn netns_names_are_run_netns_entries_and_paths_are_kept() {
        use super::*;
        assert_eq!(netns(None).unwrap(), Netns::Current);
        assert_eq!(netns(Some("blue")).unwrap(), Netns::File("/run/netns/blue".into()));
        assert_eq!(netns(Some("/proc/42/ns/net")).unwrap(), Netns::File("/proc/42/ns/net".into()));
        assert!(netns(Some("..")).is_err());
    }
}
