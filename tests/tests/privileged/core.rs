//! The core: cgroup and PID rules, pinned state, errors.
use std::path::Path;

use mptcpify_tests::*;

#[test]
fn tcp_sockets_in_an_enabled_cgroup_become_mptcp_with_a_real_mptcp_connection() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-enabled");
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_TCP, "TCP before enable");
    let out = ok(&["enable", "--cgroup", &cg.relative]);
    assert!(out.contains("enabled: cgroup /mptcpify-t-enabled"), "{out}");
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_MPTCP);

    // An unmodified program (std's TcpListener/TcpStream) talks MPTCP end to end on loopback.
    let conn = &parse_probe(&run_in(Some(&cg), &sockprobe_bin(), &["connect4"]))["connect4"];
    assert_eq!(conn.get("client"), Some(&IPPROTO_MPTCP), "{conn:?}");
    assert_eq!(conn.get("server"), Some(&IPPROTO_MPTCP), "{conn:?}");
    assert_eq!(conn.get("fallback"), Some(&0), "MPTCP_INFO says it fell back to TCP: {conn:?}");
    assert_eq!(conn.get("remote_key"), Some(&1), "MPTCP handshake incomplete: {conn:?}");

    let status = status_json();
    assert!(status["counters"]["upgraded_by_cgroup"].as_u64().unwrap() >= 3, "{status}");
    assert_eq!(status["rules"][0]["kind"], "cgroup");
    assert!(status["rules"][0]["hits"].as_u64().unwrap() >= 3, "{status}");
}

#[test]
fn a_child_cgroup_is_upgraded_and_its_sibling_is_not() {
    let _g = setup();
    let parent = TestCgroup::new("mptcpify-t-parent");
    let child = TestCgroup::new("mptcpify-t-parent/child/grandchild");
    let sibling = TestCgroup::new("mptcpify-t-sibling");
    ok(&["enable", "--cgroup", &parent.path.display().to_string()]);
    assert_eq!(proto_of(Some(&parent), "tcp4"), IPPROTO_MPTCP);
    assert_eq!(proto_of(Some(&child), "tcp4"), IPPROTO_MPTCP, "descendant two levels down");
    assert_eq!(proto_of(Some(&sibling), "tcp4"), IPPROTO_TCP);
    assert_eq!(proto_of(None, "tcp4"), IPPROTO_TCP, "the test's own cgroup");
}

#[test]
fn flags_explicit_tcp_and_ipv6_are_upgraded() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-variants");
    ok(&["enable", "--cgroup", &cg.relative]);
    let p = protocols(Some(&cg), &["tcp4-flags", "tcp4-ipproto", "tcp6"]);
    assert_eq!(p["tcp4-flags"], IPPROTO_MPTCP, "SOCK_NONBLOCK|SOCK_CLOEXEC");
    assert_eq!(p["tcp4-ipproto"], IPPROTO_MPTCP, "protocol IPPROTO_TCP");
    assert_eq!(p["tcp6"], IPPROTO_MPTCP);
    let conn = &parse_probe(&run_in(Some(&cg), &sockprobe_bin(), &["connect6"]))["connect6"];
    assert_eq!(conn.get("client"), Some(&IPPROTO_MPTCP), "{conn:?}");
    assert_eq!(conn.get("fallback"), Some(&0), "{conn:?}");
}

#[test]
fn udp_unix_raw_and_sctp_sockets_are_untouched() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-others");
    let specs = ["udp4", "unix", "raw4", "sctp4"];
    let before = run_in(Some(&cg), &sockprobe_bin(), &specs);
    ok(&["enable", "--cgroup", &cg.relative]);
    let after = run_in(Some(&cg), &sockprobe_bin(), &specs);
    assert_eq!(before, after, "same result with and without the rule");
    let p = parse_probe(&after);
    assert_eq!(p["udp4"]["proto"], 17);
    assert_eq!(p["unix"]["proto"], 0);
    assert_eq!(p["raw4"]["proto"], 1);
    assert_eq!(p["sctp4"]["proto"], 132, "the VM loads sctp; {after}");
}

#[test]
fn a_pid_rule_upgrades_that_process_only() {
    let _g = setup();
    let selected = WaitingProbe::start(&["tcp4", "tcp6"]);
    let other = WaitingProbe::start(&["tcp4"]);
    let out = ok(&["enable", "--pid", &selected.pid().to_string()]);
    assert!(out.contains(&format!("enabled: pid {} (sockprobe)", selected.pid())), "{out}");
    let s = selected.finish();
    assert_eq!(s["tcp4"]["proto"], IPPROTO_MPTCP);
    assert_eq!(s["tcp6"]["proto"], IPPROTO_MPTCP);
    assert_eq!(other.finish()["tcp4"]["proto"], IPPROTO_TCP);
    assert_eq!(proto_of(None, "tcp4"), IPPROTO_TCP);
    let status = status_json();
    assert_eq!(status["counters"]["upgraded_by_pid"], 2, "{status}");
    assert_eq!(status["rules"][0]["kind"], "pid");
    assert_eq!(status["rules"][0]["hits"], 2);
}

/// True if the ELF file has no PT_INTERP program header (no dynamic loader).
fn is_static_elf(path: &Path) -> bool {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF");
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| u32::from_le_bytes(b[phoff + i * phentsize..][..4].try_into().unwrap()) != 3)
}

#[test]
fn a_static_binary_calling_the_raw_socket_syscall_is_upgraded() {
    let _g = setup();
    let bin = static_sockprobe_bin();
    assert!(is_static_elf(&bin), "{} must be statically linked", bin.display());
    let cg = TestCgroup::new("mptcpify-t-static");
    ok(&["enable", "--cgroup", &cg.relative]);
    let p = parse_probe(&run_in(Some(&cg), &bin, &["--raw", "tcp4", "tcp6", "udp4"]));
    assert_eq!(p["tcp4"]["proto"], IPPROTO_MPTCP);
    assert_eq!(p["tcp6"]["proto"], IPPROTO_MPTCP);
    assert_eq!(p["udp4"]["proto"], 17);
}

#[test]
fn disable_stops_new_upgrades() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-disable");
    let pid_probe = WaitingProbe::start(&["tcp4"]);
    let pid = pid_probe.pid().to_string();
    ok(&["enable", "--cgroup", &cg.relative, "--pid", &pid]);
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_MPTCP);
    let out = ok(&["disable", "--cgroup", &cg.relative, "--pid", &pid]);
    assert!(
        out.contains("removed: cgroup /mptcpify-t-disable") && out.contains(&format!("removed: pid {pid}")),
        "{out}"
    );
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_TCP);
    assert_eq!(pid_probe.finish()["tcp4"]["proto"], IPPROTO_TCP);
    let status = status_json();
    assert_eq!(status["loaded"], true, "disable keeps the program loaded");
    assert_eq!(status["rules"].as_array().unwrap().len(), 0);
}

#[test]
fn a_removed_cgroup_rule_is_disabled_by_id() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-gone");
    ok(&["enable", "--cgroup", &cg.relative]);
    let id = status_json()["rules"][0]["key"].as_u64().unwrap();
    let rel = cg.relative.clone();
    drop(cg);
    let rule = &status_json()["rules"][0];
    assert_eq!(rule["target"], serde_json::Value::Null);
    assert_eq!(rule["freshness"]["state"], "gone");
    fails(&["disable", "--cgroup", &rel], "--cgroup-id");
    ok(&["disable", "--cgroup-id", &id.to_string()]);
    assert_eq!(status_json()["rules"].as_array().unwrap().len(), 0);
}

#[test]
fn state_survives_the_cli_and_later_invocations_edit_it() {
    let _g = setup();
    let a = TestCgroup::new("mptcpify-t-state-a");
    let b = TestCgroup::new("mptcpify-t-state-b");
    ok(&["enable", "--cgroup", &a.relative]);
    // That process has exited; the program and the rule are still there.
    assert!(Path::new(PIN_DIR).join(LINK_PIN).exists());
    assert_eq!(proto_of(Some(&a), "tcp4"), IPPROTO_MPTCP);
    let link = status_json()["link"].clone();
    ok(&["enable", "--cgroup", &b.relative]);
    let status = status_json();
    assert_eq!(status["link"], link, "the second enable reused the attached program");
    assert_eq!(status["rules"].as_array().unwrap().len(), 2);
    ok(&["disable", "--cgroup", &a.relative]);
    assert_eq!(proto_of(Some(&a), "tcp4"), IPPROTO_TCP);
    assert_eq!(proto_of(Some(&b), "tcp4"), IPPROTO_MPTCP);
    let human = ok(&["status"]);
    assert!(human.contains("attached to update_socket_protocol"), "{human}");
    assert!(human.contains(&b.path.display().to_string()), "{human}");
}

/// Cgroup and command names come from whoever made them: human output escapes their control
/// characters, so a name cannot clear the screen or overwrite a line of `status`.
#[test]
fn names_from_the_system_are_escaped_in_human_output() {
    let _g = setup();
    // The kernel refuses a newline in a cgroup's name, not an escape sequence or a carriage return.
    let cg = TestCgroup::new("mptcpify-t-\x1b[2J\rexclude cgroup /forged");
    ok(&["enable", "--cgroup", &cg.relative]);
    let human = ok(&["status"]);
    assert!(!human.contains('\x1b') && !human.contains('\r'), "{human:?}");
    assert!(human.contains("\\u{1b}[2J\\rexclude"), "{human:?}");
    assert_eq!(status_json()["rules"][0]["target"], cg.path.display().to_string(), "JSON keeps the real name");
}

/// An invocation that cannot get the state lock gives up after a while and names the holder.
#[test]
fn a_held_lock_times_out_naming_its_holder() {
    let _g = setup();
    let mut holder =
        std::process::Command::new("flock").args(["--close", mptcpify_common::BPFFS, "sleep", "60"]).spawn().unwrap();
    // flock takes the lock, then starts sleep without it (--close): killing flock frees it.
    let held = wait_for(std::time::Duration::from_secs(10), || {
        std::process::Command::new("pgrep")
            .args(["-P", &holder.id().to_string(), "sleep"])
            .output()
            .ok()?
            .status
            .success()
            .then_some(())
    });
    assert!(held.is_some(), "flock did not start");
    let start = std::time::Instant::now();
    let err = fails(&["enable", "--pid", "1"], &format!("held by pid {} (flock)", holder.id()));
    let waited = start.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(waited >= std::time::Duration::from_secs(9), "gave up after {waited:?}: {err}");
    assert!(mptcpify_pins().is_empty(), "the refused enable left {:?}", mptcpify_pins());
    ok(&["enable", "--pid", "1"]);
}

/// A first load killed at any moment leaves state the next command repairs: exactly one program
/// attached, no half-made pin directory, the rule in force.
#[test]
fn a_first_load_killed_at_any_moment_is_repaired_by_the_next_command() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-killed");
    let attached =
        || aya::programs::loaded_programs().flatten().filter(|p| p.name_as_str() == Some("mptcpify")).count();
    // Kill points spread over a load (about half a second under emulation), in a fixed order.
    // What a load killed between pinning its link and renaming its directory leaves (the window
    // is a few milliseconds, too narrow to hit by timing): made by renaming a complete state.
    ok(&["enable", "--cgroup", &cg.relative]);
    let abandoned = format!("{PIN_DIR}{}4194000", mptcpify_common::LOADING_INFIX);
    std::fs::rename(PIN_DIR, &abandoned).unwrap();
    ok(&["enable", "--cgroup", &cg.relative]);
    assert_eq!(mptcpify_pins(), ["mptcpify"], "the abandoned load was removed");
    let one = wait_for(std::time::Duration::from_secs(5), || (attached() == 1).then_some(()));
    assert!(one.is_some(), "{} programs attached beside an abandoned load", attached());
    ok(&["reset"]);
    for (i, delay_ms) in [0u64, 90, 220, 380, 520, 700].into_iter().enumerate() {
        let mut first = std::process::Command::new(mptcpify_bin())
            .args(["enable", "--cgroup", &cg.relative])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = first.kill();
        let _ = first.wait();
        ok(&["enable", "--cgroup", &cg.relative]);
        assert_eq!(mptcpify_pins(), ["mptcpify"], "round {i} ({delay_ms} ms): leftovers");
        // A killed process's unpinned program is freed once the kernel gets to it: wait, bounded.
        let one = wait_for(std::time::Duration::from_secs(5), || (attached() == 1).then_some(()));
        assert!(one.is_some(), "round {i} ({delay_ms} ms): {} programs attached", attached());
        assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_MPTCP, "round {i}");
        let rules = status_json()["rules"].as_array().unwrap().len();
        assert_eq!(rules, 1, "round {i}");
        ok(&["reset"]);
        let none = wait_for(std::time::Duration::from_secs(5), || (attached() == 0).then_some(()));
        assert!(none.is_some(), "round {i}: {} programs left after reset", attached());
    }
}

/// Twenty CLIs racing the first load, each adding its own rule: all succeed, one program is
/// attached, and every rule is there and works.
#[test]
fn concurrent_first_loads_end_with_one_program_and_every_rule() {
    let _g = setup();
    let children: Vec<_> = (0..20)
        .map(|i| {
            std::process::Command::new(mptcpify_bin())
                .args(["enable", "--comm", &format!("race-{i}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "enable {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let programs = aya::programs::loaded_programs().flatten().filter(|p| p.name_as_str() == Some("mptcpify")).count();
    assert_eq!(programs, 1, "one program attached");
    let rules = status_json()["rules"].as_array().unwrap().clone();
    let mut keys: Vec<String> = rules.iter().map(|r| r["key"].as_str().unwrap().to_owned()).collect();
    keys.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("race-{i}")).collect();
    want.sort();
    assert_eq!(keys, want);
    let probe = std::path::PathBuf::from("/tmp/race-7");
    std::fs::copy(sockprobe_bin(), &probe).unwrap();
    assert_eq!(parse_probe(&run_in(None, &probe, &["tcp4"]))["tcp4"]["proto"], IPPROTO_MPTCP);
}

/// Whoever can write the pin directory decides which sockets are upgraded: loads make it root's
/// alone, and state anyone else could have written is refused until `reset`.
#[test]
fn pinned_state_is_roots_alone() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-pinmode");
    ok(&["enable", "--cgroup", &cg.relative]);
    let meta = std::fs::metadata(PIN_DIR).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o700), "a load makes the directory root's alone");
    std::fs::set_permissions(PIN_DIR, std::fs::Permissions::from_mode(0o777)).unwrap();
    fails(&["status"], "mode 0777");
    fails(&["enable", "--pid", "1"], "root alone can write");
    std::fs::set_permissions(PIN_DIR, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(PIN_DIR, Some(65534), None).unwrap();
    fails(&["disable", "--cgroup", &cg.relative], "owned by uid 65534");
    assert!(ok(&["reset"]).contains("program detached"), "reset always repairs");
    assert!(mptcpify_pins().is_empty());
}

#[test]
fn reset_detaches_and_leaves_no_pins() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-reset");
    ok(&["enable", "--cgroup", &cg.relative]);
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_MPTCP);
    assert_eq!(mptcpify_pins(), ["mptcpify"]);
    let out = ok(&["reset"]);
    assert!(out.contains("program detached"), "{out}");
    assert!(mptcpify_pins().is_empty(), "{:?}", mptcpify_pins());
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_TCP);
    assert_eq!(status_json()["loaded"], false);
    assert!(ok(&["reset"]).contains("nothing was loaded"));
}

#[test]
fn enabling_twice_is_idempotent() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-twice");
    ok(&["enable", "--cgroup", &cg.relative]);
    proto_of(Some(&cg), "tcp4");
    let hits = status_json()["rules"][0]["hits"].as_u64().unwrap();
    assert_eq!(hits, 1);
    let out = ok(&["enable", "--cgroup", &cg.relative, "--cgroup", &cg.path.display().to_string()]);
    assert!(out.contains("already enabled"), "{out}");
    let status = status_json();
    assert_eq!(status["rules"].as_array().unwrap().len(), 1);
    assert_eq!(status["rules"][0]["hits"].as_u64().unwrap(), hits, "hit counter kept");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-errors");
    let root = cgroup_root().display().to_string();

    // Before anything is loaded: a refused enable must not load the program either.
    fails(&["enable", "--cgroup", "mptcpify-t-no-such-cgroup"], &root);
    fails(&["enable", "--cgroup", "/etc"], "not on the cgroup2 hierarchy");
    fails(&["enable", "--pid", "4000000"], "process 4000000 does not exist");
    fails(&["enable", "--cgroup", &cg.relative, "--pid", "4000000"], "does not exist");
    fails(&["enable"], "nothing to enable");
    fails(&["disable", "--pid", "1"], "not loaded");
    assert!(mptcpify_pins().is_empty(), "a refused command left {:?}", mptcpify_pins());

    ok(&["enable", "--cgroup", &cg.relative]);
    let before = state_snapshot();
    fails(&["enable", "--cgroup", "mptcpify-t-no-such-cgroup"], "not found");
    fails(&["enable", "--cgroup", "../../etc"], "not on the cgroup2 hierarchy");
    fails(&["enable", "--pid", "1", "--pid", "4000000"], "does not exist");
    fails(&["disable", "--pid", "1"], "pid 1 has no rule");
    fails(&["disable", "--cgroup", &cg.relative, "--pid", "1"], "pid 1 has no rule");
    fails(&["disable", "--cgroup-id", "1"], "cgroup id 1 has no rule");
    // Deeper than the program's walk of a caller's ancestors: a rule there would never match.
    let deep = (1..=32).map(|i| format!("d{i}")).collect::<Vec<_>>().join("/");
    let deep_cg = TestCgroup::new(&format!("{}/{deep}", cg.relative));
    fails(&["enable", "--cgroup", &deep_cg.relative], "never match");
    assert_eq!(state_snapshot(), before, "a refused command changed the state");
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_MPTCP, "the rule disable refused to drop still works");
}

#[test]
fn a_thread_id_is_refused_with_its_process() {
    let _g = setup();
    let me = std::process::id();
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        tx.send(std::fs::read_link("/proc/thread-self").unwrap()).unwrap();
        done_rx.recv().unwrap();
    });
    let tid = rx.recv().unwrap().file_name().unwrap().to_string_lossy().into_owned();
    assert_ne!(tid, me.to_string());
    fails(&["enable", "--pid", &tid], &format!("is a thread of process {me}; give --pid {me}"));
    done_tx.send(()).unwrap();
    t.join().unwrap();
    assert!(mptcpify_pins().is_empty());
}

#[test]
fn not_root_is_refused() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-notroot");
    let bin = world_runnable(&mptcpify_bin());
    for args in [vec!["enable", "--cgroup", cg.relative.as_str()], vec!["status"], vec!["reset"]] {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
            .arg(&bin)
            .args(&args)
            .output()
            .expect("setpriv (util-linux)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(stderr.contains("needs root") && stderr.contains("sudo"), "{args:?}: {}", text(&out));
    }
    assert!(mptcpify_pins().is_empty());
}

#[test]
fn missing_bpffs_or_cgroup2_is_explained_and_changes_nothing() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-mounts");
    let bin = mptcpify_bin().display().to_string();
    // A private mount namespace without the mount in question.
    let run = |umount: &str, args: &str| {
        std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!("umount {umount} && exec {bin} {args}"))
            .output()
            .unwrap()
    };
    let out = run("/sys/fs/bpf", &format!("enable --cgroup {}", cg.relative));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("mount -t bpf bpf /sys/fs/bpf"),
        "{}",
        text(&out)
    );
    let out = run("/sys/fs/cgroup", &format!("enable --cgroup {}", cg.relative));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no cgroup2 hierarchy is mounted"),
        "{}",
        text(&out)
    );
    assert!(mptcpify_pins().is_empty());
}

#[test]
fn a_full_rule_table_is_refused_and_rolled_back() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-full");
    let probe = WaitingProbe::start(&["tcp4"]);
    ok(&["enable", "--pid", "1"]);
    // Fill the PID table to the brim with PIDs that cannot exist.
    let map = aya::maps::MapData::from_pin(Path::new(PIN_DIR).join(mptcpify_common::PID_RULES_MAP)).unwrap();
    let mut pids: aya::maps::HashMap<_, u32, mptcpify_common::Rule> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(map)).unwrap();
    let rule = mptcpify_common::Rule { action: mptcpify_common::ACTION_ENABLE, ..Default::default() };
    for k in 0..mptcpify_common::MAX_RULES - 1 {
        pids.insert(0x8000_0000 + k, rule, 0).unwrap();
    }
    let before = state_snapshot();
    let err = fails(&["enable", "--cgroup", &cg.relative, "--pid", &probe.pid().to_string()], "rule table is full");
    assert!(err.contains("16384"), "{err}");
    assert_eq!(state_snapshot(), before, "the cgroup rule added before the failure was rolled back");
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_TCP);
    assert_eq!(probe.finish()["tcp4"]["proto"], IPPROTO_TCP);
}

#[test]
fn mptcp_disabled_in_the_namespace_is_warned_about() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-sysctl");
    std::fs::write("/proc/sys/net/mptcp/enabled", "0").unwrap();
    let out = mptcpify(&["enable", "--cgroup", &cg.relative]);
    std::fs::write("/proc/sys/net/mptcp/enabled", "1").unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("net.mptcp.enabled=0") && stderr.contains("sysctl -w net.mptcp.enabled=1"), "{stderr}");
    assert_eq!(status_json()["mptcp_sysctl"], "enabled");
}

#[test]
fn probe_loads_and_detaches_without_leaving_state() {
    let _g = setup();
    let out = ok(&["probe"]);
    assert!(out.contains("accepts the fmod_ret program"), "{out}");
    assert!(mptcpify_pins().is_empty());
    assert_eq!(proto_of(None, "tcp4"), IPPROTO_TCP);
}

/// Runs `mptcpify logs` while a probe in `cg` makes one TCP socket; returns the first record
/// printed within `wait`, if any.
fn first_log_record(cg: &TestCgroup, wait: std::time::Duration) -> Option<String> {
    use std::io::{BufRead as _, BufReader};
    let mut logs =
        std::process::Command::new(mptcpify_bin()).arg("logs").stderr(std::process::Stdio::piped()).spawn().unwrap();
    let stderr = logs.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(proto_of(Some(cg), "tcp4"), IPPROTO_MPTCP);
    let line = rx.recv_timeout(wait).ok();
    let _ = logs.kill();
    let _ = logs.wait();
    line
}

#[test]
fn debug_logging_is_off_by_default_and_streams_when_asked() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-logs");
    ok(&["enable", "--cgroup", &cg.relative]);
    let quiet = first_log_record(&cg, std::time::Duration::from_secs(2));
    assert_eq!(quiet, None, "logging must be off unless asked for");
    ok(&["reset"]);
    ok(&["enable", "--cgroup", &cg.relative, "--log-level", "debug"]);
    let id = status_json()["rules"][0]["key"].as_u64().unwrap();
    let line = first_log_record(&cg, std::time::Duration::from_secs(10)).expect("no log record within 10 s");
    assert!(line.contains(&format!("cgroup rule {id}: socket(2, 1) -> MPTCP")), "{line}");
}

#[test]
fn status_reports_the_programs_size_and_run_statistics() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-stats");
    ok(&["enable", "--cgroup", &cg.relative]);
    let program = status_json()["program"].clone();
    assert!(program["verified_instructions"].as_u64().is_some_and(|n| n > 10), "{program}");
    assert!(program["jited_bytes"].as_u64().is_some_and(|n| n > 0), "{program}");
    // Run statistics are kept only while kernel.bpf_stats_enabled=1.
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").unwrap();
    let before = status_json()["program"]["run_count"].as_u64().unwrap();
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_MPTCP);
    let after = status_json()["program"].clone();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0").unwrap();
    assert!(after["run_count"].as_u64().unwrap() > before, "{after}");
    assert!(after["run_time_ns"].as_u64().unwrap() > 0, "{after}");
}
