//! The compatibility guard's eyes: socket options refused on upgraded sockets because they are
//! MPTCP.
//!
//! `fexit` on `mptcp_setsockopt` and `mptcp_getsockopt` sees every option call on an MPTCP
//! socket with its result, after the kernel answered: the application got exactly the kernel's
//! answer, nothing is changed or hidden. A refusal counts when the errno is the one MPTCP gives
//! for options it does not support, the option is one the running kernel accepts on TCP (the
//! loader's probe, [`REFUSED_OPTIONS`]) and the socket was upgraded by a rule (its outcome
//! note) or, for another MPTCP socket (an accepted one), its caller is one an enable rule selects. Then, unless the guard is off or the operator allowed the program, the program is
//! kept TCP within that rule from its next `socket()` on ([`GUARD`], read by the hook).
//!
//! TCP sockets never reach these functions: unselected programs pay nothing here.
//!
//! Audit rules leave sockets TCP, so MPTCP never refuses them; the audit watchers (`fexit` on
//! TCP's own option calls, attached only while an audit rule exists) predict instead: a call
//! that succeeded on TCP, for an option MPTCP refuses, by a program an audit rule selects, is
//! counted as would-fail and decided by the guard as a refusal would be. Enforcing that rule
//! later then keeps the program TCP from its first socket.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_func_ret, bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    },
    macros::map,
    maps::HashMap,
    programs::FExitContext,
};
use mptcpify_common::{
    Counter, Decision, GUARD_ALLOW, GUARD_KEEP_TCP, GuardEntry, GuardKey, IPPROTO_TCP, MAX_GUARD_ENTRIES, MAX_REFUSALS,
    MAX_REFUSED_OPTIONS, OPTION_GET, OPTION_SET, RefusalKey, RuleKind, RuleRef, SockOpt,
};

use crate::{
    CONFIG, EVENTS, bump,
    outcome::{SOCK_OFFSETS, SOCKETS, read, subflow_context},
    program_comm,
};

/// Written by the loader from its probe; read here.
#[map]
static REFUSED_OPTIONS: HashMap<SockOpt, u32> = HashMap::with_max_entries(MAX_REFUSED_OPTIONS, 0);
#[map]
static REFUSALS: HashMap<RefusalKey, u64> = HashMap::with_max_entries(MAX_REFUSALS, 0);
/// Read by the hook ([`crate::guard_keeps_tcp`]); written here and by the operator.
#[map]
pub(crate) static GUARD: HashMap<GuardKey, GuardEntry> = HashMap::with_max_entries(MAX_GUARD_ENTRIES, 0);

/// Set once the guard has kept a program TCP: until then the hook looks nothing up.
#[unsafe(no_mangle)]
pub(crate) static mut ANY_GUARDED: u64 = 0;

const ENOPROTOOPT: i64 = 92;
const EOPNOTSUPP: i64 = 95;
const BPF_NOEXIST: u64 = 1;

/// `int mptcp_setsockopt(struct sock *sk, int level, int optname, sockptr_t optval, unsigned int optlen)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fexit/mptcp_setsockopt")]
pub fn mptcpify_setsockopt(ctx: *mut c_void) -> i32 {
    on_result(ctx, OPTION_SET);
    0
}

/// `int mptcp_getsockopt(struct sock *sk, int level, int optname, char __user *optval, int __user *option)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fexit/mptcp_getsockopt")]
pub fn mptcpify_getsockopt(ctx: *mut c_void) -> i32 {
    on_result(ctx, OPTION_GET);
    0
}

/// The socket and option of a call that returned `wanted` (an errno, negated, or 0), if the
/// option is one this kernel refuses on MPTCP for this call.
#[inline(always)]
fn listed_call(raw: *mut c_void, op: u32, wanted: impl Fn(i64) -> bool) -> Option<(*const u8, SockOpt, i64)> {
    let mut ret: u64 = 0;
    // SAFETY: `raw` is this fexit program's own context; the helper writes the traced
    // function's return value into `ret`. (Its index among the arguments depends on how many
    // slots `sockptr_t` takes, which the helper knows.)
    if unsafe { bpf_get_func_ret(raw, &mut ret) } != 0 {
        return None;
    }
    let ret = ret as i32 as i64;
    if !wanted(ret) {
        return None;
    }
    let ctx = FExitContext::new(raw);
    let option = SockOpt { level: ctx.arg::<i32>(1) as u32, name: ctx.arg::<i32>(2) as u32 };
    // SAFETY: the value is copied out at once.
    if unsafe { REFUSED_OPTIONS.get(option) }.is_none_or(|bits| bits & op == 0) {
        return None;
    }
    Some((ctx.arg(0), option, ret))
}

#[inline(always)]
fn on_result(raw: *mut c_void, op: u32) {
    let Some((sk, option, ret)) = listed_call(raw, op, |ret| ret == -ENOPROTOOPT || ret == -EOPNOTSUPP) else {
        return;
    };
    // SAFETY: `sk` is the traced function's `struct sock *` argument, typed by its BTF.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    // SAFETY: the value is copied out at once.
    let noted = unsafe { SOCKETS.get(cookie) }.copied();
    // Accepted sockets have no note of their own: the caller's rule decides, as it would its
    // next socket.
    let Some(rule) = noted.or_else(|| caller_rule(false)) else { return };
    decide(rule, op, option, (-ret) as u32, Decision::OptionRefused);
}

/// `int tcp_setsockopt(struct sock *sk, int level, int optname, sockptr_t optval, unsigned int optlen)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fexit/tcp_setsockopt")]
pub fn mptcpify_audit_set(ctx: *mut c_void) -> i32 {
    on_tcp_result(ctx, OPTION_SET);
    0
}

/// `int sk_setsockopt(struct sock *sk, int level, int optname, sockptr_t optval, unsigned int optlen)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fexit/sk_setsockopt")]
pub fn mptcpify_audit_sk_set(ctx: *mut c_void) -> i32 {
    on_tcp_result(ctx, OPTION_SET);
    0
}

/// `int tcp_getsockopt(struct sock *sk, int level, int optname, char __user *optval, int __user *optlen)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fexit/tcp_getsockopt")]
pub fn mptcpify_audit_get(ctx: *mut c_void) -> i32 {
    on_tcp_result(ctx, OPTION_GET);
    0
}

/// An option call that succeeded on a plain TCP socket: would MPTCP have refused it, for a
/// program an audit rule selects?
#[inline(always)]
fn on_tcp_result(raw: *mut c_void, op: u32) {
    // `sockptr_t`'s `is_kernel` (its second ctx slot): set by the kernel's own callers, e.g.
    // `bpf_setsockopt` from a sock_ops program, often in softirq, where the current task is
    // nobody's caller.
    if op == OPTION_SET && FExitContext::new(raw).arg::<u64>(4) & 0xff != 0 {
        return;
    }
    let Some((sk, option, _)) = listed_call(raw, op, |ret| ret == 0) else { return };
    // A plain TCP socket: not an MPTCP subflow, whose options MPTCP itself sets.
    let off = SOCK_OFFSETS.load();
    if read::<u16>(sk, off.protocol) != Some(IPPROTO_TCP as u16) || subflow_context(sk).is_some() {
        return;
    }
    let Some(rule) = caller_rule(true) else { return };
    decide(rule, op, option, 0, Decision::OptionWouldFail);
}

/// The rule that decides the calling process's sockets, if it is an enable rule (`audit`
/// false) or an audit rule (`audit` true).
#[inline(always)]
fn caller_rule(audit: bool) -> Option<RuleRef> {
    let cfg = CONFIG.get(0)?;
    let m = crate::select(cfg);
    (m.found && !m.exclude && m.audit == audit).then_some(RuleRef { kind: m.kind as u32, _pad: 0, key: m.key })
}

/// Counts a refusal (or a predicted one), lets the guard decide, tells the monitor.
#[inline(always)]
fn decide(rule: RuleRef, op: u32, option: SockOpt, errno: u32, decision: Decision) {
    let predicted = u32::from(decision == Decision::OptionWouldFail);
    let comm = program_comm().unwrap_or_default();
    bump(if predicted == 1 { Counter::OptionsWouldFail } else { Counter::OptionsRefused });
    count(RefusalKey { rule, option, op, predicted, comm });
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let entry = GuardEntry { since_boot_ns: 0, verdict: GUARD_KEEP_TCP, op, option, errno, pid, predicted, _pad: 0 };
    guard(comm, rule, entry);
    report(rule, op, option, errno, decision);
}

#[inline(always)]
fn count(key: RefusalKey) {
    use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};
    if let Some(n) = REFUSALS.get_ptr_mut(key) {
        // SAFETY: a pointer into a map value shared between CPUs, hence the atomic add.
        unsafe { atomic_xadd::<u64, u64, { Relaxed }>(n, 1) };
    } else if REFUSALS.insert(key, 1, BPF_NOEXIST).is_err()
        && let Some(n) = REFUSALS.get_ptr_mut(key)
    {
        // A concurrent first refusal made it.
        // SAFETY: as above.
        unsafe { atomic_xadd::<u64, u64, { Relaxed }>(n, 1) };
    }
}

/// Keeps `comm` TCP within `rule` unless the guard is off or the operator allowed it. The first
/// refusal decides: a later one does not replace it.
#[inline(always)]
fn guard(comm: [u8; mptcpify_common::COMM_LEN], rule: RuleRef, mut entry: GuardEntry) {
    let Some(cfg) = CONFIG.get(0) else { return };
    if cfg.guard_off != 0 {
        return;
    }
    // SAFETY: only `verdict` is read, at once.
    if unsafe { GUARD.get(GuardKey { comm, rule: RuleRef::ANY }) }.is_some_and(|e| e.verdict == GUARD_ALLOW) {
        return;
    }
    // SAFETY: a helper without arguments.
    entry.since_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    if GUARD.insert(GuardKey { comm, rule }, entry, BPF_NOEXIST).is_ok() {
        // SAFETY: a plain store to the program's own global; any value but 0 means "yes".
        unsafe { core::ptr::write_volatile(&raw mut ANY_GUARDED, 1) };
    }
}

#[inline(always)]
fn report(rule: RuleRef, op: u32, option: SockOpt, errno: u32, decision: Decision) {
    let Some(cfg) = CONFIG.get(0) else { return };
    if cfg.monitor_pid == 0 {
        return;
    }
    let kind = RuleKind::from_u8(rule.kind as u8).unwrap_or(RuleKind::All);
    let mut event = crate::process_event(kind, rule.key, 0, decision);
    event.errno = errno;
    event.option_op = op;
    event.option = option;
    if EVENTS.output::<mptcpify_common::Event>(&event, 0).is_err() {
        bump(Counter::EventsDropped);
    }
}
