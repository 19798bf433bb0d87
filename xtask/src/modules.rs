//! Which kernel module files to put into the VM's initramfs, in load order, from `modules.dep`.
use std::collections::{BTreeMap, HashSet};

/// Parsed `modules.dep`: module path (relative to the module dir) -> its dependencies' paths.
#[derive(Debug, Default)]
pub struct ModuleDeps {
    deps: BTreeMap<String, Vec<String>>,
}

impl ModuleDeps {
    pub fn parse(text: &str) -> Self {
        let deps = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(m, d)| (m.trim().to_owned(), d.split_whitespace().map(str::to_owned).collect()))
            .collect();
        Self { deps }
    }

    /// The path of module `name` (`veth`, `sch_tbf`; `-` and `_` are the same), if it is a
    /// loadable module. `None` means built in or absent: nothing to load either way.
    pub fn path_of(&self, name: &str) -> Option<&str> {
        let want = name.replace('-', "_");
        self.deps.keys().map(String::as_str).find(|p| {
            let file = p.rsplit('/').next().unwrap_or(p);
            let stem = file.split(".ko").next().unwrap_or(file);
            stem.replace('-', "_") == want
        })
    }

    /// `names` and everything they need, dependencies first, each once.
    pub fn load_order(&self, names: &[&str]) -> Vec<String> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            if let Some(path) = self.path_of(name) {
                self.visit(path, &mut seen, &mut order);
            }
        }
        order
    }

    fn visit(&self, path: &str, seen: &mut HashSet<String>, order: &mut Vec<String>) {
        if !seen.insert(path.to_owned()) {
            return;
        }
        // modules.dep lists the full closure; the last entry is the deepest dependency.
        for dep in self.deps.get(path).into_iter().flatten().rev() {
            self.visit(dep, seen, order);
        }
        order.push(path.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/net/sctp/sctp.ko.xz: kernel/lib/libcrc32c.ko.xz kernel/net/udp_tunnel.ko.xz
kernel/lib/libcrc32c.ko.xz:
kernel/net/udp_tunnel.ko.xz: kernel/lib/libcrc32c.ko.xz
kernel/drivers/net/veth.ko.xz:
kernel/fs/fuse/virtiofs.ko.xz: kernel/fs/fuse/fuse.ko.xz
kernel/fs/fuse/fuse.ko.xz:
";

    #[test]
    fn dependencies_come_first_and_once() {
        let d = ModuleDeps::parse(DEP);
        assert_eq!(
            d.load_order(&["sctp", "veth", "virtiofs", "udp-tunnel"]),
            [
                "kernel/lib/libcrc32c.ko.xz",
                "kernel/net/udp_tunnel.ko.xz",
                "kernel/net/sctp/sctp.ko.xz",
                "kernel/drivers/net/veth.ko.xz",
                "kernel/fs/fuse/fuse.ko.xz",
                "kernel/fs/fuse/virtiofs.ko.xz",
            ]
        );
    }

    #[test]
    fn built_in_or_unknown_modules_are_skipped() {
        let d = ModuleDeps::parse(DEP);
        assert!(d.load_order(&["virtio_pci", "nope"]).is_empty());
        assert_eq!(d.path_of("veth"), Some("kernel/drivers/net/veth.ko.xz"));
        assert_eq!(d.path_of("vet"), None);
    }
}
