//! `mptcpify run`: what `mptcpize run` does, without LD_PRELOAD. CMD starts in a fresh cgroup
//! that is enabled before it exists, so CMD and every child (static binaries, Go) get MPTCP.
//! Where systemd runs, that cgroup is a transient scope in the caller's slice (what
//! `systemd-run --scope` makes), so the slice's resource limits still hold; elsewhere it is
//! `mptcpify/run-PID` below the cgroup2 root.
//!
//! The child is `mptcpify __exec`: it joins the cgroup, drops to the target user and execs CMD,
//! so no `pre_exec` hook (and no `unsafe`) is needed.
use std::{
    ffi::CString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::{Gid, Pid, Uid, User},
};
use tokio::signal::unix::{SignalKind, signal};

use super::rules::add_resolved;
use crate::{
    bpf::loader::LogLevel,
    host::{
        cgroup, preconditions,
        resolve::Target,
        systemd,
        users::{UidSpec, system_users, uid_of},
    },
    state::{
        maps::State,
        origin::{OriginKind, RuleOrigin},
        pins::Lock,
        rules::{Action, Key, RuleStore as _},
    },
};

/// Who CMD runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub shell: PathBuf,
}

impl Credentials {
    /// What a login gives the user: CMD must not find root's `HOME` (and write root-owned
    /// files there) when it runs as someone else.
    fn environment(&self) -> [(&'static str, std::ffi::OsString); 4] {
        [
            ("HOME", self.home.clone().into_os_string()),
            ("USER", self.name.clone().into()),
            ("LOGNAME", self.name.clone().into()),
            ("SHELL", self.shell.clone().into_os_string()),
        ]
    }
}

fn credentials_of(user: User) -> Result<Credentials> {
    let name = CString::new(user.name.clone())?;
    let groups = nix::unistd::getgrouplist(&name, user.gid)
        .with_context(|| format!("reading the groups of {}", user.name))?
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    Ok(Credentials {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups,
        home: user.dir,
        shell: user.shell,
    })
}

/// `--user`, else the user who ran sudo (`SUDO_UID`), else the caller itself.
pub fn credentials(user: Option<&str>, sudo_uid: Option<&str>) -> Result<Credentials> {
    let found = match (user, sudo_uid) {
        (Some(spec), _) => {
            let uid = uid_of(&UidSpec::parse(spec), &system_users).map_err(|e| anyhow!(e))?;
            User::from_uid(Uid::from_raw(uid))?.ok_or_else(|| anyhow!("no user with uid {uid}"))?
        }
        (None, Some(sudo_uid)) => {
            let uid: u32 = sudo_uid.parse().with_context(|| format!("SUDO_UID={sudo_uid:?} is not a uid"))?;
            User::from_uid(Uid::from_raw(uid))?
                .ok_or_else(|| anyhow!("SUDO_UID={uid} is not in the user database; give --user"))?
        }
        (None, None) => User::from_uid(Uid::effective())?.ok_or_else(|| anyhow!("the caller has no user entry"))?,
    };
    credentials_of(found)
}

/// Who made a run's cgroup.
enum Made {
    /// systemd, as a transient scope, which it removes once empty. This process is in it (a
    /// scope needs a process to exist) until CMD is, then returns to `caller` (`None`: done),
    /// or to the cgroup2 `root` if that is gone.
    Scope { caller: Option<PathBuf>, root: PathBuf },
    /// `run`, below the cgroup2 root; it removes it.
    Run,
}

/// The cgroup and rule of one `run`, removed on drop whatever happened.
struct RunCgroup {
    cgroup: cgroup::Cgroup,
    made: Made,
}

impl RunCgroup {
    /// Where systemd runs, a scope in the caller's slice; elsewhere, or if systemd refuses, a
    /// cgroup of mptcpify's own.
    async fn make(root: &Path) -> Result<Self> {
        if systemd::is_running() {
            match Self::scope(root).await {
                Ok(made) => return Ok(made),
                Err(e) => log::warn!("{e:#}; CMD runs in a cgroup of mptcpify's own instead"),
            }
        }
        let name = format!("{RUN_CGROUP_PREFIX}{}", std::process::id());
        let path = root.join(RUN_PARENT).join(&name);
        std::fs::create_dir_all(path.parent().expect("has a parent"))
            .with_context(|| format!("creating {}", root.join(RUN_PARENT).display()))?;
        std::fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        match cgroup::resolve(root, &format!("{RUN_PARENT}/{name}")) {
            Ok(cgroup) => Ok(Self { cgroup, made: Made::Run }),
            Err(e) => {
                let _ = std::fs::remove_dir(&path);
                Err(e)
            }
        }
    }

    async fn scope(root: &Path) -> Result<Self> {
        let caller = cgroup::own()?;
        let pid = std::process::id();
        let name = format!("{RUN_SCOPE_PREFIX}{pid}.scope");
        systemd::start_scope(&name, &systemd::slice_of(&caller), pid, "mptcpify run").await?;
        let mut made = Self {
            cgroup: cgroup::Cgroup { path: PathBuf::new(), relative: String::new(), id: 0 },
            made: Made::Scope { caller: Some(root.join(caller.trim_start_matches('/'))), root: root.to_path_buf() },
        };
        // systemd's job moves this process into the scope.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let inside = loop {
            let now = cgroup::own()?;
            if now.ends_with(&format!("/{name}")) {
                break now;
            }
            if std::time::Instant::now() > deadline {
                bail!("systemd did not move mptcpify run into {name}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        made.cgroup = cgroup::resolve(root, inside.trim_start_matches('/'))?;
        Ok(made)
    }

    /// Leaves a scope for the caller's cgroup (the root's if that is gone) once CMD is in it.
    fn leave(&mut self) {
        let Made::Scope { caller, root } = &mut self.made else { return };
        let Some(caller) = caller.take() else { return };
        if std::fs::write(caller.join("cgroup.procs"), "0").is_err() {
            log::warn!("could not return to {}; moving to the cgroup2 root", caller.display());
            let _ = std::fs::write(root.join("cgroup.procs"), "0");
        }
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        self.leave();
        if self.cgroup.id != 0
            && let Ok(lock) = Lock::take()
        {
            let _ = State::edit(&lock, |st| st.remove(&Key::Cgroup(self.cgroup.id)));
        }
        if let Made::Run = self.made {
            let _ = std::fs::remove_dir(&self.cgroup.path);
        }
    }
}

/// Forwards the signals a service manager or a user sends `run` to CMD and every process of the
/// run's cgroup, as a terminal delivers to a whole group, and never to a PID that was already
/// reaped: CMD's own only until `reaped`, the others because a PID listed in the cgroup is a
/// member. Signals a terminal sends to the foreground group reach them by themselves, so SIGINT
/// and SIGQUIT are forwarded only without one. All are caught, so `run` outlives CMD and cleans
/// up.
fn forward_signals(cgroup: &Path, child: Pid, reaped: Arc<AtomicBool>) -> Result<()> {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
    for (kind, sig) in [
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::hangup(), Signal::SIGHUP),
        (SignalKind::user_defined1(), Signal::SIGUSR1),
        (SignalKind::user_defined2(), Signal::SIGUSR2),
        (SignalKind::interrupt(), Signal::SIGINT),
        (SignalKind::quit(), Signal::SIGQUIT),
    ] {
        let forward = !(tty && matches!(sig, Signal::SIGINT | Signal::SIGQUIT));
        let mut stream = signal(kind)?;
        let procs = cgroup.join("cgroup.procs");
        let reaped = reaped.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if forward {
                    let child = (!reaped.load(Ordering::Relaxed)).then_some(child);
                    signal_members(&procs, child, sig);
                }
            }
        });
    }
    Ok(())
}

/// Signals `child` (still unreaped; it may not have joined the cgroup yet) and every member of
/// the cgroup, each once.
fn signal_members(procs: &Path, child: Option<Pid>, sig: Signal) {
    let members = std::fs::read_to_string(procs).unwrap_or_default();
    let mut pids: Vec<Pid> = members.lines().filter_map(|l| l.trim().parse().ok()).map(Pid::from_raw).collect();
    pids.extend(child.filter(|c| !pids.contains(c)));
    for pid in pids {
        let _ = kill(pid, sig);
    }
}

/// The name of the cgroup a `run` makes: `run-` and its PID, below [`RUN_PARENT`].
const RUN_CGROUP_PREFIX: &str = "run-";
const RUN_PARENT: &str = "mptcpify";
/// The scope systemd makes for a `run`: `mptcpify-run-` + its PID + `.scope`.
const RUN_SCOPE_PREFIX: &str = "mptcpify-run-";

/// The PID of the `run` that made a cgroup of this name.
fn run_pid(name: &str) -> Option<u32> {
    let pid = match name.strip_prefix(RUN_SCOPE_PREFIX) {
        Some(scope) => scope.strip_suffix(".scope")?,
        None => name.strip_prefix(RUN_CGROUP_PREFIX)?,
    };
    pid.parse().ok()
}

/// Whether processes are left in the cgroup (`populated 1` in `cgroup.events`).
fn populated(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("cgroup.events")).is_ok_and(|s| s.contains("populated 1"))
}

/// Whether a `run` cgroup was left behind: its `run` is gone (killed before it could clean up)
/// and no process is left in it. A PID taken again by another process keeps it (the safe side).
pub fn abandoned(cgroup: &Path) -> bool {
    let pid = cgroup.file_name().and_then(|n| run_pid(n.to_str()?));
    pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) && !populated(cgroup)
}

/// The cgroup rules of runs that are over without having cleaned up (killed, their command
/// ended since): their cgroup is gone, or abandoned. Read-only, so a caller can look cheaply
/// before it takes the lock.
pub fn leftovers(st: &State, root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for (key, _) in st.entries()? {
        let Key::Cgroup(id) = key else { continue };
        let Some(origin) = st.origin(id).filter(|o| o.kind == OriginKind::Run) else { continue };
        let path = root.join(origin.text.trim_start_matches('/'));
        if !path.exists() || abandoned(&path) {
            found.push((id, path));
        }
    }
    Ok(found)
}

/// Removes what [`leftovers`] found: each rule, and its cgroup if still there (empty).
pub fn remove_leftovers(st: &mut State, found: &[(u64, PathBuf)]) -> Result<()> {
    for (id, path) in found {
        st.remove(&Key::Cgroup(*id))?;
        let _ = std::fs::remove_dir(path);
    }
    Ok(())
}

/// Waits until no process is left in the cgroup (`populated 0` in `cgroup.events`), or it is
/// gone (systemd removes an empty scope at once).
async fn wait_empty(cgroup: &Path) -> Result<()> {
    let events = cgroup.join("cgroup.events");
    let populated = || populated(cgroup);
    let inotify = inotify::Inotify::init().context("inotify")?;
    match inotify.watches().add(&events, inotify::WatchMask::MODIFY) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other.context("watching cgroup.events")?,
    };
    let mut stream = inotify.into_event_stream([0u8; 256])?;
    use futures::StreamExt as _;
    while populated() {
        stream.next().await;
    }
    Ok(())
}

/// Exit status a shell would report for the child.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

pub async fn run(user: Option<&str>, command: &[String]) -> Result<i32> {
    let mounts = preconditions::require_state_access()?;
    let creds = credentials(user, std::env::var("SUDO_UID").ok().as_deref())?;
    let root = mounts.cgroup2_root()?;
    let mut guard = RunCgroup::make(&root).await?;
    let cg = guard.cgroup.clone();
    let target = Target {
        key: Key::Cgroup(cg.id),
        origin: Some(RuleOrigin::new(OriginKind::Run, &cg.relative)?),
        label: format!("cgroup {}", cg.relative),
    };
    add_resolved(&[target], Action::Enable, LogLevel::Off)?;
    if let Some(w) = preconditions::mptcp_warning() {
        eprintln!("{w}");
    }

    let exe = std::env::current_exe().context("locating the mptcpify binary")?;
    let groups: Vec<String> = creds.groups.iter().map(u32::to_string).collect();
    let mut child = tokio::process::Command::new(exe)
        .arg("__exec")
        .arg(cg.path.join("cgroup.procs"))
        .arg(creds.uid.to_string())
        .arg(creds.gid.to_string())
        .arg(format!("--groups={}", groups.join(",")))
        .arg("--")
        .args(command)
        .envs(creds.environment())
        .spawn()
        .context("starting the command")?;
    // CMD is in the scope now, which keeps it: this process need not stay.
    guard.leave();
    let pid = Pid::from_raw(child.id().ok_or_else(|| anyhow!("child vanished"))? as i32);
    let reaped = Arc::new(AtomicBool::new(false));
    forward_signals(&cg.path, pid, reaped.clone())?;
    let status = child.wait().await?;
    // No await since wait() reaped it, so no forwarder ran in between (one thread).
    reaped.store(true, Ordering::Relaxed);
    wait_empty(&cg.path).await?;
    drop(guard);
    Ok(exit_code(status))
}

/// `__exec`: runs in the child. Join the cgroup, drop privileges, become CMD.
pub fn exec(cgroup_procs: &Path, uid: u32, gid: u32, groups: &[u32], command: &[String]) -> Result<i32> {
    std::fs::write(cgroup_procs, "0").with_context(|| format!("joining {}", cgroup_procs.display()))?;
    let groups: Vec<Gid> = groups.iter().map(|&g| Gid::from_raw(g)).collect();
    nix::unistd::setgroups(&groups).context("setgroups")?;
    nix::unistd::setgid(Gid::from_raw(gid)).context("setgid")?;
    nix::unistd::setuid(Uid::from_raw(uid)).context("setuid")?;
    if uid != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        bail!("could not drop root privileges");
    }
    let Some((program, args)) = command.split_first() else { bail!("no command") };
    let err = std::process::Command::new(program).args(args).exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
    eprintln!("mptcpify run: cannot run {program}: {err}");
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_caller_is_the_default_user() {
        let root = credentials(None, Some("0")).unwrap();
        assert_eq!((root.uid, root.name.as_str()), (0, "root"));
        let nobody = credentials(Some("nobody"), Some("0")).unwrap();
        assert_eq!(nobody.uid, 65534, "--user wins over SUDO_UID");
        assert!(credentials(None, Some("abc")).unwrap_err().to_string().contains("SUDO_UID"));
        assert!(credentials(Some("no-such-user-xyz"), None).is_err());
    }

    #[test]
    fn run_cgroups_name_their_run() {
        assert_eq!(run_pid("run-42"), Some(42));
        assert_eq!(run_pid("mptcpify-run-42.scope"), Some(42));
        for other in ["run-", "mptcpify-run-42", "nginx.service", "run-4x", "mptcpify-run-.scope"] {
            assert_eq!(run_pid(other), None, "{other}");
        }
    }

    #[test]
    fn signal_deaths_map_to_shell_codes() {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(15)), 143);
    }
}
