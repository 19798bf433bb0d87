//! Loads the embedded kernel program as fmod_ret on `update_socket_protocol`, attaches it and
//! pins link and maps under [`PIN_DIR`], all or nothing.
//!
//! aya parses and relocates (aya-obj) and creates the maps (aya `MapData`); `sys` does the
//! `BPF_MODIFY_RETURN` load, link and pin that aya cannot.
use std::{
    collections::HashMap,
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::MapData;
use aya_obj::{EbpfSectionKind, Object};
use mptcpify_common::{
    AUDIT_PROGRAMS, CONFIG_MAP, Config, FACTS_MAP, HOOK_FUNCTION, LANDLOCK_CHECKED, LANDLOCK_UNCHECKED, LAYOUT_VERSION,
    LINK_PIN, LOADING_INFIX, LoadFacts, META_MAP, OLD_OUTCOME_LINK_PIN, OUTCOME_PROGRAMS, OutcomeProgram, PIN_DIR,
    PINNED_MAPS, PROGRAM_NAME, REFUSED_OPTIONS_MAP, SOCK_OFFSETS, SockOffsets, landlock_globals, netns_globals,
    task_globals,
};

use super::{
    kernel_btf::KernelBtf,
    landlock::{self, LandlockOffsets},
    netns::{self, NetnsOffsets},
    sys,
};

/// The kernel program, built by build.rs.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mptcpify"));

/// Log level baked into the program at load (aya-log's `AYA_LOG_LEVEL` global); 0 = off, which
/// keeps logging off the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// Every level, quietest first: its index is the global's value.
    pub const ALL: [LogLevel; 6] =
        [LogLevel::Off, LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug, LogLevel::Trace];

    pub const fn name(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    /// The level called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name() == name)
    }

    fn as_global(self) -> u8 {
        self as u8
    }
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// The running kernel's BTF, or the error a user needs when the kernel has none.
pub fn kernel_btf() -> Result<KernelBtf> {
    KernelBtf::read().map_err(|e| {
        anyhow!(
            "this kernel ({}) exposes no usable BTF ({e:#}); mptcpify needs Linux >= 6.6 with \
             CONFIG_MPTCP and CONFIG_DEBUG_INFO_BTF",
            kernel_release()
        )
    })
}

/// The BTF id of the hook, or the error a user needs when the kernel cannot have it.
pub fn hook_btf_id(btf: &KernelBtf) -> Result<u32> {
    btf.func_id(HOOK_FUNCTION).ok_or_else(|| {
        anyhow!(
            "this kernel has no {HOOK_FUNCTION}() hook in its BTF; mptcpify needs Linux >= 6.6 \
             with CONFIG_MPTCP and BTF; this is {}",
            kernel_release()
        )
    })
}

/// A loaded and attached program with its maps; detached when dropped unless pinned.
pub struct Attached {
    /// The hook's link ([`LINK_PIN`]) first, then the outcome programs', with their pin names.
    links: Vec<(&'static str, OwnedFd)>,
    /// Programs loaded but not attached (the audit watchers), with their pin names.
    programs: Vec<(String, OwnedFd)>,
    maps: HashMap<String, (aya_obj::Map, MapData)>,
}

/// Outcome tracking is on unless this variable says `off` when the programs are loaded: how
/// the benchmark measures what tracking costs, with the same build.
pub const OUTCOMES_ENV: &str = "MPTCPIFY_OUTCOMES";

fn outcomes_wanted() -> bool {
    std::env::var(OUTCOMES_ENV).map_or(true, |v| v != "off")
}

/// Loads the program and attaches it to the hook, without pinning anything.
pub fn load_and_attach(log_level: LogLevel) -> Result<Attached> {
    let started = std::time::Instant::now();
    let btf = kernel_btf()?;
    let btf_id = hook_btf_id(&btf)?;
    log::debug!("kernel BTF indexed in {:?}", started.elapsed());
    // Without the offsets the program cannot see the caller's net.mptcp.enabled; it still works,
    // and `doctor` reports the missing protection.
    let netns = netns::find(&btf)
        .inspect_err(|e| {
            log::warn!(
                "netns check off: {e:#}; a selected process in a network namespace with net.mptcp.enabled=0 \
                 would get ENOPROTOOPT from socket()"
            )
        })
        .ok();
    log::debug!("netns offsets found after {:?}", started.elapsed());
    let task = TaskOffsets::find(&btf)?;
    let (landlock_fact, landlock) = landlock_check(&btf);
    log::debug!("landlock checked after {:?}", started.elapsed());
    let tracking = outcomes_wanted().then(|| OutcomeTargets::find(&btf)).transpose().unwrap_or_else(|e| {
        log::warn!("outcome tracking off: {e:#}");
        None
    });
    drop(btf);
    log::debug!("outcome targets found after {:?}", started.elapsed());

    let mut obj = Object::parse(PROGRAM).context("parsing the embedded kernel program")?;
    let sock = tracking.as_ref().map_or(SockOffsets::UNSET, |t| t.offsets);
    set_globals(&mut obj, log_level, task, Kernel { netns, landlock, sock })?;
    let maps = create_maps(&mut obj)?;
    record_facts(
        &maps,
        LoadFacts {
            netns_check: u32::from(netns.is_some()),
            log_level: log_level.as_global().into(),
            landlock: landlock_fact,
        },
    )?;
    record_refused_options(&maps)?;
    log::debug!("refused options probed after {:?}", started.elapsed());
    let (_, meta) = maps.get(META_MAP).ok_or_else(|| anyhow!("map {META_MAP} missing from the embedded object"))?;
    stamp_layout(meta)?;
    let text_sections = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(
        // aya keeps `MapData::obj` crate-private, hence the parsed definition kept beside it.
        maps.iter().map(|(name, (def, map))| (name.as_str(), map.fd().as_fd().as_raw_fd(), def)),
        &text_sections,
    )
    .context("relocating map references")?;
    obj.relocate_calls(&text_sections).context("relocating calls")?;

    let (insns, license) = program_code(&obj, PROGRAM_NAME)?;
    let prog = sys::load_modify_return(PROGRAM_NAME, insns, &license, btf_id).map_err(load_refusal)?;
    log::debug!("program verified and loaded after {:?}", started.elapsed());
    let link = sys::attach_modify_return(prog.as_fd())
        .map_err(|e| anyhow!("the kernel ({}) refused to attach to {HOOK_FUNCTION}(): {e}", kernel_release()))?;
    let mut links = vec![(LINK_PIN, link)];
    let mut programs = Vec::new();
    if let Some(targets) = tracking {
        let audit_ids = targets.audit_btf_ids.clone();
        // Never at the hook's expense: without these, sockets are upgraded all the same.
        match attach_outcome_programs(&obj, targets) {
            Ok(more) => {
                links.extend(more);
                mark_outcomes_on(&maps)?;
                log::debug!("outcome programs attached after {:?}", started.elapsed());
                programs = load_audit_programs(&obj, audit_ids).unwrap_or_else(|e| {
                    log::warn!("audit rules will not predict refused options: {e:#}");
                    Vec::new()
                });
            }
            Err(e) => log::warn!("outcome tracking off: {e:#}"),
        }
    }
    log::debug!("attached after {:?}", started.elapsed());
    Ok(Attached { links, programs, maps })
}

/// A program's verified-ready instructions and licence.
fn program_code<'a>(obj: &'a Object, name: &str) -> Result<(&'a [aya_obj::generated::bpf_insn], CString)> {
    let program = obj.programs.get(name).ok_or_else(|| anyhow!("program {name} missing from the embedded object"))?;
    let function = &obj.functions[&program.function_key()];
    Ok((&function.instructions, CString::new(program.license.as_bytes())?))
}

/// What the outcome programs need from the kernel: the BTF ids of the functions they trace,
/// and where the socket structures keep what they read.
#[derive(Debug, Clone)]
struct OutcomeTargets {
    /// One per [`OUTCOME_PROGRAMS`] entry, in that order.
    btf_ids: Vec<u32>,
    offsets: SockOffsets,
    /// One per [`AUDIT_PROGRAMS`] entry; empty when the kernel lacks one of their functions.
    audit_btf_ids: Vec<u32>,
}

fn func_ids(btf: &KernelBtf, programs: &[OutcomeProgram]) -> Result<Vec<u32>> {
    programs
        .iter()
        .map(|p| btf.func_id(p.function).ok_or_else(|| anyhow!("this kernel has no {}() in its BTF", p.function)))
        .collect()
}

impl OutcomeTargets {
    fn find(btf: &KernelBtf) -> Result<Self> {
        let audit_btf_ids = func_ids(btf, &AUDIT_PROGRAMS).unwrap_or_else(|e| {
            log::warn!("audit rules will not predict refused options: {e:#}");
            Vec::new()
        });
        Ok(Self { btf_ids: func_ids(btf, &OUTCOME_PROGRAMS)?, offsets: sock_offsets(btf)?, audit_btf_ids })
    }
}

/// Loads (verifies) the audit watchers without attaching them: see [`super::audit_watch`].
fn load_audit_programs(obj: &Object, btf_ids: Vec<u32>) -> Result<Vec<(String, OwnedFd)>> {
    AUDIT_PROGRAMS
        .iter()
        .zip(btf_ids)
        .map(|(p, btf_id)| {
            let (insns, license) = program_code(obj, p.name)?;
            let prog = sys::load_tracing(p.name, insns, &license, btf_id, p.attach).map_err(load_refusal)?;
            Ok((super::audit_watch::program_pin(p), prog))
        })
        .collect()
}

/// [`SockOffsets`] from the running kernel's BTF.
fn sock_offsets(btf: &KernelBtf) -> Result<SockOffsets> {
    let common = btf.member_offset("sock", "__sk_common")?;
    let skc = |member: &str| Ok::<_, anyhow::Error>(common + btf.member_offset("sock_common", member)?);
    let flag = |member: &str| btf.member_bit_offset("mptcp_subflow_context", member);
    Ok(SockOffsets {
        cookie: skc("skc_cookie")?,
        family: skc("skc_family")?,
        state: skc("skc_state")?,
        local_port: skc("skc_num")?,
        remote_port: skc("skc_dport")?,
        protocol: btf.member_offset("sock", "sk_protocol")?,
        // `possible_net_t` holds the pointer as its only member.
        net: skc("skc_net")?,
        net_cookie: btf.member_offset("net", "net_cookie")?,
        // `struct tcp_sock` opens `struct inet_connection_sock`, which opens `struct inet_sock`,
        // which opens `struct sock`: their offsets are offsets from the socket.
        is_mptcp_bit: btf.member_bit_offset("tcp_sock", "is_mptcp")?,
        ulp_data: btf.member_offset("inet_connection_sock", "icsk_ulp_data")?,
        subflow_conn: btf.member_offset("mptcp_subflow_context", "conn")?,
        request_join_bit: flag("request_join")?,
        mp_capable_bit: flag("mp_capable")?,
        mp_join_bit: flag("mp_join")?,
    })
}

/// Loads and attaches the outcome programs, the tag first; all or none.
fn attach_outcome_programs(obj: &Object, t: OutcomeTargets) -> Result<Vec<(&'static str, OwnedFd)>> {
    OUTCOME_PROGRAMS.iter().zip(t.btf_ids).map(|(p, btf_id)| attach_outcome_program(obj, p, btf_id)).collect()
}

fn attach_outcome_program(obj: &Object, p: &OutcomeProgram, btf_id: u32) -> Result<(&'static str, OwnedFd)> {
    let (insns, license) = program_code(obj, p.name)?;
    let prog = sys::load_tracing(p.name, insns, &license, btf_id, p.attach).map_err(load_refusal)?;
    let link = sys::attach_tracing(prog.as_fd(), p.attach).with_context(|| format!("attaching to {}()", p.function))?;
    Ok((p.pin, link))
}

/// Tells the hook to leave its notes: the programs that read them are attached.
fn mark_outcomes_on(maps: &HashMap<String, (aya_obj::Map, MapData)>) -> Result<()> {
    let (_, map) = maps.get(CONFIG_MAP).ok_or_else(|| anyhow!("map {CONFIG_MAP} missing from the embedded object"))?;
    let config = Config { outcomes: 1, ..Config::default() };
    sys::write_first_element(map.fd().as_fd(), &config.to_ne_bytes()).context("switching outcome tracking on")
}

/// Where a task's thread-group leader and command name are, which comm rules need.
#[derive(Debug, Clone, Copy)]
struct TaskOffsets {
    group_leader: u32,
    comm: u32,
}

impl TaskOffsets {
    fn find(btf: &KernelBtf) -> Result<Self> {
        Ok(Self {
            group_leader: btf.member_offset("task_struct", "group_leader")?,
            comm: btf.member_offset("task_struct", "comm")?,
        })
    }
}

/// The `.rodata` globals the loader fixes: aya-log's level, the task offsets and the netns check's offsets
/// (all zero, and the check off, when `netns` is unknown).
/// What the program reads in kernel structures beyond the task: each part `None` (or unset)
/// switches its check off.
struct Kernel {
    netns: Option<NetnsOffsets>,
    landlock: Option<LandlockOffsets>,
    sock: SockOffsets,
}

/// Whether the program should keep Landlock-sandboxed processes TCP ([`LoadFacts::landlock`]),
/// and where it reads their domains.
fn landlock_check(btf: &KernelBtf) -> (u32, Option<LandlockOffsets>) {
    if let Some(fact) = landlock::probe() {
        return (fact, None);
    }
    match landlock::find(btf) {
        Ok(offsets) => (LANDLOCK_CHECKED, Some(offsets)),
        Err(e) => {
            log::warn!(
                "landlock check off: {e:#}; a selected process that restricts TCP with Landlock would leave its \
                 sandbox once upgraded (exclude such programs)"
            );
            (LANDLOCK_UNCHECKED, None)
        }
    }
}

fn set_globals(obj: &mut Object, log_level: LogLevel, task: TaskOffsets, k: Kernel) -> Result<()> {
    let Kernel { netns, landlock, sock } = k;
    let level = [log_level.as_global()];
    let (leader, comm) = (task.group_leader.to_ne_bytes(), task.comm.to_ne_bytes());
    let on = [u8::from(netns.is_some())];
    let o = netns.unwrap_or_default();
    let (a, b, c, d, e) = (
        o.task_nsproxy.to_ne_bytes(),
        o.nsproxy_net_ns.to_ne_bytes(),
        o.net_gen.to_ne_bytes(),
        o.pernet_mptcp_enabled.to_ne_bytes(),
        o.pernet_id_addr.to_ne_bytes(),
    );
    let sock = sock.to_ne_bytes();
    let globals: HashMap<&str, (&[u8], bool)> = HashMap::from([
        (SOCK_OFFSETS, (&sock[..], true)),
        ("AYA_LOG_LEVEL", (&level[..], true)),
        (task_globals::GROUP_LEADER, (&leader[..], true)),
        (task_globals::COMM, (&comm[..], true)),
        (netns_globals::ENABLED, (&on[..], true)),
        (netns_globals::TASK_NSPROXY, (&a[..], true)),
        (netns_globals::NSPROXY_NET_NS, (&b[..], true)),
        (netns_globals::NET_GEN, (&c[..], true)),
        (netns_globals::PERNET_ENABLED, (&d[..], true)),
        (netns_globals::PERNET_ID_ADDR, (&e[..], true)),
    ]);
    let l = landlock.unwrap_or_default();
    let landlock_on = [u8::from(landlock.is_some())];
    let words = [l.task_cred, l.cred_security, l.domain, l.num_layers, l.access_masks, l.net_bit].map(u32::to_ne_bytes);
    let blob = l.blob_offset_addr.to_ne_bytes();
    let mut globals = globals;
    globals.extend([
        (landlock_globals::ENABLED, (&landlock_on[..], true)),
        (landlock_globals::TASK_CRED, (&words[0][..], true)),
        (landlock_globals::CRED_SECURITY, (&words[1][..], true)),
        (landlock_globals::DOMAIN, (&words[2][..], true)),
        (landlock_globals::NUM_LAYERS, (&words[3][..], true)),
        (landlock_globals::ACCESS_MASKS, (&words[4][..], true)),
        (landlock_globals::NET_BIT, (&words[5][..], true)),
        (landlock_globals::BLOB_OFFSET_ADDR, (&blob[..], true)),
    ]);
    obj.patch_map_data(globals).context("setting the program's globals")
}

/// Creates every map of `obj`, seeding global-data maps with their bytes (`.rodata` frozen).
fn create_maps(obj: &mut Object) -> Result<HashMap<String, (aya_obj::Map, MapData)>> {
    let mut maps = HashMap::new();
    for (name, map_obj) in obj.maps.drain() {
        let kind = map_obj.section_kind();
        let data = map_obj.data().to_vec();
        let map = MapData::create(map_obj.clone(), &name, None).with_context(|| format!("creating map {name}"))?;
        if matches!(kind, EbpfSectionKind::Data | EbpfSectionKind::Rodata | EbpfSectionKind::Bss) && !data.is_empty() {
            sys::write_first_element(map.fd().as_fd(), &data).with_context(|| format!("initialising {name}"))?;
            if kind == EbpfSectionKind::Rodata {
                sys::freeze_map(map.fd().as_fd()).with_context(|| format!("freezing {name}"))?;
            }
        }
        maps.insert(name, (map_obj, map));
    }
    Ok(maps)
}

/// Keeps how the program was loaded in its FACTS map, for `doctor`.
fn record_facts(maps: &HashMap<String, (aya_obj::Map, MapData)>, facts: LoadFacts) -> Result<()> {
    let (_, map) = maps.get(FACTS_MAP).ok_or_else(|| anyhow!("map {FACTS_MAP} missing from the embedded object"))?;
    let bytes = [facts.netns_check, facts.log_level, facts.landlock].map(u32::to_ne_bytes).concat();
    const _: () = assert!(size_of::<LoadFacts>() == 12, "LoadFacts is three u32s");
    sys::write_first_element(map.fd().as_fd(), &bytes).context("recording how the program was loaded")
}

/// Asks the kernel which options it refuses on MPTCP (see [`crate::compat::probe`]) and keeps
/// the answer for the option programs and `doctor`. Without an answer (no MPTCP socket can be
/// made here) the table stays empty: refusals are then neither counted nor guarded against.
fn record_refused_options(maps: &HashMap<String, (aya_obj::Map, MapData)>) -> Result<()> {
    let table = match crate::compat::probe::probe() {
        Ok(table) => table,
        Err(e) => {
            log::warn!("compatibility guard off: {e:#}");
            return Ok(());
        }
    };
    let (_, map) = maps
        .get(REFUSED_OPTIONS_MAP)
        .ok_or_else(|| anyhow!("map {REFUSED_OPTIONS_MAP} missing from the embedded object"))?;
    for (option, bits) in table {
        let key = [option.level.to_ne_bytes(), option.name.to_ne_bytes()].concat();
        sys::update_elem(map.fd().as_fd(), &key, &bits.to_ne_bytes()).context("recording the refused options")?;
    }
    Ok(())
}

/// Writes this version's layout into a new META map.
fn stamp_layout(meta: &MapData) -> Result<()> {
    sys::write_first_element(meta.fd().as_fd(), &LAYOUT_VERSION.to_ne_bytes()).context("recording the state's layout")
}

/// Pins a META map stamped with this layout into `dir`, made from the embedded program's own
/// definition: how state pinned before layouts were numbered is adopted.
pub fn pin_meta(dir: &Path) -> Result<()> {
    let mut obj = Object::parse(PROGRAM).context("parsing the embedded kernel program")?;
    let def = obj.maps.remove(META_MAP).ok_or_else(|| anyhow!("map {META_MAP} missing from the embedded object"))?;
    let meta = MapData::create(def, META_MAP, None).context("creating the META map")?;
    stamp_layout(&meta)?;
    meta.pin(dir.join(META_MAP)).with_context(|| format!("pinning {}", dir.join(META_MAP).display()))
}

/// What a user needs to hear when the kernel refuses the program.
fn load_refusal(e: sys::LoadError) -> anyhow::Error {
    let hint = match e.error.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) if e.verifier_log.is_empty() => format!(
            "this kernel ({}) refuses fmod_ret (BPF_MODIFY_RETURN) tracing programs: {} \
             (lockdown, an LSM or a kernel built without BPF trampolines on this hook)",
            kernel_release(),
            e.error
        ),
        _ => format!("the kernel ({}) rejected the program: {}", kernel_release(), e.error),
    };
    if e.verifier_log.is_empty() { anyhow!(hint) } else { anyhow!("{hint}\nverifier log:\n{}", e.verifier_log) }
}

/// Attaches a program that does nothing but decline (returns 0) to the hook, for as long as the
/// returned link lives: the benchmark's floor, what any fmod_ret program on this hook costs
/// (the kernel's trampoline) before it does any work.
#[cfg(feature = "test-helpers")]
pub fn attach_empty_program() -> Result<OwnedFd> {
    use super::asm::{EXIT, MOV64_IMM, insn};
    let btf_id = hook_btf_id(&kernel_btf()?)?;
    let insns = [insn(MOV64_IMM, 0, 0, 0, 0), insn(EXIT, 0, 0, 0, 0)];
    let prog = sys::load_modify_return("mptcpify_empty", &insns, c"GPL", btf_id)
        .map_err(|e| anyhow!("loading the empty program: {}", e.error))?;
    sys::attach_modify_return(prog.as_fd()).context("attaching the empty program")
}

/// Removes what loads killed midway left (`PIN_DIR` + `LOADING_INFIX` + a PID that is gone),
/// their link first: otherwise a second program would stay attached beside the next one.
fn remove_abandoned_loads() -> Result<()> {
    let dir = Path::new(PIN_DIR);
    let (parent, name) = (dir.parent().expect("PIN_DIR has a parent"), dir.file_name().expect("PIN_DIR has a name"));
    let prefix = format!("{}{LOADING_INFIX}", name.to_string_lossy());
    for entry in std::fs::read_dir(parent).with_context(|| format!("listing {}", parent.display()))?.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        log::warn!("removing {}, left by a load that was killed midway", path.display());
        let outcome_links = OUTCOME_PROGRAMS.iter().map(|p| p.pin);
        for link in [LINK_PIN, OLD_OUTCOME_LINK_PIN].into_iter().chain(outcome_links) {
            let _ = std::fs::remove_file(path.join(link));
        }
        std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Loads, attaches and pins everything. On any error nothing is left pinned.
pub fn load_and_pin(log_level: LogLevel) -> Result<()> {
    let final_dir = Path::new(PIN_DIR);
    remove_abandoned_loads()?;
    if final_dir.exists() {
        bail!("{} exists already; `mptcpify reset` removes it", final_dir.display());
    }
    let Attached { links, programs, maps } = load_and_attach(log_level)?;
    // Pin into a private directory, then rename it into place: other invocations see either
    // nothing or the complete state.
    let tmp = PathBuf::from(format!("{PIN_DIR}{LOADING_INFIX}{}", std::process::id()));
    let pinned = (|| -> Result<()> {
        // Root's alone: whoever can write here can change which sockets are upgraded.
        std::fs::DirBuilder::new().mode(0o700).create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for (name, link) in &links {
            sys::pin(link.as_fd(), &tmp.join(name)).with_context(|| format!("pinning {name}"))?;
        }
        for (name, prog) in &programs {
            sys::pin(prog.as_fd(), &tmp.join(name)).with_context(|| format!("pinning {name}"))?;
        }
        for name in PINNED_MAPS {
            let (_, map) = &maps[name];
            map.pin(tmp.join(name)).with_context(|| format!("pinning map {name}"))?;
        }
        std::fs::rename(&tmp, final_dir).with_context(|| format!("moving {} to {}", tmp.display(), final_dir.display()))
    })();
    if let Err(e) = pinned {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_are_named_and_numbered_as_aya_log_expects() {
        for (i, level) in LogLevel::ALL.into_iter().enumerate() {
            assert_eq!(level.as_global() as usize, i, "{level:?}");
            assert_eq!(LogLevel::from_name(level.name()), Some(level));
        }
        assert_eq!(LogLevel::default().as_global(), 0, "off by default");
        assert_eq!(LogLevel::from_name("loud"), None);
    }
}
