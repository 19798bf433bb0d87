//! Edits killed at every step: `enable`, `exclude` and `disable` are killed (SIGKILL, by strace's
//! fault injection) on entering each of their bpf(2) calls that writes, and at random calls,
//! and after the next command the state is whole: the counts equal the maps, no origin without
//! its rule, the journal clear, one program attached, no leftover pins, and the next socket at
//! every cgroup depth decided as the user-space model decides for the rules the maps hold.
use std::{collections::HashMap, os::unix::fs::MetadataExt as _, path::PathBuf};

use mptcpify::state::{
    maps::State,
    rules::{Key, RuleStore as _},
    selection::{Facts, decide},
};
use mptcpify_tests::*;

const PROBE: &str = "killprobe";

/// The bpf(2) commands one run of `mptcpify ARGS` makes, in order (it must succeed).
fn bpf_calls(args: &[&str]) -> Vec<String> {
    let calls: Vec<String> = kill::calls("bpf", args).iter().map(|c| c.trim_start_matches("bpf(").to_owned()).collect();
    assert!(calls.iter().all(|c| c.starts_with("BPF_")), "bpf(2) commands, each named: {calls:?}");
    calls
}

/// Runs `mptcpify ARGS`, killed on entering its `n`th bpf(2) call (1-based); whether it died.
fn killed_at(n: usize, args: &[&str]) -> bool {
    kill::killed_at("bpf", n, args)
}

/// Kill points for a command whose bpf(2) calls are `calls`: before each write, after the last,
/// and `random` more anywhere.
fn kill_points(calls: &[String], rng: &mut u64, random: usize) -> Vec<usize> {
    let writes = ["BPF_MAP_UPDATE_ELEM", "BPF_MAP_DELETE_ELEM", "BPF_OBJ_PIN"];
    let mut points: Vec<usize> =
        calls.iter().enumerate().filter(|(_, c)| writes.contains(&c.as_str())).map(|(i, _)| i + 1).collect();
    assert!(!points.is_empty(), "no write among {calls:?}");
    if let Some(&last) = points.last() {
        points.push(last + 1);
    }
    for _ in 0..random {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        points.push(1 + (*rng as usize) % calls.len());
    }
    points.sort_unstable();
    points.dedup();
    points
}

struct Tree {
    cgroups: Vec<TestCgroup>,
    ids: Vec<u64>,
    probe: PathBuf,
}

impl Tree {
    fn new() -> Self {
        let rels = ["mptcpify-t-kill", "mptcpify-t-kill/a", "mptcpify-t-kill/a/b", "mptcpify-t-kill/a/b/c"];
        let cgroups: Vec<TestCgroup> = rels.iter().map(|r| TestCgroup::new(r)).collect();
        let ids = cgroups.iter().map(|c| std::fs::metadata(&c.path).unwrap().ino()).collect();
        let probe = world_runnable(&sockprobe_bin()).with_file_name(PROBE);
        std::fs::copy(sockprobe_bin(), &probe).unwrap();
        Self { cgroups, ids, probe }
    }

    fn rel(&self, depth: usize) -> &str {
        &self.cgroups[depth].relative
    }

    /// Every invariant, after whatever was killed and the next command.
    fn check(&self, what: &str) {
        let st = State::open().unwrap();
        let wrong = st.inconsistencies().unwrap();
        assert!(wrong.is_empty(), "{what}: {wrong:?}");
        assert_eq!(mptcpify_pins(), ["mptcpify"], "{what}: leftovers");
        let attached =
            || aya::programs::loaded_programs().flatten().filter(|p| p.name_as_str() == Some("mptcpify")).count();
        let one = wait_for(std::time::Duration::from_secs(5), || (attached() == 1).then_some(()));
        assert!(one.is_some(), "{what}: {} programs attached", attached());
        let rules: HashMap<Key, mptcpify_common::Rule> = st.entries().unwrap().into_iter().collect();
        let Key::Comm(comm) = Key::comm(PROBE).unwrap() else { unreachable!() };
        for depth in 0..self.cgroups.len() {
            let facts = Facts { pid: 0, uid: 0, comm, cgroups: self.ids[..=depth].to_vec() };
            let want = if decide(&rules, &facts).is_some_and(|a| a == mptcpify::state::rules::Action::Enable) {
                IPPROTO_MPTCP
            } else {
                IPPROTO_TCP
            };
            let got = parse_probe(&run_in(Some(&self.cgroups[depth]), &self.probe, &["tcp4"]))["tcp4"]["proto"];
            assert_eq!(got, want, "{what}: depth {depth}, rules {rules:?}");
        }
    }
}

#[test]
fn edits_killed_at_every_step_are_repaired_by_the_next_command() {
    let _g = setup();
    let tree = Tree::new();
    let base = ["enable", "--cgroup", tree.rel(1)];
    let exclude = ["exclude", "--cgroup", tree.rel(2)];
    let enable_two = ["enable", "--cgroup", tree.rel(3), "--comm", PROBE];
    let disable = ["disable", "--cgroup", tree.rel(1)];
    // The next command: an edit of its own, which must repair before it changes anything.
    let next = ["enable", "--comm", "kill-next"];
    let mut rng = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("kill points drawn with seed {rng:#x}");
    let mut rounds = 0;
    for op in [&exclude[..], &enable_two[..], &disable[..]] {
        ok(&["reset"]);
        ok(&base);
        let points = kill_points(&bpf_calls(op), &mut rng, 3);
        for n in points {
            ok(&["reset"]);
            ok(&base);
            let died = killed_at(n, op);
            let what = format!("{op:?} killed at bpf call {n} (died: {died})");
            ok(&next);
            tree.check(&what);
            rounds += 1;
        }
    }
    eprintln!("{rounds} killed edits repaired");
    ok(&["reset"]);
}
