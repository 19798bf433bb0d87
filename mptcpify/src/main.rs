use clap::Parser as _;
use mptcpify::{
    cli::{Cli, Command},
    commands,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
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
