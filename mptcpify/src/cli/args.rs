//! The command line as clap parses it: one argument struct per subcommand, each turned into the
//! library's own types here, at the CLI's edge.
use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, builder::TypedValueParser as _};
use mptcpify::{
    bpf::loader::LogLevel,
    commands::guard::GuardAction,
    host::{selector::Selector, users::UidSpec},
    paths::plan::AutoOptions,
    state::rules::Key,
};

#[derive(Debug, Parser)]
#[command(name = "mptcpify", version, about = "Make unmodified programs use Multipath TCP")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upgrade new TCP sockets of the selected processes to MPTCP. Loads and pins the kernel
    /// program first if it is not loaded yet.
    Enable(EnableArgs),
    /// Never upgrade the selected processes' sockets, whatever enable rule matches them.
    Exclude(ExcludeArgs),
    /// Remove the rules (enable or exclude) of the selected targets.
    Disable(DisableArgs),
    /// Show whether the program is attached, its counters and every rule.
    Status(JsonArgs),
    /// Re-resolve the cgroup of every rule made from a path or unit (after a restart recreated it).
    Sync,
    /// Run CMD in a new cgroup that is enabled before CMD starts, so CMD and all its children
    /// get MPTCP sockets; remove the rule and cgroup when they have all exited.
    Run(RunArgs),
    /// Stream upgrade decisions and connection outcomes live (time, pid, command, cgroup,
    /// family, rule; MPTCP or fallback, subflows).
    Monitor(JsonArgs),
    /// Show the live MPTCP connections of the upgraded processes (or of those the selectors
    /// name), in every network namespace they are in: process, rule, addresses, state, MPTCP or
    /// fell back, each subflow with its interface, bytes sent and received.
    Connections(ConnectionsArgs),
    /// Check everything mptcpify needs and say how to fix what is missing.
    Doctor(JsonArgs),
    /// Show the paths of a network namespace (addresses, MPTCP endpoints and who made them,
    /// limits, whether each extra address can route a subflow); `auto` makes endpoints, limits
    /// and source routing for them, `clear` removes exactly what mptcpify made.
    Paths(PathsArgs),
    /// The compatibility guard: programs that had a socket option refused on an upgraded
    /// (MPTCP) socket are kept TCP from their next socket on, within that rule. Without a
    /// subcommand, shows who is kept TCP and why, the refusals seen and the options this kernel
    /// refuses on MPTCP.
    Guard(GuardArgs),
    /// Detach the program and remove all pinned state; new sockets are TCP again.
    Reset,
    /// Print the kernel program's log records (needs `enable --log-level` at first load).
    Logs,
    /// Check that this kernel accepts the program: load and attach it, then detach at once.
    /// Changes nothing; exit status 0 when it works.
    Probe,
    /// Keep the rules equal to a policy file (and, with --kubernetes, to this node's selected pods),
    /// reconciling whenever the file, the cgroup tree or the pods change. Serves Prometheus metrics,
    /// /healthz and /readyz. On exit the program and rules stay pinned unless --cleanup-on-exit.
    Agent(AgentArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Write the man pages (mptcpify.1 and one per subcommand) into DIR.
    Man(ManArgs),
    /// Internal: the first step of `run` (join the cgroup, drop privileges, exec).
    #[command(name = "__exec", hide = true)]
    Exec(ExecArgs),
}

#[derive(Debug, Args)]
pub struct EnableArgs {
    #[command(flatten)]
    pub targets: Targets,
    /// Every process on the host (exclusions still apply).
    #[arg(long)]
    pub all: bool,
    /// Dry run: leave the selected sockets TCP, count and report them as `would-upgrade`
    /// (`status`, `monitor`, metrics). Exclusions still win; a target cannot be both.
    #[arg(long)]
    pub audit: bool,
    /// Log level of the kernel program's aya-log output, fixed when it is first loaded.
    #[arg(long, value_parser = log_level(), default_value = "off")]
    pub log_level: LogLevel,
}

#[derive(Debug, Args)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub targets: Targets,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExcludeArgs {
    #[command(flatten)]
    pub targets: Targets,
}

#[derive(Debug, Args)]
pub struct DisableArgs {
    #[command(flatten)]
    pub targets: Targets,
    /// Remove `enable --all`.
    #[arg(long)]
    pub all: bool,
    /// A cgroup rule by id (from `status`), for a cgroup whose directory is gone.
    #[arg(long = "cgroup-id", value_name = "ID")]
    pub cgroup_ids: Vec<u64>,
    /// Also remove rules the agent owns (they belong to its policy; it restores them).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct GuardArgs {
    #[command(subcommand)]
    pub action: Option<GuardCommand>,
    /// Machine-readable output (without a subcommand).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum GuardCommand {
    /// Upgrade PROGRAM again (every program with --all) until it has an option refused again.
    Forget {
        /// The command name the guard shows.
        #[arg(value_parser = program(), required_unless_present = "all")]
        program: Option<Key>,
        #[arg(long, conflicts_with = "program")]
        all: bool,
    },
    /// Upgrade PROGRAM under every rule whatever it is refused: "upgrade it anyway".
    Allow {
        #[arg(value_parser = program())]
        program: Key,
    },
    /// Keep programs TCP after a refusal (the default).
    On,
    /// Never keep a program TCP; refusals are still counted.
    Off,
}

impl GuardArgs {
    pub fn action(self) -> GuardAction {
        match self.action {
            None => GuardAction::Show { json: self.json },
            Some(GuardCommand::Forget { program, .. }) => GuardAction::Forget(program),
            Some(GuardCommand::Allow { program }) => GuardAction::Allow(program),
            Some(GuardCommand::On) => GuardAction::Switch { on: true },
            Some(GuardCommand::Off) => GuardAction::Switch { on: false },
        }
    }
}

/// A program as the guard names it: a command name, checked as `--comm` checks it.
fn program() -> impl clap::builder::TypedValueParser<Value = Key> {
    clap::builder::NonEmptyStringValueParser::new().try_map(|s| Key::comm(&s).map_err(|e| e.to_string()))
}

/// The flag of the commands that print for scripts too.
#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PathsArgs {
    #[command(subcommand)]
    pub action: Option<PathsAction>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    /// The network namespace: a name of `ip netns` (/run/netns/NAME) or a path such as
    /// /proc/PID/ns/net. Default: the caller's.
    #[arg(long, global = true, value_name = "NAME|PATH")]
    pub netns: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum PathsAction {
    /// Make an endpoint for every usable address of the chosen interfaces, raise the limits to
    /// cover them and, with --source-routing, route each address out of its own interface.
    /// Never edits what someone else made; refuses when another path manager is in charge.
    Auto(PathsAutoArgs),
    /// Remove the endpoints, rules and routes mptcpify made here; put back limits it raised.
    Clear,
}

#[derive(Debug, Args)]
pub struct PathsAutoArgs {
    /// Exactly these interfaces (repeatable). Default: every interface holding a default route.
    #[arg(long = "dev", value_name = "IFACE")]
    pub devs: Vec<String>,
    /// Also announce each address to peers (a server's `signal` endpoints).
    #[arg(long)]
    pub signal: bool,
    /// `fullmesh` endpoints: a subflow from each to every address the peer announced.
    #[arg(long)]
    pub fullmesh: bool,
    /// Mark this interface's endpoints `backup`: used only when no other path works (repeatable).
    #[arg(long, value_name = "IFACE")]
    pub backup: Vec<String>,
    /// Raise the extra-subflow limit to at least N (the kernel's maximum is 8).
    #[arg(long, value_name = "N")]
    pub subflows: Option<u32>,
    /// Raise the number of peer-announced addresses accepted to at least N (maximum 8).
    #[arg(long, value_name = "N")]
    pub add_addr_accepted: Option<u32>,
    /// A rule and routing table per address, so its subflows leave through its own interface.
    #[arg(long)]
    pub source_routing: bool,
}

impl PathsAutoArgs {
    pub fn options(self) -> AutoOptions {
        AutoOptions {
            devs: self.devs,
            signal: self.signal,
            fullmesh: self.fullmesh,
            backup: self.backup,
            subflows: self.subflows,
            add_addr_accepted: self.add_addr_accepted,
            source_routing: self.source_routing,
            all_interfaces: false,
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run CMD as this user (name or uid). Default: the user who invoked sudo, else root.
    #[arg(long)]
    pub user: Option<String>,
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The policy (TOML): [enable] and [exclude] with cgroups, units, comms, uids, all.
    #[arg(long, value_name = "FILE", default_value = "/etc/mptcpify/policy.toml")]
    pub config: PathBuf,
    /// Where to serve /metrics, /healthz and /readyz (loopback only by default).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// On SIGTERM/SIGINT remove the agent's rules (and the program if no CLI rule is left).
    #[arg(long)]
    pub cleanup_on_exit: bool,
    /// Also enable the pods of this node selected by the annotation or namespace label
    /// mptcpify.io/enabled=true (API access: in-cluster service account or KUBECONFIG).
    #[arg(long)]
    pub kubernetes: bool,
    /// This node's name (default: $NODE_NAME, which the DaemonSet sets from spec.nodeName).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Log level of the kernel program, if the agent is the one that loads it.
    #[arg(long, value_parser = log_level(), default_value = "off")]
    pub log_level: LogLevel,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub cgroup_procs: PathBuf,
    pub uid: u32,
    pub gid: u32,
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<u32>,
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `--log-level`: the library's levels by name, so completions and help list them.
fn log_level() -> impl clap::builder::TypedValueParser<Value = LogLevel> {
    clap::builder::PossibleValuesParser::new(LogLevel::ALL.map(LogLevel::name))
        .map(|name| LogLevel::from_name(&name).expect("one of the possible values"))
}

#[derive(Debug, Args, Clone, Default)]
pub struct Targets {
    /// Cgroup v2 path: absolute (under the cgroup2 mount) or relative to the cgroup2 root.
    /// Covers every cgroup below it too.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<String>,
    /// systemd unit (nginx.service, user.slice, …): its cgroup, asked of systemd.
    #[arg(long = "unit", value_name = "UNIT")]
    pub units: Vec<String>,
    /// Process id (thread-group id, as seen in the initial PID namespace).
    #[arg(long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,
    /// Command name as the kernel keeps it (comm: at most 15 bytes), e.g. `curl`.
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// User (name or numeric uid).
    #[arg(long = "uid", value_name = "UID|NAME")]
    pub uids: Vec<String>,
}

impl Targets {
    /// The selectors these flags name, each validated, in the order cgroups, units, pids,
    /// commands, users; `all` adds every process.
    pub fn selectors(&self, all: bool) -> anyhow::Result<Vec<Selector>> {
        let users = mptcpify::host::users::system_users;
        let mut out = Vec::new();
        for c in &self.cgroups {
            out.push(Selector::cgroup_arg(c));
        }
        for u in &self.units {
            out.push(Selector::unit(u));
        }
        for &p in &self.pids {
            out.push(Selector::pid(p));
        }
        for c in &self.comms {
            out.push(Selector::comm(c));
        }
        for u in &self.uids {
            out.push(Selector::uid(&UidSpec::parse(u), &users));
        }
        if all {
            out.push(Ok(Selector::ALL));
        }
        out.into_iter().collect::<Result<_, String>>().map_err(anyhow::Error::msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mptcpify").chain(args.iter().copied()))
    }

    #[test]
    fn enable_takes_several_selectors() {
        let cli = parse(&[
            "enable",
            "--cgroup",
            "a/b",
            "--pid",
            "42",
            "--cgroup",
            "/sys/fs/cgroup/c",
            "--comm",
            "curl",
            "--uid",
            "www-data",
            "--unit",
            "nginx.service",
        ])
        .unwrap();
        let Command::Enable(EnableArgs { targets, log_level, all, .. }) = cli.command else { panic!() };
        assert_eq!(targets.cgroups, ["a/b", "/sys/fs/cgroup/c"]);
        assert_eq!(targets.pids, [42]);
        assert_eq!(targets.comms, ["curl"]);
        assert_eq!(targets.uids, ["www-data"]);
        assert_eq!(targets.units, ["nginx.service"]);
        assert!(!all);
        assert_eq!(log_level, LogLevel::Off);
        assert_eq!(targets.selectors(false).unwrap().len(), 6);
    }

    #[test]
    fn bad_pids_are_refused_by_the_parser() {
        for bad in ["0", "-3", "abc", "4294967296"] {
            assert!(parse(&["enable", "--pid", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn disable_accepts_cgroup_ids_and_all() {
        let cli = parse(&["disable", "--cgroup-id", "1234", "--all"]).unwrap();
        let Command::Disable(DisableArgs { cgroup_ids, targets, all, .. }) = cli.command else { panic!() };
        assert_eq!(cgroup_ids, [1234]);
        assert!(all && targets.selectors(false).unwrap().is_empty());
    }

    #[test]
    fn exclude_has_no_all() {
        assert!(parse(&["exclude", "--all"]).is_err());
        assert!(parse(&["exclude", "--comm", "ssh"]).is_ok());
    }

    #[test]
    fn run_takes_the_command_after_double_dash() {
        let cli = parse(&["run", "--user", "alice", "--", "curl", "-v", "--x"]).unwrap();
        let Command::Run(RunArgs { user, command }) = cli.command else { panic!() };
        assert_eq!(user.as_deref(), Some("alice"));
        assert_eq!(command, ["curl", "-v", "--x"]);
        assert!(parse(&["run"]).is_err());
    }

    #[test]
    fn agent_defaults_to_loopback_metrics_and_keeps_pins() {
        let Command::Agent(AgentArgs { config, metrics_addr, cleanup_on_exit, kubernetes, .. }) =
            parse(&["agent"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!(config, PathBuf::from("/etc/mptcpify/policy.toml"));
        assert!(metrics_addr.ip().is_loopback());
        assert!(!cleanup_on_exit && !kubernetes);
        assert!(parse(&["agent", "--metrics-addr", "localhost"]).is_err(), "an address needs a port");
    }

    #[test]
    fn status_json_and_log_level() {
        assert!(matches!(parse(&["status", "--json"]).unwrap().command, Command::Status(JsonArgs { json: true })));
        let cli = parse(&["enable", "--pid", "1", "--log-level", "debug"]).unwrap();
        let Command::Enable(args) = cli.command else { panic!() };
        assert_eq!(args.log_level, LogLevel::Debug);
        assert!(parse(&["enable", "--pid", "1", "--log-level", "loud"]).is_err());
    }
}
