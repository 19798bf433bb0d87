//! systemd units: `enable --unit` asks systemd for the unit's cgroup over D-Bus, writes no unit
//! file or drop-in, and follows the unit across a restart with `sync`. Boots the host's real
//! systemd as PID 1 of a PID namespace inside the VM (`cargo xtask test` runs this binary in
//! its own VM).
use std::{
    path::Path,
    process::{Command, Stdio},
    sync::Once,
    time::{Duration, Instant},
};

use mptcpify_tests::*;

const UNIT: &str = "mptcpify-t.service";
const UNIT_FILE: &str = "/etc/systemd/system/mptcpify-t.service";

fn busctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("busctl").args(args).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn manager(method: &str, sig: &str, args: &[&str]) -> Result<String, String> {
    let mut a = vec![
        "call",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        method,
    ];
    if !sig.is_empty() {
        a.push(sig);
    }
    a.extend_from_slice(args);
    busctl(&a)
}

/// The unit's cgroup as systemd reports it (`/system.slice/mptcpify-t.service`), once running.
fn control_group() -> String {
    let start = Instant::now();
    loop {
        let cg = unit_property(
            "/org/freedesktop/systemd1/unit/mptcpify_2dt_2eservice",
            "org.freedesktop.systemd1.Service",
            "ControlGroup",
        );
        if !cg.is_empty() && cgroup_root().join(cg.trim_start_matches('/')).join("cgroup.procs").exists() {
            return cg;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{UNIT} did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts systemd once (PID 1 of its own PID namespace) and waits for its D-Bus API.
// systemd runs until this test binary, and with it the VM, ends: nobody waits for it.
#[allow(clippy::zombie_processes)]
fn systemd() {
    static START: Once = Once::new();
    START.call_once(|| {
        std::fs::write(UNIT_FILE, "[Service]\nExecStart=/bin/sleep 1000\n").unwrap();
        // tmpfiles would empty /tmp at "boot", and the build tree may live there (a clone made
        // with mktemp -d). /etc is the VM's writable overlay.
        for unit in ["systemd-tmpfiles-setup.service", "systemd-tmpfiles-clean.timer"] {
            let mask = Path::new("/etc/systemd/system").join(unit);
            let _ = std::fs::remove_file(&mask);
            std::os::unix::fs::symlink("/dev/null", mask).unwrap();
        }
        Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "/lib/systemd/systemd",
                "--system",
                "--unit=dbus.service",
                "--log-target=null",
                "--show-status=false",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting systemd");
        let start = Instant::now();
        while manager("GetUnit", "s", &["dbus.service"]).is_err() {
            assert!(start.elapsed() < Duration::from_secs(120), "systemd's D-Bus API did not come up");
            std::thread::sleep(Duration::from_millis(250));
        }
    });
}

/// A process in the unit's cgroup makes a socket; its protocol.
fn proto_in_unit(cgroup: &str) -> i64 {
    let procs = cgroup_root().join(cgroup.trim_start_matches('/')).join("cgroup.procs");
    let out = Command::new("/bin/sh")
        .args(["-c", r#"echo $$ > "$0" && exec "$1" tcp4"#])
        .arg(&procs)
        .arg(sockprobe_bin())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    parse_probe(&String::from_utf8_lossy(&out.stdout))["tcp4"]["proto"]
}

#[test]
fn a_unit_is_enabled_through_systemd_and_followed_across_a_restart() {
    let _g = setup();
    systemd();
    manager("Reload", "", &[]).unwrap();
    manager("StartUnit", "ss", &[UNIT, "replace"]).unwrap();
    let cgroup = control_group();
    let unit_file = std::fs::read_to_string(UNIT_FILE).unwrap();

    let out = ok(&["enable", "--unit", UNIT]);
    assert!(out.contains(&format!("enabled: unit {UNIT}: cgroup {cgroup}")), "{out}");
    assert_eq!(proto_in_unit(&cgroup), IPPROTO_MPTCP);
    assert_eq!(std::fs::read_to_string(UNIT_FILE).unwrap(), unit_file, "the unit file is untouched");
    assert!(!Path::new("/etc/systemd/system/mptcpify-t.service.d").exists(), "no drop-in");
    assert!(!Path::new("/run/systemd/system/mptcpify-t.service.d").exists(), "no runtime drop-in");
    let rule = status_json()["rules"][0].clone();
    assert_eq!(rule["origin"]["kind"], "unit", "{rule}");
    assert_eq!(rule["origin"]["text"], UNIT);
    assert_eq!(rule["freshness"]["state"], "current");

    // A restart recreates the unit's cgroup with a new id: stale until `sync`.
    let old = rule["key"].as_u64().unwrap();
    manager("RestartUnit", "ss", &[UNIT, "replace"]).unwrap();
    let start = Instant::now();
    while status_json()["rules"][0]["freshness"]["state"] != "recreated" {
        assert!(start.elapsed() < Duration::from_secs(60), "restart not seen: {}", status_json());
        std::thread::sleep(Duration::from_millis(200));
    }
    let cgroup = control_group();
    assert_eq!(proto_in_unit(&cgroup), IPPROTO_TCP, "the old id matches nothing");
    let out = ok(&["sync"]);
    assert!(out.contains(&format!("unit {UNIT}: cgroup id {old} ->")), "{out}");
    assert_eq!(proto_in_unit(&cgroup), IPPROTO_MPTCP);

    // Stopped: the rule is stale (gone) and kept for when it comes back.
    manager("StopUnit", "ss", &[UNIT, "replace"]).unwrap();
    let start = Instant::now();
    while status_json()["rules"][0]["freshness"]["state"] != "gone" {
        assert!(start.elapsed() < Duration::from_secs(60), "stop not seen: {}", status_json());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ok(&["status"]).contains("STALE: gone"));
    ok(&["disable", "--cgroup-id", &status_json()["rules"][0]["key"].to_string()]);
}

#[test]
fn units_that_are_unknown_stopped_or_not_cgroup_units_are_refused() {
    let _g = setup();
    systemd();
    fails(
        &["enable", "--unit", "no-such-unit-xyz.service"],
        "systemd does not know no-such-unit-xyz.service as a running unit",
    );
    fails(&["enable", "--unit", "nginx"], "give the full name");
    manager("Reload", "", &[]).unwrap();
    let _ = manager("StopUnit", "ss", &[UNIT, "replace"]);
    // Loaded (by a failed lookup of it) but not running: no cgroup.
    let _ = manager("LoadUnit", "s", &[UNIT]);
    fails(&["enable", "--unit", UNIT], &format!("{UNIT} as a running unit, so it has no cgroup: start it first"));
    assert!(mptcpify_pins().is_empty(), "a refused enable loaded nothing");
}

/// Where systemd runs, `run` puts CMD in a transient scope of the caller's slice (what
/// `systemd-run --scope` makes), so the slice's limits hold, and leaves no rule or scope behind.
#[test]
fn run_puts_cmd_in_a_scope_of_the_callers_slice() {
    let _g = setup();
    systemd();
    // The caller is a service in a slice of its own, as a real caller would be: inside systemd's
    // PID namespace, which the scope's PID is read in.
    let script = format!("cat /proc/self/cgroup; exec {} tcp4", sockprobe_bin().display());
    let out = Command::new("systemd-run")
        .args(["--quiet", "--wait", "--pipe", "--collect", "--slice=mptcpifytest.slice", "-p", "TasksMax=64"])
        .arg(mptcpify_bin())
        .args(["run", "--", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let cgroup = stdout.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or_default().to_owned();
    let scope = cgroup.strip_prefix("/mptcpifytest.slice/mptcpify-run-").and_then(|s| s.strip_suffix(".scope"));
    assert!(
        scope.is_some_and(|pid| pid.parse::<u32>().is_ok()),
        "CMD ran in {cgroup:?}, not a scope of the slice: {}",
        text(&out)
    );
    assert_eq!(parse_probe(&stdout)["tcp4"]["proto"], IPPROTO_MPTCP, "{}", text(&out));
    let gone = wait_for(Duration::from_secs(5), || {
        (!cgroup_root().join(cgroup.trim_start_matches('/')).exists()).then_some(())
    });
    assert!(gone.is_some(), "systemd did not remove the empty scope {cgroup}");
    let left: Vec<_> = status_json()["rules"].as_array().map(|r| r.to_vec()).unwrap_or_default();
    assert!(left.iter().all(|r| r["origin"]["kind"] != "run"), "a run's rule was left: {left:?}");
}

/// Where the agent's policy and binary are put for the shipped unit.
const AGENT_DIR: &str = "/etc/mptcpify-t";
const AGENT_UNIT: &str = "mptcpify-agent.service";
const AGENT_PATH: &str = "/org/freedesktop/systemd1/unit/mptcpify_2dagent_2eservice";
const DROP_IN_DIR: &str = "/etc/systemd/system/mptcpify-agent.service.d";

/// The shipped agent unit (with its `paths.conf` drop-in when `paths`), pointed at this build
/// and `policy`, installed and loaded. The binary is copied out of the build tree, which may sit
/// in a /tmp that the unit's PrivateTmp= hides.
fn install_shipped_agent(policy: &str, paths: bool) -> &'static Path {
    let dir = Path::new(AGENT_DIR);
    std::fs::create_dir_all(dir).unwrap();
    let bin = dir.join("mptcpify");
    let _ = std::fs::remove_file(&bin);
    std::fs::copy(mptcpify_bin(), &bin).unwrap();
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let shipped = std::fs::read_to_string(deploy_dir().join("systemd/mptcpify-agent.service")).unwrap();
    let unit = shipped.replace(
        "ExecStart=/usr/local/bin/mptcpify agent --config /etc/mptcpify/policy.toml",
        &format!("ExecStart={AGENT_DIR}/mptcpify agent --config {AGENT_DIR}/policy.toml"),
    );
    assert_ne!(unit, shipped, "the shipped ExecStart line changed; update this test");
    std::fs::write(format!("/etc/systemd/system/{AGENT_UNIT}"), unit).unwrap();
    let _ = std::fs::remove_dir_all(DROP_IN_DIR);
    if paths {
        std::fs::create_dir_all(DROP_IN_DIR).unwrap();
        std::fs::copy(
            deploy_dir().join("systemd/mptcpify-agent.service.d/paths.conf"),
            Path::new(DROP_IN_DIR).join("paths.conf"),
        )
        .unwrap();
    }
    manager("Reload", "", &[]).unwrap();
    dir
}

fn unit_property(unit_path: &str, iface: &str, prop: &str) -> String {
    let out = busctl(&["get-property", "org.freedesktop.systemd1", unit_path, iface, prop]).unwrap_or_default();
    out.split_whitespace().nth(1).unwrap_or("").trim_matches('"').to_owned()
}

#[test]
fn the_agent_runs_from_its_shipped_unit_and_follows_a_unit_across_restarts() {
    let _g = setup();
    systemd();
    let dir = install_shipped_agent(&format!("[enable]\nunits = [\"{UNIT}\"]\n"), false);
    manager("StartUnit", "ss", &[UNIT, "replace"]).unwrap();
    manager("StartUnit", "ss", &[AGENT_UNIT, "replace"]).unwrap();
    let cgroup = control_group();
    let covered = wait_for(Duration::from_secs(60), || (proto_in_unit(&cgroup) == IPPROTO_MPTCP).then_some(()));
    let state = unit_property(AGENT_PATH, "org.freedesktop.systemd1.Unit", "ActiveState");
    assert!(covered.is_some(), "the agent (unit state {state}) never enabled {UNIT}");

    // It runs with only the unit's three capabilities.
    // (MainPID is a PID of systemd's namespace; the unit's cgroup lists it in ours.)
    let agent_cg = unit_property(AGENT_PATH, "org.freedesktop.systemd1.Service", "ControlGroup");
    let procs =
        std::fs::read_to_string(cgroup_root().join(agent_cg.trim_start_matches('/')).join("cgroup.procs")).unwrap();
    let pid = procs.lines().next().expect("the agent's process").to_owned();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert_eq!(eff.split_whitespace().nth(1), Some("000000c400000000"), "{eff}");

    // The unit restarts (a new cgroup, a new id): covered again without `sync`.
    let old_id = status_json()["rules"][0]["key"].clone();
    let start = Instant::now();
    manager("RestartUnit", "ss", &[UNIT, "replace"]).unwrap();
    let covered = wait_for(Duration::from_secs(5), || {
        let moved = status_json()["rules"][0]["key"] != old_id;
        (moved && proto_in_unit(&control_group()) == IPPROTO_MPTCP).then_some(())
    });
    assert!(covered.is_some(), "restarted unit not covered: {}", status_json());
    eprintln!("restarted unit covered {:?} after the restart was requested", start.elapsed());
    let cgroup = control_group();

    // Restarting the agent keeps the program attached: same link, sockets upgraded throughout.
    let link = status_json()["link"].clone();
    let agent_procs = cgroup_root().join(agent_cg.trim_start_matches('/')).join("cgroup.procs");
    manager("RestartUnit", "ss", &["mptcpify-agent.service", "replace"]).unwrap();
    assert_eq!(proto_in_unit(&cgroup), IPPROTO_MPTCP);
    // A new agent runs (another process in the unit's cgroup, the unit active) …
    let successor = wait_for(Duration::from_secs(30), || {
        let now = std::fs::read_to_string(&agent_procs).ok()?.lines().next()?.to_owned();
        let active = unit_property(AGENT_PATH, "org.freedesktop.systemd1.Unit", "ActiveState") == "active";
        (now != pid && active).then_some(now)
    });
    assert!(successor.is_some(), "no new agent after the restart");
    assert_eq!(status_json()["link"], link, "the restart kept the program attached");
    // … and enforces: it puts back a rule removed by force.
    let key = status_json()["rules"][0]["key"].to_string();
    ok(&["disable", "--cgroup-id", &key, "--force"]);
    let back = wait_for(Duration::from_secs(5), || (proto_in_unit(&cgroup) == IPPROTO_MPTCP).then_some(()));
    assert!(back.is_some(), "the restarted agent does not enforce its policy: {}", status_json());
    manager("StopUnit", "ss", &["mptcpify-agent.service", "replace"]).unwrap();
    assert_eq!(proto_in_unit(&cgroup), IPPROTO_MPTCP, "a stopped agent leaves its rules in force");
    let _ = std::fs::remove_file("/etc/systemd/system/mptcpify-agent.service");
    let _ = std::fs::remove_dir_all(dir);
}

/// `ip mptcp endpoint show`'s lines.
fn endpoints() -> String {
    let out = Command::new("ip").args(["mptcp", "endpoint", "show"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The shipped unit with its `paths.conf` drop-in keeps `[paths]` (CAP_NET_ADMIN, a writable
/// `/run/mptcpify`), and its records outlive the agent: a new agent whose policy dropped
/// `[paths]` clears what the earlier one made.
#[test]
fn the_shipped_unit_keeps_paths_and_a_new_agent_clears_what_an_earlier_one_made() {
    let _g = setup();
    systemd();
    let _ = Command::new("ip").args(["link", "del", "mpt-u0"]).output();
    for args in [
        &["link", "add", "mpt-u0", "type", "veth", "peer", "name", "mpt-u0p"][..],
        &["addr", "add", "10.81.0.1/24", "dev", "mpt-u0"],
        &["link", "set", "mpt-u0p", "up"],
        &["link", "set", "mpt-u0", "up"],
    ] {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", text(&out));
    }
    let dir = install_shipped_agent("[paths]\nauto = true\ndevs = [\"mpt-u0\"]\n", true);
    manager("StartUnit", "ss", &[AGENT_UNIT, "replace"]).unwrap();
    let made = wait_for(Duration::from_secs(60), || endpoints().contains("10.81.0.1").then_some(()));
    let state = unit_property(AGENT_PATH, "org.freedesktop.systemd1.Unit", "ActiveState");
    assert!(made.is_some(), "the agent (unit {state}) made no endpoint: {}", endpoints());

    manager("StopUnit", "ss", &[AGENT_UNIT, "replace"]).unwrap();
    let stopped = wait_for(Duration::from_secs(30), || {
        (unit_property(AGENT_PATH, "org.freedesktop.systemd1.Unit", "ActiveState") == "inactive").then_some(())
    });
    assert!(stopped.is_some(), "the agent did not stop");
    assert!(endpoints().contains("10.81.0.1"), "a stopped agent leaves its paths: {}", endpoints());
    std::fs::write(dir.join("policy.toml"), "[enable]\n").unwrap();
    manager("StartUnit", "ss", &[AGENT_UNIT, "replace"]).unwrap();
    let cleared = wait_for(Duration::from_secs(60), || (!endpoints().contains("10.81.0.1")).then_some(()));
    assert!(cleared.is_some(), "the new agent left the earlier one's endpoint: {}", endpoints());
    manager("StopUnit", "ss", &[AGENT_UNIT, "replace"]).unwrap();
    let _ = std::fs::remove_dir_all(DROP_IN_DIR);
    let _ = std::fs::remove_file(format!("/etc/systemd/system/{AGENT_UNIT}"));
    let _ = std::fs::remove_dir_all(dir);
    let _ = Command::new("ip").args(["link", "del", "mpt-u0"]).output();
}
