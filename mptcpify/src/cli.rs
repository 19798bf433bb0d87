//! The command line, as clap parses it.
use clap::{Args, Parser, Subcommand};

use crate::loader::LogLevel;

#[derive(Debug, Parser)]
#[command(name = "mptcpify", version, about = "Make unmodified programs use Multipath TCP")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upgrade new TCP sockets of a cgroup (and every cgroup below it) or of a process to MPTCP.
    /// Loads and pins the kernel program first if it is not loaded yet.
    Enable {
        #[command(flatten)]
        targets: Targets,
        /// Log level of the kernel program's aya-log output, fixed when it is first loaded.
        #[arg(long, value_enum, default_value_t = LogLevel::Off)]
        log_level: LogLevel,
    },
    /// Stop upgrading sockets for the given cgroups or processes.
    Disable {
        #[command(flatten)]
        targets: Targets,
        /// A cgroup rule by id (from `status`), for a cgroup whose directory is gone.
        #[arg(long = "cgroup-id", value_name = "ID")]
        cgroup_ids: Vec<u64>,
    },
    /// Show whether the program is attached, its counters and every rule.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Detach the program and remove all pinned state; new sockets are TCP again.
    Reset,
    /// Print the kernel program's log records (needs `enable --log-level` at first load).
    Logs,
    /// Check that this kernel accepts the program: load and attach it, then detach at once.
    /// Changes nothing; exit status 0 when it works.
    Probe,
}

#[derive(Debug, Args, Clone, Default)]
pub struct Targets {
    /// Cgroup v2 path: absolute (under the cgroup2 mount) or relative to the cgroup2 root.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<String>,
    /// Process id (thread-group id, as seen in the initial PID namespace).
    #[arg(long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,
}

impl Targets {
    pub fn is_empty(&self) -> bool {
        self.cgroups.is_empty() && self.pids.is_empty()
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
        let cli = parse(&["enable", "--cgroup", "a/b", "--pid", "42", "--cgroup", "/sys/fs/cgroup/c"]).unwrap();
        let Command::Enable { targets, log_level } = cli.command else { panic!() };
        assert_eq!(targets.cgroups, ["a/b", "/sys/fs/cgroup/c"]);
        assert_eq!(targets.pids, [42]);
        assert_eq!(log_level, LogLevel::Off);
    }

    #[test]
    fn bad_pids_are_refused_by_the_parser() {
        for bad in ["0", "-3", "abc", "4294967296"] {
            assert!(parse(&["enable", "--pid", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn disable_accepts_cgroup_ids() {
        let cli = parse(&["disable", "--cgroup-id", "1234"]).unwrap();
        let Command::Disable { cgroup_ids, targets } = cli.command else { panic!() };
        assert_eq!(cgroup_ids, [1234]);
        assert!(targets.is_empty());
    }

    #[test]
    fn status_json_and_log_level() {
        assert!(matches!(parse(&["status", "--json"]).unwrap().command, Command::Status { json: true }));
        let cli = parse(&["enable", "--pid", "1", "--log-level", "debug"]).unwrap();
        assert!(matches!(cli.command, Command::Enable { log_level: LogLevel::Debug, .. }));
        assert!(parse(&["enable", "--pid", "1", "--log-level", "loud"]).is_err());
    }
}
