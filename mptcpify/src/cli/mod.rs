//! The CLI's edge: clap's arguments ([`args`]) turned into library calls, and the pages
//! generated from them ([`docs`]).
pub mod args;
mod docs;

use anyhow::Result;
use mptcpify::{
    agent, commands,
    state::rules::{Action, AgentRules},
};

use self::args::{Cli, Command};

/// Runs one command; returns the process's exit status.
pub async fn dispatch(command: Command) -> Result<i32> {
    let done = |()| 0;
    match command {
        Command::Enable(a) => {
            let action = if a.audit { Action::Audit } else { Action::Enable };
            commands::rules::add(&a.targets.selectors(a.all)?, action, a.log_level).await.map(done)
        }
        Command::Exclude(a) => {
            commands::rules::add(&a.targets.selectors(false)?, Action::Exclude, Default::default()).await.map(done)
        }
        Command::Disable(a) => {
            let agent_rules = if a.force { AgentRules::Override } else { AgentRules::Refuse };
            commands::rules::disable(&a.targets.selectors(a.all)?, &a.cgroup_ids, agent_rules).await.map(done)
        }
        Command::Status(a) => commands::status::status(a.json).await.map(done),
        Command::Sync => commands::sync::sync().await.map(done),
        Command::Run(a) => commands::run::run(a.user.as_deref(), &a.command).await,
        Command::Monitor(a) => commands::monitor::monitor(a.json).await.map(done),
        Command::Connections(a) => commands::connections::show(&a.targets.selectors(false)?, a.json).await.map(done),
        Command::Doctor(a) => commands::doctor::doctor(a.json).await,
        Command::Paths(a) => {
            let netns = commands::paths::netns(a.netns.as_deref())?;
            match a.action {
                None => commands::paths::show(&netns, a.json).await,
                Some(args::PathsAction::Auto(o)) => commands::paths::auto(&netns, &o.options(), a.json).await,
                Some(args::PathsAction::Clear) => commands::paths::clear(&netns, a.json).await,
            }
            .map(done)
        }
        Command::Guard(a) => commands::guard::guard(a.action()).await.map(done),
        Command::Reset => commands::lifecycle::reset().await.map(done),
        Command::Logs => commands::lifecycle::logs().await.map(done),
        Command::Probe => commands::lifecycle::probe().map(done),
        Command::Agent(a) => agent::run(agent_options(a)).await.map(done),
        Command::Completions(a) => {
            docs::completions(a.shell);
            Ok(0)
        }
        Command::Man(a) => docs::man_pages(&a.dir).map(done),
        Command::Exec(a) => commands::run::exec(&a.cgroup_procs, a.uid, a.gid, &a.groups, &a.command),
    }
}

fn agent_options(a: args::AgentArgs) -> agent::Options {
    agent::Options {
        config: a.config,
        metrics_addr: a.metrics_addr,
        cleanup_on_exit: a.cleanup_on_exit,
        kubernetes: a.kubernetes,
        node_name: a.node_name.or_else(|| std::env::var("NODE_NAME").ok()),
        log_level: a.log_level,
    }
}

impl Cli {
    /// `__exec` runs as the first step of `run`, so its errors speak as `run`'s.
    pub fn error_prefix(&self) -> &'static str {
        if matches!(self.command, Command::Exec(_)) { "mptcpify run" } else { "mptcpify" }
    }

    /// 126 is what a shell reports for a command that could not be started.
    pub fn error_status(&self) -> u8 {
        if matches!(self.command, Command::Exec(_)) { 126 } else { 1 }
    }
}
