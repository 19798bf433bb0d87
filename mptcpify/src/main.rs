use clap::{CommandFactory as _, Parser as _};
use mptcpify::{
    cli::{Cli, Command},
    agent, commands, doctor, monitor,
    rules::Action,
    run,
};

/// Writes `mptcpify.1` and one page per subcommand (`mptcpify-enable.1`, …) into `dir`.
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let mut pages = vec![("mptcpify".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("mptcpify-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut file = std::fs::File::create(&path)?;
        clap_mangen::Man::new(page).render(&mut file)?;
        println!("{}", path.display());
    }
    Ok(())
}

async fn dispatch(command: &Command) -> anyhow::Result<i32> {
    match command {
        Command::Enable { targets, all, log_level } => commands::add(targets, *all, Action::Enable, *log_level).await.map(|()| 0),
        Command::Exclude { targets } => {
            commands::add(targets, false, Action::Exclude, Default::default()).await.map(|()| 0)
        }
        Command::Disable { targets, all, cgroup_ids } => commands::disable(targets, *all, cgroup_ids).await.map(|()| 0),
        Command::Status { json } => commands::status(*json).await.map(|()| 0),
        Command::Sync => commands::sync().await.map(|()| 0),
        Command::Run { user, command } => run::run(user.as_deref(), command).await,
        Command::Monitor { json } => monitor::monitor(*json).await.map(|()| 0),
        Command::Doctor { json } => doctor::doctor(*json).await,
        Command::Reset => commands::reset().map(|()| 0),
        Command::Logs => commands::logs().await.map(|()| 0),
        Command::Probe => commands::probe().map(|()| 0),
        Command::Agent { config, metrics_addr, cleanup_on_exit, kubernetes, node_name, log_level } => {
            let node_name = node_name.clone().or_else(|| std::env::var("NODE_NAME").ok());
            let opts = agent::Options {
                config: config.clone(),
                metrics_addr: *metrics_addr,
                cleanup_on_exit: *cleanup_on_exit,
                kubernetes: *kubernetes,
                node_name,
                log_level: *log_level,
            };
            agent::run(opts).await.map(|()| 0)
        }
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "mptcpify", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { dir } => man_pages(dir).map(|()| 0),
        Command::Exec { cgroup_procs, uid, gid, groups, command } => run::exec(cgroup_procs, *uid, *gid, groups, command),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `logs` shows every record of the kernel program (its target is its crate, `mptcpify`) at
    // whatever level it was loaded with; aya's own chatter stays at info.
    let default_level = if matches!(cli.command, Command::Logs) { "info,mptcpify=trace" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level)).init();
    match dispatch(&cli.command).await {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let prefix = if matches!(cli.command, Command::Exec { .. }) { "mptcpify run" } else { "mptcpify" };
            eprintln!("{prefix}: error: {e:#}");
            std::process::ExitCode::from(if matches!(cli.command, Command::Exec { .. }) { 126 } else { 1 })
        }
    }
}
