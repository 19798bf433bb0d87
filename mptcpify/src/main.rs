use clap::Parser as _;
use mptcpify::{
    cli::{Cli, Command},
    commands,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `logs` shows every record of the kernel program (its target is its crate, `mptcpify`) at
    // whatever level it was loaded with; aya's own chatter stays at info.
    let default_level = if matches!(cli.command, Command::Logs) { "info,mptcpify=trace" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level)).init();
    let result = match &cli.command {
        Command::Enable { targets, log_level } => commands::enable(targets, *log_level),
        Command::Disable { targets, cgroup_ids } => commands::disable(targets, cgroup_ids),
        Command::Status { json } => commands::status(*json),
        Command::Reset => commands::reset(),
        Command::Logs => commands::logs().await,
        Command::Probe => commands::probe(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mptcpify: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
