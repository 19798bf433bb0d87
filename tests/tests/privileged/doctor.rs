//! `mptcpify doctor`: real checks, with the fix for what fails.
use std::process::{Command, Stdio};

use mptcpify_tests::*;

fn doctor() -> (i32, serde_json::Value) {
    let out = mptcpify(&["doctor", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (out.status.code().unwrap(), v)
}

fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no {name} check: {v}"))
}

#[test]
fn doctor_passes_here_and_points_at_missing_endpoints() {
    let _g = setup();
    let (code, v) = doctor();
    assert_eq!(code, 0, "{v}");
    for name in [
        "privileges",
        "kernel",
        "btf",
        "hook",
        "program",
        "bpffs",
        "cgroup2",
        "net.mptcp.enabled",
        "fallback-guards",
        "never-break",
    ] {
        assert_eq!(check(&v, name)["level"], "OK", "{name}: {v}");
    }
    assert!(check(&v, "fallback-guards")["detail"].as_str().unwrap().contains("blackhole_timeout 3600 s"), "{v}");
    std::fs::write("/proc/sys/net/mptcp/blackhole_timeout", "0").unwrap();
    let (_, off) = doctor();
    std::fs::write("/proc/sys/net/mptcp/blackhole_timeout", "3600").unwrap();
    assert_eq!(check(&off, "fallback-guards")["level"], "WARN", "{off}");
    assert!(check(&off, "fallback-guards")["fix"].as_str().unwrap().contains("blackhole_timeout=3600"));
    let endpoints = check(&v, "endpoints");
    assert_eq!(endpoints["level"], "WARN", "{v}");
    assert!(endpoints["fix"].as_str().unwrap().contains("mptcpify paths auto"), "{endpoints}");
    assert!(mptcpify_pins().is_empty(), "the program probe left nothing pinned");

    let ip = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
    ip(&["addr", "add", "10.99.0.1/32", "dev", "lo"]);
    ip(&["mptcp", "endpoint", "add", "10.99.0.1", "dev", "lo", "subflow"]);
    ip(&["mptcp", "limits", "set", "subflow", "2"]);
    let (_, v) = doctor();
    ip(&["mptcp", "endpoint", "flush"]);
    ip(&["addr", "del", "10.99.0.1/32", "dev", "lo"]);
    assert_eq!(check(&v, "endpoints")["level"], "OK", "{v}");
    assert!(check(&v, "endpoints")["detail"].as_str().unwrap().contains("subflow 2"));
    // Bound to lo, whose subflows cannot leave the host: named, with the fix.
    let routing = check(&v, "subflow-routing");
    assert_eq!(routing["level"], "WARN", "{v}");
    assert!(routing["detail"].as_str().unwrap().contains("10.99.0.1"), "{routing}");

    std::fs::write("/proc/sys/net/mptcp/enabled", "0").unwrap();
    let (code, v) = doctor();
    let human = mptcpify(&["doctor"]);
    std::fs::write("/proc/sys/net/mptcp/enabled", "1").unwrap();
    assert_eq!(code, 0, "a warning is not a failure");
    assert_eq!(check(&v, "net.mptcp.enabled")["level"], "WARN");
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("WARN net.mptcp.enabled") && human.contains("fix: sysctl -w net.mptcp.enabled=1"),
        "{human}"
    );
}

#[test]
fn doctor_finds_tcp_listeners_that_predate_their_rule() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-listener");
    let script = "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\nprint(s.getsockname()[1], flush=True)\ntime.sleep(60)";
    let mut server = Command::new("/bin/sh")
        .args(["-c", r#"echo $$ > "$0" && exec python3 -c "$1""#])
        .arg(cg.procs())
        .arg(script)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.as_mut().unwrap()), &mut port).unwrap();
    ok(&["enable", "--cgroup", &cg.relative]);
    let (code, v) = doctor();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(code, 0);
    let listeners = check(&v, "listeners");
    assert_eq!(listeners["level"], "WARN", "{v}");
    let detail = listeners["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("pid {}", server.id())) && detail.contains(&format!("port {}", port.trim())),
        "{detail}"
    );
    let (_, v) = doctor();
    assert_eq!(check(&v, "listeners")["level"], "OK", "gone with the process: {v}");
}

#[test]
fn doctor_fails_without_privileges() {
    let _g = setup();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(world_runnable(&mptcpify_bin()))
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(check(&v, "privileges")["level"], "FAIL");
    assert!(check(&v, "privileges")["fix"].as_str().unwrap().contains("sudo"));
}
