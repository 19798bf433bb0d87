//! The `mptcpify` command: parses the command line and hands it to the library ([`cli`]).
#![deny(unsafe_code)]

mod cli;

use clap::Parser as _;

use crate::cli::args::{Cli, Command};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `logs` shows every record of the kernel program (its target is its crate, `mptcpify`) at
    // whatever level it was loaded with. Libraries (aya, zbus, kube) say only warnings.
    let default_level = if matches!(cli.command, Command::Logs) { "warn,mptcpify=trace" } else { "warn,mptcpify=info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level)).init();
    let (prefix, status) = (cli.error_prefix(), cli.error_status());
    match cli::dispatch(cli.command).await {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("{prefix}: error: {e:#}");
            std::process::ExitCode::from(status)
        }
    }
}
