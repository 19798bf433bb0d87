//! fmod_ret program on `update_socket_protocol(family, type, protocol)`.
//!
//! Returning a non-zero value replaces the protocol `socket()` uses; returning 0 declines and lets
//! the kernel (and any other fmod_ret program on the hook) decide. aya has no `fmod_ret` section,
//! so the function lives in `fentry/...` and the loader in user space loads it as
//! `BPF_MODIFY_RETURN`; the `#[fentry]` macro is not used because it discards the return value.
#![no_std]
#![no_main]
// `AtomicU64::fetch_add` is compiled out on the BPF target (no CAS); the intrinsic lowers to
// BPF's atomic add, which the target has. The kernel program is always built with nightly.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::FEntryContext,
};
use aya_log_ebpf::debug;
use mptcpify_common::{
    AF_INET, AF_INET6, COUNTER_SLOTS, Config, Counter, IPPROTO_MPTCP, IPPROTO_TCP,
    MAX_CGROUP_DEPTH, MAX_CGROUP_RULES, MAX_PID_RULES, Rule, SOCK_STREAM, SOCK_TYPE_MASK,
};

#[map]
static CGROUP_RULES: HashMap<u64, Rule> = HashMap::with_max_entries(MAX_CGROUP_RULES, 0);

#[map]
static PID_RULES: HashMap<u32, Rule> = HashMap::with_max_entries(MAX_PID_RULES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/update_socket_protocol")]
pub fn mptcpify(ctx: *mut core::ffi::c_void) -> i32 {
    decide(&FEntryContext::new(ctx))
}

#[inline(always)]
fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it, a plain add is enough.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn hit(rule: *mut Rule) {
    use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};
    // Shared between CPUs: atomic add.
    unsafe { atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*rule).hits, 1) };
}

#[inline(always)]
fn decide(ctx: &FEntryContext) -> i32 {
    bump(Counter::Calls);
    let family: i32 = ctx.arg(0);
    let ty: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    if (family != AF_INET && family != AF_INET6)
        || ty & SOCK_TYPE_MASK != SOCK_STREAM
        || (protocol != 0 && protocol != IPPROTO_TCP)
    {
        return 0;
    }
    bump(Counter::TcpCandidates);
    let Some(config) = CONFIG.get(0) else { return 0 };

    if config.pid_rules != 0 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if let Some(rule) = PID_RULES.get_ptr_mut(tgid) {
            hit(rule);
            bump(Counter::UpgradedByPid);
            debug!(ctx, "pid {}: socket({}, {}) -> MPTCP", tgid, family, ty);
            return IPPROTO_MPTCP;
        }
    }

    if config.cgroup_rules != 0 {
        // The current cgroup first (the common case for per-service rules), then its ancestors
        // from the root down; level numbering has the root at 0, and a level below the current
        // one yields 0.
        let own = unsafe { bpf_get_current_cgroup_id() };
        if let Some(rule) = CGROUP_RULES.get_ptr_mut(own) {
            return upgrade_by_cgroup(ctx, rule, own);
        }
        for level in 0..MAX_CGROUP_DEPTH {
            let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
            if id == 0 || id == own {
                break;
            }
            if let Some(rule) = CGROUP_RULES.get_ptr_mut(id) {
                return upgrade_by_cgroup(ctx, rule, id);
            }
        }
    }
    0
}

#[inline(always)]
fn upgrade_by_cgroup(ctx: &FEntryContext, rule: *mut Rule, cgroup: u64) -> i32 {
    hit(rule);
    bump(Counter::UpgradedByCgroup);
    debug!(ctx, "cgroup {}: socket -> MPTCP", cgroup);
    IPPROTO_MPTCP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
