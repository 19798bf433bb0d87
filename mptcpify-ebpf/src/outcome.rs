//! What became of the sockets the hook upgraded: MPTCP, fell back, extra subflows.
//!
//! Three steps, each where the kernel has what it needs:
//! 1. the hook, having upgraded a socket, notes its rule and the calling thread in this CPU's
//!    slot ([`PENDING`]: an array, no hashing or locks on the socket() path);
//! 2. `fentry/mptcp_init_sock`, which every new MPTCP socket passes through in that same
//!    thread, moves the note onto the socket, keyed by its cookie ([`SOCKETS`]);
//! 3. a cgroup `sock_ops` program at the cgroup2 root sees each TCP subflow connect, listen and
//!    get established, finds its MPTCP socket's note, and reads the handshake's own TCP option
//!    (kind 30: MP_CAPABLE, MP_JOIN or none) to tell the outcome.
//!
//! Sockets the hook left alone never reach steps 1-2; in step 3 a client's costs a look at its
//! callback flags, a server's one failed lookup once any upgraded server listens. A socket whose
//! creation moved to another CPU (or was preempted by another upgrade) between steps 1 and 2 is
//! not counted: the slot then names another thread. Servers: an accepted subflow is a clone of its listener, without a note of its
//! own, so listeners are remembered by (network namespace, port) when they start listening.
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB, bpf_sock_ops,
    },
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_load_hdr_opt, bpf_skc_to_mptcp_sock},
    },
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::{FEntryContext, SockOpsContext},
};
use mptcpify_common::{Decision, Outcomes, RuleKind, RuleRef, TRACKED_LISTENERS, TRACKED_SOCKETS};

use crate::{CONFIG, OUTCOMES, report_event};

/// Per CPU: the thread whose `socket()` call was just upgraded, and by which rule.
#[map]
static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);
/// MPTCP socket cookie -> its rule and how many subflows it started.
#[map]
static SOCKETS: LruHashMap<u64, Tag> = LruHashMap::with_max_entries(TRACKED_SOCKETS, 0);
/// Subflow cookie -> what its establishment will mean, from connect() until established or closed.
#[map]
static SUBFLOWS: LruHashMap<u64, Subflow> = LruHashMap::with_max_entries(TRACKED_SOCKETS, 0);
/// Upgraded listeners by (network namespace cookie, local port).
#[map]
static LISTENERS: LruHashMap<ListenerKey, RuleRef> = LruHashMap::with_max_entries(TRACKED_LISTENERS, 0);

/// Set by the loader from the kernel's BTF: where `struct sock` keeps its cookie.
#[unsafe(no_mangle)]
static OFF_SK_COOKIE: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);

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
struct Tag {
    rule: RuleRef,
    /// Subflows this socket started (the first is the connection itself).
    started: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Subflow {
    rule: RuleRef,
    /// 1: the connection's first subflow; 0: an extra one (MP_JOIN).
    first: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ListenerKey {
    netns: u64,
    port: u32,
    _pad: u32,
}

const TCP_CLOSE: u32 = 7;
const TCPOPT_MPTCP: u8 = 30;
const MPTCPOPT_MP_CAPABLE: u8 = 0;
const MPTCPOPT_MP_JOIN: u8 = 1;

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
pub fn mptcpify_tag(ctx: *mut core::ffi::c_void) -> i32 {
    let Some(slot) = PENDING.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's slot of the map; the program is not preempted mid-run.
    let pending = unsafe { &mut *slot };
    if pending.thread != bpf_get_current_pid_tgid() {
        return 0;
    }
    pending.thread = 0;
    let rule = pending.rule;
    let sk: *mut core::ffi::c_void = FEntryContext::new(ctx).arg(0);
    // SAFETY: `sk` is the traced function's `struct sock *` argument, typed by its BTF.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    let _ = SOCKETS.insert(cookie, Tag { rule, started: 0 }, 0);
    0
}

/// Step 3.
#[unsafe(no_mangle)]
#[unsafe(link_section = "sockops")]
pub fn mptcpify_outcome(ops: *mut bpf_sock_ops) -> u32 {
    let ctx = SockOpsContext::new(ops);
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_active_established(&ctx),
        BPF_SOCK_OPS_STATE_CB => on_state_change(&ctx),
        BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_passive_established(&ctx),
        _ => {}
    }
    1
}

/// The note of the MPTCP socket this TCP socket is a subflow of, if it has one.
#[inline(always)]
fn tag_of_subflow(ctx: &SockOpsContext) -> Option<*mut Tag> {
    // SAFETY: reading the context's socket pointer; checked for null below.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is the context's non-null socket; the helper returns null unless it is an
    // MPTCP subflow.
    let msk = unsafe { bpf_skc_to_mptcp_sock(sk.cast()) } as *const u8;
    if msk.is_null() {
        return None;
    }
    // SAFETY: read with bpf_probe_read_kernel, which fails instead of faulting; the offset comes
    // from the running kernel's BTF.
    let cookie: u64 = unsafe { bpf_probe_read_kernel(msk.add(OFF_SK_COOKIE.load() as usize).cast()) }.ok()?;
    SOCKETS.get_ptr_mut(cookie)
}

#[inline(always)]
fn own_cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: the sock_ops variant of the helper takes the program's context.
    unsafe { bpf_get_socket_cookie(ctx.ops.cast()) }
}

fn on_connect(ctx: &SockOpsContext) {
    let Some(tag) = tag_of_subflow(ctx) else { return };
    // SAFETY: `tag` points into a map value. A plain read and write: extra subflows start only
    // once the first is established, so two connects of one socket never race here.
    let (rule, earlier) = unsafe {
        let earlier = (*tag).started;
        (*tag).started = earlier + 1;
        ((*tag).rule, earlier)
    };
    let subflow = Subflow { rule, first: u64::from(earlier == 0) };
    if SUBFLOWS.insert(own_cookie(ctx), subflow, 0).is_ok() {
        // To hear of a subflow that closes before it is established.
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
}

/// Whether this socket asked to hear of its state changes: only tracked subflows do.
#[inline(always)]
fn tracked(ctx: &SockOpsContext) -> bool {
    ctx.cb_flags() & BPF_SOCK_OPS_STATE_CB_FLAG != 0
}

fn on_active_established(ctx: &SockOpsContext) {
    if !tracked(ctx) {
        return;
    }
    let cookie = own_cookie(ctx);
    // SAFETY: the value is copied out at once.
    let Some(subflow) = (unsafe { SUBFLOWS.get(cookie) }).copied() else { return };
    let _ = SUBFLOWS.remove(cookie);
    let _ = ctx.set_cb_flags((ctx.cb_flags() & !BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    let option = mptcp_option(ctx);
    let decision = match (subflow.first != 0, option) {
        (true, Some(MPTCPOPT_MP_CAPABLE)) => Decision::Mptcp,
        (true, _) => Decision::FallbackPeer,
        (false, Some(MPTCPOPT_MP_JOIN)) => Decision::Subflow,
        (false, _) => Decision::SubflowFailed,
    };
    count(ctx, &subflow.rule, decision);
}

fn on_state_change(ctx: &SockOpsContext) {
    if ctx.arg(1) != TCP_CLOSE || !tracked(ctx) {
        return;
    }
    let cookie = own_cookie(ctx);
    // SAFETY: the value is copied out at once.
    let Some(subflow) = (unsafe { SUBFLOWS.get(cookie) }).copied() else { return };
    let _ = SUBFLOWS.remove(cookie);
    if subflow.first != 0 {
        add(&subflow.rule, |o| &raw mut o.connect_failed);
    } else {
        count(ctx, &subflow.rule, Decision::SubflowFailed);
    }
}

#[inline(always)]
fn listener_key(ctx: &SockOpsContext) -> ListenerKey {
    // SAFETY: the sock_ops variant of the helper takes the program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    ListenerKey { netns, port: ctx.local_port(), _pad: 0 }
}

fn on_listen(ctx: &SockOpsContext) {
    let key = listener_key(ctx);
    match tag_of_subflow(ctx) {
        Some(tag) => {
            // SAFETY: `tag` points into a map value; only `rule`, never written after
            // creation, is read.
            let rule = unsafe { (*tag).rule };
            let _ = LISTENERS.insert(key, rule, 0);
            // SAFETY: a plain store to the program's own global; any value but 0 means "yes".
            unsafe { core::ptr::write_volatile(&raw mut ANY_LISTENER, 1) };
        }
        // Someone else listens on this port now: an older entry is stale.
        None => {
            let _ = LISTENERS.remove(key);
        }
    }
}

fn on_passive_established(ctx: &SockOpsContext) {
    // SAFETY: a plain load of the program's own global.
    if unsafe { core::ptr::read_volatile(&raw const ANY_LISTENER) } == 0 {
        return;
    }
    // SAFETY: the value is copied out at once.
    let Some(rule) = (unsafe { LISTENERS.get(listener_key(ctx)) }).copied() else { return };
    let decision = match mptcp_option(ctx) {
        Some(MPTCPOPT_MP_CAPABLE) => Decision::Mptcp,
        Some(MPTCPOPT_MP_JOIN) => Decision::Subflow,
        _ => Decision::FallbackClient,
    };
    count(ctx, &rule, decision);
}

/// The subtype of the first MPTCP option in the segment that completed the handshake (the
/// SYN-ACK for a client, the third ACK for a server), `None` without one.
#[inline(always)]
fn mptcp_option(ctx: &SockOpsContext) -> Option<u8> {
    // Kind first, length 0 (any); the helper copies the option found over it.
    let mut option = [0u8; 40];
    option[0] = TCPOPT_MPTCP;
    // SAFETY: `option` is a live, initialised stack buffer of the length passed.
    let copied = unsafe { bpf_load_hdr_opt(ctx.ops, option.as_mut_ptr().cast(), option.len() as u32, 0) };
    if copied < 3 { None } else { Some(option[2] >> 4) }
}

fn count(ctx: &SockOpsContext, rule: &RuleRef, decision: Decision) {
    match decision {
        Decision::Mptcp => add(rule, |o| &raw mut o.mptcp),
        Decision::FallbackPeer => add(rule, |o| &raw mut o.fallback_peer),
        Decision::FallbackClient => add(rule, |o| &raw mut o.fallback_client),
        Decision::Subflow => add(rule, |o| &raw mut o.subflows),
        _ => add(rule, |o| &raw mut o.subflows_failed),
    }
    let Some(cfg) = CONFIG.get(0) else { return };
    let Some(kind) = RuleKind::from_u8(rule.kind as u8) else { return };
    // sock_ops keeps the remote port in network order in the upper half.
    let remote = u16::from_be((ctx.remote_port() >> 16) as u16);
    report_event(cfg, kind, rule.key, ctx.family() as i32, decision, ctx.local_port() as u16, remote, false);
}

/// Adds one to the counter `field` picks in `rule`'s entry, making the entry if needed.
#[inline(always)]
fn add(rule: &RuleRef, field: impl Fn(&mut Outcomes) -> *mut u64) {
    use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};
    let entry = match OUTCOMES.get_ptr_mut(rule) {
        Some(e) => e,
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
