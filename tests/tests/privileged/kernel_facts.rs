//! Symbol addresses from the loader's BPF lookup, checked against /proc/kallsyms, and what
//! happens when the kernel hides them.
use mptcpify::bpf::kallsyms;
use mptcpify_tests::*;

/// Restores kernel.kptr_restrict when dropped, also when an assertion fails.
struct KptrRestrict(String);

impl KptrRestrict {
    fn set(value: &str) -> Self {
        let old = std::fs::read_to_string("/proc/sys/kernel/kptr_restrict").unwrap();
        std::fs::write("/proc/sys/kernel/kptr_restrict", value).unwrap();
        KptrRestrict(old.trim().to_owned())
    }
}

impl Drop for KptrRestrict {
    fn drop(&mut self) {
        std::fs::write("/proc/sys/kernel/kptr_restrict", &self.0).unwrap();
    }
}

#[test]
fn the_bpf_symbol_lookup_agrees_with_proc_kallsyms() {
    let _g = setup();
    for symbol in ["mptcp_pernet_id", "init_net", "update_socket_protocol", "tcp_prot"] {
        let by_bpf = kallsyms::bpf_lookup(symbol).unwrap_or_else(|e| panic!("{symbol}: {e:#}"));
        let by_file = kallsyms::file_lookup(symbol).unwrap();
        assert_eq!(by_bpf, by_file, "{symbol}: {by_bpf:#x} vs {by_file:#x}");
    }
    let e = kallsyms::bpf_lookup("no_such_symbol_xyz").unwrap_err();
    assert!(matches!(e, kallsyms::BpfLookup::Refused(_)), "{e:#}");
    assert!(e.to_string().contains("not among the kernel's symbols"), "{e}");
}

#[test]
fn hidden_kernel_addresses_turn_the_netns_check_off_with_the_reason() {
    let _g = setup();
    let restrict = KptrRestrict::set("2");
    let e = kallsyms::bpf_lookup("mptcp_pernet_id").unwrap_err();
    assert!(e.to_string().contains("kernel.kptr_restrict"), "{e}");
    let cg = TestCgroup::new("mptcpify-t-kptr");
    let out = mptcpify(&["enable", "--cgroup", &cg.relative]);
    drop(restrict);
    assert!(out.status.success(), "still loads: {}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("netns check off") && stderr.contains("kernel.kptr_restrict"), "{stderr}");
    assert_eq!(proto_of(Some(&cg), "tcp4"), IPPROTO_MPTCP, "selection itself is unaffected");
    // Addresses visible again: a load would work now, but the loaded program's check stays off.
    let never_break = || {
        let report: serde_json::Value = serde_json::from_slice(&mptcpify(&["doctor", "--json"]).stdout).unwrap();
        report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "never-break").unwrap().clone()
    };
    let check = never_break();
    assert_eq!(check["level"], "WARN", "{check}");
    assert!(check["detail"].as_str().unwrap().contains("loaded without"), "{check}");
    ok(&["reset"]);
    ok(&["enable", "--cgroup", &cg.relative]);
    let check = never_break();
    assert_eq!(check["level"], "OK", "{check}");
    assert!(check["detail"].as_str().unwrap().contains("the loaded program reads"), "{check}");
}
