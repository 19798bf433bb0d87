//! Attaches the audit watchers ([`AUDIT_PROGRAMS`]) while an audit rule exists, and only then:
//! they run on every TCP socket's option calls, a cost no host should pay for a dry run it is not
//! doing. Their programs are loaded (verified) and pinned with the rest, so attaching later
//! cannot fail verification; each watcher is attached or detached on its own, so an edit killed
//! midway leaves state the next edit completes.
use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use mptcpify_common::{AUDIT_PROGRAMS, Config, OutcomeProgram, PIN_DIR};

use super::sys;

pub fn program_pin(p: &OutcomeProgram) -> String {
    format!("{}_prog", p.pin)
}

fn link_path(p: &OutcomeProgram) -> PathBuf {
    Path::new(PIN_DIR).join(format!("{}_link", p.pin))
}

/// Whether the watchers are attached now.
pub fn attached() -> bool {
    AUDIT_PROGRAMS.iter().all(|p| link_path(p).exists())
}

/// Attaches or detaches the watchers as `config`'s rules need them. Without pinned programs (a
/// kernel without outcome tracking) there is nothing to attach.
pub fn sync(config: &Config) -> Result<()> {
    for p in &AUDIT_PROGRAMS {
        let (prog, link) = (Path::new(PIN_DIR).join(program_pin(p)), link_path(p));
        if !prog.exists() {
            continue;
        }
        match (config.audits_any(), link.exists()) {
            (true, false) => {
                let fd = sys::obj_get(&prog).with_context(|| format!("opening {}", prog.display()))?;
                let attached = sys::attach_tracing(fd.as_fd(), p.attach)
                    .with_context(|| format!("attaching the audit watcher to {}()", p.function))?;
                sys::pin(attached.as_fd(), &link).with_context(|| format!("pinning {}", link.display()))?;
            }
            (false, true) => std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?,
            _ => {}
        }
    }
    Ok(())
}
