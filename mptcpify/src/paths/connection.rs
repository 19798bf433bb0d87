//! Netlink sockets to one network namespace: rtnetlink for links, addresses, routes and rules,
//! generic netlink (`mptcp_pm`) for endpoints and limits. A namespace other than the caller's
//! is entered by a short-lived thread: sockets belong to the namespace they were made in, so
//! the thread makes them there and hands them back, and the caller's threads never move.
use std::{
    fs::File,
    os::fd::AsFd as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use caps::{CapSet, Capability};

use super::model::PathManager;
use crate::bpf::sys;

/// Which network namespace: the caller's, or one named by a file (`/run/netns/NAME`,
/// `/proc/PID/ns/net`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    Current,
    File(PathBuf),
}

impl Netns {
    fn path(&self) -> &Path {
        match self {
            Netns::Current => Path::new("/proc/thread-self/ns/net"),
            Netns::File(p) => p,
        }
    }
}

/// Open sockets into one namespace, with what was read there on entering.
#[derive(Clone)]
pub struct Netlink {
    pub route: rtnetlink::Handle,
    pub pm: mptcp_pm::MptcpPathManagerHandle,
    /// The namespace's nsfs inode: its identity while it lives (the record's name). The kernel
    /// gives a freed inode to the next namespace at once.
    pub inode: u64,
    /// The namespace's cookie (`SO_NETNS_COOKIE`): never given to another namespace while the
    /// system runs, so it tells a namespace from a later one with the same inode.
    pub cookie: Option<u64>,
    pub path_manager: PathManager,
}

/// Editing endpoints, rules and routes needs CAP_NET_ADMIN (in the namespace's owner).
pub fn require_net_admin() -> Result<()> {
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_NET_ADMIN).unwrap_or(false) {
        return Ok(());
    }
    bail!("changing MPTCP endpoints, limits and routes needs CAP_NET_ADMIN; run it with sudo")
}

impl Netlink {
    /// Sockets into `netns`, their connections driven by the current tokio runtime.
    pub async fn open(netns: &Netns) -> Result<Self> {
        let inode = std::fs::metadata(netns.path())
            .with_context(|| format!("the network namespace {}", netns.path().display()))?
            .ino();
        in_netns(netns, move || Self::open_here(inode))
    }

    /// Sockets into the namespace `ns` names, already open: what was opened is what is entered.
    pub fn open_file(ns: File) -> Result<Self> {
        let inode = ns.metadata().context("the network namespace's file")?.ino();
        in_file(ns, move || Self::open_here(inode))
    }

    fn open_here(inode: u64) -> Result<Self> {
        let (route_conn, route, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
        let (pm_conn, pm, _) = mptcp_pm::new_connection().context("opening a generic netlink socket")?;
        tokio::spawn(route_conn);
        tokio::spawn(pm_conn);
        Ok(Self { route, pm, inode, cookie: netns_cookie_here(), path_manager: path_manager_here() })
    }
}

/// The calling thread's namespace's cookie, from a socket made there; `None` where the kernel
/// has no `SO_NETNS_COOKIE` (before 5.14).
fn netns_cookie_here() -> Option<u64> {
    let socket = sys::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0).ok()?;
    let mut cookie = [0u8; 8];
    let len = sys::getsockopt(socket.as_fd(), libc::SOL_SOCKET, libc::SO_NETNS_COOKIE, &mut cookie).ok()?;
    (len == cookie.len()).then(|| u64::from_ne_bytes(cookie))
}

/// `make` run in `netns`, inside the current tokio runtime: what it makes (sockets, and the
/// connections it spawns) belongs to that namespace.
pub fn in_netns<T: Send + 'static>(netns: &Netns, make: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match netns {
        Netns::Current => make(),
        Netns::File(path) => in_file(File::open(path).with_context(|| format!("opening {}", path.display()))?, make),
    }
}

fn in_file<T: Send + 'static>(ns: File, make: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let runtime = tokio::runtime::Handle::current();
    let entered = std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| anyhow!("entering the network namespace: {e} (needs CAP_SYS_ADMIN)"))?;
        let _in_runtime = runtime.enter();
        make()
    });
    entered.join().map_err(|_| anyhow!("the thread entering the network namespace panicked"))?
}

/// Read in the calling thread's namespace: `/proc/sys/net` shows the reader's own.
fn path_manager_here() -> PathManager {
    let read =
        |name: &str| std::fs::read_to_string(format!("/proc/sys/net/mptcp/{name}")).map(|s| s.trim().to_string());
    match read("enabled") {
        Err(_) => return PathManager::Missing,
        Ok(v) if v == "0" => return PathManager::Disabled,
        Ok(_) => {}
    }
    // `path_manager` (6.15+) names it; before, `pm_type` numbers it.
    match (read("path_manager"), read("pm_type")) {
        (Ok(name), _) => path_manager_named(&name),
        (_, Ok(n)) if n == "0" => PathManager::Kernel,
        (_, Ok(n)) if n == "1" => PathManager::Userspace,
        (_, Ok(n)) => PathManager::Other(format!("pm_type {n}")),
        (Err(_), Err(_)) => PathManager::Kernel,
    }
}

fn path_manager_named(name: &str) -> PathManager {
    match name {
        "kernel" | "in-kernel" => PathManager::Kernel,
        "userspace" => PathManager::Userspace,
        other => PathManager::Other(other.to_string()),
    }
}
