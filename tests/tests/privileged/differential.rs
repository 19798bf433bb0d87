//! The kernel's decision against the user-space model (`state::selection::decide`, which
//! `doctor` relies on): random rule sets of cgroup (at several depths), command-name, user and
//! all rules, enables and exclusions, each checked for callers of every cgroup, name and user.
use std::{collections::HashMap, os::unix::fs::MetadataExt as _, path::PathBuf};

use mptcpify::state::{
    maps::State,
    pins::Lock,
    rules::{self, Action, AgentRules, Key, Owner, new_rule},
    selection::{Facts, decide},
};
use mptcpify_common::Rule;
use mptcpify_tests::*;

/// A small deterministic generator (xorshift64), so a failure names a reproducible round.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One selector the CLI can name, and its key for the model.
struct Candidate {
    args: Vec<String>,
    key: Key,
    exclusion_allowed: bool,
}

#[test]
fn the_kernel_decides_as_the_user_space_model_does() {
    let _g = setup();
    let tree =
        ["mptcpify-t-diff", "mptcpify-t-diff/a", "mptcpify-t-diff/a/b", "mptcpify-t-diff/a/b/c", "mptcpify-t-diff/x"];
    let cgroups: Vec<TestCgroup> = tree.iter().map(|rel| TestCgroup::new(rel)).collect();
    let ids: Vec<u64> = cgroups.iter().map(|c| std::fs::metadata(&c.path).unwrap().ino()).collect();
    let names = ["dprobe-one", "dprobe-two"];
    let probes: Vec<PathBuf> = names
        .iter()
        .map(|n| {
            let p = world_runnable(&sockprobe_bin()).with_file_name(n);
            std::fs::copy(world_runnable(&sockprobe_bin()), &p).unwrap();
            p
        })
        .collect();
    let mut candidates: Vec<Candidate> = cgroups
        .iter()
        .zip(&ids)
        .map(|(c, &id)| Candidate {
            args: vec!["--cgroup".into(), c.relative.clone()],
            key: Key::Cgroup(id),
            exclusion_allowed: true,
        })
        .collect();
    for n in names {
        candidates.push(Candidate {
            args: vec!["--comm".into(), n.into()],
            key: Key::comm(n).unwrap(),
            exclusion_allowed: true,
        });
    }
    for uid in [0u32, 65534] {
        candidates.push(Candidate {
            args: vec!["--uid".into(), uid.to_string()],
            key: Key::Uid(uid),
            exclusion_allowed: true,
        });
    }
    candidates.push(Candidate { args: vec!["--all".into()], key: Key::All, exclusion_allowed: false });

    let mut rng = Rng(0x6d70_7463_7069_6679);
    let mut checked = 0;
    for round in 0..30 {
        // One command per action makes the round's rules (all or nothing), one removes them.
        let mut rules: HashMap<Key, Rule> = HashMap::new();
        let (mut enable, mut exclude, mut all_args) = (vec!["enable".to_owned()], vec!["exclude".to_owned()], vec![]);
        for c in &candidates {
            if rng.below(3) != 0 {
                continue;
            }
            let action = if c.exclusion_allowed && rng.below(3) == 0 { Action::Exclude } else { Action::Enable };
            let args = if action == Action::Enable { &mut enable } else { &mut exclude };
            args.extend(c.args.iter().cloned());
            all_args.extend(c.args.iter().cloned());
            rules.insert(c.key, new_rule(action, Owner::Cli));
        }
        for command in [&enable, &exclude] {
            if command.len() > 1 {
                ok(&command.iter().map(String::as_str).collect::<Vec<_>>());
            }
        }
        for _ in 0..8 {
            let depth = rng.below(cgroups.len() as u64) as usize;
            let (probe, name) = {
                let i = rng.below(2) as usize;
                (&probes[i], names[i])
            };
            let uid = if rng.below(2) == 0 { 0 } else { 65534 };
            // The caller's cgroup and its ancestors, as the kernel walks them.
            let chain: Vec<u64> = match depth {
                0 => vec![ids[0]],
                1 => vec![ids[0], ids[1]],
                2 => vec![ids[0], ids[1], ids[2]],
                3 => vec![ids[0], ids[1], ids[2], ids[3]],
                _ => vec![ids[0], ids[4]],
            };
            let Key::Comm(comm) = Key::comm(name).unwrap() else { unreachable!() };
            let facts = Facts { pid: 0, uid, comm, cgroups: chain };
            let want = if decide(&rules, &facts) == Some(Action::Enable) { IPPROTO_MPTCP } else { IPPROTO_TCP };
            let probe = probe.to_str().unwrap();
            let out = if uid == 0 {
                run_in(Some(&cgroups[depth]), std::path::Path::new(probe), &["tcp4"])
            } else {
                let args = ["--reuid=65534", "--regid=65534", "--clear-groups", probe, "tcp4"];
                run_in(Some(&cgroups[depth]), std::path::Path::new("/usr/bin/setpriv"), &args)
            };
            let got = parse_probe(&out)["tcp4"]["proto"];
            assert_eq!(got, want, "round {round}: {name} uid {uid} in {}, rules {rules:?}", cgroups[depth].relative);
            checked += 1;
        }
        if !all_args.is_empty() {
            let mut disable = vec!["disable"];
            disable.extend(all_args.iter().map(String::as_str));
            ok(&disable);
        }
    }
    eprintln!("{checked} decisions agreed");
    drop(cgroups);
}

/// A caller that stays put: a `sockprobe --serve` in one cgroup, as one user, under one name,
/// making a socket whenever asked.
struct Caller {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    facts: Facts,
}

impl Caller {
    fn start(cgroup: &TestCgroup, chain: Vec<u64>, probe: &std::path::Path, name: &str, uid: u32) -> Self {
        use std::io::BufRead as _;
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(r#"echo $$ > "$0" && exec "$@""#).arg(cgroup.procs());
        if uid != 0 {
            cmd.args(["/usr/bin/setpriv", &format!("--reuid={uid}"), &format!("--regid={uid}"), "--clear-groups"]);
        }
        let mut child = cmd
            .arg(probe)
            .arg("--serve")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut ready = String::new();
        out.read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "ready", "{name} in {}", cgroup.relative);
        let Key::Comm(comm) = Key::comm(name).unwrap() else { unreachable!() };
        let facts = Facts { pid: child.id(), uid, comm, cgroups: chain };
        Self { child, out, facts }
    }

    fn proto(&mut self) -> i64 {
        use std::io::{BufRead as _, Write as _};
        writeln!(self.child.stdin.as_mut().unwrap(), "tcp4").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        parse_probe(&line)["tcp4"]["proto"]
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Thousands of random rule sets — cgroup rules at four depths, PID, command-name, user and
/// all rules, enables and exclusions — written through the library's edit path, each checked
/// against twenty callers that stay put (every depth × two names × two users): the kernel's
/// decision equals the model's every time.
#[test]
fn thousands_of_rule_sets_are_decided_as_the_model_decides() {
    const ROUNDS: usize = 3000;
    let _g = setup();
    let tree = [
        "mptcpify-t-diff2",
        "mptcpify-t-diff2/a",
        "mptcpify-t-diff2/a/b",
        "mptcpify-t-diff2/a/b/c",
        "mptcpify-t-diff2/x",
    ];
    let cgroups: Vec<TestCgroup> = tree.iter().map(|rel| TestCgroup::new(rel)).collect();
    let ids: Vec<u64> = cgroups.iter().map(|c| std::fs::metadata(&c.path).unwrap().ino()).collect();
    let chains = [vec![ids[0]], ids[..2].to_vec(), ids[..3].to_vec(), ids[..4].to_vec(), vec![ids[0], ids[4]]];
    let names = ["dserve-one", "dserve-two"];
    let mut callers = Vec::new();
    for name in names {
        let probe = world_runnable(&sockprobe_bin()).with_file_name(name);
        std::fs::copy(world_runnable(&sockprobe_bin()), &probe).unwrap();
        for (cg, chain) in cgroups.iter().zip(&chains) {
            for uid in [0, 65534] {
                callers.push(Caller::start(cg, chain.clone(), &probe, name, uid));
            }
        }
    }
    ok(&["enable", "--comm", "dserve-seed"]);
    ok(&["disable", "--comm", "dserve-seed"]);
    let mut candidates: Vec<Key> = ids.iter().map(|&id| Key::Cgroup(id)).collect();
    candidates.extend(names.iter().map(|n| Key::comm(n).unwrap()));
    candidates.extend([Key::Uid(0), Key::Uid(65534), Key::All]);
    candidates.extend(callers.iter().step_by(3).map(|c| Key::Pid(c.facts.pid)));

    let mut rng = Rng(0x7468_6f75_7361_6e64);
    let (mut held, mut checked): (Vec<Key>, usize) = (Vec::new(), 0);
    let start = std::time::Instant::now();
    for round in 0..ROUNDS {
        let mut rules: HashMap<Key, Rule> = HashMap::new();
        for key in &candidates {
            if rng.below(4) != 0 {
                continue;
            }
            let exclude = *key != Key::All && rng.below(3) == 0;
            rules.insert(*key, new_rule(if exclude { Action::Exclude } else { Action::Enable }, Owner::Cli));
        }
        let of = |action: Action| -> Vec<Key> {
            rules.iter().filter(|(_, r)| Action::from_code(r.action) == action).map(|(k, _)| *k).collect()
        };
        let (enables, excludes) = (of(Action::Enable), of(Action::Exclude));
        let lock = Lock::take().unwrap();
        State::edit(&lock, |st| {
            rules::remove_all(st, &held, AgentRules::Override)?;
            rules::add_all(st, &enables, Action::Enable)?;
            rules::add_all(st, &excludes, Action::Exclude)
        })
        .unwrap();
        drop(lock);
        held = rules.keys().copied().collect();
        for c in callers.iter_mut() {
            let want = if decide(&rules, &c.facts) == Some(Action::Enable) { IPPROTO_MPTCP } else { IPPROTO_TCP };
            let facts = format!("pid {} uid {} depth {}", c.facts.pid, c.facts.uid, c.facts.cgroups.len());
            assert_eq!(c.proto(), want, "round {round}: caller {facts}, rules {rules:?}");
            checked += 1;
        }
    }
    eprintln!("{checked} decisions agreed over {ROUNDS} rule sets in {:?}", start.elapsed());
    let lock = Lock::take().unwrap();
    State::edit(&lock, |st| rules::remove_all(st, &held, AgentRules::Override)).unwrap();
    drop(callers);
}
