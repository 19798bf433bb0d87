//! `mptcpify monitor`: a live stream of decisions, only while someone listens.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use mptcpify_tests::*;

#[test]
fn monitor_streams_upgrades_and_exclusions_while_it_listens() {
    let _g = setup();
    let enabled = TestCgroup::new("mptcpify-t-mon");
    let excluded = TestCgroup::new("mptcpify-t-mon/quiet");
    ok(&["enable", "--cgroup", &enabled.relative]);
    ok(&["exclude", "--cgroup", &excluded.relative]);
    // Before anyone listens the program writes no events.
    assert_eq!(proto_of(Some(&enabled), "tcp4"), IPPROTO_MPTCP);
    assert_eq!(status_json()["monitor"], serde_json::Value::Null);

    let mut mon = Command::new(mptcpify_bin()).args(["monitor", "--json"]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = mon.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    while status_json()["monitor"] != mon.id() {
        assert!(start.elapsed() < Duration::from_secs(10), "monitor did not register");
        std::thread::sleep(Duration::from_millis(100));
    }
    fails(&["monitor"], &format!("another monitor (pid {}) is listening", mon.id()));
    assert_eq!(protocols(Some(&enabled), &["tcp6"])["tcp6"], IPPROTO_MPTCP);
    assert_eq!(proto_of(Some(&excluded), "tcp4"), IPPROTO_TCP);

    let mut events = Vec::new();
    while events.len() < 2 {
        let line = rx.recv_timeout(Duration::from_secs(10)).expect("two events within 10 s");
        events.push(serde_json::from_str::<serde_json::Value>(&line).expect(&line));
    }
    let up = &events[0];
    assert_eq!(up["decision"], "upgraded", "{up}");
    assert_eq!(up["family"], "inet6");
    assert_eq!(up["comm"], "sockprobe");
    assert_eq!(up["rule"], "cgroup");
    assert_eq!(up["cgroup"], enabled.path.display().to_string());
    assert!(up["time"].as_f64().unwrap() > 1.7e9, "wall-clock time: {up}");
    let ex = &events[1];
    assert_eq!(ex["decision"], "excluded", "{ex}");
    assert_eq!(ex["cgroup"], excluded.path.display().to_string());
    // The socket made before the monitor started was not reported: the next event, waited for
    // with a bound, is a marker made now (a reader that had not caught up cannot hide one).
    assert_eq!(proto_of(Some(&enabled), "tcp4"), IPPROTO_MPTCP);
    let line = rx.recv_timeout(Duration::from_secs(10)).expect("the marker's event within 10 s");
    let marker: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert_eq!((marker["family"].as_str(), marker["decision"].as_str()), (Some("inet"), Some("upgraded")), "{marker}");
    assert!(marker["time"].as_f64() > up["time"].as_f64(), "nothing older came after the first two: {marker}");

    assert!(Command::new("kill").args(["-TERM", &mon.id().to_string()]).status().unwrap().success());
    assert!(mon.wait().unwrap().success());
    assert_eq!(status_json()["monitor"], serde_json::Value::Null, "the listener unregistered");
    assert_eq!(status_json()["counters"]["events_dropped"], 0);
}
