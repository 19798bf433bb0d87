//! Stock Debian cloud kernels for the VM, pinned by exact package in `xtask/kernels.pin` and
//! fetched through the machine's own Debian mirror with a private apt state (nothing under
//! /etc/apt changes). Newer Debian kernels split the image into `linux-binary-*`,
//! `linux-modules-*` and `linux-base-*` packages: all of them are unpacked into one tree.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{process::run, workspace_root};

/// The suite that holds every newer kernel Debian builds (6.16 … 7.x), for kernels named by version.
const BACKPORTS: &str = "trixie-backports";

/// One kernel the VM can boot: a line of `kernels.pin`, or a version asked for by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub name: String,
    suite: String,
    package: String,
    version: String,
}

impl Pin {
    /// The kernel's release, as `uname -r` and `lib/modules/` name it.
    pub fn release(&self) -> &str {
        self.package.strip_prefix("linux-image-").unwrap_or(&self.package)
    }

    fn line(&self) -> String {
        format!("{:<7} {:<17} {:<39} {}", self.name, self.suite, self.package, self.version)
    }

    /// What `ready` records: a tree fetched for another pin is fetched again.
    fn stamp(&self) -> String {
        format!("{}={}\n", self.package, self.version)
    }
}

fn pin_file() -> PathBuf {
    workspace_root().join("xtask/kernels.pin")
}

/// Parses `kernels.pin`: comments and blank lines aside, four words per line.
pub fn parse_pins(text: &str) -> Result<Vec<Pin>> {
    let mut pins = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let [name, suite, package, version] = w[..] else {
            bail!("kernels.pin line {}: want NAME SUITE PACKAGE VERSION, got {line:?}", n + 1);
        };
        if !package.starts_with("linux-image-") {
            bail!("kernels.pin line {}: {package} is not a linux-image-* package", n + 1);
        }
        pins.push(Pin { name: name.into(), suite: suite.into(), package: package.into(), version: version.into() });
    }
    Ok(pins)
}

pub fn pins() -> Result<Vec<Pin>> {
    let path = pin_file();
    parse_pins(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)
}

/// A pinned kernel by name (`6.12`, `6.1`, `newest`).
pub fn pinned(name: &str) -> Result<Pin> {
    pins()?.into_iter().find(|p| p.name == name).ok_or_else(|| anyhow!("no kernel named {name} in kernels.pin"))
}

pub fn dir() -> PathBuf {
    workspace_root().join("target/vm/kernels")
}

/// Directory of an unpacked kernel (`boot/vmlinuz-*`, `lib/modules/*`): a pinned name, a version
/// Debian's backports ship (`6.18.15`, `7.3`: the newest of that line), or a directory.
pub fn resolve(name_or_path: &str) -> Result<PathBuf> {
    let pin = match pins()?.into_iter().find(|p| p.name == name_or_path) {
        Some(pin) => pin,
        None if Path::new(name_or_path).is_dir() => return Ok(PathBuf::from(name_or_path)),
        // An exact version fetched before boots without the network.
        None if is_version(name_or_path) && dir().join(name_or_path).join("ready").exists() => {
            return Ok(dir().join(name_or_path));
        }
        None if is_version(name_or_path) => backports_kernel(name_or_path)?,
        None => {
            let names: Vec<String> = pins()?.into_iter().map(|p| p.name).collect();
            bail!(
                "unknown kernel {name_or_path}: give {}, a version from {BACKPORTS} (e.g. 6.18) or a directory with boot/vmlinuz-*",
                names.join(", ")
            )
        }
    };
    ensure(&pin)
}

fn is_version(s: &str) -> bool {
    s.split('.').count() >= 2 && s.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The tree of `pin`, fetched unless it is there already for exactly this package and version.
fn ensure(pin: &Pin) -> Result<PathBuf> {
    let d = dir().join(&pin.name);
    if std::fs::read_to_string(d.join("ready")).ok().as_deref() != Some(pin.stamp().as_str()) {
        fetch(pin)?;
    }
    Ok(d)
}

pub fn fetch_all() -> Result<()> {
    for pin in pins()? {
        ensure(&pin)?;
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

/// apt-get/apt-cache on a private state for one Debian suite.
struct Apt {
    state: PathBuf,
}

impl Apt {
    /// The suite's package lists, fetched once per xtask run.
    fn updated(suite: &str) -> Result<Apt> {
        let state = dir().join(format!("apt-{suite}"));
        std::fs::create_dir_all(state.join("lists/partial"))?;
        std::fs::write(
            state.join("sources.list"),
            format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} {suite} main\n", mirror()?),
        )?;
        let apt = Apt { state };
        run(apt.cmd("apt-get").arg("update"))?;
        Ok(apt)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.arg("-o")
            .arg(format!("Dir::Etc::SourceList={}", self.state.join("sources.list").display()))
            .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", self.state.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", self.state.join("cache").display()))
            .args(["-o", "APT::Sandbox::User=root", "-qq"]);
        c
    }

    fn query(&self, args: &[&str]) -> Result<String> {
        let out = self.cmd("apt-cache").args(args).output()?;
        if !out.status.success() {
            bail!("apt-cache {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The newest version of `package` the suite has.
    fn candidate(&self, package: &str) -> Result<String> {
        let text = self.query(&["madison", package])?;
        text.lines()
            .find_map(|l| l.split('|').nth(1).map(|v| v.trim().to_owned()))
            .ok_or_else(|| anyhow!("{package} is not in the suite"))
    }

    /// `package=version` and the split parts it depends on, as `.deb` files in the state's cache.
    fn download(&self, pin: &Pin) -> Result<Vec<PathBuf>> {
        let wanted = format!("{}={}", pin.package, pin.version);
        let depends = self.query(&["depends", &wanted])?;
        let mut packages = vec![pin.package.clone()];
        packages.extend(split_parts(&depends, pin.release()));
        let debs = self.state.join("debs");
        let _ = std::fs::remove_dir_all(&debs);
        std::fs::create_dir_all(&debs)?;
        let mut download = self.cmd("apt-get");
        download.current_dir(&debs).arg("download");
        for p in &packages {
            download.arg(format!("{p}={}", pin.version));
        }
        run(&mut download).with_context(|| {
            format!("{wanted} is not on the mirror any more: `cargo xtask kernels pin {}` moves the pin", pin.name)
        })?;
        Ok(std::fs::read_dir(&debs)?.flatten().map(|e| e.path()).collect())
    }
}

/// The packages a split kernel image depends on for its binary, modules and base files.
fn split_parts(depends: &str, release: &str) -> Vec<String> {
    depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| ["linux-binary-", "linux-modules-", "linux-base-"].iter().any(|pre| p.starts_with(pre)))
        .filter(|p| p.ends_with(release))
        .map(str::to_owned)
        .collect()
}

fn fetch(pin: &Pin) -> Result<()> {
    eprintln!("kernels: fetching {}={} from Debian {} ({})", pin.package, pin.version, pin.suite, pin.name);
    let debs = Apt::updated(&pin.suite)?.download(pin)?;
    let out_dir = dir().join(&pin.name);
    let _ = std::fs::remove_dir_all(&out_dir);
    for deb in &debs {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&out_dir))?;
    }
    // Merged /usr: modules may sit in usr/lib/modules.
    let lib = out_dir.join("lib");
    if !lib.join("modules").exists() && out_dir.join("usr/lib/modules").exists() {
        let _ = std::fs::remove_dir(&lib);
        std::os::unix::fs::symlink("usr/lib", &lib)?;
    }
    let release = module_version(&out_dir)?;
    place_vmlinuz(&out_dir, &release)?;
    run(Command::new("depmod").arg("-a").arg("-b").arg(&out_dir).arg(&release))?;
    std::fs::write(out_dir.join("ready"), pin.stamp())?;
    eprintln!("kernels: {} {} -> {}", pin.package, pin.version, out_dir.display());
    Ok(())
}

/// Split packages keep the image as `lib/modules/REL/vmlinuz`: the VM looks in `boot/`.
fn place_vmlinuz(tree: &Path, release: &str) -> Result<()> {
    let boot = tree.join("boot").join(format!("vmlinuz-{release}"));
    if boot.exists() {
        return Ok(());
    }
    let moddir = tree.join("lib/modules").join(release);
    let image = ["vmlinuz", "vmlinuz.unsigned", "vmlinuz.efi"]
        .iter()
        .map(|n| moddir.join(n))
        .find(|p| p.exists())
        .with_context(|| format!("no boot/vmlinuz-{release} nor {}/vmlinuz*", moddir.display()))?;
    std::fs::create_dir_all(tree.join("boot"))?;
    std::fs::copy(&image, &boot)?;
    Ok(())
}

/// A kernel of Debian's backports by version: `6.18.15` exactly, or `6.18` for its newest.
fn backports_kernel(version: &str) -> Result<Pin> {
    let apt = Apt::updated(BACKPORTS)?;
    let names = apt.query(&["pkgnames", &format!("linux-image-{version}")])?;
    let package = names
        .lines()
        .filter(|n| n.ends_with("-cloud-amd64"))
        .filter(|n| {
            let rest = &n["linux-image-".len()..];
            rest.strip_prefix(version).is_some_and(|r| r.starts_with('+') || r.starts_with('.'))
        })
        .max_by(|a, b| release_order(a, b))
        .with_context(|| format!("{BACKPORTS} has no cloud kernel {version}"))?
        .to_owned();
    let version_of_package = apt.candidate(&package)?;
    let name = package["linux-image-".len()..].split('+').next().unwrap_or(version).to_owned();
    Ok(Pin { name, suite: BACKPORTS.into(), package, version: version_of_package })
}

/// Orders `linux-image-6.18.9+…` before `linux-image-6.18.15+…` (numbers, not text).
fn release_order(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| -> Vec<u64> {
        s.trim_start_matches("linux-image-")
            .split(['+', '-'])
            .next()
            .unwrap_or("")
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    key(a).cmp(&key(b))
}

/// `cargo xtask kernels`: the pins, and where each tree is.
pub fn list() -> Result<()> {
    for pin in pins()? {
        let d = dir().join(&pin.name);
        let here = std::fs::read_to_string(d.join("ready")).ok().as_deref() == Some(pin.stamp().as_str());
        println!("{}  ({})", pin.line(), if here { "fetched" } else { "not fetched yet" });
    }
    Ok(())
}

/// `cargo xtask kernels pin [NAME]`: moves pins to what each suite's `linux-image-cloud-amd64`
/// depends on today, rewrites `kernels.pin` and fetches the new trees.
pub fn move_pins(only: Option<&str>) -> Result<()> {
    let text = std::fs::read_to_string(pin_file())?;
    let pins = parse_pins(&text)?;
    if let Some(name) = only
        && !pins.iter().any(|p| p.name == name)
    {
        bail!("no kernel named {name} in kernels.pin");
    }
    let mut moved = Vec::new();
    for pin in pins.into_iter().filter(|p| only.is_none_or(|n| n == p.name)) {
        let new = Pin { version: String::new(), ..pin.clone() }.newest_of_suite()?;
        if new == pin {
            println!("kernels: {} stays at {} {}", pin.name, pin.package, pin.version);
        } else {
            println!(
                "kernels: {} moves from {} {} to {} {}",
                pin.name, pin.package, pin.version, new.package, new.version
            );
            moved.push((pin, new));
        }
    }
    let out: String = text
        .lines()
        .map(|l| match moved.iter().find(|(old, _)| same_pin_line(l, old)) {
            Some((_, new)) => new.line() + "\n",
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(pin_file(), out)?;
    for (_, new) in &moved {
        ensure(new)?;
    }
    Ok(())
}

impl Pin {
    /// This pin moved to what its suite's `linux-image-cloud-amd64` depends on today.
    fn newest_of_suite(self) -> Result<Pin> {
        let apt = Apt::updated(&self.suite)?;
        let depends = apt.query(&["depends", "linux-image-cloud-amd64"])?;
        let package = depends
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .ok_or_else(|| anyhow!("linux-image-cloud-amd64 of {} depends on no linux-image-*", self.suite))?
            .to_owned();
        let version = apt.candidate(&package)?;
        Ok(Pin { package, version, ..self })
    }
}

fn same_pin_line(line: &str, pin: &Pin) -> bool {
    parse_pins(line).is_ok_and(|p| p.first() == Some(pin))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_file_parses_and_rejects_what_is_not_a_pin() {
        let pins = parse_pins("# c\n\n6.12 trixie linux-image-6.12.117+deb13-cloud-amd64 6.12.117-1 # x\n").unwrap();
        assert_eq!(pins.len(), 1);
        assert_eq!(pins[0].release(), "6.12.117+deb13-cloud-amd64");
        assert!(parse_pins("6.12 trixie linux-image-6.12\n").is_err());
        assert!(parse_pins("6.12 trixie linux-headers-6.12 1\n").is_err());
        assert!(parse_pins(&std::fs::read_to_string(pin_file()).unwrap()).unwrap().iter().any(|p| p.name == "newest"));
    }

    #[test]
    fn a_split_image_names_its_binary_modules_and_base() {
        let depends = "linux-image-7.3.4+deb13-cloud-amd64\n  PreDepends: linux-base\n |Depends: <dracut>\n  \
                       Depends: linux-base-7.3.4+deb13-cloud-amd64\n  Depends: linux-binary-7.3.4+deb13-cloud-amd64\n  \
                       Depends: linux-modules-7.3.4+deb13-cloud-amd64\n  Recommends: apparmor\n";
        assert_eq!(
            split_parts(depends, "7.3.4+deb13-cloud-amd64"),
            [
                "linux-base-7.3.4+deb13-cloud-amd64",
                "linux-binary-7.3.4+deb13-cloud-amd64",
                "linux-modules-7.3.4+deb13-cloud-amd64"
            ]
        );
        assert!(
            split_parts("  PreDepends: linux-base\n  Depends: initramfs-tools\n", "6.12.117+deb13-cloud-amd64")
                .is_empty()
        );
    }

    #[test]
    fn versions_order_as_numbers() {
        assert!(release_order("linux-image-6.18.9+deb13-cloud-amd64", "linux-image-6.18.15+deb13-cloud-amd64").is_lt());
        assert!(is_version("6.18") && is_version("7.3.4") && !is_version("newest") && !is_version("6."));
    }
}
