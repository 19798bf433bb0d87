//! inotify watches on the policy file's directory (editors and ConfigMap updates replace files
//! rather than write them) and on the cgroup directories where wanted cgroups appear. Events only
//! wake the reconciler, which re-reads everything; nothing polls the files (the kernel's rule maps
//! are compared in `drift`).
use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use inotify::{EventMask, EventOwned, EventStream, Inotify, WatchDescriptor, WatchMask};

pub struct Watches {
    stream: EventStream<Vec<u8>>,
    by_path: BTreeMap<PathBuf, WatchDescriptor>,
}

const CGROUP_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ONLYDIR);

const POLICY_MASK: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO);

impl Watches {
    /// Starts with a watch on the directory of `policy`.
    pub fn new(policy: &Path) -> Result<Self> {
        let inotify = Inotify::init().context("creating an inotify instance")?;
        let dir = policy.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        inotify
            .watches()
            .add(dir, POLICY_MASK)
            .with_context(|| format!("watching {} for policy changes", dir.display()))?;
        let stream = inotify.into_event_stream(vec![0u8; 16 * 1024]).context("reading inotify events")?;
        Ok(Self { stream, by_path: BTreeMap::new() })
    }

    pub async fn next(&mut self) -> Option<io::Result<EventOwned>> {
        self.stream.next().await
    }

    /// Forgets watches the kernel dropped (their directory was removed), so they are re-added
    /// when it comes back.
    pub fn note(&mut self, event: &io::Result<EventOwned>) {
        match event {
            Ok(e) if e.mask.contains(EventMask::IGNORED) => self.by_path.retain(|_, wd| *wd != e.wd),
            Ok(e) if e.mask.contains(EventMask::Q_OVERFLOW) => {
                log::warn!("inotify queue overflowed; reconciling everything");
            }
            Ok(_) => {}
            Err(e) => log::warn!("reading inotify events: {e}"),
        }
    }

    /// Makes the cgroup watches exactly `wanted`; returns whether any was added.
    pub fn update(&mut self, wanted: &std::collections::BTreeSet<PathBuf>) -> bool {
        let mut w = self.stream.watches();
        let stale: Vec<PathBuf> = self.by_path.keys().filter(|p| !wanted.contains(*p)).cloned().collect();
        for p in stale {
            if let Some(wd) = self.by_path.remove(&p) {
                // The watch of the policy directory can share a descriptor; it is never in by_path.
                let _ = w.remove(wd);
            }
        }
        let mut added = false;
        for p in wanted {
            if self.by_path.contains_key(p) {
                continue;
            }
            match w.add(p, CGROUP_MASK) {
                Ok(wd) => {
                    self.by_path.insert(p.clone(), wd);
                    added = true;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => added = true,
                Err(e) => {
                    log::warn!("cannot watch {}: {e} (changes below it are seen at the next reconcile)", p.display())
                }
            }
        }
        added
    }
}
