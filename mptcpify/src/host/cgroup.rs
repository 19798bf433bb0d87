//! Cgroup v2 paths to ids and back. A cgroup's id, as the kernel program sees it with
//! `bpf_get_current_cgroup_id`, is the inode number of its directory.
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use mptcpify_common::MAX_CGROUP_DEPTH;

/// A cgroup named by the user, resolved on the live tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// Absolute path below the cgroup2 mount.
    pub path: PathBuf,
    /// Path relative to the cgroup2 root, as `/proc/PID/cgroup` shows it (`/` for the root).
    pub relative: String,
    pub id: u64,
}

/// Refuses a cgroup at `level` (the root is 0) that the kernel program cannot see: it looks at
/// the first [`MAX_CGROUP_DEPTH`] levels of a caller's ancestry, so a rule deeper down would
/// never match.
pub fn reachable_level(level: usize) -> Result<(), String> {
    if level < MAX_CGROUP_DEPTH as usize {
        return Ok(());
    }
    Err(format!(
        "the cgroup is {level} levels below the cgroup2 root; the kernel program looks at the first \
         {MAX_CGROUP_DEPTH} levels (0 is the root), so a rule there would never match: select an ancestor"
    ))
}

/// Resolves `arg` (absolute, or relative to `root`) to a cgroup under the cgroup2 mount `root`.
pub fn resolve(root: &Path, arg: &str) -> Result<Cgroup> {
    if arg.is_empty() {
        bail!("empty cgroup path; give a path such as system.slice/nginx.service");
    }
    let given = Path::new(arg);
    let joined = if given.is_absolute() { given.to_path_buf() } else { root.join(given) };
    // Lexical normalisation first, so `..` cannot climb out of the hierarchy unnoticed.
    let mut path = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                path.pop();
            }
            Component::CurDir => {}
            other => path.push(other),
        }
    }
    let Ok(relative) = path.strip_prefix(root) else {
        bail!(
            "{arg} is not on the cgroup2 hierarchy, which is mounted at {}; \
             give a path below it or relative to it",
            root.display()
        );
    };
    reachable_level(relative.components().count()).map_err(anyhow::Error::msg)?;
    let relative = format!("/{}", relative.display());
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("cgroup {arg} not found: {} does not exist (the cgroup2 root is {})", path.display(), root.display())
        }
        Err(e) => bail!("cannot read cgroup {}: {e}", path.display()),
    };
    if !meta.is_dir() || !path.join("cgroup.procs").exists() {
        bail!("{} is not a cgroup2 directory (the cgroup2 root is {})", path.display(), root.display());
    }
    Ok(Cgroup { path, relative, id: meta.ino() })
}

/// Every cgroup directory under `root` (itself included) with its id, depth first, read lazily.
/// The cgroup2 path (`0::` line) of `/proc/PID/cgroup` text, relative to the cgroup2 root.
pub fn unified_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(str::trim_end).filter(|p| p.starts_with('/'))
}

/// This process's cgroup, relative to the cgroup2 root.
pub fn own() -> Result<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    unified_path(&text).map(str::to_owned).ok_or_else(|| anyhow::anyhow!("no cgroup2 line in /proc/self/cgroup"))
}

pub fn walk(root: &Path) -> impl Iterator<Item = (u64, PathBuf)> {
    let mut stack = vec![root.to_path_buf()];
    std::iter::from_fn(move || {
        while let Some(dir) = stack.pop() {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                stack.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
            }
            if let Ok(m) = std::fs::metadata(&dir) {
                return Some((m.ino(), dir));
            }
        }
        None
    })
}

/// Every cgroup under `root`, by id: one walk of the tree for any number of lookups.
pub fn index(root: &Path) -> std::collections::HashMap<u64, PathBuf> {
    walk(root).collect()
}

/// Finds the path of cgroup `id` under `root`; `None` if it is gone.
pub fn find_by_id(root: &Path, id: u64) -> Option<PathBuf> {
    walk(root).find(|(ino, _)| *ino == id).map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroup2 tree: directories with a `cgroup.procs` file, like the real one.
    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for d in ["system.slice/nginx.service", "user.slice", "notacgroup"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for d in ["", "system.slice", "system.slice/nginx.service", "user.slice"] {
            std::fs::write(t.path().join(d).join("cgroup.procs"), "").unwrap();
        }
        std::fs::write(t.path().join("afile"), "").unwrap();
        t
    }

    #[test]
    fn relative_and_absolute_paths_resolve_to_the_same_inode() {
        let t = tree();
        let rel = resolve(t.path(), "system.slice/nginx.service").unwrap();
        let abs = resolve(t.path(), t.path().join("system.slice/nginx.service").to_str().unwrap()).unwrap();
        assert_eq!(rel, abs);
        assert_eq!(rel.relative, "/system.slice/nginx.service");
        let ino = std::fs::metadata(t.path().join("system.slice/nginx.service")).unwrap().ino();
        assert_eq!(rel.id, ino);
        assert_eq!(find_by_id(t.path(), ino), Some(rel.path.clone()));
        assert_eq!(index(t.path()).get(&ino), Some(&rel.path));
    }

    #[test]
    fn the_root_itself_resolves() {
        let t = tree();
        let root = resolve(t.path(), "/").err();
        // "/" is absolute and outside a temp root; "." is the root.
        assert!(root.is_some());
        assert_eq!(resolve(t.path(), ".").unwrap().relative, "/");
    }

    #[test]
    fn missing_cgroup_names_the_root() {
        let t = tree();
        let e = resolve(t.path(), "system.slice/nope.service").unwrap_err().to_string();
        assert!(e.contains("not found"), "{e}");
        assert!(e.contains(&t.path().display().to_string()), "{e}");
    }

    #[test]
    fn paths_outside_the_hierarchy_are_refused() {
        let t = tree();
        let e = resolve(t.path(), "../..").unwrap_err().to_string();
        assert!(e.contains("not on the cgroup2 hierarchy"), "{e}");
        let e = resolve(t.path(), "/etc").unwrap_err().to_string();
        assert!(e.contains("not on the cgroup2 hierarchy"), "{e}");
        let e = resolve(t.path(), "user.slice/../../x").unwrap_err().to_string();
        assert!(e.contains("not on the cgroup2 hierarchy"), "{e}");
    }

    #[test]
    fn non_cgroup_entries_are_refused() {
        let t = tree();
        for arg in ["afile", "notacgroup"] {
            let e = resolve(t.path(), arg).unwrap_err().to_string();
            assert!(e.contains("not a cgroup2 directory"), "{arg}: {e}");
        }
        assert!(resolve(t.path(), "").is_err());
    }

    #[test]
    fn cgroups_deeper_than_the_programs_walk_are_refused() {
        let t = tree();
        let deepest_seen: String = (1..32).map(|i| format!("d{i}")).collect::<Vec<_>>().join("/");
        let too_deep = format!("{deepest_seen}/d32");
        for rel in [&deepest_seen, &too_deep] {
            let p = t.path().join(rel);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("cgroup.procs"), "").unwrap();
        }
        assert!(resolve(t.path(), &deepest_seen).is_ok(), "level 31 is within the walk");
        let e = resolve(t.path(), &too_deep).unwrap_err().to_string();
        assert!(e.contains("32 levels below") && e.contains("never match"), "{e}");
    }

    #[test]
    fn removed_cgroup_is_not_found_by_id() {
        let t = tree();
        let c = resolve(t.path(), "user.slice").unwrap();
        std::fs::remove_dir_all(&c.path).unwrap();
        assert_eq!(find_by_id(t.path(), c.id), None);
    }
}
