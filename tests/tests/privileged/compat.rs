//! Transparent beyond `socket()`: socket options an upgraded (MPTCP) socket refuses are seen,
//! counted per rule, option and program, and the compatibility guard keeps such a program TCP
//! from its next socket on. Real programs: an unmodified `psql` with `tcp_user_timeout`, and the
//! probe setting `TCP_MD5SIG` and `TCP_ULP`.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use mptcpify_tests::*;

const TCP_MD5SIG: &str = "setopt4:6:14";
const TCP_ULP_TLS: &str = "setopt4:6:31:tls";
const ENOPROTOOPT: i64 = 92;

/// A stand-in PostgreSQL server on 127.0.0.1: a startup gets AuthenticationOk, the server's
/// version and ReadyForQuery; a query gets EmptyQueryResponse and ReadyForQuery. Enough for an
/// unmodified `psql` to connect and run `;`, which is all these tests ask of it.
struct FakePostgres {
    port: u16,
    stop: Arc<AtomicBool>,
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend(((body.len() + 4) as u32).to_be_bytes());
    m.extend(body);
    m
}

fn serve_one(mut conn: TcpStream) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)?;
    let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
    conn.read_exact(&mut startup)?;
    let mut reply = message(b'R', &0u32.to_be_bytes());
    reply.extend(message(b'S', b"server_version\x0016.0\0"));
    reply.extend(message(b'S', b"client_encoding\0UTF8\0"));
    reply.extend(message(b'Z', b"I"));
    conn.write_all(&reply)?;
    loop {
        let mut head = [0u8; 5];
        conn.read_exact(&mut head)?;
        let mut body = vec![0u8; u32::from_be_bytes(head[1..].try_into().unwrap()) as usize - 4];
        conn.read_exact(&mut body)?;
        match head[0] {
            b'Q' => conn.write_all(&[message(b'I', b""), message(b'Z', b"I")].concat())?,
            _ => return Ok(()),
        }
    }
}

impl FakePostgres {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(conn) = conn {
                    std::thread::spawn(move || serve_one(conn));
                }
            }
        });
        Self { port, stop }
    }

    fn conninfo(&self, extra: &str) -> String {
        format!("host=127.0.0.1 port={} user=test dbname=test sslmode=disable gssencmode=disable {extra}", self.port)
    }
}

impl Drop for FakePostgres {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

const PSQL: &str = "/usr/bin/psql";

/// An unmodified `psql` running `;` in `cg`.
fn psql(cg: &TestCgroup, conninfo: &str) -> Output {
    assert!(Path::new(PSQL).exists(), "{PSQL} missing: `cargo xtask setup` installs postgresql-client");
    command_in(Some(cg), Path::new(PSQL), &["-X", "-w", "-c", ";", conninfo]).env("HOME", "/tmp").output().unwrap()
}

fn cgroup_id(cg: &TestCgroup) -> u64 {
    std::fs::metadata(&cg.path).unwrap().ino()
}

fn guard() -> serde_json::Value {
    status_json()["guard"].clone()
}

/// `guard.kept_tcp` entries of `program`.
fn kept(program: &str) -> Vec<serde_json::Value> {
    guard()["kept_tcp"].as_array().unwrap().iter().filter(|k| k["program"] == program).cloned().collect()
}

fn refusals(program: &str, option: &str) -> u64 {
    let g = guard();
    let all = g["refusals"].as_array().unwrap();
    all.iter().filter(|r| r["program"] == program && r["option"] == option).map(|r| r["count"].as_u64().unwrap()).sum()
}

fn counter(name: &str) -> u64 {
    status_json()["counters"][name].as_u64().unwrap()
}

#[test]
fn the_kernels_refused_options_are_probed_at_load() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-test/compat-probe");
    ok(&["enable", "--cgroup", &cg.relative]);
    let options = guard()["refused_options"].clone();
    let named = |name: &str| options.as_array().unwrap().iter().find(|o| o["option"] == name).cloned();
    for name in ["TCP_USER_TIMEOUT", "TCP_MD5SIG", "TCP_ULP", "IP_TTL", "SO_ZEROCOPY"] {
        let o = named(name).unwrap_or_else(|| panic!("{name} not among the refused options: {options}"));
        assert_eq!(o["setsockopt"], true, "{o}");
    }
    for accepted in ["TCP_NODELAY", "TCP_KEEPIDLE", "SO_KEEPALIVE", "IP_TOS"] {
        assert!(named(accepted).is_none(), "{accepted} is accepted on MPTCP: {options}");
    }
    // What TCP knows and MPTCP refuses, at any value: more than the options TCP accepts at a
    // sensible value (multicast options, say, are EINVAL on any stream socket).
    let n = options.as_array().unwrap().len();
    assert!(n >= 20, "{n} options: {options}");
    println!("refused options ({n}): {options}");
    assert!(ok(&["guard"]).contains(&format!("{n} options refused on MPTCP")));
}

#[test]
fn psql_with_tcp_user_timeout_is_refused_once_then_kept_tcp_by_the_guard() {
    let _g = setup();
    let pg = FakePostgres::start();
    let cg = TestCgroup::new("mptcpify-test/compat-psql");
    let other = TestCgroup::new("mptcpify-test/compat-psql-other");
    ok(&["enable", "--cgroup", &cg.relative]);
    ok(&["enable", "--cgroup", &other.relative]);
    let with_timeout = pg.conninfo("tcp_user_timeout=5000");

    // The stand-in answers as a server would: psql connects over TCP.
    let plain = TestCgroup::new("mptcpify-test/compat-psql-plain");
    let out = psql(&plain, &with_timeout);
    assert!(out.status.success(), "psql against the stand-in, not upgraded: {}", text(&out));

    let first = psql(&cg, &with_timeout);
    let refused_at = Instant::now();
    assert!(!first.status.success(), "the first upgraded psql was not refused: {}", text(&first));
    assert!(text(&first).contains("Protocol not available"), "{}", text(&first));
    let again = psql(&cg, &with_timeout);
    let reaction = refused_at.elapsed();
    assert!(again.status.success(), "psql after the refusal: {}", text(&again));
    println!("guard reaction: the next psql connected {reaction:?} after the refusal");

    let k = kept("psql");
    assert_eq!(k.len(), 1, "{}", guard());
    assert_eq!((k[0]["rule_kind"].as_str(), k[0]["rule_key"].as_u64()), (Some("cgroup"), Some(cgroup_id(&cg))));
    assert_eq!((k[0]["option"].as_str(), k[0]["errno"].as_str()), (Some("TCP_USER_TIMEOUT"), Some("ENOPROTOOPT")));
    assert_eq!(refusals("psql", "TCP_USER_TIMEOUT"), 1);
    assert!(counter("kept_tcp_guard") >= 1 && counter("options_refused") == 1);
    let shown = ok(&["status"]);
    assert!(shown.contains("kept TCP: psql") && shown.contains("TCP_USER_TIMEOUT"), "{shown}");
    let doctor = text(&mptcpify(&["doctor"]));
    assert!(doctor.contains("psql kept TCP under rule cgroup") && doctor.contains("guard allow"), "{doctor}");

    // The same program without the option, under another rule: still upgraded (its client
    // socket meets a TCP server, so it is counted as a fallback by its peer).
    let out = psql(&other, &pg.conninfo(""));
    assert!(out.status.success(), "{}", text(&out));
    let status = status_json();
    let rule = status["rules"].as_array().unwrap().iter().find(|r| r["key"] == cgroup_id(&other)).unwrap().clone();
    assert_eq!(rule["outcomes"]["fallback_peer"], 1, "psql under the other rule was not upgraded: {rule}");

    // Off: today's behaviour (upgraded, refused); on again: kept TCP again.
    ok(&["guard", "off"]);
    assert!(!psql(&cg, &with_timeout).status.success(), "the guard is off: psql is upgraded and refused");
    assert_eq!(refusals("psql", "TCP_USER_TIMEOUT"), 2);
    ok(&["guard", "on"]);
    assert!(psql(&cg, &with_timeout).status.success());

    // Allowed by the operator: upgraded (and refused) whatever it is refused, under every rule.
    ok(&["guard", "allow", "psql"]);
    assert!(kept("psql").is_empty(), "{}", guard());
    assert!(!psql(&cg, &with_timeout).status.success(), "an allowed program is upgraded");
    assert!(kept("psql").is_empty(), "an allowed program is never kept TCP: {}", guard());
    assert_eq!(guard()["allowed"], serde_json::json!(["psql"]));

    // Forgotten: upgraded again until its next refusal.
    ok(&["guard", "forget", "psql"]);
    assert!(!psql(&cg, &with_timeout).status.success());
    assert!(psql(&cg, &with_timeout).status.success());
    assert_eq!(kept("psql").len(), 1);

    // A removed rule takes its counts with it, not the guard's decision (audit, then enable,
    // replaces a rule); reset clears everything.
    ok(&["disable", "--cgroup", &cg.relative]);
    assert_eq!(refusals("psql", "TCP_USER_TIMEOUT"), 0);
    assert_eq!(kept("psql").len(), 1);
    ok(&["enable", "--cgroup", &cg.relative]);
    assert!(psql(&cg, &with_timeout).status.success(), "still kept TCP");
    ok(&["reset"]);
    ok(&["enable", "--cgroup", &cg.relative]);
    assert!(kept("psql").is_empty(), "{}", guard()["kept_tcp"]);
    assert!(!psql(&cg, &with_timeout).status.success(), "after reset, upgraded and refused again");
}

#[test]
fn md5sig_and_kernel_tls_refusals_are_counted_and_guarded() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-test/compat-md5");
    ok(&["enable", "--cgroup", &cg.relative]);
    // One process: refused, and its very next socket is TCP (the guard decides in the refused
    // call itself, before it returns).
    let out = parse_probe(&run_in(Some(&cg), &sockprobe_bin(), &[TCP_MD5SIG, "tcp4"]));
    assert_eq!((out[TCP_MD5SIG]["proto"], out[TCP_MD5SIG]["errno"]), (262, ENOPROTOOPT), "upgraded, then refused");
    assert_eq!(out["tcp4"]["proto"], 6, "the next socket of the refused program");
    // Kept TCP from the next socket on: TCP knows the option (an empty key is its own error).
    let ulp = &parse_probe(&run_in(Some(&cg), &sockprobe_bin(), &[TCP_ULP_TLS]))[TCP_ULP_TLS];
    assert_eq!(ulp["proto"], 6, "{ulp:?}");
    assert_ne!(ulp["errno"], ENOPROTOOPT);
    assert_eq!(kept("sockprobe")[0]["option"], "TCP_MD5SIG");

    ok(&["guard", "forget", "--all"]);
    let ulp = &parse_probe(&run_in(Some(&cg), &sockprobe_bin(), &[TCP_ULP_TLS]))[TCP_ULP_TLS];
    assert_eq!((ulp["proto"], ulp["errno"]), (262, ENOPROTOOPT));
    assert_eq!((refusals("sockprobe", "TCP_MD5SIG"), refusals("sockprobe", "TCP_ULP")), (1, 1));
    assert_eq!(kept("sockprobe")[0]["option"], "TCP_ULP");

    // Bad input changes nothing.
    let decided =
        || (guard()["allowed"].clone(), kept("sockprobe").iter().map(|k| k["option"].clone()).collect::<Vec<_>>());
    let before = decided();
    fails(&["guard", "allow", "a-name-longer-than-fifteen"], "at most 15");
    fails(&["guard", "forget"], "required");
    assert_eq!(decided(), before);
}

#[test]
fn audit_predicts_what_enforcing_would_break_and_the_guard_keeps_it_tcp_from_the_start() {
    let _g = setup();
    let pg = FakePostgres::start();
    let cg = TestCgroup::new("mptcpify-test/compat-audit");
    let with_timeout = pg.conninfo("tcp_user_timeout=5000");
    ok(&["enable", "--cgroup", &cg.relative, "--audit"]);
    assert_eq!(guard()["audit_watchers"], true, "an audit rule attaches the watchers");

    // Audited: TCP, so psql works; the option is predicted to fail once enforced.
    let out = psql(&cg, &pg.conninfo(""));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(counter("options_would_fail"), 0, "no option, no prediction");
    let out = psql(&cg, &with_timeout);
    assert!(out.status.success(), "an audited psql stays TCP: {}", text(&out));
    let g = guard();
    let predicted: Vec<_> = g["refusals"].as_array().unwrap().iter().filter(|r| r["predicted"] == true).collect();
    assert_eq!(predicted.len(), 1, "{g}");
    assert_eq!(
        (predicted[0]["program"].as_str(), predicted[0]["option"].as_str()),
        (Some("psql"), Some("TCP_USER_TIMEOUT"))
    );
    assert_eq!(predicted[0]["rule_key"].as_u64(), Some(cgroup_id(&cg)));
    assert_eq!((counter("options_would_fail"), counter("options_refused")), (1, 0));
    let k = kept("psql");
    assert_eq!((k.len(), &k[0]["predicted"]), (1, &serde_json::json!(true)), "{g}");
    let doctor = text(&mptcpify(&["doctor"]));
    assert!(doctor.contains("psql would fail setsockopt(TCP_USER_TIMEOUT) x1 under audit rule cgroup"), "{doctor}");

    // Enforced: psql connects at its first try, kept TCP by the prediction; nothing is refused.
    ok(&["disable", "--cgroup", &cg.relative]);
    assert_eq!(guard()["audit_watchers"], false, "no audit rule, no watchers");
    ok(&["enable", "--cgroup", &cg.relative]);
    let out = psql(&cg, &with_timeout);
    assert!(out.status.success(), "enforced after an audit that predicted it: {}", text(&out));
    assert_eq!(counter("options_refused"), 0);
    assert!(counter("kept_tcp_guard") >= 1);
}

const EACCES: i64 = 13;
const ECONNREFUSED: i64 = 111;

/// A Landlock sandbox that restricts TCP connects to one port holds for a process in an enabled
/// cgroup exactly as without mptcpify: its sockets stay TCP (Landlock does not apply its TCP rules
/// to MPTCP sockets), unless this kernel's Landlock restricts MPTCP too.
#[test]
fn a_landlock_sandbox_that_restricts_tcp_holds_in_an_enabled_cgroup() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-test/compat-landlock");
    let plain = TestCgroup::new("mptcpify-test/compat-landlock-plain");
    ok(&["enable", "--cgroup", &cg.relative]);
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed_port = allowed.local_addr().unwrap().port();
    let closed_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let probe = |cg: &TestCgroup, spec: String| {
        let out = parse_probe(&run_in(Some(cg), &sockprobe_bin(), &[&spec]));
        out[&spec].clone()
    };
    let elsewhere = format!("landlock4:{allowed_port}:{closed_port}");
    let without = probe(&plain, elsewhere.clone());
    assert_eq!((without["proto"], without["errno"]), (6, EACCES), "the sandbox as TCP has it: {without:?}");
    // What an upgrade would do: MPTCP sockets and this kernel's Landlock.
    let as_mptcp = probe(&plain, format!("landlock-mptcp4:{allowed_port}:{closed_port}"));
    let landlock_holds_mptcp = as_mptcp["errno"] == EACCES;
    if !landlock_holds_mptcp {
        assert_eq!(as_mptcp["errno"], ECONNREFUSED, "an MPTCP socket escapes the sandbox here: {as_mptcp:?}");
    }
    assert_eq!(proto_of(Some(&cg), "tcp4"), 262, "the cgroup is upgraded");

    let with = probe(&cg, elsewhere);
    assert_eq!(with["errno"], EACCES, "refused exactly as without mptcpify: {with:?}");
    let allowed_connect = probe(&cg, format!("landlock4:{allowed_port}:{allowed_port}"));
    assert_eq!(allowed_connect["errno"], 0, "{allowed_connect:?}");
    if landlock_holds_mptcp {
        assert_eq!(with["proto"], 262, "Landlock holds MPTCP here: nothing to keep TCP");
    } else {
        assert_eq!((with["proto"], allowed_connect["proto"]), (6, 6), "sandboxed processes keep TCP");
        assert_eq!(counter("kept_tcp_landlock"), 2);
    }
    let doctor = text(&mptcpify(&["doctor"]));
    let line = doctor.lines().find(|l| l.contains(" landlock ")).unwrap_or_else(|| panic!("{doctor}"));
    let want = if landlock_holds_mptcp { "restricts MPTCP sockets" } else { "keeps TCP sockets" };
    assert!(line.starts_with("OK") && line.contains(want), "{line}");
}

/// Under the agent: the guard's decisions survive an agent restart, and its metrics name the
/// refused program and option per rule (would-fail under an audit rule, kept TCP).
#[test]
fn the_agent_keeps_the_guards_decisions_across_restarts_and_exports_them() {
    let _g = setup();
    let pg = FakePostgres::start();
    let cg = TestCgroup::new("mptcpify-test/compat-agent");
    let d = tempfile::tempdir().unwrap();
    let policy = d.path().join("policy.toml");
    std::fs::write(&policy, "[audit]\ncgroups = [\"mptcpify-test/compat-agent\"]\n").unwrap();
    let with_timeout = pg.conninfo("tcp_user_timeout=5000");

    let agent = AgentProcess::start(&policy, &[], &[]);
    assert!(psql(&cg, &with_timeout).status.success(), "audited: TCP");
    let m = agent.metrics();
    let would_fail =
        m.lines().find(|l| l.starts_with("mptcpify_option_would_fail_total{") && l.contains("program=\"psql\""));
    let line = would_fail.unwrap_or_else(|| panic!("no would-fail series for psql: {m}"));
    assert!(line.contains("option=\"TCP_USER_TIMEOUT\"") && line.ends_with(" 1"), "{line}");
    agent.stop(libc::SIGTERM);

    // Enforced by a new agent: psql is kept TCP from its first connection, and it says so.
    std::fs::write(&policy, "[enable]\ncgroups = [\"mptcpify-test/compat-agent\"]\n").unwrap();
    let agent = AgentProcess::start(&policy, &[], &[]);
    assert!(psql(&cg, &with_timeout).status.success(), "kept TCP by the prediction: {}", agent.log());
    let m = agent.metrics();
    let series = m.lines().find(|l| l.starts_with("mptcpify_guard_kept_tcp{") && l.contains("program=\"psql\""));
    assert!(series.is_some_and(|l| l.contains("option=\"TCP_USER_TIMEOUT\"") && l.ends_with(" 1")), "{m}");
    assert_eq!(metric(&m, "mptcpify_guard_enabled"), Some(1.0));
    assert_eq!(counter("options_refused"), 0, "nothing was ever refused");
    agent.stop(libc::SIGTERM);
    let agent = AgentProcess::start(&policy, &[], &[]);
    assert!(psql(&cg, &with_timeout).status.success(), "still kept TCP after a restart");
    assert_eq!(kept("psql").len(), 1);
    drop(agent);
}

/// Loads an AppArmor profile (AppArmor is on in Debian's kernel; its userspace is the host's).
fn apparmor_profile(name: &str, rules: &str) {
    let security = Path::new("/sys/kernel/security");
    if !security.join("apparmor").exists() {
        let out = std::process::Command::new("mount").args(["-t", "securityfs", "securityfs"]).arg(security).output();
        assert!(out.is_ok_and(|o| o.status.success()), "mounting securityfs");
    }
    assert!(security.join("apparmor").exists(), "AppArmor is not on in this kernel");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, format!("abi <abi/3.0>,\nprofile {name} {{\n  file,\n{rules}\n}}\n")).unwrap();
    let out = std::process::Command::new("apparmor_parser").arg("-r").arg(&file).output().unwrap();
    assert!(out.status.success(), "apparmor_parser: {}", text(&out));
}

/// AppArmor decides socket() by family and type: a profile written for TCP (`network inet tcp`)
/// allows the upgraded socket, and one that denies TCP denies it too — as for TCP.
#[test]
fn apparmor_profiles_written_for_tcp_treat_the_upgraded_socket_as_tcp() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-test/compat-apparmor");
    let plain = TestCgroup::new("mptcpify-test/compat-apparmor-plain");
    ok(&["enable", "--cgroup", &cg.relative]);
    apparmor_profile("mptcpify-test-tcp", "  network inet tcp,");
    apparmor_profile("mptcpify-test-no-tcp", "  network,\n  deny network inet tcp,");
    let sockprobe = sockprobe_bin().display().to_string();
    let confined = |cg: &TestCgroup, profile: &str| {
        let out = run_in(Some(cg), Path::new("/usr/bin/aa-exec"), &["-p", profile, "--", &sockprobe, "tcp4", "udp4"]);
        parse_probe(&out)
    };
    let allowed = confined(&cg, "mptcpify-test-tcp");
    assert_eq!(allowed["udp4"]["errno"], EACCES, "the profile is in force: {allowed:?}");
    assert_eq!(allowed["tcp4"]["proto"], 262, "`network inet tcp` allows the upgraded socket: {allowed:?}");
    assert_eq!(confined(&plain, "mptcpify-test-tcp")["tcp4"]["proto"], 6);
    for which in [&cg, &plain] {
        let denied = confined(which, "mptcpify-test-no-tcp");
        assert_eq!(denied["tcp4"]["errno"], EACCES, "denied with or without mptcpify: {denied:?}");
        assert_eq!(denied["udp4"]["proto"], 17, "{denied:?}");
    }
}

/// Command rules all have rule key 0: removing one command rule leaves another's counts, and the
/// guard keeps the refused program TCP under its own command rule.
#[test]
fn command_rules_keep_their_own_refusal_counts() {
    let _g = setup();
    ok(&["enable", "--comm", "sockprobe"]);
    ok(&["enable", "--comm", "compat-other"]);
    let out = parse_probe(&run_in(None, &sockprobe_bin(), &[TCP_MD5SIG, "tcp4"]));
    assert_eq!((out[TCP_MD5SIG]["proto"], out[TCP_MD5SIG]["errno"]), (262, ENOPROTOOPT));
    assert_eq!(out["tcp4"]["proto"], 6, "kept TCP under its command rule");
    assert_eq!(kept("sockprobe")[0]["rule_kind"], "comm");
    ok(&["disable", "--comm", "compat-other"]);
    assert_eq!(refusals("sockprobe", "TCP_MD5SIG"), 1, "another command rule's removal took them: {}", guard());
    ok(&["disable", "--comm", "sockprobe"]);
    assert_eq!(refusals("sockprobe", "TCP_MD5SIG"), 0);
}

/// A watcher's link lost (an edit killed between attaching two watchers, or a hand's `rm`)
/// leaves audit predicting nothing: doctor says so and how to repair it, and the next edit does.
#[test]
fn doctor_says_when_audit_predicts_nothing_and_an_edit_repairs_it() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-test/compat-blind");
    ok(&["enable", "--cgroup", &cg.relative, "--audit"]);
    assert_eq!(guard()["audit_watchers"], true);
    let compat = || {
        let d: serde_json::Value = serde_json::from_str(&ok(&["doctor", "--json"])).unwrap();
        let checks = d["checks"].as_array().cloned().unwrap_or_default();
        checks
            .into_iter()
            .find(|c| c["name"] == "compatibility")
            .unwrap_or_else(|| panic!("no compatibility check: {d}"))
    };
    assert!(!compat()["detail"].as_str().unwrap().contains("not attached"), "{}", compat());
    std::fs::remove_file(Path::new(mptcpify_common::PIN_DIR).join("audit_setsockopt_link")).unwrap();
    assert_eq!(guard()["audit_watchers"], false, "detached with its pin");
    let c = compat();
    assert_eq!(c["level"], "WARN", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("option watchers are not attached"), "{c}");
    assert!(c["fix"].as_str().unwrap().contains("--audit"), "{c}");
    ok(&["enable", "--cgroup", &cg.relative, "--audit"]);
    assert_eq!(guard()["audit_watchers"], true, "the edit attached it again");
    assert!(!compat()["detail"].as_str().unwrap().contains("not attached"), "{}", compat());
}
