//! What mptcpify made in a network namespace that the kernel cannot mark as its own: endpoints
//! (they carry no owner) and the limits it raised. Kept in a file per namespace under
//! [`RECORD_DIR`] (tmpfs: gone at reboot, like the endpoints), written before each change so
//! that a command killed half-way leaves a record the next one checks against the kernel.
//! Rules and routes need no record: they carry [`super::ROUTING_PROTOCOL`].
use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::model::{Endpoint, Limits, Link};

pub const RECORD_DIR: &str = "/run/mptcpify/paths";

/// Limits mptcpify raised: what they were, and what it set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaisedLimits {
    pub before: Limits,
    pub set: Limits,
    /// While mptcpify moves limits it raised to other raised ones: what it had set. Until the
    /// move is done either value is its own, so a run killed midway loses no claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_from: Option<Limits>,
}

impl RaisedLimits {
    pub fn new(before: Limits, set: Limits) -> Self {
        Self { before, set, moving_from: None }
    }

    /// Whether `now` is what mptcpify set (or, mid-move, had set).
    pub fn holds(&self, now: Limits) -> bool {
        self.set == now || self.moving_from == Some(now)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// What the namespace is, for people reading the file (`host`, `pod <uid>`, a netns path).
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub limits: Option<RaisedLimits>,
    /// The hardware address of each interface the endpoints were made on, by index: if the
    /// interface there now has another, the namespace (or the interface) was made anew and
    /// what the record lists is not mptcpify's.
    #[serde(default)]
    pub links: BTreeMap<u32, String>,
    /// The cookie of the namespace it was written for: a record left by a namespace that has
    /// gone never speaks for the next one the kernel gives its inode. (None from an mptcpify
    /// that did not write it, or a kernel without cookies: then the inode alone.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_cookie: Option<u64>,
    /// Which of the agent's duties keeps the namespace's paths (none: a command, an operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_by: Option<KeptBy>,
}

/// The agent's duty a record was written for: records live on the node (tmpfs `/run`), so a
/// new agent, after a restart or a rollout, finds what an earlier one made, to keep or clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeptBy {
    /// The policy's `[paths]`.
    AgentPaths,
    /// `pod_paths`: the pod (`namespace/name`) and its cgroup then.
    Pod { name: String, cgroup: String },
}

impl Record {
    /// This record as the namespace with `cookie` sees it: empty when it was written for
    /// another namespace that had the same inode.
    pub fn for_namespace(self, cookie: Option<u64>) -> Self {
        let record = if self.is_for(cookie) { self } else { Record::default() };
        Record { netns_cookie: cookie.or(record.netns_cookie), ..record }
    }

    /// Whether this record was written for the namespace with `cookie` (or cannot tell).
    pub fn is_for(&self, cookie: Option<u64>) -> bool {
        same_namespace(self.netns_cookie, cookie)
    }

    /// Nothing to keep: no endpoint or limits, and no agent duty that may have made rules and
    /// routes (they carry their own mark, but a new agent learns from the record whether to
    /// clear them).
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.limits.is_none() && self.kept_by.is_none()
    }

    /// Whether `e`, seen in the kernel, is one this record says mptcpify made.
    pub fn made(&self, e: &Endpoint) -> bool {
        self.endpoints.iter().any(|m| m.id == e.id && m.ip == e.ip)
    }

    /// Forgets what is no longer in the kernel (removed by someone, or never made because a
    /// command was killed between writing the record and making it), and what was made on an
    /// interface that has since been replaced.
    pub fn forget_missing(&mut self, kernel: &[Endpoint], links: &[Link]) {
        let same_link =
            |index: &u32, hardware: &mut String| links.iter().any(|l| l.index == *index && l.hardware == *hardware);
        self.links.retain(same_link);
        let known = |e: &Endpoint| e.ifindex.is_none_or(|i| self.links.contains_key(&i));
        self.endpoints.retain(|m| known(m) && kernel.iter().any(|e| e.id == m.id && e.ip == m.ip));
        if self.endpoints.is_empty() {
            self.links.clear();
        }
    }

    /// Notes `e` as made, with its interface's hardware address.
    pub fn made_now(&mut self, e: &Endpoint, links: &[Link]) {
        if let Some(link) = e.ifindex.and_then(|i| links.iter().find(|l| l.index == i)) {
            self.links.insert(link.index, link.hardware.clone());
        }
        self.endpoints.push(e.clone());
    }
}

/// Whether two namespace cookies name the same namespace, as far as they tell (a missing one,
/// from a kernel without cookies, cannot tell them apart).
pub fn same_namespace(a: Option<u64>, b: Option<u64>) -> bool {
    !matches!((a, b), (Some(a), Some(b)) if a != b)
}

/// The record file of one network namespace, named after its nsfs inode.
#[derive(Debug, Clone)]
pub struct RecordFile {
    path: PathBuf,
}

/// `dir` and each missing parent made 0700, and `dir` (with `/run/mptcpify` for the records'
/// own directory) left open to its owner alone: records and their lock are root's, as the pinned state is. One
/// made 0755 by an older mptcpify is closed; one another user owns is refused.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    let parent = dir.parent().filter(|_| dir == Path::new(RECORD_DIR));
    for d in [Some(dir), parent].into_iter().flatten() {
        let meta = fs::metadata(d).with_context(|| format!("reading {}", d.display()))?;
        if meta.uid() != me {
            anyhow::bail!(
                "{} belongs to uid {}, not to this user: mptcpify keeps its records where only it can write; \
                 remove it (nothing of it is mptcpify's) and run again",
                d.display(),
                meta.uid()
            );
        }
        if meta.mode() & 0o077 != 0 {
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("closing {} to other users", d.display()))?;
        }
    }
    Ok(())
}

impl RecordFile {
    pub fn for_netns(inode: u64) -> Self {
        Self::at(Path::new(RECORD_DIR), inode)
    }

    /// Every record in `dir` with its namespace's inode; one that cannot be read is logged and
    /// left out (and left alone).
    pub fn all(dir: &Path) -> Vec<(u64, Record)> {
        let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
        let inodes = entries.flatten().filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("netns-")?.strip_suffix(".json")?.parse::<u64>().ok()
        });
        let mut out: Vec<(u64, Record)> = inodes
            .filter_map(|inode| match Self::at(dir, inode).load() {
                Ok(record) => Some((inode, record)),
                Err(e) => {
                    log::warn!("{e:#}");
                    None
                }
            })
            .collect();
        out.sort_by_key(|(inode, _)| *inode);
        out
    }

    pub fn at(dir: &Path, inode: u64) -> Self {
        Self { path: dir.join(format!("netns-{inode}.json")) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An absent file is an empty record; an unreadable one is an error, so that nothing is
    /// taken for someone else's and left, or for mptcpify's and removed, by mistake.
    pub fn load(&self) -> Result<Record> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not a record mptcpify wrote; remove it if nothing of it is needed", self.path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Written whole to a temporary file and renamed over: a reader sees the old or the new one.
    pub fn save(&self, record: &Record) -> Result<()> {
        if record.is_empty() {
            return match fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", self.path.display()))
                }
                _ => Ok(()),
            };
        }
        private_dir(self.path.parent().expect("a record file has a directory"))?;
        let tmp = self.path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(record)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path).with_context(|| format!("renaming {} over {}", tmp.display(), self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::paths::model::EndpointFlags;

    fn endpoint(id: u8, ip: &str) -> Endpoint {
        Endpoint {
            id,
            ip: ip.parse::<IpAddr>().unwrap(),
            ifindex: Some(3),
            flags: EndpointFlags { subflow: true, ..Default::default() },
        }
    }

    #[test]
    fn a_record_survives_a_round_trip_and_an_empty_one_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::at(dir.path(), 4026531840);
        assert_eq!(file.load().unwrap(), Record::default());
        let limits = Limits { subflows: 2, add_addr_accepted: 0 };
        let record = Record {
            label: "host".into(),
            endpoints: vec![endpoint(7, "10.0.0.1")],
            limits: Some(RaisedLimits::new(limits, Limits { subflows: 4, add_addr_accepted: 4 })),
            links: [(3, "02aabbccddee".to_string())].into(),
            netns_cookie: Some(4096),
            kept_by: Some(KeptBy::AgentPaths),
        };
        file.save(&record).unwrap();
        assert_eq!(file.load().unwrap(), record);
        file.save(&Record::default()).unwrap();
        assert!(!file.path().exists());
        std::fs::write(file.path(), "{ not json").unwrap();
        assert!(file.load().unwrap_err().to_string().contains("not a record mptcpify wrote"));
    }

    fn link(index: u32, hardware: &str) -> Link {
        Link { index, name: format!("eth{index}"), up: true, loopback: false, hardware: hardware.into() }
    }

    #[test]
    fn every_record_of_a_directory_is_found_again_with_whose_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let pod = KeptBy::Pod { name: "shop/web".into(), cgroup: "/kubepods/pod1".into() };
        let record = |kept_by| Record { endpoints: vec![endpoint(7, "10.0.0.1")], kept_by, ..Default::default() };
        RecordFile::at(dir.path(), 11).save(&record(Some(pod.clone()))).unwrap();
        RecordFile::at(dir.path(), 12).save(&record(Some(KeptBy::AgentPaths))).unwrap();
        RecordFile::at(dir.path(), 13).save(&record(None)).unwrap();
        std::fs::write(dir.path().join("netns-14.json"), "{ torn").unwrap();
        std::fs::write(dir.path().join("netns-15.json.tmp99"), "{}").unwrap();
        let found: Vec<(u64, Option<KeptBy>)> =
            RecordFile::all(dir.path()).into_iter().map(|(i, r)| (i, r.kept_by)).collect();
        assert_eq!(found, [(11, Some(pod)), (12, Some(KeptBy::AgentPaths)), (13, None)]);
        assert!(RecordFile::all(&dir.path().join("none")).is_empty());
    }

    #[test]
    fn only_an_endpoint_with_the_recorded_id_and_address_is_ours() {
        let links = [link(3, "02aabbccddee")];
        let mut record = Record::default();
        record.made_now(&endpoint(7, "10.0.0.1"), &links);
        record.made_now(&endpoint(8, "10.0.0.2"), &links);
        assert!(record.made(&endpoint(7, "10.0.0.1")));
        assert!(!record.made(&endpoint(7, "10.0.0.9")), "same id, another address: someone else's");
        assert!(!record.made(&endpoint(9, "10.0.0.1")), "same address, another id: someone else's");
        record.forget_missing(&[endpoint(8, "10.0.0.2")], &links);
        assert_eq!(record.endpoints, vec![endpoint(8, "10.0.0.2")]);
    }

    #[test]
    fn a_record_written_for_a_gone_namespace_with_the_same_inode_is_empty_for_the_next() {
        let limits = Limits { subflows: 2, add_addr_accepted: 0 };
        let raised = Record {
            limits: Some(RaisedLimits::new(limits, Limits { subflows: 4, add_addr_accepted: 3 })),
            netns_cookie: Some(7),
            ..Default::default()
        };
        assert_eq!(raised.clone().for_namespace(Some(7)), raised);
        assert!(raised.is_for(Some(7)) && !raised.is_for(Some(8)));
        assert_eq!(raised.clone().for_namespace(Some(8)), Record { netns_cookie: Some(8), ..Default::default() });
        let unknown = Record { netns_cookie: None, ..raised.clone() };
        assert_eq!(unknown.clone().for_namespace(Some(8)), Record { netns_cookie: Some(8), ..unknown.clone() });
        assert!(raised.is_for(None), "a kernel without cookies: the inode alone");
    }

    #[test]
    fn what_was_made_on_a_replaced_interface_is_forgotten() {
        let mut record = Record::default();
        record.made_now(&endpoint(7, "10.0.0.1"), &[link(3, "02aabbccddee")]);
        let recreated = [link(3, "0211223344ff")];
        record.forget_missing(&[endpoint(7, "10.0.0.1")], &recreated);
        assert!(record.is_empty() && record.links.is_empty(), "a namespace made anew with the same inode: {record:?}");
    }
}
