//! Where the pinned state lives and how invocations take turns with it. It outlives every CLI
//! invocation; each one opens it, edits it under [`Lock`], and leaves.
use std::{
    fs::{File, TryLockError},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::links::{FdLink, PinnedLink};
pub use mptcpify_common::{LINK_PIN, LOADING_INFIX, OUTCOME_PROGRAMS, PIN_DIR};

/// Serialises edits between concurrent invocations (an flock on the bpffs directory, or on the
/// directory of another kind of state).
pub struct Lock(#[allow(dead_code)] File);

/// How long an invocation waits for another one's edit before it names the holder and gives up.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

impl Lock {
    /// The lock on the pinned state.
    pub fn take() -> Result<Self> {
        Self::on(Path::new(PIN_DIR).parent().expect("PIN_DIR has a parent"))
    }

    /// A lock on the directory `parent`, which must exist.
    pub fn on(parent: &Path) -> Result<Self> {
        let f = File::open(parent).with_context(|| format!("opening {}", parent.display()))?;
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            if Self::attempt(&f, parent, deadline)? {
                return Ok(Self(f));
            }
            std::thread::sleep(LOCK_POLL);
        }
    }

    /// [`on`](Self::on) without blocking the thread while it waits: on the agent's one runtime
    /// thread the holder may be another of its tasks, which a sleeping thread would never let
    /// finish, and the health endpoints must keep answering meanwhile.
    pub async fn on_async(parent: &Path) -> Result<Self> {
        let f = File::open(parent).with_context(|| format!("opening {}", parent.display()))?;
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            if Self::attempt(&f, parent, deadline)? {
                return Ok(Self(f));
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }

    /// The lock on `parent` if it is free now, without waiting.
    pub fn try_on(parent: &Path) -> Result<Option<Self>> {
        let f = File::open(parent).with_context(|| format!("opening {}", parent.display()))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(Self(f))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", parent.display())),
        }
    }

    /// One try: locked, `false` to wait and try again, or the error naming the holder once
    /// `deadline` has passed.
    fn attempt(f: &File, parent: &Path, deadline: Instant) -> Result<bool> {
        match f.try_lock() {
            Ok(()) => Ok(true),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => Ok(false),
            Err(TryLockError::WouldBlock) => bail!(
                "another invocation has held the lock on {} for {}s: {}; wait for it, or stop it",
                parent.display(),
                LOCK_TIMEOUT.as_secs(),
                holders(f).unwrap_or_else(|| "its process is unknown".into())
            ),
            Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", parent.display())),
        }
    }
}

/// How often a waiting invocation tries the lock again.
const LOCK_POLL: Duration = Duration::from_millis(20);

/// The processes other than this one that hold (or wait for) a lock on `f`, from `/proc/locks`.
fn holders(f: &File) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = f.metadata().ok()?;
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let me = std::process::id() as i32;
    let mut pids: Vec<i32> = procfs::locks()
        .ok()?
        .into_iter()
        .filter(|l| l.inode == meta.ino() && l.devmaj == major && l.devmin == minor)
        .filter_map(|l| l.pid)
        .filter(|&p| p != me)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    let named: Vec<String> = pids
        .iter()
        .map(|&p| match std::fs::read_to_string(format!("/proc/{p}/comm")) {
            Ok(comm) => format!("pid {p} ({})", comm.trim_end().escape_debug()),
            Err(_) => format!("pid {p}"),
        })
        .collect();
    (!named.is_empty()).then(|| format!("held by {}", named.join(", ")))
}

/// Refuses pinned state that someone other than root could have written: the directory must be
/// root's and writable by root alone (loads make it 0700). `reset` does not ask, so that it can
/// always remove such state.
pub fn verify_dir() -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(PIN_DIR).with_context(|| format!("reading {PIN_DIR}"))?;
    let mode = meta.mode() & 0o7777;
    if meta.uid() != 0 || mode & 0o022 != 0 {
        bail!(
            "{PIN_DIR} is owned by uid {} with mode {mode:04o}; mptcpify trusts only state that root alone can \
             write (0700, owner root): check who changed it, then `mptcpify reset` and enable again",
            meta.uid()
        );
    }
    Ok(())
}

pub fn is_loaded() -> bool {
    Path::new(PIN_DIR).join(LINK_PIN).exists()
}

/// Link and program ids, as `bpftool link` shows them.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LinkIds {
    pub link_id: u32,
    pub program_id: u32,
}

pub fn link_ids() -> Result<LinkIds> {
    pinned_link_ids(LINK_PIN)
}

/// The ids of the outcome programs' links by role ([`OUTCOME_PROGRAMS`]), when they are all
/// attached.
pub fn outcome_link_ids() -> Option<Vec<(&'static str, LinkIds)>> {
    OUTCOME_PROGRAMS.iter().map(|p| Some((p.role, pinned_link_ids(p.pin).ok()?))).collect()
}

fn pinned_link_ids(pin: &str) -> Result<LinkIds> {
    let pinned = PinnedLink::from_pin(Path::new(PIN_DIR).join(pin))?;
    let info = FdLink::from(pinned).info()?;
    Ok(LinkIds { link_id: info.id(), program_id: info.program_id() })
}

/// Detaches the program and removes every pin (and any leftover of an interrupted load).
/// Returns whether anything was there.
pub fn remove_all() -> Result<bool> {
    let dir = Path::new(PIN_DIR);
    let parent = dir.parent().expect("PIN_DIR has a parent");
    let name = dir.file_name().expect("PIN_DIR has a name").to_string_lossy().into_owned();
    let mut found = false;
    for entry in std::fs::read_dir(parent).with_context(|| format!("listing {}", parent.display()))? {
        let entry = entry?;
        let n = entry.file_name().to_string_lossy().into_owned();
        if n != name && !n.starts_with(&format!("{name}{LOADING_INFIX}")) {
            continue;
        }
        found = true;
        let path = entry.path();
        // The link first: from here on new sockets are TCP again.
        let link = path.join(LINK_PIN);
        if link.exists() {
            std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_seen_without_waiting_and_a_free_one_taken() {
        let dir = tempfile::tempdir().unwrap();
        let held = Lock::on(dir.path()).unwrap();
        assert!(Lock::try_on(dir.path()).unwrap().is_none(), "held by another open file");
        drop(held);
        assert!(Lock::try_on(dir.path()).unwrap().is_some());
        assert!(Lock::try_on(&dir.path().join("absent")).is_err());
    }
}
