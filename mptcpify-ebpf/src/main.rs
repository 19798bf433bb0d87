//! fmod_ret program on `update_socket_protocol(family, type, protocol)`.
//!
//! Returning a non-zero value replaces the protocol `socket()` uses; returning 0 declines and lets
//! the kernel (and any other fmod_ret program on the hook) decide. aya has no `fmod_ret` section,
//! so the function lives in `fentry/...` and the loader in user space loads it as
//! `BPF_MODIFY_RETURN`; the `#[fentry]` macro is not used because it discards the return value.
//!
//! Order of work, cheapest first: socket kind, then the rules that exist (counts in CONFIG), then
//! — only for a socket about to be upgraded — the caller's `net.mptcp.enabled`.
#![no_std]
#![no_main]
// `AtomicU64::fetch_add` is compiled out on the BPF target (no CAS); the intrinsic lowers to
// BPF's atomic add, which the target has. The kernel program is always built with nightly.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod options;
mod outcome;

use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ktime_get_boot_ns,
        },
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::FEntryContext,
};
use aya_log_ebpf::debug;
use mptcpify_common::{
    ACTION_AUDIT, ACTION_ENABLE, ACTION_EXCLUDE, AF_INET, AF_INET6, CGROUP_DECISIONS_ENTRIES, CGROUP_NO_MATCH,
    COMM_LEN, COUNTER_SLOTS, CgroupDecision, Config, Counter, Decision, EVENTS_BYTES, Event, GUARD_ALLOW,
    GUARD_KEEP_TCP, GuardKey, IPPROTO_MPTCP, IPPROTO_TCP, LANDLOCK_MAX_LAYERS, LoadFacts, MAX_CGROUP_DEPTH, MAX_RULES,
    META_SLOTS, Origin, Outcomes, Rule, RuleKind, RuleRef, SOCK_STREAM, SOCK_TYPE_MASK,
};

#[map]
static CGROUP_RULES: HashMap<u64, Rule> = HashMap::with_max_entries(MAX_RULES, 0);
#[map]
static PID_RULES: HashMap<u32, Rule> = HashMap::with_max_entries(MAX_RULES, 0);
#[map]
static COMM_RULES: HashMap<[u8; COMM_LEN], Rule> = HashMap::with_max_entries(MAX_RULES, 0);
#[map]
static UID_RULES: HashMap<u32, Rule> = HashMap::with_max_entries(MAX_RULES, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// The program's own cache of cgroup walks (see [`cgroup_decision`]); user space never opens it.
#[map]
static CGROUP_DECISIONS: LruHashMap<u64, CgroupDecision> = LruHashMap::with_max_entries(CGROUP_DECISIONS_ENTRIES, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
/// Written and read by user space only; defined here so it is created and pinned with the rest.
/// BPF_F_NO_PREALLOC: entries are 512 bytes and usually few.
#[map]
static ORIGINS: HashMap<u64, Origin> = HashMap::with_max_entries(MAX_RULES, 1);
/// Written by the loader, read by `doctor`; defined here so it is created and pinned with the rest.
#[map]
static FACTS: Array<LoadFacts> = Array::with_max_entries(1, 0);
/// The pinned state's layout version and edit journal; user space only, pinned with the rest.
#[map]
static META: Array<u32> = Array::with_max_entries(META_SLOTS, 0);
/// Written by the outcome program (see `outcome`), read by user space; pinned with the rest.
#[map]
static OUTCOMES: HashMap<RuleRef, Outcomes> = HashMap::with_max_entries(MAX_RULES, 0);

// Set by the loader from the running kernel's BTF and the address of `mptcp_pernet_id`, which it
// asks of the kernel's `bpf_kallsyms_lookup_name` (see `mptcp_enabled_here` below).
#[unsafe(no_mangle)]
static NETNS_CHECK: Global<u8> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_TASK_NSPROXY: Global<u32> = Global::new(0);
// Set by the loader from the kernel's BTF (see `program_comm` below).
#[unsafe(no_mangle)]
static OFF_TASK_GROUP_LEADER: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_TASK_COMM: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_NSPROXY_NET_NS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_NET_GEN: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_PERNET_MPTCP_ENABLED: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static ADDR_MPTCP_PERNET_ID: Global<u64> = Global::new(0);
// Set by the loader from the kernel's BTF and symbols (see `landlock_restricts_tcp` below).
#[unsafe(no_mangle)]
static LANDLOCK_CHECK: Global<u8> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_TASK_CRED: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_CRED_SECURITY: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static ADDR_LANDLOCK_CRED_BLOB: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_LANDLOCK_DOMAIN: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_RULESET_NUM_LAYERS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_RULESET_ACCESS_MASKS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static LANDLOCK_NET_BIT: Global<u32> = Global::new(0);

#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/update_socket_protocol")]
pub fn mptcpify(ctx: *mut core::ffi::c_void) -> i32 {
    decide(&FEntryContext::new(ctx))
}

#[inline(always)]
pub(crate) fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the map returned a valid pointer to this CPU's slot; no other CPU writes it and
        // the program is not preempted mid-run, so a plain add is enough.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn hit(rule: *mut Rule) {
    use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};
    // SAFETY: `rule` points into a map value (checked non-null by the caller) that lives at
    // least as long as this run; shared between CPUs, hence the atomic add.
    unsafe { atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*rule).hits, 1) };
}

/// The rule that decides a socket. Every field is always initialised (no `Option` around it):
/// the verifier rejects copies of uninitialised stack slots that an `Option` would leave.
#[derive(Clone, Copy)]
struct Match {
    found: bool,
    exclude: bool,
    /// Decided by an audit rule: count, report, leave TCP.
    audit: bool,
    kind: RuleKind,
    key: u64,
    /// Null for `all`, which has no map entry.
    rule: *mut Rule,
}

impl Match {
    const NONE: Match =
        Match { found: false, exclude: false, audit: false, kind: RuleKind::All, key: 0, rule: core::ptr::null_mut() };

    /// Keeps the first enable match; an exclusion replaces it and ends the search (`true`).
    #[inline(always)]
    fn consider(&mut self, kind: RuleKind, key: u64, rule: Option<*mut Rule>) -> bool {
        let Some(rule) = rule else { return false };
        // SAFETY: a pointer the map lookup just returned for a present entry.
        let action = unsafe { (*rule).action };
        let exclude = action == ACTION_EXCLUDE;
        if exclude || !self.found {
            *self = Match { found: true, exclude, audit: action == ACTION_AUDIT, kind, key, rule };
        }
        exclude
    }
}

/// Finds the deciding rule: any exclusion wins; else the first enable found (pid, uid, comm,
/// cgroup and its ancestors, all). Without exclusions the first enable ends the search.
#[inline(always)]
fn select(cfg: &Config) -> Match {
    let mut m = Match::NONE;
    let stop_at_first = cfg.exclusions == 0;
    if cfg.pid_rules != 0 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if m.consider(RuleKind::Pid, tgid as u64, PID_RULES.get_ptr_mut(tgid)) || (stop_at_first && m.found) {
            return m;
        }
    }
    if cfg.uid_rules != 0 {
        let uid = bpf_get_current_uid_gid() as u32;
        if m.consider(RuleKind::Uid, uid as u64, UID_RULES.get_ptr_mut(uid)) || (stop_at_first && m.found) {
            return m;
        }
    }
    if cfg.comm_rules != 0
        && let Some(comm) = program_comm()
        && (m.consider(RuleKind::Comm, 0, COMM_RULES.get_ptr_mut(comm)) || (stop_at_first && m.found))
    {
        return m;
    }
    if cfg.cgroup_rules != 0 {
        let d = cgroup_decision(cfg);
        if d.action != CGROUP_NO_MATCH {
            // The rule itself, for its hit count. Gone if it was removed since `d` was read:
            // then it no longer decides.
            let rule = CGROUP_RULES.get_ptr_mut(d.cgroup);
            if m.consider(RuleKind::Cgroup, d.cgroup, rule) {
                return m;
            }
        }
    }
    if !m.found && cfg.all != 0 {
        let audit = cfg.all_action == ACTION_AUDIT;
        m = Match { found: true, exclude: false, audit, kind: RuleKind::All, key: 0, rule: core::ptr::null_mut() };
    }
    m
}

/// What the cgroup rules say about the caller's cgroup: the first exclusion among its
/// ancestors (root first), else the highest enabled (or audited) ancestor. Walking costs one helper call and
/// one lookup per level, so the answer is cached per caller cgroup for as long as the rules'
/// generation stands; most calls then cost one lookup.
#[inline(always)]
fn cgroup_decision(cfg: &Config) -> CgroupDecision {
    // Read before walking, and through a volatile read because `cfg` is shared with user space:
    // a change made during the walk then leaves this entry stale, never wrongly fresh.
    // SAFETY: `cfg` is a live reference to the config map's value.
    let generation = unsafe { core::ptr::read_volatile(&raw const cfg.cgroup_generation) };
    // SAFETY: a helper without arguments, callable from any tracing program.
    let caller = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is copied out below before anything else touches the map.
    if let Some(cached) = unsafe { CGROUP_DECISIONS.get(caller) }
        && cached.generation == generation
    {
        return *cached;
    }
    let mut d = CgroupDecision { generation, action: CGROUP_NO_MATCH, cgroup: 0 };
    // Level 0 is the root; a level below the caller's own yields 0.
    for level in 0..MAX_CGROUP_DEPTH {
        // SAFETY: the helper takes any level and returns 0 past the caller's own.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        // SAFETY: only `action` is read, at once; a concurrent removal leaves the old value
        // readable until this program run ends (RCU).
        if let Some(rule) = unsafe { CGROUP_RULES.get(id) } {
            if rule.action == ACTION_EXCLUDE {
                d.action = ACTION_EXCLUDE;
                d.cgroup = id;
                break;
            }
            if d.action == CGROUP_NO_MATCH {
                d.action = if rule.action == ACTION_AUDIT { ACTION_AUDIT } else { ACTION_ENABLE };
                d.cgroup = id;
            }
        }
    }
    // A full LRU map evicts its least recently used entry; a failed insert only costs a walk.
    let _ = CGROUP_DECISIONS.insert(caller, d, 0);
    d
}

/// `net.mptcp.enabled` of the caller's network namespace, read the way `mptcp_is_enabled()`
/// does: `net_generic(current->nsproxy->net_ns, mptcp_pernet_id)->mptcp_enabled`. Offsets and
/// the address come from the running kernel; `None` when unknown or unreadable.
#[inline(always)]
fn mptcp_enabled_here() -> Option<bool> {
    if NETNS_CHECK.load() == 0 {
        return None;
    }
    // SAFETY: every kernel pointer is read with bpf_probe_read_kernel, which fails (None here)
    // instead of faulting on a bad address; offsets come from the running kernel's BTF.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let nsproxy: *const u8 = bpf_probe_read_kernel(task.add(OFF_TASK_NSPROXY.load() as usize).cast()).ok()?;
        let net: *const u8 = bpf_probe_read_kernel(nsproxy.add(OFF_NSPROXY_NET_NS.load() as usize).cast()).ok()?;
        let gen_: *const u8 = bpf_probe_read_kernel(net.add(OFF_NET_GEN.load() as usize).cast()).ok()?;
        let id: u32 = bpf_probe_read_kernel(ADDR_MPTCP_PERNET_ID.load() as *const u32).ok()?;
        // struct net_generic: a union whose `ptr[]` flexible array starts at offset 0.
        let pernet: *const u8 = bpf_probe_read_kernel(gen_.add(id as usize * 8).cast()).ok()?;
        let enabled: u8 = bpf_probe_read_kernel(pernet.add(OFF_PERNET_MPTCP_ENABLED.load() as usize)).ok()?;
        Some(enabled != 0)
    }
}

/// Whether the caller is in a Landlock domain whose layers restrict TCP (bind or connect), read
/// as Landlock reads it: `landlock_cred(current_cred())->domain`, then each layer's `net`
/// access bits. Landlock's TCP rules do not apply to MPTCP sockets, so upgrading such a process
/// would lift its sandbox. `None` when the check is off or a read fails.
#[inline(always)]
fn landlock_restricts_tcp() -> Option<bool> {
    use outcome::read;
    if LANDLOCK_CHECK.load() == 0 {
        return None;
    }
    // SAFETY: a helper without arguments, callable from any tracing program.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let cred = read::<*const u8>(task, OFF_TASK_CRED.load())?;
    let blobs = read::<*const u8>(cred, OFF_CRED_SECURITY.load())?;
    let offset = read::<i32>(ADDR_LANDLOCK_CRED_BLOB.load() as *const u8, 0)?;
    let domain = read::<*const u8>(blobs.wrapping_add(offset as usize), OFF_LANDLOCK_DOMAIN.load())?;
    if domain.is_null() {
        return Some(false);
    }
    let layers = read::<u32>(domain, OFF_RULESET_NUM_LAYERS.load())?;
    let net_bit = LANDLOCK_NET_BIT.load() & 31;
    for layer in 0..LANDLOCK_MAX_LAYERS {
        if layer >= layers {
            break;
        }
        let mask = read::<u32>(domain, OFF_RULESET_ACCESS_MASKS.load() + layer * 4)?;
        // Two bits: LANDLOCK_ACCESS_NET_BIND_TCP and _CONNECT_TCP.
        if (mask >> net_bit) & 3 != 0 {
            return Some(true);
        }
    }
    Some(false)
}

/// The caller's program name: its thread-group leader's `comm`. Threads rename themselves
/// (`worker-3`), so `bpf_get_current_comm`, the calling thread's, would let a named thread
/// escape its program's exclusion. `None` when unreadable: then no command rule decides.
#[inline(always)]
pub(crate) fn program_comm() -> Option<[u8; COMM_LEN]> {
    // SAFETY: kernel pointers are read with bpf_probe_read_kernel, which fails instead of
    // faulting; the offsets come from the running kernel's BTF.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let leader: *const u8 = bpf_probe_read_kernel(task.add(OFF_TASK_GROUP_LEADER.load() as usize).cast()).ok()?;
        bpf_probe_read_kernel(leader.add(OFF_TASK_COMM.load() as usize).cast::<[u8; COMM_LEN]>()).ok()
    }
}

#[inline(always)]
fn report(cfg: &Config, m: &Match, family: i32, decision: Decision) {
    report_event(cfg, m.kind, m.key, family, decision, 0, 0, true);
}

/// Sends one event to a listening monitor. Outside a process (`in_process` false: outcomes, seen
/// in the network stack) pid, uid, cgroup and command mean nothing and stay 0.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn report_event(
    cfg: &Config,
    kind: RuleKind,
    key: u64,
    family: i32,
    decision: Decision,
    local_port: u16,
    remote_port: u16,
    in_process: bool,
) {
    if cfg.monitor_pid == 0 {
        return;
    }
    let mut event =
        if in_process { process_event(kind, key, family, decision) } else { base_event(kind, key, family, decision) };
    event.local_port = local_port;
    event.remote_port = remote_port;
    if EVENTS.output::<Event>(&event, 0).is_err() {
        bump(Counter::EventsDropped);
    }
}

#[inline(always)]
fn base_event(kind: RuleKind, key: u64, family: i32, decision: Decision) -> Event {
    Event {
        // SAFETY: a helper without arguments, callable from tracing and sock_ops programs.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        rule_key: key,
        family: family as u16,
        decision: decision as u8,
        rule_kind: kind as u8,
        ..Event::default()
    }
}

/// An event of the calling process: its pid, uid, cgroup and command filled in.
#[inline(always)]
pub(crate) fn process_event(kind: RuleKind, key: u64, family: i32, decision: Decision) -> Event {
    let mut event = base_event(kind, key, family, decision);
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a helper without arguments, callable from any tracing program.
    event.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    event.pid = (pid_tgid >> 32) as u32;
    event.uid = bpf_get_current_uid_gid() as u32;
    event.comm = program_comm().unwrap_or_default();
    event
}

/// Whether the compatibility guard keeps the caller's program TCP within the matched rule (an
/// option it used was refused on an MPTCP socket; see `options`).
#[inline(always)]
fn guard_keeps_tcp(cfg: &Config, m: &Match) -> bool {
    // SAFETY: a plain load of the program's own global.
    if cfg.guard_off != 0 || unsafe { core::ptr::read_volatile(&raw const options::ANY_GUARDED) } == 0 {
        return false;
    }
    let Some(comm) = program_comm() else { return false };
    let key = GuardKey { comm, rule: RuleRef { kind: m.kind as u32, _pad: 0, key: m.key } };
    // SAFETY: only `verdict` is read, at once.
    if !unsafe { options::GUARD.get(key) }.is_some_and(|e| e.verdict == GUARD_KEEP_TCP) {
        return false;
    }
    // The operator's "upgrade it anyway" wins over a decision that raced it (looked up only
    // for kept programs, so it costs the others nothing).
    let anyway = GuardKey { comm, rule: RuleRef::ANY };
    // SAFETY: only `verdict` is read, at once.
    !unsafe { options::GUARD.get(anyway) }.is_some_and(|e| e.verdict == GUARD_ALLOW)
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
    let Some(cfg) = CONFIG.get(0) else { return 0 };
    let m = select(cfg);
    if !m.found {
        return 0;
    }
    if !m.rule.is_null() {
        hit(m.rule);
    }
    if m.exclude {
        bump(Counter::Excluded);
        report(cfg, &m, family, Decision::Excluded);
        return 0;
    }
    if mptcp_enabled_here() == Some(false) {
        // An MPTCP socket would fail with ENOPROTOOPT here: never break the application.
        bump(Counter::KeptTcpMptcpDisabled);
        report(cfg, &m, family, Decision::KeptTcpMptcpDisabled);
        return 0;
    }
    if landlock_restricts_tcp() == Some(true) {
        // An MPTCP socket would escape the caller's sandbox: never weaken it.
        bump(Counter::KeptTcpLandlock);
        report(cfg, &m, family, Decision::KeptTcpLandlock);
        return 0;
    }
    if guard_keeps_tcp(cfg, &m) {
        bump(Counter::KeptTcpGuard);
        report(cfg, &m, family, Decision::KeptTcpGuard);
        return 0;
    }
    if m.audit {
        bump(Counter::WouldUpgrade);
        report(cfg, &m, family, Decision::WouldUpgrade);
        return 0;
    }
    bump(Counter::upgraded_by(m.kind));
    report(cfg, &m, family, Decision::Upgraded);
    if cfg.outcomes != 0 {
        outcome::remember_upgrade(m.kind, m.key);
    }
    debug!(ctx, "{} rule {}: socket({}, {}) -> MPTCP", m.kind.name(), m.key, family, ty);
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
