//! The agent's policy file (written by whoever may edit it): parsing never panics, a rejection
//! names a line of the file, and what is accepted holds only selectors the CLI would accept.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mptcpify::{
    agent::policy::{Policy, Selector},
    host::selector::CgroupPath,
    state::rules::Key,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let users = |name: &str| (name == "alice").then_some(1000);
    match Policy::parse(text, "fuzz.toml", &users) {
        Ok(policy) => {
            for w in &policy.wanted {
                match &w.selector {
                    Selector::Cgroup(CgroupPath::Relative(path)) => {
                        assert!(path.starts_with('/'), "{path:?}");
                        let parts = path[1..].split('/').filter(|_| path != "/");
                        assert!(!parts.clone().any(|p| p.is_empty() || p == "." || p == ".."), "{path:?}");
                        assert!(parts.count() < 32, "{path:?} is deeper than the program's walk");
                        assert!(!path.contains('\0'), "{path:?}");
                    }
                    Selector::Cgroup(CgroupPath::Mounted(p)) => panic!("a policy named a mount path: {p:?}"),
                    Selector::Unit(unit) => assert!(!unit.is_empty() && !unit.contains('/'), "{unit:?}"),
                    Selector::Key(Key::Comm(comm)) => assert_eq!(comm[15], 0, "{comm:?}"),
                    Selector::Key(_) => {}
                }
            }
            let again = Policy::parse(text, "fuzz.toml", &users).expect("the same text parses the same way");
            assert_eq!(again, policy);
        }
        Err(e) => {
            let lines = text.split('\n').count();
            assert!(e.line >= 1 && e.line <= lines, "line {} of {lines}: {e}", e.line);
            assert!(!e.reason.is_empty());
        }
    }
});
