//! What became of the sockets the hook upgraded: MPTCP, fell back, extra subflows.
//!
//! Tracing programs, each on a kernel function that runs where the kernel already knows the
//! answer, so that nothing runs per packet or per state change:
//! 1. the hook, having upgraded a socket, notes its rule and the calling thread in this CPU's
//!    slot ([`PENDING`]: an array, no hashing or locks on the socket() path);
//! 2. `fentry/mptcp_init_sock`, which every new MPTCP socket passes through in that same
//!    thread, moves the note onto the socket, keyed by its cookie ([`SOCKETS`]);
//! 3. `fentry/tcp_init_transfer` runs once per TCP socket that becomes established (where
//!    sock_ops' ESTABLISHED callbacks run), after MPTCP has read the handshake: a connecting
//!    subflow of a noted socket reads its subflow context (asked to join? got MP_CAPABLE or
//!    MP_JOIN?); an accepted socket of a noted listener is MPTCP, a join, or plain TCP;
//! 4. `fexit/inet_csk_listen_start` remembers noted listeners by (network namespace, port): an
//!    accepted socket is a clone of its listener, without a note of its own;
//! 5. `fentry/tcp_done` sees a subflow of a noted socket die (reset, timeout) before it was
//!    established.
//!
//! Sockets the hook left alone never reach steps 1-2; in steps 3-5 a socket that is not an
//! MPTCP subflow costs one read of its `is_mptcp`, an accepted one a failed lookup once any
//! upgraded server listens. A socket whose creation moved to another CPU (or was preempted by another upgrade)
//! between steps 1 and 2 is not counted: the slot then names another thread.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, generated::bpf_get_socket_cookie},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::{FEntryContext, FExitContext},
};
use mptcpify_common::{
    Decision, IPPROTO_TCP, Outcomes, RuleKind, RuleRef, SockOffsets, TRACKED_LISTENERS, TRACKED_SOCKETS,
};

use crate::{CGROUP_RULES, CONFIG, OUTCOMES, PID_RULES, UID_RULES, report_event};

/// Per CPU: the thread whose `socket()` call was just upgraded, and by which rule.
#[map]
static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);
/// MPTCP socket cookie -> the rule that upgraded it.
#[map]
pub(crate) static SOCKETS: LruHashMap<u64, RuleRef> = LruHashMap::with_max_entries(TRACKED_SOCKETS, 0);
/// Upgraded listeners by (network namespace cookie, local port).
#[map]
static LISTENERS: LruHashMap<ListenerKey, RuleRef> = LruHashMap::with_max_entries(TRACKED_LISTENERS, 0);

/// Set by the loader from the kernel's BTF.
#[unsafe(no_mangle)]
pub(crate) static SOCK_OFFSETS: aya_ebpf::Global<SockOffsets> = aya_ebpf::Global::new(SockOffsets::UNSET);

#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    /// `bpf_get_current_pid_tgid` of the upgraded call; 0 once taken.
    thread: u64,
    rule: RuleRef,
}

/// Set once an upgraded server listens: until then no accepted connection is looked up.
#[unsafe(no_mangle)]
static mut ANY_LISTENER: u64 = 0;

#[repr(C)]
#[derive(Clone, Copy)]
struct ListenerKey {
    netns: u64,
    port: u32,
    _pad: u32,
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;

/// Step 1, called by the hook for a socket it upgrades.
#[inline(always)]
pub(crate) fn remember_upgrade(kind: RuleKind, key: u64) {
    if let Some(slot) = PENDING.get_ptr_mut(0) {
        let rule = RuleRef { kind: kind as u32, _pad: 0, key };
        // SAFETY: this CPU's slot of the map; the program is not preempted mid-run.
        unsafe { *slot = Pending { thread: bpf_get_current_pid_tgid(), rule } };
    }
}

/// Step 2: `mptcp_init_sock(struct sock *sk)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/mptcp_init_sock")]
pub fn mptcpify_tag(ctx: *mut c_void) -> i32 {
    let Some(slot) = PENDING.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's slot of the map; the program is not preempted mid-run.
    let pending = unsafe { &mut *slot };
    if pending.thread != bpf_get_current_pid_tgid() {
        return 0;
    }
    pending.thread = 0;
    let rule = pending.rule;
    let sk: *mut c_void = FEntryContext::new(ctx).arg(0);
    // SAFETY: `sk` is the traced function's `struct sock *` argument, typed by its BTF.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    let _ = SOCKETS.insert(cookie, rule, 0);
    0
}

/// Step 3: `tcp_init_transfer(struct sock *sk, int bpf_op, struct sk_buff *skb)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/tcp_init_transfer")]
pub fn mptcpify_established(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    let sk: *const u8 = ctx.arg(0);
    let op: u32 = ctx.arg(1);
    if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        on_accepted(sk);
    } else {
        on_connected(sk);
    }
    0
}

/// Step 4: `int inet_csk_listen_start(struct sock *sk)`, on its return.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fexit/inet_csk_listen_start")]
pub fn mptcpify_listen(ctx: *mut c_void) -> i32 {
    let ctx = FExitContext::new(ctx);
    let sk: *const u8 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    if ret != 0 {
        return 0;
    }
    // inet_csk_listen_start serves other connection-oriented protocols too.
    if read::<u16>(sk, SOCK_OFFSETS.load().protocol) != Some(IPPROTO_TCP as u16) {
        return 0;
    }
    let Some(key) = listener_key(sk) else { return 0 };
    match subflow_context(sk).and_then(noted_rule) {
        Some(rule) => {
            let _ = LISTENERS.insert(key, rule, 0);
            // SAFETY: a plain store to the program's own global; any value but 0 means "yes".
            unsafe { core::ptr::write_volatile(&raw mut ANY_LISTENER, 1) };
        }
        // Someone else listens on this port now: an older entry is stale.
        None => {
            let _ = LISTENERS.remove(key);
        }
    }
    0
}

/// Step 5: `tcp_done(struct sock *sk)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/tcp_done")]
pub fn mptcpify_failed(ctx: *mut c_void) -> i32 {
    let sk: *const u8 = FEntryContext::new(ctx).arg(0);
    let off = SOCK_OFFSETS.load();
    // Only a connect that never completed: established sockets end here too, every day.
    if read::<u8>(sk, off.state) != Some(TCP_SYN_SENT) {
        return 0;
    }
    let Some(ctx) = subflow_context(sk) else { return 0 };
    let Some(rule) = noted_rule(ctx) else { return 0 };
    if flag(ctx, off.request_join_bit) {
        count(sk, &rule, Decision::SubflowFailed);
    } else {
        add(&rule, |o| &raw mut o.connect_failed);
    }
    0
}

/// A subflow this side started got established (or was reset at once for a bad MP_JOIN).
#[inline(always)]
fn on_connected(sk: *const u8) {
    let Some(ctx) = subflow_context(sk) else { return };
    let Some(rule) = noted_rule(ctx) else { return };
    let off = SOCK_OFFSETS.load();
    let established = read::<u8>(sk, off.state) == Some(TCP_ESTABLISHED);
    let decision = if flag(ctx, off.request_join_bit) {
        if established && flag(ctx, off.mp_join_bit) { Decision::Subflow } else { Decision::SubflowFailed }
    } else if flag(ctx, off.mp_capable_bit) {
        Decision::Mptcp
    } else {
        // No MP_CAPABLE in the SYN-ACK, or the kernel sent a plain SYN (blackhole detection).
        Decision::FallbackPeer
    };
    count(sk, &rule, decision);
}

/// A connection to an upgraded listener got established.
#[inline(always)]
fn on_accepted(sk: *const u8) {
    // SAFETY: a plain load of the program's own global.
    if unsafe { core::ptr::read_volatile(&raw const ANY_LISTENER) } == 0 {
        return;
    }
    let Some(key) = listener_key(sk) else { return };
    // SAFETY: the value is copied out at once.
    let Some(rule) = (unsafe { LISTENERS.get(key) }).copied() else { return };
    let off = SOCK_OFFSETS.load();
    let decision = match subflow_context(sk) {
        Some(ctx) if flag(ctx, off.mp_join_bit) => Decision::Subflow,
        Some(ctx) if flag(ctx, off.mp_capable_bit) => Decision::Mptcp,
        // A client that did not offer MPTCP gets a plain TCP socket.
        _ => Decision::FallbackClient,
    };
    count(sk, &rule, decision);
}

/// The `struct mptcp_subflow_context` of the TCP socket `sk`, if it is an MPTCP subflow: read
/// once, for its flags and its MPTCP socket. (`bpf_skc_to_mptcp_sock` would do, but tracing
/// programs cannot pass it their socket.)
#[inline(always)]
pub(crate) fn subflow_context(sk: *const u8) -> Option<*const u8> {
    let off = SOCK_OFFSETS.load();
    if !flag(sk, off.is_mptcp_bit) {
        return None;
    }
    read::<*const u8>(sk, off.ulp_data)
}

/// The rule that upgraded the MPTCP socket of the subflow context `ctx`, if the hook did.
#[inline(always)]
fn noted_rule(ctx: *const u8) -> Option<RuleRef> {
    let off = SOCK_OFFSETS.load();
    let msk = read::<*const u8>(ctx, off.subflow_conn)?;
    let cookie: u64 = read(msk, off.cookie)?;
    // SAFETY: the value is copied out at once.
    unsafe { SOCKETS.get(cookie) }.copied()
}

/// The bit `bit` bits into the structure at `base`; false when unreadable.
#[inline(always)]
fn flag(base: *const u8, bit: u32) -> bool {
    // Little-endian bitfields: bit N is bit N % 8 of byte N / 8.
    read::<u8>(base, bit / 8).is_some_and(|byte| (byte >> (bit % 8)) & 1 != 0)
}

#[inline(always)]
fn listener_key(sk: *const u8) -> Option<ListenerKey> {
    let off = SOCK_OFFSETS.load();
    let net = read::<*const u8>(sk, off.net)?;
    let netns = read::<u64>(net, off.net_cookie)?;
    let port = read::<u16>(sk, off.local_port)?;
    Some(ListenerKey { netns, port: port.into(), _pad: 0 })
}

/// Reads a `T` at `base + offset` of kernel memory, `None` where that fails.
#[inline(always)]
pub(crate) fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel fails instead of faulting; offsets come from the running
    // kernel's BTF.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.ok()
}

fn count(sk: *const u8, rule: &RuleRef, decision: Decision) {
    match decision {
        Decision::Mptcp => add(rule, |o| &raw mut o.mptcp),
        Decision::FallbackPeer => add(rule, |o| &raw mut o.fallback_peer),
        Decision::FallbackClient => add(rule, |o| &raw mut o.fallback_client),
        Decision::Subflow => add(rule, |o| &raw mut o.subflows),
        _ => add(rule, |o| &raw mut o.subflows_failed),
    }
    let Some(cfg) = CONFIG.get(0) else { return };
    if cfg.monitor_pid == 0 {
        return;
    }
    let Some(kind) = RuleKind::from_u8(rule.kind as u8) else { return };
    let off = SOCK_OFFSETS.load();
    let family = read::<u16>(sk, off.family).unwrap_or_default();
    let local = read::<u16>(sk, off.local_port).unwrap_or_default();
    let remote = u16::from_be(read::<u16>(sk, off.remote_port).unwrap_or_default());
    report_event(cfg, kind, rule.key, family.into(), decision, local, remote, false);
}

/// Whether `rule` is still in force: a socket or listener noted by a rule since removed must
/// not make its entry again (the removal dropped it; it would come back with counts of a rule
/// that is gone, and fill the map). Command rules share one entry, kept while any is in force.
#[inline(always)]
fn in_force(rule: &RuleRef) -> bool {
    // SAFETY: lookups only; each value is read as a plain `Rule` and not kept.
    unsafe {
        match RuleKind::from_u8(rule.kind as u8) {
            Some(RuleKind::Cgroup) => CGROUP_RULES.get(rule.key).is_some(),
            Some(RuleKind::Pid) => PID_RULES.get(rule.key as u32).is_some(),
            Some(RuleKind::Uid) => UID_RULES.get(rule.key as u32).is_some(),
            Some(RuleKind::Comm) => CONFIG.get(0).is_some_and(|c| c.comm_rules != 0),
            Some(RuleKind::All) => CONFIG.get(0).is_some_and(|c| c.all != 0),
            None => false,
        }
    }
}

/// Adds one to the counter `field` picks in `rule`'s entry, making the entry if needed (and
/// the rule is still in force).
#[inline(always)]
fn add(rule: &RuleRef, field: impl Fn(&mut Outcomes) -> *mut u64) {
    use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};
    let entry = match OUTCOMES.get_ptr_mut(rule) {
        Some(e) => e,
        None if !in_force(rule) => return,
        None => {
            // BPF_NOEXIST: a concurrent first outcome of the same rule already made it.
            let _ = OUTCOMES.insert(rule, Outcomes::default(), 1);
            let Some(e) = OUTCOMES.get_ptr_mut(rule) else { return };
            e
        }
    };
    // SAFETY: `entry` points into a map value shared between CPUs, hence the atomic add.
    unsafe { atomic_xadd::<u64, u64, { Relaxed }>(field(&mut *entry), 1) };
}
