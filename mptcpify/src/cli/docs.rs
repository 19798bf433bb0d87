//! Shell completions and man pages, generated from the clap definition.
use clap::CommandFactory as _;

use super::args::Cli;

pub fn completions(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut Cli::command(), "mptcpify", &mut std::io::stdout());
}

/// Writes `mptcpify.1` and one page per subcommand (`mptcpify-enable.1`, …) into `dir`.
pub fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
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
