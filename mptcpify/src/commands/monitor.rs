//! `mptcpify monitor`: live upgrade decisions and connection outcomes from the program's ring
//! buffer. The program writes
//! events only while `Config::monitor_pid` names a listener, so an unwatched system pays
//! nothing but one compare.
use std::{collections::HashMap, io::Write as _, path::PathBuf};

use anyhow::{Result, bail};
use mptcpify_common::{AF_INET6, Decision, Event, RuleKind, SockOpt};
use nix::time::{ClockId, clock_gettime};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    bpf::sys,
    compat::names,
    host::{cgroup, mounts::Mounts, preconditions},
    state::{
        maps::State,
        pins::{self, Lock},
        rules::comm_str,
    },
};

/// One decision as `--json` prints it (one object per line).
#[derive(Debug, Serialize)]
pub struct Decided {
    /// Seconds since the Unix epoch.
    pub time: f64,
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub family: &'static str,
    /// Decisions (in the process, at `socket()`): `upgraded`, `excluded`, `kept-tcp-mptcp-disabled`,
    /// `kept-tcp-guard`, `would-upgrade`; `option-refused` and `option-would-fail` (in the
    /// process, at a socket option call, with `refused`). Outcomes (in the network stack, pid 0): `mptcp`, `fallback-peer`,
    /// `fallback-client`, `subflow`, `subflow-failed`. `unknown` from a newer program.
    #[serde(serialize_with = "decision_name")]
    pub decision: Option<Decision>,
    /// The kind of rule that decided (`unknown` from a newer program).
    #[serde(serialize_with = "kind_name")]
    pub rule: Option<RuleKind>,
    /// The rule's key: cgroup id, pid or uid (0 for comm and all).
    pub rule_key: u64,
    /// Outcomes: the connection's local and remote port (0 for decisions).
    pub local_port: u16,
    pub remote_port: u16,
    /// `option-refused`: what the program called and what it got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<RefusedCall>,
}

/// A socket option call refused on an upgraded socket because it is MPTCP.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RefusedCall {
    /// `setsockopt` or `getsockopt`.
    pub call: &'static str,
    /// `TCP_USER_TIMEOUT`, or `SOL_TCP/99` for one without a name.
    pub option: String,
    /// `ENOPROTOOPT` or `EOPNOTSUPP`; `would fail` for `option-would-fail` (an audited socket,
    /// where the call succeeded on TCP).
    pub errno: String,
}

fn decision_name<S: serde::Serializer>(d: &Option<Decision>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.map_or("unknown", Decision::name))
}

fn kind_name<S: serde::Serializer>(k: &Option<RuleKind>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.map_or("unknown", RuleKind::name))
}

impl Decided {
    /// One line of the table `monitor` prints: who, what, which rule, then the detail (the
    /// refused call, an outcome's ports, or the caller's cgroup).
    fn line(&self) -> String {
        let decision = self.decision.map_or("unknown", Decision::name);
        let (pid, comm, detail) = match &self.refused {
            Some(r) => {
                (self.pid.to_string(), super::shown(&self.comm), format!("{}({}): {}", r.call, r.option, r.errno))
            }
            // An outcome: no process, the connection's ports instead of a cgroup.
            None if self.pid == 0 => {
                ("-".into(), "-".into(), format!("port {} -> {}", self.local_port, self.remote_port))
            }
            None => {
                (self.pid.to_string(), super::shown(&self.comm), super::shown(self.cgroup.as_deref().unwrap_or("?")))
            }
        };
        format!(
            "{:<12} {pid:>7} {comm:<16} {:<6} {decision:<24} {:<8} {detail}",
            clock_time(self.time),
            self.family,
            self.rule_text()
        )
    }

    /// The deciding rule as a human reads it: `cgroup 27`, `pid 4242`, `comm`, `all`.
    fn rule_text(&self) -> String {
        match self.rule {
            Some(kind @ (RuleKind::Comm | RuleKind::All)) => kind.name().to_owned(),
            Some(kind) => format!("{} {}", kind.name(), self.rule_key),
            None => "unknown".to_owned(),
        }
    }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Registers this process as the listener; clears it again on drop.
struct Listening(u32);

impl Listening {
    fn start() -> Result<Self> {
        let me = std::process::id();
        let _lock = Lock::take()?;
        let mut st = State::open()?;
        let mut cfg = st.config()?;
        if cfg.monitor_pid != 0 && cfg.monitor_pid != me && alive(cfg.monitor_pid) {
            bail!("another monitor (pid {}) is listening; stop it first", cfg.monitor_pid);
        }
        cfg.monitor_pid = me;
        st.set_config(cfg)?;
        Ok(Self(me))
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let (Ok(_lock), Ok(mut st)) = (Lock::take(), State::open())
            && let Ok(mut cfg) = st.config()
            && cfg.monitor_pid == self.0
        {
            cfg.monitor_pid = 0;
            let _ = st.set_config(cfg);
        }
    }
}

fn seconds(clock: ClockId) -> f64 {
    clock_gettime(clock).map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9).unwrap_or(0.0)
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time.
fn clock_time(t: f64) -> String {
    let ms = (t * 1000.0) as u64;
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}.{:03}", (s / 3600) % 24, (s / 60) % 60, s % 60, ms % 1000)
}

/// Reads an [`Event`] from ring-buffer bytes, field by field at the `repr(C)` offsets.
fn read_event(b: &[u8]) -> Option<Event> {
    use std::mem::offset_of;
    if b.len() < size_of::<Event>() {
        return None;
    }
    fn at<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
        b[off..off + N].try_into().expect("length checked")
    }
    Some(Event {
        boot_ns: u64::from_ne_bytes(at(b, offset_of!(Event, boot_ns))),
        cgroup_id: u64::from_ne_bytes(at(b, offset_of!(Event, cgroup_id))),
        rule_key: u64::from_ne_bytes(at(b, offset_of!(Event, rule_key))),
        pid: u32::from_ne_bytes(at(b, offset_of!(Event, pid))),
        uid: u32::from_ne_bytes(at(b, offset_of!(Event, uid))),
        family: u16::from_ne_bytes(at(b, offset_of!(Event, family))),
        decision: b[offset_of!(Event, decision)],
        rule_kind: b[offset_of!(Event, rule_kind)],
        errno: u32::from_ne_bytes(at(b, offset_of!(Event, errno))),
        comm: at(b, offset_of!(Event, comm)),
        local_port: u16::from_ne_bytes(at(b, offset_of!(Event, local_port))),
        remote_port: u16::from_ne_bytes(at(b, offset_of!(Event, remote_port))),
        option_op: u32::from_ne_bytes(at(b, offset_of!(Event, option_op))),
        option: SockOpt {
            level: u32::from_ne_bytes(at(b, offset_of!(Event, option) + offset_of!(SockOpt, level))),
            name: u32::from_ne_bytes(at(b, offset_of!(Event, option) + offset_of!(SockOpt, name))),
        },
    })
}

pub fn decode(bytes: &[u8], boot_to_unix: f64, cgroup_path: &mut impl FnMut(u64) -> Option<String>) -> Option<Decided> {
    let e = read_event(bytes)?;
    Some(Decided {
        time: e.boot_ns as f64 / 1e9 + boot_to_unix,
        pid: e.pid,
        comm: comm_str(&e.comm),
        uid: e.uid,
        cgroup_id: e.cgroup_id,
        cgroup: cgroup_path(e.cgroup_id),
        family: if i32::from(e.family) == AF_INET6 { "inet6" } else { "inet" },
        decision: Decision::from_u8(e.decision),
        rule: RuleKind::from_u8(e.rule_kind),
        rule_key: e.rule_key,
        local_port: e.local_port,
        remote_port: e.remote_port,
        refused: matches!(Decision::from_u8(e.decision), Some(Decision::OptionRefused | Decision::OptionWouldFail))
            .then(|| RefusedCall {
                call: names::call_name(e.option_op),
                option: names::option_name(e.option),
                errno: if e.errno == 0 { "would fail".into() } else { names::errno_name(e.errno as i32) },
            }),
    })
}

pub async fn monitor(json: bool) -> Result<()> {
    preconditions::require_privileges()?;
    if !pins::is_loaded() {
        bail!("mptcpify is not loaded: nothing to monitor (`mptcpify enable …` first)");
    }
    let root: Option<PathBuf> = Mounts::read()?.cgroup2;
    let mut cache: HashMap<u64, Option<String>> = HashMap::new();
    let mut cgroup_path = |id: u64| {
        cache
            .entry(id)
            .or_insert_with(|| root.as_deref().and_then(|r| cgroup::find_by_id(r, id)).map(|p| p.display().to_string()))
            .clone()
    };
    let boot_to_unix = seconds(ClockId::CLOCK_REALTIME) - seconds(ClockId::CLOCK_BOOTTIME);
    let ring = State::events()?;
    let _listening = Listening::start()?;
    let mut fd = sys::async_fd(ring)?;
    let mut term = signal(SignalKind::terminate())?;
    if !json {
        println!("{:<12} {:>7} {:<16} {:<6} {:<24} {:<8} CGROUP", "TIME", "PID", "COMM", "FAMILY", "EVENT", "RULE");
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                let mut out = std::io::stdout().lock();
                while let Some(item) = ring.next() {
                    let Some(d) = decode(&item, boot_to_unix, &mut cgroup_path) else { continue };
                    if json {
                        writeln!(out, "{}", serde_json::to_string(&d)?)?;
                    } else {
                        writeln!(out, "{}", d.line())?;
                    }
                }
                out.flush()?;
                guard.clear_ready();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_decode_from_the_shared_layout() {
        use std::mem::offset_of;
        let mut b = vec![0u8; size_of::<Event>()];
        let put = |b: &mut Vec<u8>, off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(&mut b, offset_of!(Event, boot_ns), &2_500_000_000u64.to_ne_bytes());
        put(&mut b, offset_of!(Event, cgroup_id), &77u64.to_ne_bytes());
        put(&mut b, offset_of!(Event, rule_key), &77u64.to_ne_bytes());
        put(&mut b, offset_of!(Event, pid), &42u32.to_ne_bytes());
        put(&mut b, offset_of!(Event, uid), &1000u32.to_ne_bytes());
        put(&mut b, offset_of!(Event, family), &10u16.to_ne_bytes());
        put(&mut b, offset_of!(Event, decision), &[1]);
        put(&mut b, offset_of!(Event, rule_kind), &[4]);
        put(&mut b, offset_of!(Event, comm), b"curl");
        let d = decode(&b, 1000.0, &mut |id| Some(format!("/cg/{id}"))).unwrap();
        assert_eq!((d.pid, d.uid, d.comm.as_str(), d.family), (42, 1000, "curl", "inet6"));
        assert_eq!((d.decision, d.rule, d.rule_key), (Some(Decision::Upgraded), Some(RuleKind::Cgroup), 77));
        assert_eq!(d.rule_text(), "cgroup 77");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!((json["decision"].as_str(), json["rule"].as_str()), (Some("upgraded"), Some("cgroup")));
        assert_eq!(d.cgroup.as_deref(), Some("/cg/77"));
        assert!((d.time - 1002.5).abs() < 1e-6);
        assert!(d.refused.is_none() && json.get("refused").is_none());
        put(&mut b, offset_of!(Event, decision), &[Decision::OptionRefused as u8]);
        put(&mut b, offset_of!(Event, errno), &92u32.to_ne_bytes());
        put(&mut b, offset_of!(Event, option_op), &mptcpify_common::OPTION_SET.to_ne_bytes());
        put(&mut b, offset_of!(Event, option), &6u32.to_ne_bytes());
        put(&mut b, offset_of!(Event, option) + 4, &18u32.to_ne_bytes());
        let d = decode(&b, 1000.0, &mut |_| None).unwrap();
        let want = RefusedCall { call: "setsockopt", option: "TCP_USER_TIMEOUT".into(), errno: "ENOPROTOOPT".into() };
        assert_eq!(d.refused, Some(want));
        assert!(d.line().ends_with("setsockopt(TCP_USER_TIMEOUT): ENOPROTOOPT"), "{}", d.line());
        assert!(decode(&b[..10], 0.0, &mut |_| None).is_none());
        assert_eq!(clock_time(3661.5), "01:01:01.500");
    }
}
