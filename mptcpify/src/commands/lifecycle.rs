//! The program's life: `reset` (detach and unpin everything, and clear the paths mptcpify made
//! in the caller's network namespace), `probe` (load and attach, then detach at once) and `logs`
//! (the program's aya-log records).
use anyhow::{Context as _, Result, bail};

use crate::{
    bpf::{
        loader::{self, LogLevel},
        sys,
    },
    host::preconditions,
    paths::{
        apply,
        connection::{Netlink, Netns},
        model::PathManager,
    },
    state::pins::{self, Lock},
};

pub async fn reset() -> Result<()> {
    preconditions::require_state_access()?;
    {
        let _lock = Lock::take()?;
        if pins::remove_all()? {
            println!("reset: program detached, pinned state removed");
        } else {
            println!("reset: nothing was loaded");
        }
    }
    let nl = Netlink::open(&Netns::Current).await?;
    if nl.path_manager == PathManager::Missing {
        return Ok(());
    }
    let plan = apply::clear(&nl).await?;
    if !plan.changes_nothing() {
        let (endpoints, routing) = (plan.remove_endpoints.len(), plan.remove_rules.len() + plan.remove_routes.len());
        let limits = if plan.limits.is_some() { ", limits put back" } else { "" };
        println!("reset: removed {endpoints} endpoint(s) and {routing} rule(s)/route(s) mptcpify made{limits}");
    }
    Ok(())
}

pub fn probe() -> Result<()> {
    preconditions::require_privileges()?;
    drop(loader::load_and_attach(LogLevel::Off)?);
    println!("probe: the kernel ({}) accepts the fmod_ret program on update_socket_protocol", loader::kernel_release());
    Ok(())
}

/// Streams the kernel program's aya-log records until Ctrl-C.
pub async fn logs() -> Result<()> {
    preconditions::require_privileges()?;
    if !pins::is_loaded() {
        bail!("mptcpify is not loaded; `mptcpify enable --log-level debug …` loads it with logging");
    }
    let ids = pins::link_ids()?;
    let logger = aya_log::EbpfLogger::init_from_id(ids.program_id).context("opening the program's log ring buffer")?;
    let mut fd = sys::async_fd(logger)?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
    }
}
