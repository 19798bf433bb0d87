//! Runs a command as root in a QEMU VM booted from a stock distribution kernel, with the host's
//! root filesystem shared read-only over virtio-fs (writable tmpfs overlays on /tmp, /var, /etc,
//! /root, /home) and the current directory kept. The host kernels here refuse fmod_ret
//! programs; a stock kernel under TCG accepts them.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{kernels, modules::ModuleDeps};

/// Modules loaded in the guest before the command: virtio-fs and overlayfs for the root, veth
/// and qdiscs for network tests, sctp for the "other protocol stays untouched" test, the socket
/// diagnostics `connections` reads (a host's kernel loads them on demand; the guest cannot).
const GUEST_MODULES: &[&str] =
    &["virtio_pci", "virtiofs", "overlay", "veth", "sch_tbf", "sch_netem", "sctp", "tcp_diag", "mptcp_diag"];

/// C virtiofsd shipped with QEMU 7.2 (qemu-system-common); the 6.12 kernel has no 9p.
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

pub struct VmOptions {
    pub kernel: PathBuf,
    pub mem: String,
    pub cpus: u32,
    pub timeout: Duration,
    /// Environment of the command, besides a clean PATH/HOME.
    pub env: Vec<(String, String)>,
    /// Host directories shared writable (e.g. for results).
    pub rw_dirs: Vec<PathBuf>,
}

impl VmOptions {
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            mem: "1G".into(),
            cpus: 2,
            timeout: Duration::from_secs(900),
            env: Vec::new(),
            rw_dirs: Vec::new(),
        }
    }
}

/// What the guest printed and its command's exit status.
pub struct VmOutput {
    pub status: i32,
    pub output: String,
}

/// Single-quotes `s` for the guest's shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The guest's `/init`: mounts, modules, the host root, then the command in a chroot.
const INIT: &str = r#"#!/bin/busybox sh
export PATH=/bin HOME=/root
fin() { sync; echo 0 > /proc/sys/kernel/printk; echo "$1" > /dev/ttyS1; poweroff -f; }
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/printk
for m in $(cat /vm/modules); do insmod /vm/mod/$m || echo "vm-init: insmod $m failed"; done
N=/newroot
mount -t virtiofs -o ro hostroot $N || { echo "vm-init: mounting the host root failed"; fin 125; }
mount -t tmpfs -o mode=755 tmpfs $N/run; mkdir -p $N/run/netns $N/run/vm
mount -t tmpfs tmpfs /ovl
for d in /tmp /var /etc /root /home /opt /srv; do
  [ -d $N$d ] || continue
  mkdir -p /ovl$d/u /ovl$d/w
  mount -t overlay overlay -o lowerdir=$N$d,upperdir=/ovl$d/u,workdir=/ovl$d/w $N$d || mount -t tmpfs tmpfs $N$d
done
chmod 1777 $N/tmp
i=0; for d in $(cat /vm/rw); do mount -t virtiofs rw$i $N$d || { echo "vm-init: rw share $d failed"; fin 125; }; i=$((i+1)); done
mount -t proc proc $N/proc; mount -t sysfs sysfs $N/sys; mount -t devtmpfs devtmpfs $N/dev
mkdir -p $N/dev/pts $N/dev/shm; mount -t devpts devpts $N/dev/pts; mount -t tmpfs tmpfs $N/dev/shm
mount -t bpf bpf $N/sys/fs/bpf; mount -t cgroup2 cgroup2 $N/sys/fs/cgroup
mount -t tracefs tracefs $N/sys/kernel/tracing 2>/dev/null
ip link set lo up
cp /vm/cmd.sh $N/run/vm/cmd.sh
chroot $N /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root USER=root LOGNAME=root TERM=dumb LANG=C.UTF-8 /bin/sh /run/vm/cmd.sh < /dev/null
fin $?
"#;

fn tool(name: &str, package: &str) -> Result<PathBuf> {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{name} is missing: apt-get install {package} (or run `cargo xtask setup`)")
}

fn build_initramfs(work: &Path, kernel_dir: &Path, cwd: &Path, argv: &[String], opts: &VmOptions) -> Result<PathBuf> {
    let root = work.join("root");
    for d in ["bin", "proc", "sys", "dev", "tmp", "newroot", "ovl", "vm/mod", "root", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let busybox = tool("busybox", "busybox-static")?;
    let file_out = Command::new("file").arg("-bL").arg(&busybox).output();
    if let Ok(o) = file_out
        && String::from_utf8_lossy(&o.stdout).contains("dynamically linked")
    {
        bail!("{} is not static: apt-get install busybox-static", busybox.display());
    }
    std::fs::copy(&busybox, root.join("bin/busybox"))?;
    let applets = Command::new(&busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }

    let version = kernels::module_version(kernel_dir)?;
    let moddir = kernel_dir.join("lib/modules").join(&version);
    let deps =
        ModuleDeps::parse(&std::fs::read_to_string(moddir.join("modules.dep")).with_context(|| {
            format!("{}/modules.dep missing (run depmod, or `cargo xtask setup`)", moddir.display())
        })?);
    let mut names = Vec::new();
    for rel in deps.load_order(GUEST_MODULES) {
        let file = rel.rsplit('/').next().unwrap_or(&rel);
        let name = format!("{}.ko", file.split(".ko").next().unwrap_or(file));
        let src = moddir.join(&rel);
        let data = if rel.ends_with(".xz") {
            Command::new("xz").arg("-dc").arg(&src).output()?.stdout
        } else if rel.ends_with(".zst") {
            Command::new("zstd").arg("-dcq").arg(&src).output()?.stdout
        } else {
            std::fs::read(&src)?
        };
        if data.is_empty() {
            bail!("could not read module {}", src.display());
        }
        std::fs::write(root.join("vm/mod").join(&name), data)?;
        names.push(name);
    }
    std::fs::write(root.join("vm/modules"), names.join("\n"))?;
    let rw: Vec<String> = opts.rw_dirs.iter().map(|d| d.display().to_string()).collect();
    std::fs::write(root.join("vm/rw"), rw.join("\n"))?;

    let mut cmd = format!("cd {} || exit 125\n", shell_quote(&cwd.display().to_string()));
    for (k, v) in &opts.env {
        cmd.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    let words: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
    cmd.push_str(&format!("exec {}\n", words.join(" ")));
    std::fs::write(root.join("vm/cmd.sh"), cmd)?;
    std::fs::write(root.join("init"), INIT)?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::set_permissions(root.join("init"), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;

    let initrd = work.join("initrd.cpio.gz");
    let out = std::fs::File::create(&initrd)?;
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1")
        .current_dir(&root)
        .stdout(out)
        .status()?;
    if !status.success() {
        bail!("packing the initramfs failed (cpio, gzip)");
    }
    Ok(initrd)
}

struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_virtiofsd(work: &Path, dir: &Path, tag: &str, daemons: &mut Daemons) -> Result<Vec<String>> {
    let virtiofsd = Path::new(VIRTIOFSD);
    if !virtiofsd.exists() {
        bail!("{VIRTIOFSD} is missing: apt-get install qemu-system-x86 (QEMU 7.2 ships it)");
    }
    let sock = work.join(format!("{tag}.sock"));
    let log = std::fs::File::create(work.join(format!("{tag}.log")))?;
    let child = Command::new(virtiofsd)
        .arg(format!("--socket-path={}", sock.display()))
        .arg("-o")
        .arg(format!("source={}", dir.display()))
        .args(["-o", "cache=always", "-o", "sandbox=chroot", "-o", "log_level=err"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting virtiofsd")?;
    daemons.0.push(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(work.join(format!("{tag}.log"))).unwrap_or_default();
            bail!("virtiofsd for {} did not start: {log}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(vec![
        "-chardev".into(),
        format!("socket,id={tag},path={}", sock.display()),
        "-device".into(),
        format!("vhost-user-fs-pci,chardev={tag},tag={tag}"),
    ])
}

/// The guest ended without reporting its command's exit status: a kernel panic or a failed
/// boot, not a failed command.
#[derive(Debug, thiserror::Error)]
#[error("the VM reported no exit status (qemu {qemu}); kernel panic or boot failure? see the console output above")]
pub struct VmCrashed {
    pub qemu: std::process::ExitStatus,
}

/// [`run_in_vm`], booted once more when the guest kernel crashed: the emulated kernel (TCG) has
/// oopsed while patching its own code (an int3 at a site being patched: in kmem_cache_free as
/// systemd started, in update_socket_protocol as a trampoline was detached). A crashed VM, not a
/// failed command; said loudly, and a command's own failure is never retried.
pub fn run_in_vm_once_more_if_crashed(opts: &VmOptions, cwd: &Path, argv: &[String], what: &str) -> Result<VmOutput> {
    match run_in_vm(opts, cwd, argv) {
        Err(e) if e.is::<VmCrashed>() => {
            eprintln!("xtask: {what}: the VM crashed ({e}); running it once more in a fresh VM");
            run_in_vm(opts, cwd, argv)
        }
        other => other,
    }
}

/// Boots `opts.kernel`, runs `argv` in `cwd` as root, and returns its status and output (also
/// streamed to stdout as it comes). A VM that does not come up or report a status is an error.
pub fn run_in_vm(opts: &VmOptions, cwd: &Path, argv: &[String]) -> Result<VmOutput> {
    let kernel_dir = &opts.kernel;
    let vmlinuz = std::fs::read_dir(kernel_dir.join("boot"))
        .with_context(|| format!("{} has no boot/", kernel_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .ok_or_else(|| anyhow!("no boot/vmlinuz-* in {}", kernel_dir.display()))?;
    let qemu = tool("qemu-system-x86_64", "qemu-system-x86")?;
    tool("cpio", "cpio")?;

    let work = tempfile::Builder::new().prefix("mptcpify-vm-").tempdir()?;
    let initrd = build_initramfs(work.path(), kernel_dir, cwd, argv, opts)?;
    let mut daemons = Daemons(Vec::new());
    let mut fs_args = start_virtiofsd(work.path(), Path::new("/"), "hostroot", &mut daemons)?;
    for (i, d) in opts.rw_dirs.iter().enumerate() {
        fs_args.extend(start_virtiofsd(work.path(), d, &format!("rw{i}"), &mut daemons)?);
    }
    let rc_file = work.path().join("rc");
    std::fs::write(&rc_file, "")?;
    let accel = std::env::var("MPTCPIFY_VM_ACCEL").unwrap_or_else(|_| "tcg".into());
    let cpu = if accel == "kvm" { "host" } else { "max" };
    let mut qemu_cmd = Command::new(qemu);
    qemu_cmd
        .args(["-M", "q35", "-accel", &accel, "-cpu", cpu, "-m", &opts.mem])
        .args(["-smp", &opts.cpus.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(["-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con"])
        .arg("-serial")
        .arg(format!("file:{}", rc_file.display()))
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 oops=panic quiet loglevel=1"])
        .args(&fs_args)
        .args(["-object", &format!("memory-backend-memfd,id=mem,size={},share=on", opts.mem)])
        .args(["-machine", "memory-backend=mem"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = qemu_cmd.spawn().context("starting qemu")?;
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut out = std::io::stdout();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let line = line.trim_end_matches('\r');
            let _ = writeln!(out, "{line}");
            all.push_str(line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + opts.timeout;
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the VM did not finish within {:?}; killed", opts.timeout);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = reader.join().unwrap_or_default();
    drop(daemons);
    let rc: String = std::fs::read_to_string(&rc_file)?.chars().filter(char::is_ascii_digit).collect();
    let status = rc.parse::<i32>().map_err(|_| VmCrashed { qemu: exit })?;
    if status == 125 && output.contains("vm-init:") {
        bail!("the VM failed to set up its root filesystem (see vm-init messages above)");
    }
    Ok(VmOutput { status, output })
}

/// `cargo xtask vm`: run a command in the VM, exit with its status.
pub fn cli(kernel: &str, argv: &[String], rw: &[PathBuf]) -> Result<i32> {
    if argv.is_empty() {
        bail!("usage: cargo xtask vm [--kernel 6.12|6.1|newest|VERSION|PATH] -- CMD [ARGS...]");
    }
    let mut opts = VmOptions::new(kernels::resolve(kernel)?);
    opts.rw_dirs = rw.to_vec();
    let cwd = std::env::current_dir()?;
    Ok(run_in_vm(&opts, &cwd, argv)?.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let out =
            Command::new("sh").arg("-c").arg(format!("printf %s {}", shell_quote("x'y \"$HOME\" z"))).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "x'y \"$HOME\" z");
    }
}
