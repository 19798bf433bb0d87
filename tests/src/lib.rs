//! Helpers for the privileged integration tests: run the real `mptcpify` CLI, make cgroups,
//! start the probe program inside them and read what sockets it got.
//!
//! The tests assume root in a kernel with the hook (`cargo xtask test` boots one); they fail,
//! never skip, anywhere else.
pub mod container;
pub mod kill;
pub mod kube_api;
pub mod two_paths;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Output, Stdio},
    sync::{Mutex, MutexGuard},
};

pub const IPPROTO_MPTCP: i64 = 262;
pub const IPPROTO_TCP: i64 = 6;
pub use mptcpify_common::{LINK_PIN, PIN_DIR};

/// The tests share one kernel and one pinned state: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the test lock and starts from a clean state (nothing loaded).
pub fn setup() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(unsafe_free_euid(), 0, "the privileged tests need root (run them with `cargo xtask test`)");
    let out = mptcpify(&["reset"]);
    assert!(out.status.success(), "reset failed: {}", text(&out));
    assert!(!Path::new(PIN_DIR).exists());
    guard
}

fn unsafe_free_euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    uid.split_whitespace().nth(2).unwrap().parse().unwrap()
}

pub(crate) fn sibling_of_test_binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

/// The `mptcpify` binary under test: `MPTCPIFY_BIN`, else the one built beside this test.
pub fn mptcpify_bin() -> PathBuf {
    std::env::var_os("MPTCPIFY_BIN").map(PathBuf::from).unwrap_or_else(|| sibling_of_test_binary("mptcpify"))
}

/// The test helper that moves bytes over one connection (`tests/src/bin/pathprobe.rs`).
pub fn pathprobe_bin() -> PathBuf {
    sibling_of_test_binary("pathprobe")
}

/// The probe program, dynamically linked (cargo builds it beside the integration tests).
pub fn sockprobe_bin() -> PathBuf {
    sibling_of_test_binary("sockprobe")
}

/// The statically linked build of the probe (`MPTCPIFY_SOCKPROBE_STATIC`, made by xtask).
pub fn static_sockprobe_bin() -> PathBuf {
    PathBuf::from(
        std::env::var_os("MPTCPIFY_SOCKPROBE_STATIC")
            .expect("MPTCPIFY_SOCKPROBE_STATIC not set: run through `cargo xtask test`"),
    )
}

/// A copy of `bin` that any user can run: the build tree may sit in a directory only root can
/// enter (a fresh clone in a `mktemp -d` folder), and some tests drop to uid 65534.
pub fn world_runnable(bin: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = Path::new("/tmp/mptcpify-t-bin");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join(bin.file_name().unwrap());
    let _ = std::fs::remove_file(&copy);
    std::fs::copy(bin, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

pub fn mptcpify(args: &[&str]) -> Output {
    Command::new(mptcpify_bin()).args(args).output().expect("running mptcpify")
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}stderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs mptcpify and asserts success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = mptcpify(args);
    assert!(out.status.success(), "mptcpify {args:?} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs mptcpify and asserts a failure whose stderr contains `needle`; returns stderr.
pub fn fails(args: &[&str], needle: &str) -> String {
    let out = mptcpify(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "mptcpify {args:?} should have failed: {}", text(&out));
    assert!(stderr.contains(needle), "mptcpify {args:?}: stderr lacks {needle:?}: {}", text(&out));
    stderr
}

pub fn status_json() -> serde_json::Value {
    serde_json::from_str(&ok(&["status", "--json"])).expect("status --json is JSON")
}

/// What `status --json` says minus the parts that move on their own (counters, hits).
pub fn state_snapshot() -> serde_json::Value {
    let mut s = status_json();
    s.as_object_mut().unwrap().remove("counters");
    if let Some(rules) = s.get_mut("rules").and_then(|r| r.as_array_mut()) {
        for r in rules {
            r.as_object_mut().unwrap().remove("hits");
        }
    }
    s
}

/// Entries of bpffs that belong to mptcpify (its directory and any leftover).
pub fn mptcpify_pins() -> Vec<String> {
    std::fs::read_dir(mptcpify_common::BPFFS)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("mptcpify"))
        .collect()
}

/// The cgroup2 root, found as mptcpify finds it.
pub fn cgroup_root() -> PathBuf {
    mptcpify::host::mounts::Mounts::read().and_then(|m| m.cgroup2_root()).expect("cgroup2 mounted")
}

/// A cgroup made for one test, removed (with its children) when dropped.
pub struct TestCgroup {
    pub path: PathBuf,
    /// Path relative to the cgroup2 root, as the CLI takes it.
    pub relative: String,
}

impl TestCgroup {
    pub fn new(relative: &str) -> Self {
        let path = cgroup_root().join(relative);
        let _ = remove_tree(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self { path, relative: relative.to_owned() }
    }

    pub fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// The cgroup's id, as rules key it: its inode in cgroup2.
    pub fn id(&self) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&self.path).unwrap())
    }
}

fn remove_tree(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(path)?.flatten() {
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        }
    }
    if let Ok(procs) = std::fs::read_to_string(path.join("cgroup.procs")) {
        for pid in procs.lines() {
            let _ = std::fs::write(cgroup_root().join("cgroup.procs"), pid);
        }
    }
    std::fs::remove_dir(path)
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = remove_tree(&self.path);
    }
}

/// `program args` to be started inside `cgroup` (moved there before exec, so every socket it
/// makes counts).
pub fn command_in(cgroup: Option<&TestCgroup>, program: &Path, args: &[&str]) -> Command {
    let mut cmd = match cgroup {
        Some(cg) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(r#"echo $$ > "$0" && exec "$@""#).arg(cg.procs()).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args);
    cmd
}

/// Runs `program args` inside `cgroup` and returns its stdout.
pub fn run_in(cgroup: Option<&TestCgroup>, program: &Path, args: &[&str]) -> String {
    let out = command_in(cgroup, program, args).output().expect("running the probe");
    assert!(out.status.success(), "{} {args:?}: {}", program.display(), text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Parses probe output into `spec -> {key -> value}`.
pub fn parse_probe(out: &str) -> BTreeMap<String, BTreeMap<String, i64>> {
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let spec = words.next()?.to_owned();
            let kv = words
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.parse::<i64>().unwrap_or(i64::MIN)))
                .collect();
            Some((spec, kv))
        })
        .collect()
}

/// `SO_PROTOCOL` of each socket spec made by the probe, run in `cgroup`.
pub fn protocols(cgroup: Option<&TestCgroup>, specs: &[&str]) -> BTreeMap<String, i64> {
    let out = run_in(cgroup, &sockprobe_bin(), specs);
    parse_probe(&out)
        .into_iter()
        .map(|(spec, kv)| {
            let p = kv.get("proto").copied().unwrap_or_else(|| panic!("{spec}: no socket: {out}"));
            (spec, p)
        })
        .collect()
}

pub fn proto_of(cgroup: Option<&TestCgroup>, spec: &str) -> i64 {
    protocols(cgroup, &[spec])[spec]
}

/// A probe started with `--wait`: it exists (has a PID) before it makes any socket.
pub struct WaitingProbe {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl WaitingProbe {
    pub fn start(specs: &[&str]) -> Self {
        let mut child = Command::new(sockprobe_bin())
            .arg("--wait")
            .args(specs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        Self { child, stdin }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it make its sockets; returns what it reported.
    pub fn finish(mut self) -> BTreeMap<String, BTreeMap<String, i64>> {
        self.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
        assert!(out.status.success());
        parse_probe(&String::from_utf8_lossy(&out.stdout))
    }
}

impl Drop for WaitingProbe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 GET on loopback (the agent's metrics and health endpoints): `(status, body)`.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let status = reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// Polls `check` every 10 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: std::time::Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A running `mptcpify agent`, its stderr collected; killed (SIGKILL) if still running on drop.
pub struct AgentProcess {
    pub child: Child,
    pub metrics: String,
    pub log: std::sync::Arc<Mutex<String>>,
    /// Copies the agent's stderr into `log` until the agent exits.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl AgentProcess {
    /// Starts `mptcpify agent --config POLICY --metrics-addr 127.0.0.1:0 EXTRA…` and waits until
    /// `/readyz` answers 200.
    pub fn start(policy: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_with(&[], policy, extra, envs)
    }

    /// [`start`](Self::start) under a wrapper command (`prefix` then the agent's command line).
    pub fn start_with(prefix: &[&str], policy: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        let agent = mptcpify_bin();
        let (program, wrapper_args) = match prefix.split_first() {
            Some((p, rest)) => (std::ffi::OsStr::new(p), rest),
            None => (agent.as_os_str(), &[][..]),
        };
        let mut cmd = Command::new(program);
        cmd.args(wrapper_args);
        if !prefix.is_empty() {
            cmd.arg(&agent);
        }
        let mut child = cmd
            .args(["agent", "--config"])
            .arg(policy)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(extra)
            .envs(envs.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the agent");
        let log = std::sync::Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let metrics = rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the agent never served metrics: {}", log.lock().unwrap())
        });
        let agent = Self { child, metrics, log, reader: Some(reader) };
        let ready =
            wait_for(std::time::Duration::from_secs(60), || matches!(agent.get("/readyz"), Ok((200, _))).then_some(()));
        assert!(ready.is_some(), "the agent never became ready: {}", agent.log());
        agent
    }

    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(&self.metrics, path)
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics").expect("scraping the agent");
        assert_eq!(status, 200);
        body
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log once nothing new has arrived for 500 ms (waiting at most 10 s): for checks that
    /// a line was *not* written, which a reader thread lagging behind would otherwise pass.
    pub fn settled_log(&self) -> String {
        let start = std::time::Instant::now();
        let mut last = self.log();
        let mut since = std::time::Instant::now();
        while since.elapsed() < std::time::Duration::from_millis(500)
            && start.elapsed() < std::time::Duration::from_secs(10)
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let now = self.log();
            if now != last {
                last = now;
                since = std::time::Instant::now();
            }
        }
        last
    }

    /// Sends `signal` and waits for the exit; returns the exit code.
    pub fn stop(mut self, signal: i32) -> Option<i32> {
        send_signal(self.child.id(), signal);
        let status = self.child.wait().unwrap();
        // Everything the agent wrote last is in the log once its stderr is closed.
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status.code()
    }
}

fn send_signal(pid: u32, signal: i32) {
    let ok = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap().success();
    assert!(ok, "kill -{signal} {pid}");
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces `path` with `text` the way editors and ConfigMap updates do: write aside, rename.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The value of the sample `line_prefix` (name and labels) in a Prometheus exposition.
pub fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(line_prefix)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The repository's deployment files.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy")
}

/// Every document of a multi-document YAML file, as JSON values.
pub fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    use serde::Deserialize as _;
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// The one DaemonSet of the plain manifests.
pub fn manifest_daemonset() -> k8s_openapi::api::apps::v1::DaemonSet {
    let docs = yaml_documents(&deploy_dir().join("kubernetes/mptcpify.yaml"));
    let ds = docs.into_iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet in mptcpify.yaml");
    serde_json::from_value(ds).expect("the DaemonSet parses")
}

/// The capabilities the DaemonSet's agent container adds (it drops ALL).
pub fn daemonset_capabilities() -> Vec<String> {
    let ds = manifest_daemonset();
    let c = &ds.spec.unwrap().template.spec.unwrap().containers[0];
    c.security_context.as_ref().unwrap().capabilities.as_ref().unwrap().add.clone().unwrap_or_default()
}
