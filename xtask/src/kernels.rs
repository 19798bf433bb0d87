//! Stock Debian cloud kernels for the VM, fetched through the machine's own Debian mirror with a
//! private apt state (nothing under /etc/apt changes): trixie's 6.12 has the hook, bookworm's
//! 6.1 does not (the negative case).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{process::run, workspace_root};

/// A kernel the VM can boot, by the name used on the command line.
pub struct Kernel {
    pub name: &'static str,
    suite: &'static str,
}

pub const KERNELS: &[Kernel] = &[Kernel { name: "6.12", suite: "trixie" }, Kernel { name: "6.1", suite: "bookworm" }];

pub fn dir() -> PathBuf {
    workspace_root().join("target/vm/kernels")
}

/// Directory of an unpacked kernel (`boot/vmlinuz-*`, `lib/modules/*`), by name or path.
pub fn resolve(name_or_path: &str) -> Result<PathBuf> {
    if let Some(k) = KERNELS.iter().find(|k| k.name == name_or_path) {
        let d = dir().join(k.name);
        if !d.join("ready").exists() {
            fetch(k)?;
        }
        return Ok(d);
    }
    let p = PathBuf::from(name_or_path);
    if p.is_dir() {
        Ok(p)
    } else {
        bail!("unknown kernel {name_or_path}: give 6.12, 6.1 or a directory with boot/vmlinuz-*")
    }
}

pub fn fetch_all() -> Result<()> {
    for k in KERNELS {
        if !dir().join(k.name).join("ready").exists() {
            fetch(k)?;
        }
    }
    Ok(())
}

/// The Debian mirror the host's apt uses.
pub fn mirror() -> Result<String> {
    let mut texts = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".sources") {
                texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    for t in &texts {
        if let Some(uri) = t.lines().find_map(|l| l.strip_prefix("URIs:")) {
            let uri = uri.split_whitespace().next().unwrap_or("");
            if uri.contains("debian") && !uri.contains("security") {
                return Ok(uri.to_owned());
            }
        }
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    list.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&"deb") && w.len() > 2 && !w[1].starts_with('['))
        .map(|w| w[1].to_owned())
        .ok_or_else(|| anyhow!("no Debian mirror in /etc/apt/sources.list{{,.d}}"))
}

fn fetch(k: &Kernel) -> Result<()> {
    let base = dir();
    let state = base.join(format!("apt-{}", k.suite));
    std::fs::create_dir_all(state.join("lists/partial"))?;
    let sources = state.join("sources.list");
    std::fs::write(
        &sources,
        format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} {} main\n", mirror()?, k.suite),
    )?;
    let opts = |c: &mut Command| {
        c.arg("-o")
            .arg(format!("Dir::Etc::SourceList={}", sources.display()))
            .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", state.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", state.join("cache").display()))
            .args(["-o", "APT::Sandbox::User=root", "-qq"]);
    };
    eprintln!("kernels: fetching Debian {}'s cloud kernel ({})", k.suite, k.name);
    let mut update = Command::new("apt-get");
    opts(&mut update);
    run(update.arg("update"))?;
    let mut depends = Command::new("apt-cache");
    opts(&mut depends);
    let out = depends.args(["depends", "linux-image-cloud-amd64"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pkg = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: linux-image-6"))
        .map(|rest| format!("linux-image-6{}", rest.split_whitespace().next().unwrap_or("")))
        .ok_or_else(|| anyhow!("no linux-image-6.* dependency of linux-image-cloud-amd64 in {}", k.suite))?;
    let debs = state.join("debs");
    std::fs::create_dir_all(&debs)?;
    let mut download = Command::new("apt-get");
    opts(&mut download);
    run(download.current_dir(&debs).args(["download", &pkg]))?;
    let deb = std::fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_"))))
        .with_context(|| format!("downloaded {pkg} not found in {}", debs.display()))?;
    let out_dir = base.join(k.name);
    let _ = std::fs::remove_dir_all(&out_dir);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&out_dir))?;
    // Merged /usr: modules may sit in usr/lib/modules.
    let lib = out_dir.join("lib");
    if !lib.join("modules").exists() && out_dir.join("usr/lib/modules").exists() {
        let _ = std::fs::remove_dir(&lib);
        std::os::unix::fs::symlink("usr/lib", &lib)?;
    }
    let version = module_version(&out_dir)?;
    run(Command::new("depmod").arg("-a").arg("-b").arg(&out_dir).arg(&version))?;
    std::fs::write(out_dir.join("ready"), format!("{pkg}\n"))?;
    eprintln!("kernels: {pkg} -> {}", out_dir.display());
    Ok(())
}

pub fn module_version(kernel_dir: &Path) -> Result<String> {
    let modules = kernel_dir.join("lib/modules");
    std::fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("no module tree in {}", modules.display()))
}
