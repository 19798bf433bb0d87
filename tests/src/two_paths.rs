//! Two network namespaces joined by two veth pairs, for the paths tests: `c1`–`s1` is path 1
//! (10.N.1.0/24), `c2`–`s2` path 2 (10.N.2.0/24); the client is .1, the server .2. Built with
//! iproute2 as a host's network would be (links, addresses, default routes, qdiscs), never
//! with endpoints or rules: those are for mptcpify to make.
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use crate::{TestCgroup, command_in, mptcpify, sibling_of_test_binary, text};

pub struct TwoPaths {
    pub cli: String,
    pub srv: String,
    pub net: u8,
}

/// Each direction of each path: a token bucket at `mbit`, then `delay_ms` of delay.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub mbit: u32,
    pub delay_ms: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The client sends (upload): its subflows' own packets show where they leave.
    Upload,
    Download,
}

/// What one transfer did.
#[derive(Debug)]
pub struct Transfer {
    pub client_proto: i64,
    pub server_proto: i64,
    pub subflows: i64,
    pub add_addr_accepted: i64,
    pub fallback: bool,
    /// Bytes the client sent (upload) or received (download) through c1 and c2.
    pub through: [u64; 2],
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", text(&out));
}

fn field(line: &str, key: &str) -> i64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .parse()
        .unwrap()
}

impl TwoPaths {
    /// With `gateways`, the client has a default route through each path (metric 100 via
    /// path 1, 200 via path 2), as a two-homed host with DHCP on both has.
    pub fn new(prefix: &str, net: u8, gateways: bool, shape: Option<Shape>) -> Self {
        let t = TwoPaths { cli: format!("{prefix}-cli"), srv: format!("{prefix}-srv"), net };
        t.remove();
        ip(&["netns", "add", &t.cli]);
        ip(&["netns", "add", &t.srv]);
        for p in 1..=2 {
            let (c, s) = (format!("c{p}"), format!("s{p}"));
            ip(&["link", "add", &c, "netns", &t.cli, "type", "veth", "peer", "name", &s, "netns", &t.srv]);
            ip(&["-n", &t.cli, "addr", "add", &format!("{}/24", t.cli_addr(p)), "dev", &c]);
            ip(&["-n", &t.srv, "addr", "add", &format!("{}/24", t.srv_addr(p)), "dev", &s]);
            ip(&["-n", &t.cli, "link", "set", &c, "up"]);
            ip(&["-n", &t.srv, "link", "set", &s, "up"]);
            if let Some(shape) = shape {
                for (ns, dev) in [(&t.cli, &c), (&t.srv, &s)] {
                    let tc =
                        |args: &[&str]| ip(&[&["netns", "exec", ns, "tc", "qdisc", "add", "dev", dev], args].concat());
                    let rate = format!("{}mbit", shape.mbit);
                    tc(&["root", "handle", "1:", "tbf", "rate", &rate, "burst", "64kb", "latency", "100ms"]);
                    let delay = format!("{}ms", shape.delay_ms);
                    tc(&["parent", "1:1", "handle", "10:", "netem", "delay", &delay, "limit", "10000"]);
                }
            }
        }
        for ns in [&t.cli, &t.srv] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        if gateways {
            for (p, metric) in [(1, "100"), (2, "200")] {
                let (gw, dev) = (t.srv_addr(p), format!("c{p}"));
                ip(&["-n", &t.cli, "route", "add", "default", "via", &gw, "dev", &dev, "metric", metric]);
            }
        }
        t.wait_for_links();
        t
    }

    /// Until every path's two ends are operationally up (`state UP`): the kernel's link watcher
    /// sets that a moment after the carrier came, and a test must start from the state it needs.
    fn wait_for_links(&self) {
        let up = |ns: &str, dev: &str| {
            let out = Command::new("ip").args(["-n", ns, "-j", "link", "show", "dev", dev]).output().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v[0]["operstate"] == "UP"
        };
        let all_up =
            || (1..=2).all(|p| up(&self.cli, &format!("c{p}")) && up(&self.srv, &format!("s{p}"))).then_some(());
        assert!(
            crate::wait_for(std::time::Duration::from_secs(10), all_up).is_some(),
            "the paths' links never came up"
        );
    }

    pub fn cli_addr(&self, path: u8) -> String {
        format!("10.{}.{path}.1", self.net)
    }

    pub fn srv_addr(&self, path: u8) -> String {
        format!("10.{}.{path}.2", self.net)
    }

    /// `mptcpify ARGS` for the namespace `ns` (through `--netns`, as a user would).
    pub fn paths(&self, ns: &str, args: &[&str]) -> std::process::Output {
        mptcpify(&[&["paths", "--netns", ns], args].concat())
    }

    pub fn paths_json(&self, ns: &str) -> serde_json::Value {
        let out = self.paths(ns, &["--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Bytes counted by `dev` of `ns` (`tx` or `rx`).
    pub fn bytes(&self, ns: &str, dev: &str, counter: &str) -> u64 {
        let out = Command::new("ip").args(["-n", ns, "-s", "-j", "link", "show", "dev", dev]).output().unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        v[0]["stats64"][counter]["bytes"].as_u64().unwrap_or_else(|| panic!("no {counter} bytes: {v}"))
    }

    fn client_counts(&self, direction: Direction) -> [u64; 2] {
        let counter = if direction == Direction::Upload { "tx" } else { "rx" };
        [self.bytes(&self.cli, "c1", counter), self.bytes(&self.cli, "c2", counter)]
    }

    /// `bytes` from client to server (or back) over one connection to the server's path-1
    /// address, both ends run in `cgroup` (enter the cgroup first, then the namespace).
    pub fn transfer(&self, cgroup: &TestCgroup, direction: Direction, bytes: usize, settle_ms: u32) -> Transfer {
        let probe = sibling_of_test_binary("pathprobe");
        let probe = probe.to_str().unwrap();
        let target = format!("{}:5201", self.srv_addr(1));
        // On every address, as servers do: a subflow joining an announced address needs a
        // listener there too.
        let any = "0.0.0.0:5201";
        let (srv_dir, cli_dir) = if direction == Direction::Upload { ("receive", "send") } else { ("send", "receive") };
        let bytes_arg = bytes.to_string();
        let ip_path = Path::new("/usr/sbin/ip");
        let mut server =
            command_in(Some(cgroup), ip_path, &["netns", "exec", &self.srv, probe, "serve", any, srv_dir, &bytes_arg])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        let before = self.client_counts(direction);
        let settle = settle_ms.to_string();
        let out = command_in(
            Some(cgroup),
            ip_path,
            &["netns", "exec", &self.cli, probe, "connect", &target, cli_dir, &bytes_arg, &settle],
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "client: {}", text(&out));
        let after = self.client_counts(direction);
        let accepted = lines.next().unwrap().unwrap();
        assert!(server.wait().unwrap().success());
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Transfer {
            client_proto: field(&line, "proto"),
            server_proto: field(&accepted, "proto"),
            subflows: field(&line, "subflows"),
            add_addr_accepted: field(&line, "add_addr_accepted"),
            fallback: field(&line, "fallback") == 1,
            through: [after[0] - before[0], after[1] - before[1]],
        }
    }

    /// One connection from the client to the server's path-1 address that stays open for
    /// `hold_ms` after the client sent `bytes` (and waited `settle_ms` for subflows): the client
    /// runs in `client_cg`, the server in `server_cg` (none: not selected).
    pub fn hold(
        &self,
        client_cg: Option<&TestCgroup>,
        server_cg: Option<&TestCgroup>,
        bytes: usize,
        settle_ms: u32,
        hold_ms: u32,
    ) -> Held {
        let probe = crate::pathprobe_bin();
        let probe = probe.to_str().unwrap();
        let ip_path = Path::new("/usr/sbin/ip");
        let (bytes, settle, hold) = (bytes.to_string(), settle_ms.to_string(), hold_ms.to_string());
        let mut server = command_in(
            server_cg,
            ip_path,
            &["netns", "exec", &self.srv, probe, "serve", "0.0.0.0:5201", "hold", &bytes, &hold],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let mut server_lines = BufReader::new(server.stdout.take().unwrap()).lines();
        assert_eq!(server_lines.next().unwrap().unwrap(), "ready");
        let target = format!("{}:5201", self.srv_addr(1));
        let mut client = command_in(
            client_cg,
            ip_path,
            &["netns", "exec", &self.cli, probe, "connect", &target, "hold", &bytes, &settle, &hold],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let client_line = BufReader::new(client.stdout.take().unwrap()).lines().next().unwrap().unwrap();
        let server_line = server_lines.next().unwrap().unwrap();
        Held {
            client_proto: field(&client_line, "proto"),
            server_proto: field(&server_line, "proto"),
            subflows: field(&client_line, "subflows"),
            fallback: field(&client_line, "fallback") == 1,
            client,
            server,
        }
    }

    fn remove(&self) {
        for ns in [&self.cli, &self.srv] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

/// A connection [`TwoPaths::hold`] keeps open; both ends are waited for on drop.
pub struct Held {
    pub client_proto: i64,
    pub server_proto: i64,
    pub subflows: i64,
    pub fallback: bool,
    pub client: std::process::Child,
    pub server: std::process::Child,
}

impl Held {
    /// Waits for both ends to close, successfully.
    pub fn finish(mut self) {
        assert!(self.client.wait().unwrap().success(), "client");
        assert!(self.server.wait().unwrap().success(), "server");
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for child in [&mut self.client, &mut self.server] {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for TwoPaths {
    fn drop(&mut self) {
        self.remove();
    }
}
