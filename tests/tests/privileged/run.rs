//! `mptcpify run`: a command and all its children in a fresh enabled cgroup, cleaned up after.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mptcpify_tests::*;

fn run_cgroups() -> Vec<String> {
    std::fs::read_dir(cgroup_root().join("mptcpify"))
        .map(|rd| {
            rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default()
}

fn assert_cleaned_up() {
    assert!(run_cgroups().is_empty(), "left cgroups: {:?}", run_cgroups());
    let rules = status_json()["rules"].clone();
    assert_eq!(rules.as_array().unwrap().len(), 0, "left rules: {rules}");
}

#[test]
fn run_upgrades_the_command_and_its_children_then_cleans_up() {
    let _g = setup();
    let probe = sockprobe_bin().display().to_string();
    let static_probe = static_sockprobe_bin().display().to_string();
    let script = format!("{probe} tcp4 connect4; {static_probe} --raw tcp6");
    let out = mptcpify(&["run", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", text(&out));
    let p = parse_probe(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(p["tcp4"]["proto"], IPPROTO_MPTCP, "a child of the command");
    assert_eq!(p["connect4"]["client"], IPPROTO_MPTCP);
    assert_eq!(p["connect4"]["fallback"], 0);
    assert_eq!(p["tcp6"]["proto"], IPPROTO_MPTCP, "a static binary");
    assert_eq!(status_json()["loaded"], true, "run loaded the program");
    assert_cleaned_up();
    assert_eq!(proto_of(None, "tcp4"), IPPROTO_TCP);
}

#[test]
fn run_returns_the_commands_exit_status() {
    let _g = setup();
    assert_eq!(mptcpify(&["run", "--", "sh", "-c", "exit 7"]).status.code(), Some(7));
    let out = mptcpify(&["run", "--", "/no/such/program"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run /no/such/program"));
    let out = mptcpify(&["run", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137), "killed by SIGKILL: {}", text(&out));
    assert_cleaned_up();
}

#[test]
fn run_drops_to_the_sudo_caller_or_the_given_user() {
    let _g = setup();
    let id = |envs: &[(&str, &str)], args: &[&str]| {
        let out = Command::new(mptcpify_bin()).args(args).envs(envs.iter().copied()).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(id(&[], &["run", "--", "id", "-u"]), "0", "plain root stays root");
    assert_eq!(id(&[("SUDO_UID", "65534")], &["run", "--", "id", "-u"]), "65534", "never root by accident under sudo");
    assert_eq!(id(&[("SUDO_UID", "65534")], &["run", "--", "id", "-g"]), "65534");
    assert_eq!(id(&[("SUDO_UID", "65534")], &["run", "--user", "root", "--", "id", "-u"]), "0");
    assert_eq!(id(&[], &["run", "--user", "nobody", "--", "id", "-un"]), "nobody");
    let bin = world_runnable(&sockprobe_bin());
    let out = id(&[("SUDO_UID", "65534")], &["run", "--", bin.to_str().unwrap(), "tcp4"]);
    assert_eq!(parse_probe(&out)["tcp4"]["proto"], IPPROTO_MPTCP, "upgraded as the dropped user too");
    fails(&["run", "--user", "no-such-user-xyz", "--", "true"], "no user named");
    // The user's own login environment, not root's (a root HOME invites root-owned dotfiles).
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let nobody: Vec<&str> = passwd.lines().find(|l| l.starts_with("nobody:")).unwrap().split(':').collect();
    let env = id(
        &[("SUDO_UID", "65534"), ("HOME", "/root"), ("USER", "root"), ("LOGNAME", "root"), ("SHELL", "/bin/bash")],
        &["run", "--", "sh", "-c", "echo $HOME $USER $LOGNAME $SHELL"],
    );
    assert_eq!(env, format!("{} nobody nobody {}", nobody[5], nobody[6]));
    assert_cleaned_up();
}

/// A signal to `run` reaches every process of its command, as a terminal's reaches a whole
/// group: here a child that its shell does not pass the signal on to.
#[test]
fn run_signals_the_whole_command_not_only_its_first_process() {
    let _g = setup();
    let script = "trap 'exit 3' TERM; sleep 60 & wait";
    let mut child =
        Command::new(mptcpify_bin()).args(["run", "--", "sh", "-c", script]).stdin(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while Command::new("pgrep").args(["-x", "sleep"]).output().unwrap().stdout.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "run did not start its command");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let signalled = Instant::now();
    let status = child.wait().unwrap();
    assert!(signalled.elapsed() < Duration::from_secs(15), "the background sleep kept run waiting: {status:?}");
    assert_eq!(status.code(), Some(3), "the shell's trap ran");
    assert_cleaned_up();
}

#[test]
fn run_waits_for_background_children() {
    let _g = setup();
    let file = "/tmp/mptcpify-t-bg";
    let _ = std::fs::remove_file(file);
    let script = format!("(sleep 1; {} tcp4 > {file}) &", sockprobe_bin().display());
    let out = mptcpify(&["run", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", text(&out));
    let written = std::fs::read_to_string(file).expect("run returned before its background child finished");
    assert_eq!(parse_probe(&written)["tcp4"]["proto"], IPPROTO_MPTCP);
    assert_cleaned_up();
}

#[test]
fn run_forwards_signals_and_cleans_up() {
    let _g = setup();
    let mut child =
        Command::new(mptcpify_bin()).args(["run", "--", "sleep", "60"]).stdin(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while run_cgroups().is_empty() || Command::new("pgrep").args(["-x", "sleep"]).output().unwrap().stdout.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "run did not start its command");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "sleep died of the forwarded SIGTERM");
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_cleaned_up();
    // Not a check of `run`'s own PID (reaped above, so gone whatever happened): no sleep is left.
    let left = Command::new("pgrep").args(["-x", "sleep"]).output().unwrap();
    assert!(left.stdout.is_empty(), "the command outlived run: {}", String::from_utf8_lossy(&left.stdout));
}

/// Starts `run sleep 60` and kills the `run` (SIGKILL): its cgroup and rule stay behind, with
/// the `sleep` (whose PID is returned) in it.
fn killed_run() -> String {
    let mut child =
        Command::new(mptcpify_bin()).args(["run", "--", "sleep", "60"]).stdin(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    let sleeper = loop {
        let out = Command::new("pgrep").args(["-x", "sleep"]).output().unwrap();
        if let Some(pid) = String::from_utf8_lossy(&out.stdout).lines().next() {
            break pid.to_owned();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "run did not start its command");
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(run_cgroups().len(), 1, "the killed run left its cgroup");
    sleeper
}

/// The agent, too, removes what a killed run left once its command has ended (and not before).
#[test]
fn the_agent_removes_what_a_killed_run_left_once_its_command_ends() {
    let _g = setup();
    let policy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(policy.path(), "[enable]\ncomms = [\"run-sweep-probe\"]\n").unwrap();
    let agent = AgentProcess::start(policy.path(), &[], &[]);
    let sleeper = killed_run();
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(run_cgroups().len(), 1, "kept while its command runs: {}", agent.log());
    assert!(Command::new("kill").args(["-KILL", &sleeper]).status().unwrap().success());
    let swept = wait_for(Duration::from_secs(15), || run_cgroups().is_empty().then_some(()));
    assert!(swept.is_some(), "the agent left the killed run's cgroup: {}", agent.log());
    let rules = status_json()["rules"].clone();
    assert!(rules.as_array().unwrap().iter().all(|r| r["owner"] == "agent"), "the run's rule stayed: {rules}");
    assert!(agent.log().contains("removed the rule a killed run left"), "{}", agent.log());
}

/// A `run` killed before it could clean up (a stopped service, SIGKILL) leaves its cgroup and
/// rule; `sync` keeps them while the command still runs and removes both once it has ended.
#[test]
fn sync_removes_what_a_killed_run_left_once_its_command_ends() {
    let _g = setup();
    let sleeper = killed_run();
    let out = ok(&["sync"]);
    assert_eq!(run_cgroups().len(), 1, "kept while its command runs: {out}");
    assert_eq!(status_json()["rules"].as_array().unwrap().len(), 1);
    assert!(Command::new("kill").args(["-KILL", &sleeper]).status().unwrap().success());
    let empty = wait_for(Duration::from_secs(5), || {
        let events =
            std::fs::read_to_string(cgroup_root().join("mptcpify").join(&run_cgroups()[0]).join("cgroup.events"))
                .ok()?;
        events.contains("populated 0").then_some(())
    });
    assert!(empty.is_some(), "the command did not end");
    let out = ok(&["sync"]);
    assert!(out.contains("its run is gone and the cgroup empty"), "{out}");
    assert_cleaned_up();
}
