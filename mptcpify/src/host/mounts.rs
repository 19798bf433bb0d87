//! Where cgroup2 and bpffs are mounted, read from `/proc/self/mountinfo`.
//!
//! Hybrid hosts mount cgroup2 at `/sys/fs/cgroup/unified`, pure v2 hosts at `/sys/fs/cgroup`; a
//! container may see several bind mounts of sub-trees. The hierarchy root (mount root `/`) wins.
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
        let mut cgroup2 = None;
        let mut bpffs = Vec::new();
        for m in infos.0 {
            match m.fs_type.as_str() {
                "cgroup2" if m.root == "/" && cgroup2.is_none() => cgroup2 = Some(m.mount_point),
                "bpf" => bpffs.push(m.mount_point),
                _ => {}
            }
        }
        Ok(Self { cgroup2, bpffs })
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

    #[test]
    fn missing_mounts_give_instructions() {
        let m = Mounts::parse(CONTAINER.lines().next().unwrap().as_bytes()).unwrap();
        assert!(m.cgroup2_root().unwrap_err().to_string().contains("mount -t cgroup2"));
        assert!(m.require_bpffs().unwrap_err().to_string().contains("mount -t bpf bpf /sys/fs/bpf"));
    }
}
