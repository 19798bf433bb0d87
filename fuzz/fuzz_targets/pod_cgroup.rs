//! A pod's UID (from the API server, or a static pod's `kubernetes.io/config.mirror`
//! annotation: anyone who may create a pod chooses it) → the cgroup the agent would enable:
//! whatever the UID, an accepted one yields only paths strictly below the driver's kubepods root,
//! with no component that could move them once resolved.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mptcpify::agent::{
    kubernetes::pods::{Qos, cgroup_paths, is_kubelet_uid},
    policy::CgroupDriver,
};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, uid)) = data.split_first() else { return };
    let Ok(uid) = std::str::from_utf8(uid) else { return };
    let qos = [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort][usize::from(choice % 3)];
    let driver = [CgroupDriver::Auto, CgroupDriver::Systemd, CgroupDriver::Cgroupfs][usize::from(choice / 3 % 3)];
    if !is_kubelet_uid(uid) {
        return;
    }
    assert!(uid.len() == 36 || uid.len() == 32, "{uid:?}");
    for pod in cgroup_paths(uid, qos, driver) {
        let path = &pod.path;
        assert!(pod.contains(path), "{path:?} is not below {}", pod.kubepods);
        assert!(path.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"/_-.".contains(&b)), "{path:?}");
        assert!(!path[1..].split('/').any(|p| p.is_empty() || p == "." || p == ".."), "{path:?}");
        assert!(path.contains(&uid.replace('-', "_")) || path.contains(uid), "{path:?} lost the UID {uid:?}");
    }
});
