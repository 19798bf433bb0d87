//! The contract between the kernel program and user space: map names, key and value layouts,
//! counter slots, events and limits. Both sides compile this crate, so a layout change is one
//! edit.
#![no_std]
#![deny(unsafe_code)]

/// `IPPROTO_MPTCP`: what the program makes `socket()` use instead of TCP.
pub const IPPROTO_MPTCP: i32 = 262;
pub const IPPROTO_TCP: i32 = 6;
pub const AF_INET: i32 = 2;
pub const AF_INET6: i32 = 10;
pub const SOCK_STREAM: i32 = 1;
/// `type` arrives with `SOCK_NONBLOCK | SOCK_CLOEXEC` or'ed in; the socket type is the low nibble.
pub const SOCK_TYPE_MASK: i32 = 0xf;

/// Kernel function the program is attached to (Linux >= 6.6, called from `__sys_socket`).
pub const HOOK_FUNCTION: &str = "update_socket_protocol";
/// Name of the program function in the object file (section `fentry/update_socket_protocol`).
pub const PROGRAM_NAME: &str = "mptcpify";

/// Where a tracing program runs: on entry to its kernel function, or on its return (then it
/// also sees the return value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceAttach {
    Entry,
    Exit,
}

/// One of the outcome-tracking programs: its function in the object file (whose section names
/// `function`), the kernel function it is attached to, and the pin of its link in [`PIN_DIR`].
#[derive(Clone, Copy, Debug)]
pub struct OutcomeProgram {
    /// Short name, as `status` shows it.
    pub role: &'static str,
    pub name: &'static str,
    pub function: &'static str,
    pub attach: TraceAttach,
    pub pin: &'static str,
}

/// The outcome programs, in the order they are attached (the tag first: without it nothing is
/// noted for the others to find). Each kernel function is called only where the kernel already
/// knows what the program needs (see the program's `outcome` module).
pub const OUTCOME_PROGRAMS: [OutcomeProgram; 6] = [
    // Every new MPTCP socket passes through it (`sk->sk_prot->init`): which rule upgraded it.
    OutcomeProgram {
        role: "tag",
        name: "mptcpify_tag",
        function: "mptcp_init_sock",
        attach: TraceAttach::Entry,
        pin: "tag_link",
    },
    // Once per TCP socket that becomes established, after MPTCP read the handshake.
    OutcomeProgram {
        role: "established",
        name: "mptcpify_established",
        function: "tcp_init_transfer",
        attach: TraceAttach::Entry,
        pin: "established_link",
    },
    // Every TCP listen(), with its result: upgraded servers are remembered by port.
    OutcomeProgram {
        role: "listen",
        name: "mptcpify_listen",
        function: "inet_csk_listen_start",
        attach: TraceAttach::Exit,
        pin: "listen_link",
    },
    // A TCP socket that dies (reset, timeout, last ACK): subflows that never got established.
    OutcomeProgram {
        role: "failed",
        name: "mptcpify_failed",
        function: "tcp_done",
        attach: TraceAttach::Entry,
        pin: "failed_link",
    },
    // Every setsockopt() on an MPTCP socket, with its result: options refused because it is MPTCP.
    OutcomeProgram {
        role: "setsockopt",
        name: "mptcpify_setsockopt",
        function: "mptcp_setsockopt",
        attach: TraceAttach::Exit,
        pin: "setsockopt_link",
    },
    OutcomeProgram {
        role: "getsockopt",
        name: "mptcpify_getsockopt",
        function: "mptcp_getsockopt",
        attach: TraceAttach::Exit,
        pin: "getsockopt_link",
    },
];

/// The audit watchers: TCP's own option calls, seen on return, for sockets an audit rule left
/// TCP. They run on every TCP socket's option calls, so they are attached only while an audit
/// rule exists ([`Config::audits_any`]); loaded with the rest, their programs are pinned as
/// `PIN_prog` and, while attached, their links as `PIN_link`.
pub const AUDIT_PROGRAMS: [OutcomeProgram; 3] = [
    // setsockopt of SOL_TCP, SOL_IP and SOL_IPV6 on a TCP socket.
    OutcomeProgram {
        role: "audit-setsockopt",
        name: "mptcpify_audit_set",
        function: "tcp_setsockopt",
        attach: TraceAttach::Exit,
        pin: "audit_setsockopt",
    },
    // setsockopt of SOL_SOCKET (MPTCP sees those; TCP leaves them to the socket layer).
    OutcomeProgram {
        role: "audit-sk-setsockopt",
        name: "mptcpify_audit_sk_set",
        function: "sk_setsockopt",
        attach: TraceAttach::Exit,
        pin: "audit_sk_setsockopt",
    },
    // getsockopt of SOL_TCP, SOL_IP and SOL_IPV6 (MPTCP never sees SOL_SOCKET gets).
    OutcomeProgram {
        role: "audit-getsockopt",
        name: "mptcpify_audit_get",
        function: "tcp_getsockopt",
        attach: TraceAttach::Exit,
        pin: "audit_getsockopt",
    },
];

/// The pin of the sock_ops program's link of layout 3 before its tracing programs replaced it:
/// removed with the rest of a killed load's leftovers.
pub const OLD_OUTCOME_LINK_PIN: &str = "outcome_link";

/// Where bpffs is mounted; the pins live below it.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Where link and maps are pinned (bpffs, root-only). User space, the tests and xtask all find
/// the state here.
pub const PIN_DIR: &str = "/sys/fs/bpf/mptcpify";
/// Pin of the link in [`PIN_DIR`]; unlinking it detaches the program.
pub const LINK_PIN: &str = "link";
/// A first load pins into `PIN_DIR` + this + its PID, then renames that into place, so others
/// see all of the state or none. bpffs refuses names with dots.
pub const LOADING_INFIX: &str = "_loading_";

/// cgroup v2 id (the inode number of the cgroup directory) -> [`Rule`].
pub const CGROUP_RULES_MAP: &str = "CGROUP_RULES";
/// Thread-group id (PID in the initial PID namespace) -> [`Rule`].
pub const PID_RULES_MAP: &str = "PID_RULES";
/// Command name (`comm`, NUL-padded to 16 bytes) -> [`Rule`].
pub const COMM_RULES_MAP: &str = "COMM_RULES";
/// User id (in the initial user namespace) -> [`Rule`].
pub const UID_RULES_MAP: &str = "UID_RULES";
/// Per-CPU array of [`Counter`] slots.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// One-slot array holding [`Config`].
pub const CONFIG_MAP: &str = "CONFIG";
/// Ring buffer of [`Event`]s, written only while a monitor listens.
pub const EVENTS_MAP: &str = "EVENTS";
/// One-slot array holding [`LoadFacts`]: how the attached program was loaded. Only user space
/// reads it (`doctor`).
pub const FACTS_MAP: &str = "FACTS";
/// cgroup id -> [`Origin`]: what a cgroup rule was made from. Only user space reads it.
pub const ORIGINS_MAP: &str = "ORIGINS";
/// [`RuleRef`] -> [`Outcomes`]: what became of the connections each rule upgraded. Written by the
/// outcome program, read by user space; an entry goes with its rule.
pub const OUTCOMES_MAP: &str = "OUTCOMES";
/// [`SockOpt`] -> [`OPTION_SET`] | [`OPTION_GET`]: the options the running kernel refuses on an
/// MPTCP socket but accepts on a TCP one, as the loader found by probing throwaway sockets.
pub const REFUSED_OPTIONS_MAP: &str = "REFUSED_OPTIONS";
/// [`RefusalKey`] -> `u64`: refusals of those options on upgraded sockets, per rule, option and
/// program. Written by the option programs; an entry goes with its rule.
pub const REFUSALS_MAP: &str = "REFUSALS";
/// [`GuardKey`] -> [`GuardEntry`]: programs the compatibility guard keeps TCP (or that the
/// operator allowed to be upgraded anyway).
pub const GUARD_MAP: &str = "GUARD";
/// Array of `u32` slots about the pinned state itself ([`MetaSlot`]). Only user space reads it.
/// Its shape never changes (slots are only ever added at the end), so that every version can
/// read the layout version of any state it meets.
pub const META_MAP: &str = "META";
pub const META_SLOTS: u32 = 8;

/// The slots of [`META_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaSlot {
    /// The [`LAYOUT_VERSION`] of whoever pinned the state.
    Layout = 0,
    /// Non-zero while an edit is under way: the editor's PID. Seen under the lock, that editor
    /// was killed midway, and the next one repairs what it left (counts, the cgroup cache).
    EditPid = 1,
    /// Bumped at the end of every edit: a change of this slot or of [`Config`] is how the agent
    /// notices edits by others without reading every rule.
    Edits = 2,
}

/// Version of the pinned layout: the set of pinned maps, their key and value shapes, and what
/// their values mean. Bump it with any such change; a version meeting state of another layout
/// refuses to edit it (see README, "Upgrading").
pub const LAYOUT_VERSION: u32 = 4;
/// State pinned before layouts were numbered (no [`META_MAP`]): its maps are this layout's when
/// they open with this version's shapes, and it is adopted by pinning a `META` beside them.
pub const LAYOUT_UNNUMBERED: u32 = 1;

/// Maps pinned beside the link; the rest (.rodata, the log ring buffer, the program's own cache)
/// live on with the program, which the link holds.
pub const PINNED_MAPS: [&str; 14] = [
    CGROUP_RULES_MAP,
    PID_RULES_MAP,
    COMM_RULES_MAP,
    UID_RULES_MAP,
    COUNTERS_MAP,
    CONFIG_MAP,
    EVENTS_MAP,
    ORIGINS_MAP,
    FACTS_MAP,
    META_MAP,
    OUTCOMES_MAP,
    REFUSED_OPTIONS_MAP,
    REFUSALS_MAP,
    GUARD_MAP,
];

/// Room for 10,000 rules of each kind, with headroom for hash collisions.
pub const MAX_RULES: u32 = 16384;
/// Deepest cgroup level looked at. Kubernetes pods sit at level 4-6; 32 leaves ample room.
pub const MAX_CGROUP_DEPTH: u32 = 32;
/// `comm` as the kernel keeps it: 15 characters and a NUL.
pub const COMM_LEN: usize = 16;
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// A rule's value in the kernel maps. `hits` is bumped by the kernel program each time the rule
/// decides a socket; user space only creates and deletes entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub action: u32,
    /// Who made the rule ([`OWNER_CLI`], [`OWNER_AGENT`]); the kernel program ignores it. The agent
    /// only ever removes rules it owns, so it and the CLI can share the tables.
    pub owner: u32,
    pub hits: u64,
}

/// [`Rule::owner`]: made by a CLI command (`enable`, `exclude`, `run`).
pub const OWNER_CLI: u32 = 0;
/// [`Rule::owner`]: made by `mptcpify agent` from its policy or from Kubernetes pods.
pub const OWNER_AGENT: u32 = 1;

/// [`Rule::action`]: upgrade sockets of the matched process, user, command or cgroup.
pub const ACTION_ENABLE: u32 = 1;
/// [`Rule::action`]: never upgrade them, whatever else matches.
pub const ACTION_EXCLUDE: u32 = 2;
/// [`Rule::action`]: leave them TCP but count (and report) them as `would-upgrade`.
pub const ACTION_AUDIT: u32 = 3;

/// Global switches, written by user space. Counts let the program skip lookups that cannot
/// match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub cgroup_rules: u32,
    pub pid_rules: u32,
    pub comm_rules: u32,
    pub uid_rules: u32,
    /// Non-zero: every process is selected (`enable --all`), exclusions still apply. The value is
    /// 1 + the owner ([`OWNER_CLI`], [`OWNER_AGENT`]) of the switch.
    pub all: u32,
    /// Number of exclusion rules; 0 lets the first enable match decide at once.
    pub exclusions: u32,
    /// PID of the listening `mptcpify monitor`; 0: no events are produced.
    pub monitor_pid: u32,
    /// Bumped by user space after every change to the cgroup rules. The program caches the
    /// result of its per-level cgroup walk per caller cgroup, tagged with this number, so a
    /// change makes every cached walk stale at once (see [`CgroupDecision`]).
    pub cgroup_generation: u32,
    /// What `all` does when set: [`ACTION_ENABLE`] or [`ACTION_AUDIT`].
    pub all_action: u32,
    /// Non-zero when the outcome programs are attached: only then does an upgrade leave the
    /// note they read.
    pub outcomes: u32,
    /// Non-zero: the compatibility guard is off (`mptcpify guard off`): refusals are still
    /// counted, but no program is kept TCP for them. 0, the default, is on.
    pub guard_off: u32,
    /// Number of audit rules (not counting `all`): while any exists, or `all` audits, the audit
    /// watchers ([`AUDIT_PROGRAMS`]) are attached.
    pub audits: u32,
}

impl Config {
    /// The value as the map holds it, for writers without a typed map (the loader).
    pub fn to_ne_bytes(&self) -> [u8; size_of::<Config>()] {
        let words = [
            self.cgroup_rules,
            self.pid_rules,
            self.comm_rules,
            self.uid_rules,
            self.all,
            self.exclusions,
            self.monitor_pid,
            self.cgroup_generation,
            self.all_action,
            self.outcomes,
            self.guard_off,
            self.audits,
        ];
        words_as_ne_bytes(&words)
    }
}

/// `words` in native byte order, one after another: how a map or `.rodata` holds a `repr(C)`
/// struct of `u32`s.
fn words_as_ne_bytes<const BYTES: usize>(words: &[u32]) -> [u8; BYTES] {
    let mut bytes = [0u8; BYTES];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    bytes
}

const _: () = assert!(size_of::<Config>() == 48, "Config is twelve u32s, as to_ne_bytes writes them");

impl Config {
    /// Whether any rule audits: then the audit watchers must be attached.
    pub const fn audits_any(&self) -> bool {
        self.audits > 0 || (self.all != 0 && self.all_action == ACTION_AUDIT)
    }
}

/// What the loader decided when it loaded the attached program, kept beside it because the
/// program's own globals are read-only and unpinned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadFacts {
    /// 1 when the program reads each caller's `net.mptcp.enabled` (its offsets and the address
    /// of `mptcp_pernet_id` were found), 0 when that check is off for this program's life.
    pub netns_check: u32,
    /// aya-log's level baked in (0 = off).
    pub log_level: u32,
    /// [`LANDLOCK_UNCHECKED`], [`LANDLOCK_CHECKED`] or [`LANDLOCK_RESTRICTS_MPTCP`].
    pub landlock: u32,
}

/// [`LoadFacts::landlock`]: the program cannot see Landlock domains (offsets or the blob offset's
/// address not found): a sandboxed process is upgraded like any other.
pub const LANDLOCK_UNCHECKED: u32 = 0;
/// Processes whose Landlock domain restricts TCP keep TCP sockets.
pub const LANDLOCK_CHECKED: u32 = 1;
/// This kernel's Landlock restricts MPTCP sockets as it does TCP ones (probed at load): nothing
/// to keep TCP for.
pub const LANDLOCK_RESTRICTS_MPTCP: u32 = 2;
/// No Landlock network rules on this kernel (Landlock off, or its ABI without them).
pub const LANDLOCK_NO_NET_RULES: u32 = 3;

/// Cached result of walking one cgroup's ancestors through the cgroup rules. Exact while
/// [`Config::cgroup_generation`] is unchanged: cgroup ids are never reused and a cgroup cannot
/// move to another parent, so its ancestors are fixed; only the rules can change.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupDecision {
    pub generation: u32,
    /// [`CGROUP_NO_MATCH`], [`ACTION_ENABLE`], [`ACTION_AUDIT`] or [`ACTION_EXCLUDE`].
    pub action: u32,
    /// The deciding ancestor: the first exclusion, else the highest enabled one.
    pub cgroup: u64,
}

/// [`CgroupDecision::action`]: no ancestor has a rule.
pub const CGROUP_NO_MATCH: u32 = 0;
/// Caller cgroups whose walk is cached; an LRU map, so the busiest stay.
pub const CGROUP_DECISIONS_ENTRIES: u32 = 8192;

/// Which kind of rule decided.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    Pid = 1,
    Uid = 2,
    Comm = 3,
    Cgroup = 4,
    All = 5,
}

impl RuleKind {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Pid,
            2 => Self::Uid,
            3 => Self::Comm,
            4 => Self::Cgroup,
            5 => Self::All,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Pid => "pid",
            Self::Uid => "uid",
            Self::Comm => "comm",
            Self::Cgroup => "cgroup",
            Self::All => "all",
        }
    }
}

/// What the program did with a socket a rule matched.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Upgraded = 1,
    Excluded = 2,
    /// Selected, but MPTCP is disabled in the caller's network namespace: left TCP so that
    /// `socket()` does not fail with ENOPROTOOPT.
    KeptTcpMptcpDisabled = 3,
    /// Selected by an audit rule: left TCP, would have been upgraded.
    WouldUpgrade = 4,
    /// An upgraded connection negotiated MPTCP.
    Mptcp = 5,
    /// An upgraded client's peer answered without MPTCP (no MP_CAPABLE in its SYN-ACK).
    FallbackPeer = 6,
    /// An upgraded server's client did not offer MPTCP.
    FallbackClient = 7,
    /// An extra subflow of an upgraded connection was established.
    Subflow = 8,
    /// An extra subflow of an upgraded connection failed before it was established.
    SubflowFailed = 9,
    /// Selected, but the compatibility guard keeps this program TCP: an option it uses was
    /// refused on one of its MPTCP sockets.
    KeptTcpGuard = 10,
    /// A `setsockopt`/`getsockopt` on an upgraded socket was refused because it is MPTCP (the
    /// option is in the running kernel's [`REFUSED_OPTIONS_MAP`]).
    OptionRefused = 11,
    /// A socket option call that succeeded on a socket an audit rule left TCP, and that MPTCP
    /// would have refused.
    OptionWouldFail = 12,
    /// Selected, but the caller's Landlock domain restricts TCP, which Landlock does not apply
    /// to MPTCP sockets: left TCP so that the sandbox holds.
    KeptTcpLandlock = 13,
}

impl Decision {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Upgraded,
            2 => Self::Excluded,
            3 => Self::KeptTcpMptcpDisabled,
            4 => Self::WouldUpgrade,
            5 => Self::Mptcp,
            6 => Self::FallbackPeer,
            7 => Self::FallbackClient,
            8 => Self::Subflow,
            9 => Self::SubflowFailed,
            10 => Self::KeptTcpGuard,
            11 => Self::OptionRefused,
            12 => Self::OptionWouldFail,
            13 => Self::KeptTcpLandlock,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Upgraded => "upgraded",
            Self::Excluded => "excluded",
            Self::KeptTcpMptcpDisabled => "kept-tcp-mptcp-disabled",
            Self::WouldUpgrade => "would-upgrade",
            Self::Mptcp => "mptcp",
            Self::FallbackPeer => "fallback-peer",
            Self::FallbackClient => "fallback-client",
            Self::Subflow => "subflow",
            Self::SubflowFailed => "subflow-failed",
            Self::KeptTcpGuard => "kept-tcp-guard",
            Self::OptionRefused => "option-refused",
            Self::OptionWouldFail => "option-would-fail",
            Self::KeptTcpLandlock => "kept-tcp-landlock",
        }
    }
}

/// One decision or connection outcome, sent to the monitor. Outcomes happen in the network
/// stack, not in a process: their `pid`, `uid`, `comm` and `cgroup_id` are 0, their ports set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns`.
    pub boot_ns: u64,
    /// The caller's cgroup (not necessarily the one whose rule matched).
    pub cgroup_id: u64,
    /// Key of the rule that decided (cgroup id, pid, uid; 0 for comm and all).
    pub rule_key: u64,
    pub pid: u32,
    pub uid: u32,
    pub family: u16,
    pub decision: u8,
    pub rule_kind: u8,
    /// [`Decision::OptionRefused`]: the errno the application got.
    pub errno: u32,
    pub comm: [u8; COMM_LEN],
    /// Outcomes: the connection's local and remote port (host order).
    pub local_port: u16,
    pub remote_port: u16,
    /// [`Decision::OptionRefused`]: [`OPTION_SET`] or [`OPTION_GET`].
    pub option_op: u32,
    /// [`Decision::OptionRefused`]: the option refused.
    pub option: SockOpt,
}

/// Which rule: its kind ([`RuleKind`] as u32) and key (cgroup id, pid, uid; 0 for comm and all).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub kind: u32,
    pub _pad: u32,
    pub key: u64,
}

/// What became of the connections one rule upgraded, counted by the outcome program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// MP_CAPABLE negotiated (as client or server).
    pub mptcp: u64,
    /// As client: the peer's SYN-ACK carried no MP_CAPABLE (a peer without MPTCP, a middlebox
    /// that strips it, or the kernel sending a plain SYN after it detected a blackhole).
    pub fallback_peer: u64,
    /// As server: the client did not offer MPTCP.
    pub fallback_client: u64,
    /// Extra subflows (MP_JOIN) established, either direction.
    pub subflows: u64,
    /// Extra subflows this side started that closed before they were established.
    pub subflows_failed: u64,
    /// Connections whose first subflow never got established (refused, timed out).
    pub connect_failed: u64,
}

impl Outcomes {
    pub const fn fallback(&self) -> u64 {
        self.fallback_peer + self.fallback_client
    }
}

/// A socket option: its level (`SOL_SOCKET`, `SOL_IP`, `SOL_TCP`, ...) and its number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockOpt {
    pub level: u32,
    pub name: u32,
}

/// Bits of a [`REFUSED_OPTIONS_MAP`] value, and [`RefusalKey::op`]: refused by `setsockopt`,
/// by `getsockopt`.
pub const OPTION_SET: u32 = 1;
pub const OPTION_GET: u32 = 2;
/// Entries of [`REFUSED_OPTIONS_MAP`]: far more than any kernel's list (about 35).
pub const MAX_REFUSED_OPTIONS: u32 = 512;

/// One kind of refusal: which rule's socket, which option, which call, which program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RefusalKey {
    pub rule: RuleRef,
    pub option: SockOpt,
    pub op: u32,
    /// 1: predicted for a socket an audit rule left TCP (it would have been refused on MPTCP);
    /// 0: refused on an upgraded socket.
    pub predicted: u32,
    /// The program (thread-group leader's command name) that made the call.
    pub comm: [u8; COMM_LEN],
}
pub const MAX_REFUSALS: u32 = 4096;

/// Which program the guard decides about, within which rule's scope. [`RuleRef::ANY`] as the
/// rule: within every rule (how the operator's "upgrade it anyway" is kept).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GuardKey {
    pub comm: [u8; COMM_LEN],
    pub rule: RuleRef,
}

impl RuleRef {
    /// No rule in particular: every rule.
    pub const ANY: RuleRef = RuleRef { kind: 0, _pad: 0, key: 0 };
}

/// What the guard decided about a program, and why.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardEntry {
    /// `bpf_ktime_get_boot_ns` of the decision (0 when the operator made it).
    pub since_boot_ns: u64,
    /// [`GUARD_KEEP_TCP`] or [`GUARD_ALLOW`].
    pub verdict: u32,
    /// The refusal that decided it: [`OPTION_SET`] or [`OPTION_GET`], the option, the errno.
    pub op: u32,
    pub option: SockOpt,
    pub errno: u32,
    /// The PID that was refused.
    pub pid: u32,
    /// 1: predicted by an audit rule (the call succeeded on TCP and would have been refused on
    /// MPTCP); `errno` is then 0.
    pub predicted: u32,
    pub _pad: u32,
}

/// [`GuardEntry::verdict`]: the program's next sockets stay TCP.
pub const GUARD_KEEP_TCP: u32 = 1;
/// [`GuardEntry::verdict`]: upgrade it anyway, whatever is refused (the operator said so).
pub const GUARD_ALLOW: u32 = 2;
pub const MAX_GUARD_ENTRIES: u32 = 4096;

/// Entries of the outcome program's own maps (never pinned; they live with the program).
pub const TRACKED_SOCKETS: u32 = 16384;
pub const TRACKED_LISTENERS: u32 = 4096;

/// Where a cgroup rule came from, so it can be re-resolved when the cgroup is recreated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub kind: u32,
    pub len: u32,
    /// cgroup path relative to the cgroup2 root, or a systemd unit name; `len` bytes used.
    pub text: [u8; ORIGIN_TEXT_LEN],
}

pub const ORIGIN_TEXT_LEN: usize = 504;
pub const ORIGIN_PATH: u32 = 1;
pub const ORIGIN_UNIT: u32 = 2;
pub const ORIGIN_RUN: u32 = 3;
/// A Kubernetes pod: `text` is `namespace/name`.
pub const ORIGIN_POD: u32 = 4;

impl Default for Origin {
    fn default() -> Self {
        Self { kind: 0, len: 0, text: [0; ORIGIN_TEXT_LEN] }
    }
}

/// Slots of [`COUNTERS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every call of the hook (any family, type, protocol).
    Calls = 0,
    /// Calls for AF_INET/AF_INET6 + SOCK_STREAM + protocol 0/TCP: the ones that could be upgraded.
    TcpCandidates = 1,
    UpgradedByPid = 2,
    UpgradedByCgroup = 3,
    UpgradedByComm = 4,
    UpgradedByUid = 5,
    UpgradedByAll = 6,
    /// Candidates an exclusion kept TCP.
    Excluded = 7,
    /// Selected sockets left TCP because MPTCP is disabled in the caller's network namespace.
    KeptTcpMptcpDisabled = 8,
    /// Events the monitor did not get (ring buffer full).
    EventsDropped = 9,
    /// Candidates an audit rule selected: left TCP, would have been upgraded.
    WouldUpgrade = 10,
    /// Selected sockets the compatibility guard kept TCP (see [`GUARD_MAP`]).
    KeptTcpGuard = 11,
    /// Socket options refused on upgraded sockets because they are MPTCP.
    OptionsRefused = 12,
    /// Socket options audited sockets set that MPTCP would have refused.
    OptionsWouldFail = 13,
    /// Selected sockets left TCP because the caller's Landlock domain restricts TCP.
    KeptTcpLandlock = 14,
}

pub const COUNTER_SLOTS: u32 = 15;

impl Counter {
    pub const ALL: [Counter; COUNTER_SLOTS as usize] = [
        Counter::Calls,
        Counter::TcpCandidates,
        Counter::UpgradedByPid,
        Counter::UpgradedByCgroup,
        Counter::UpgradedByComm,
        Counter::UpgradedByUid,
        Counter::UpgradedByAll,
        Counter::Excluded,
        Counter::KeptTcpMptcpDisabled,
        Counter::EventsDropped,
        Counter::WouldUpgrade,
        Counter::KeptTcpGuard,
        Counter::OptionsRefused,
        Counter::OptionsWouldFail,
        Counter::KeptTcpLandlock,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::Calls => "calls",
            Counter::TcpCandidates => "tcp_candidates",
            Counter::UpgradedByPid => "upgraded_by_pid",
            Counter::UpgradedByCgroup => "upgraded_by_cgroup",
            Counter::UpgradedByComm => "upgraded_by_comm",
            Counter::UpgradedByUid => "upgraded_by_uid",
            Counter::UpgradedByAll => "upgraded_by_all",
            Counter::Excluded => "excluded",
            Counter::KeptTcpMptcpDisabled => "kept_tcp_mptcp_disabled",
            Counter::EventsDropped => "events_dropped",
            Counter::WouldUpgrade => "would_upgrade",
            Counter::KeptTcpGuard => "kept_tcp_guard",
            Counter::OptionsRefused => "options_refused",
            Counter::OptionsWouldFail => "options_would_fail",
            Counter::KeptTcpLandlock => "kept_tcp_landlock",
        }
    }

    pub const fn upgraded_by(kind: RuleKind) -> Self {
        match kind {
            RuleKind::Pid => Counter::UpgradedByPid,
            RuleKind::Uid => Counter::UpgradedByUid,
            RuleKind::Comm => Counter::UpgradedByComm,
            RuleKind::Cgroup => Counter::UpgradedByCgroup,
            RuleKind::All => Counter::UpgradedByAll,
        }
    }
}

/// Names of the globals (`.rodata`) that locate the caller's program name: command-name rules
/// match the thread-group leader's `comm` (`current->group_leader->comm`), not the calling
/// thread's, which servers rename (`worker-3`). The loader sets them from the kernel's BTF.
pub mod task_globals {
    pub const GROUP_LEADER: &str = "OFF_TASK_GROUP_LEADER";
    pub const COMM: &str = "OFF_TASK_COMM";
}

/// Name of the global (`.rodata`) holding [`SockOffsets`], which the loader sets from the
/// running kernel's BTF.
pub const SOCK_OFFSETS: &str = "SOCK_OFFSETS";

/// Where the outcome programs find what they read in the kernel's socket structures: byte
/// offsets from the start of `struct sock`, and bit offsets of flags in
/// `struct mptcp_subflow_context`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sk->__sk_common.skc_cookie`: an MPTCP socket's tag is kept under its cookie.
    pub cookie: u32,
    pub family: u32,
    pub state: u32,
    /// `skc_num`: the local port, host order.
    pub local_port: u32,
    /// `skc_dport`: the remote port, network order.
    pub remote_port: u32,
    /// `sk_protocol`: TCP for every socket these programs care about.
    pub protocol: u32,
    /// `skc_net.net`: the socket's network namespace.
    pub net: u32,
    /// `struct net`'s `net_cookie`.
    pub net_cookie: u32,
    /// Bit offset of `tcp_sock.is_mptcp`: set on MPTCP subflows (what `sk_is_mptcp()` reads).
    pub is_mptcp_bit: u32,
    /// `inet_connection_sock.icsk_ulp_data`: a subflow's `struct mptcp_subflow_context`.
    pub ulp_data: u32,
    /// `mptcp_subflow_context.conn`: the MPTCP socket a subflow belongs to.
    pub subflow_conn: u32,
    /// Bits of the subflow context: this subflow asked to join (MP_JOIN) an existing connection;
    /// it negotiated MP_CAPABLE; its MP_JOIN was accepted.
    pub request_join_bit: u32,
    pub mp_capable_bit: u32,
    pub mp_join_bit: u32,
}

impl SockOffsets {
    /// All zero, as the program is built; the loader sets the real values.
    pub const UNSET: Self = Self {
        cookie: 0,
        family: 0,
        state: 0,
        local_port: 0,
        remote_port: 0,
        protocol: 0,
        net: 0,
        net_cookie: 0,
        is_mptcp_bit: 0,
        ulp_data: 0,
        subflow_conn: 0,
        request_join_bit: 0,
        mp_capable_bit: 0,
        mp_join_bit: 0,
    };

    /// The value as the program's `.rodata` holds it, for the loader.
    pub fn to_ne_bytes(&self) -> [u8; size_of::<SockOffsets>()] {
        let words = [
            self.cookie,
            self.family,
            self.state,
            self.local_port,
            self.remote_port,
            self.protocol,
            self.net,
            self.net_cookie,
            self.is_mptcp_bit,
            self.ulp_data,
            self.subflow_conn,
            self.request_join_bit,
            self.mp_capable_bit,
            self.mp_join_bit,
        ];
        words_as_ne_bytes(&words)
    }
}

const _: () = assert!(size_of::<SockOffsets>() == 56, "SockOffsets is fourteen u32s, as to_ne_bytes writes them");

/// Names of the globals (`.rodata`) with which the program reads whether the caller is in a
/// Landlock domain that restricts TCP (see `landlock_restricts_tcp` in the program):
/// `current->cred->security` at Landlock's blob offset (an `int` the LSM framework keeps in
/// `landlock_blob_sizes.lbs_cred` once it placed the blobs) is `landlock_cred_security`, whose
/// `domain` (a `landlock_ruleset`, or a `landlock_domain` on 7.x) has `num_layers` entries of
/// `access_masks`, whose `net` bits are Landlock's handled TCP accesses (bind, connect).
pub mod landlock_globals {
    /// 1 when every offset below was found and this kernel's Landlock does not restrict MPTCP
    /// sockets itself; 0 disables the check.
    pub const ENABLED: &str = "LANDLOCK_CHECK";
    pub const TASK_CRED: &str = "OFF_TASK_CRED";
    pub const CRED_SECURITY: &str = "OFF_CRED_SECURITY";
    /// Address of `landlock_blob_sizes.lbs_cred`.
    pub const BLOB_OFFSET_ADDR: &str = "ADDR_LANDLOCK_CRED_BLOB";
    pub const DOMAIN: &str = "OFF_LANDLOCK_DOMAIN";
    pub const NUM_LAYERS: &str = "OFF_RULESET_NUM_LAYERS";
    pub const ACCESS_MASKS: &str = "OFF_RULESET_ACCESS_MASKS";
    /// Bit offset of `net` in `struct access_masks` (a `u32` of bitfields).
    pub const NET_BIT: &str = "LANDLOCK_NET_BIT";
}

/// Landlock's own bound on a domain's layers (`LANDLOCK_MAX_NUM_LAYERS`).
pub const LANDLOCK_MAX_LAYERS: u32 = 16;

/// Names of the globals (`.rodata`) the loader sets from the running kernel's BTF and symbols,
/// so the program can read the caller's `net.mptcp.enabled` (see `mptcp_enabled_here` in the program).
pub mod netns_globals {
    /// 1 when every offset below was found; 0 disables the check.
    pub const ENABLED: &str = "NETNS_CHECK";
    pub const TASK_NSPROXY: &str = "OFF_TASK_NSPROXY";
    pub const NSPROXY_NET_NS: &str = "OFF_NSPROXY_NET_NS";
    pub const NET_GEN: &str = "OFF_NET_GEN";
    pub const PERNET_ENABLED: &str = "OFF_PERNET_MPTCP_ENABLED";
    /// Kernel address of `mptcp_pernet_id` (the `net_generic` slot of MPTCP's per-netns data).
    pub const PERNET_ID_ADDR: &str = "ADDR_MPTCP_PERNET_ID";
}

#[cfg(feature = "user")]
#[allow(unsafe_code)]
mod pod {
    // SAFETY (each impl): plain `repr(C)` integers and byte arrays with explicit padding, so every
    // bit pattern is a valid value and the type has no padding bytes left uninitialised.
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Rule {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::CgroupDecision {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Origin {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::LoadFacts {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RuleRef {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Outcomes {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::SockOpt {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RefusalKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::GuardKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::GuardEntry {}
}
