//! Where cgroup2 and bpffs are mounted, read from `/proc/self/mountinfo`.
//!
//! Hybrid hosts mount cgroup2 at `/sys/fs/cgroup/unified`, pure v2 hosts at `/sys/fs/cgroup`; a
//! container may see several bind mounts of sub-trees. The highest mount wins: a mount's root is
//! shown relative to the reader's cgroup namespace, so on a host the hierarchy's root is `/`,
//! while in a container with a cgroup namespace of its own `/` is only the container's cgroup
//! and the host's tree, mounted over it as the DaemonSet does, shows as `/..` (once per level).
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
pub use mptcpify_common::BPFFS;
use procfs::{FromBufRead as _, process::MountInfos};

/// The mounts mptcpify needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounts {
    /// Mount point of the cgroup2 hierarchy's root, if mounted.
    pub cgroup2: Option<PathBuf>,
    /// Mount points of bpffs.
    pub bpffs: Vec<PathBuf>,
}

impl Mounts {
    pub fn read() -> Result<Self> {
        let file = std::fs::File::open("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        Self::parse(std::io::BufReader::new(file))
    }

    pub fn parse(text: impl std::io::BufRead) -> Result<Self> {
        let infos = MountInfos::from_buf_read(text).context("parsing mountinfo")?;
        let mut cgroup2: Option<(usize, PathBuf)> = None;
        let mut bpffs = Vec::new();
        for m in infos.0 {
            match m.fs_type.as_str() {
                "cgroup2" => {
                    let Some(up) = levels_above_namespace(&m.root) else { continue };
                    if cgroup2.as_ref().is_none_or(|(best, _)| up > *best) {
                        cgroup2 = Some((up, m.mount_point));
                    }
                }
                "bpf" => bpffs.push(m.mount_point),
                _ => {}
            }
        }
        Ok(Self { cgroup2: cgroup2.map(|(_, p)| p), bpffs })
    }

    /// The cgroup2 root, or an error that says how to get one.
    pub fn cgroup2_root(&self) -> Result<PathBuf> {
        match &self.cgroup2 {
            Some(p) => Ok(p.clone()),
            None => bail!(
                "no cgroup2 hierarchy is mounted (looked in /proc/self/mountinfo); \
                 mount one with `mount -t cgroup2 none /sys/fs/cgroup` (or /sys/fs/cgroup/unified on hybrid hosts)"
            ),
        }
    }

    /// Fails unless bpffs is mounted at [`BPFFS`], where the pinned state lives.
    pub fn require_bpffs(&self) -> Result<()> {
        if self.bpffs.iter().any(|p| p.as_os_str() == BPFFS) {
            Ok(())
        } else {
            bail!("bpffs is not mounted at {BPFFS}; mount it with `mount -t bpf bpf {BPFFS}`")
        }
    }
}

/// How far above the reader's cgroup namespace root a cgroup2 mount's root is: `/` is 0, `/..`
/// 1, `/../..` 2; `None` for a sub-tree (`/kubepods/pod1`), which is never the hierarchy root.
fn levels_above_namespace(root: &str) -> Option<usize> {
    let rest = root.strip_prefix('/')?;
    if rest.is_empty() {
        return Some(0);
    }
    rest.split('/').try_fold(0, |up, part| (part == "..").then_some(up + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
38 25 0:33 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:14 - bpf bpf rw,mode=700
";

    const CONTAINER: &str = "\
40 30 0:35 /kubepods/pod1 /sys/fs/cgroup/pod rw,relatime - cgroup2 cgroup2 rw
41 30 0:35 / /host/sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_has_cgroup2_under_unified() {
        let m = Mounts::parse(HYBRID.as_bytes()).unwrap();
        assert_eq!(m.cgroup2_root().unwrap(), PathBuf::from("/sys/fs/cgroup/unified"));
        m.require_bpffs().unwrap();
    }

    #[test]
    fn hierarchy_root_wins_over_bind_mounted_subtree() {
        let m = Mounts::parse(CONTAINER.as_bytes()).unwrap();
        assert_eq!(m.cgroup2_root().unwrap(), PathBuf::from("/host/sys/fs/cgroup"));
    }

    /// A container with a cgroup namespace of its own, its runtime's cgroup2 mount at
    /// /sys/fs/cgroup and the host's tree bound over it (as crun shows them).
    const NAMESPACED: &str = "\
900 800 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
1200 900 0:26 /../../.. /sys/fs/cgroup ro,relatime master:9 - cgroup2 cgroup2 rw,nsdelegate
1201 800 0:26 / /own rw,relatime - cgroup2 cgroup2 rw
1202 800 0:26 /../../../kubepods /kubepods ro,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn the_hosts_tree_wins_over_a_containers_own_namespace() {
        let m = Mounts::parse(NAMESPACED.as_bytes()).unwrap();
        assert_eq!(m.cgroup2_root().unwrap(), PathBuf::from("/sys/fs/cgroup"));
        let own_first = NAMESPACED.lines().skip(2).chain(NAMESPACED.lines().take(2)).collect::<Vec<_>>().join("\n");
        let m = Mounts::parse(own_first.as_bytes()).unwrap();
        assert_eq!(m.cgroup2_root().unwrap(), PathBuf::from("/sys/fs/cgroup"), "whatever the order");
        assert_eq!(levels_above_namespace("/"), Some(0));
        assert_eq!(levels_above_namespace("/../.."), Some(2));
        assert_eq!(levels_above_namespace("/../kubepods"), None);
        assert_eq!(levels_above_namespace("kubepods"), None);
    }

    #[test]
    fn missing_mounts_give_instructions() {
        let m = Mounts::parse(CONTAINER.lines().next().unwrap().as_bytes()).unwrap();
        assert!(m.cgroup2_root().unwrap_err().to_string().contains("mount -t cgroup2"));
        assert!(m.require_bpffs().unwrap_err().to_string().contains("mount -t bpf bpf /sys/fs/bpf"));
    }
}
