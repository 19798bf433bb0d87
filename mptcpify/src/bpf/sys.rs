//! The raw `bpf(2)` calls aya cannot make for us, and all of the user side's `unsafe`.
//!
//! aya 0.14 has no `BPF_MODIFY_RETURN` support: it cannot load a TRACING program with that
//! expected attach type, nor create its link. This module does exactly those steps (plus the
//! pin of the link, the writes that seed global-data maps, which aya keeps private, and the
//! load and run of the tiny syscall program of [`super::kallsyms`]) with `repr(C)` prefixes of
//! `union bpf_attr`; the kernel zero-extends a shorter attr. The option probe's raw socket calls
//! are here too, being `unsafe` in the same way.
use std::{
    ffi::{CStr, CString},
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use aya_obj::generated::{bpf_attach_type, bpf_cmd, bpf_insn, bpf_prog_type};
use mptcpify_common::TraceAttach;

fn bpf<T>(cmd: bpf_cmd, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a live, initialised repr(C) prefix of `union bpf_attr` for `cmd`, and its
    // size is passed with it; the kernel reads (and for some commands writes) only that much.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut T, size_of::<T>() as u32) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn owned_fd(ret: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us and nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(ret as i32) }
}

/// `BPF_PROG_LOAD` attr up to `attach_btf_obj_fd`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    _pad: u32,
}

/// A load refused by the kernel: the errno and what the verifier said.
#[derive(Debug)]
pub struct LoadError {
    pub error: io::Error,
    pub verifier_log: String,
}

/// Loads `insns` as a `BPF_PROG_TYPE_TRACING` program with expected attach type
/// `BPF_MODIFY_RETURN` on the vmlinux function whose BTF id is `attach_btf_id`.
pub fn load_modify_return(
    name: &str,
    insns: &[bpf_insn],
    license: &CStr,
    attach_btf_id: u32,
) -> Result<OwnedFd, LoadError> {
    load_traced(name, insns, license, attach_btf_id, bpf_attach_type::BPF_MODIFY_RETURN)
}

/// Loads `insns` as an fentry or fexit program on the vmlinux function whose BTF id is
/// `attach_btf_id`.
pub fn load_tracing(
    name: &str,
    insns: &[bpf_insn],
    license: &CStr,
    attach_btf_id: u32,
    attach: TraceAttach,
) -> Result<OwnedFd, LoadError> {
    load_traced(name, insns, license, attach_btf_id, trace_attach_type(attach))
}

fn trace_attach_type(attach: TraceAttach) -> bpf_attach_type {
    match attach {
        TraceAttach::Entry => bpf_attach_type::BPF_TRACE_FENTRY,
        TraceAttach::Exit => bpf_attach_type::BPF_TRACE_FEXIT,
    }
}

fn load_traced(
    name: &str,
    insns: &[bpf_insn],
    license: &CStr,
    attach_btf_id: u32,
    attach_type: bpf_attach_type,
) -> Result<OwnedFd, LoadError> {
    load(ProgLoadAttr {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING as u32,
        expected_attach_type: attach_type as u32,
        attach_btf_id,
        ..ProgLoadAttr::new(name, insns, license)
    })
}

/// Loads `insns` as a sleepable `BPF_PROG_TYPE_SYSCALL` program (run with [`run_syscall`]).
pub fn load_syscall(name: &str, insns: &[bpf_insn], license: &CStr) -> Result<OwnedFd, LoadError> {
    load(ProgLoadAttr {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_SYSCALL as u32,
        // The kernel only takes sleepable syscall programs.
        prog_flags: aya_obj::generated::BPF_F_SLEEPABLE,
        ..ProgLoadAttr::new(name, insns, license)
    })
}

impl ProgLoadAttr {
    /// `insns` and `license` must outlive the load: the attr holds their addresses.
    fn new(name: &str, insns: &[bpf_insn], license: &CStr) -> Self {
        let mut attr = ProgLoadAttr {
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..Default::default()
        };
        let n = name.len().min(15);
        attr.prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
        attr
    }
}

fn load(mut attr: ProgLoadAttr) -> Result<OwnedFd, LoadError> {
    match bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned_fd(fd)),
        Err(first) => {
            // Load again with a log only on failure: a log buffer slows every successful load.
            let mut log = vec![0u8; 1 << 20];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            match bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
                Ok(fd) => Ok(owned_fd(fd)),
                Err(_) => {
                    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                    let verifier_log = String::from_utf8_lossy(&log[..end]).into_owned();
                    Err(LoadError { error: first, verifier_log })
                }
            }
        }
    }
}

/// `BPF_PROG_TEST_RUN` attr up to `ctx_out`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
}

/// Runs a syscall program once on `ctx`, which the kernel copies in and, after the run, back
/// out (the program's results); returns the program's return value.
pub fn run_syscall(prog: BorrowedFd<'_>, ctx: &mut [u8]) -> io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_mut_ptr() as u64,
        ..Default::default()
    };
    bpf(bpf_cmd::BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval)
}

/// `BPF_LINK_CREATE` attr for tracing links (target from the program's `attach_btf_id`).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    target_btf_id: u32,
    _pad: u32,
    cookie: u64,
}

/// Attaches a loaded `BPF_MODIFY_RETURN` program; the link fd keeps it attached.
pub fn attach_modify_return(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    link_create(prog, bpf_attach_type::BPF_MODIFY_RETURN)
}

/// Attaches a loaded fentry or fexit program (as it was loaded); the link fd keeps it attached.
pub fn attach_tracing(prog: BorrowedFd<'_>, attach: TraceAttach) -> io::Result<OwnedFd> {
    link_create(prog, trace_attach_type(attach))
}

fn link_create(prog: BorrowedFd<'_>, attach_type: bpf_attach_type) -> io::Result<OwnedFd> {
    let mut attr =
        LinkCreateAttr { prog_fd: prog.as_raw_fd() as u32, attach_type: attach_type as u32, ..Default::default() };
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map(owned_fd)
}

#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Pins any bpf object (here: the link) at `path` on bpffs.
pub fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjPinAttr { pathname: c_path.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, file_flags: 0 };
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Opens a pinned object (a program, here) by its path.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjPinAttr { pathname: c_path.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    bpf(bpf_cmd::BPF_OBJ_GET, &mut attr).map(owned_fd)
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Writes the value of key 0 of an array map: a global-data map's (`.rodata`/`.data`/`.bss`)
/// initial bytes, or a one-slot map's value. `data` must be the map's value size.
pub fn write_first_element(map: BorrowedFd<'_>, data: &[u8]) -> io::Result<()> {
    let key = 0u32;
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: data.as_ptr() as u64,
        ..Default::default()
    };
    bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Writes one element of a map whose keys and values are given as their bytes.
pub fn update_elem(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        ..Default::default()
    };
    bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Makes a map read-only for user space (what `.rodata` needs before the program may rely on it).
pub fn freeze_map(map: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = MapElemAttr { map_fd: map.as_raw_fd() as u32, ..Default::default() };
    bpf(bpf_cmd::BPF_MAP_FREEZE, &mut attr).map(drop)
}

/// Effective user id, for the "not root" check (no `unsafe` anywhere else).
pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Registers an fd owner (the aya-log ring buffer) with tokio's reactor.
pub fn async_fd<T: std::os::fd::AsRawFd>(inner: T) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: the returned AsyncFd owns `inner`, so the descriptor stays open for as long as it
    // is registered, and `inner` is the only owner of that descriptor.
    unsafe { tokio::io::unix::AsyncFd::register(inner) }.map_err(|e| e.into_parts().1)
}

/// Returns the heap the loader freed (the kernel's parsed BTF, tens of MiB) to the kernel, so a
/// long-running agent does not keep it resident. glibc only; a no-op in effect elsewhere.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own allocator state.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A throwaway socket for the option probe (`compat::probe`): `socket(2)` as it is.
pub fn socket(family: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes plain integers; a non-negative result is a new descriptor that
    // nothing else owns.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 { Err(io::Error::last_os_error()) } else { Ok(owned_fd(fd.into())) }
}

/// `getsockopt(2)` into `buf`; the length the kernel wrote.
pub fn getsockopt(fd: BorrowedFd<'_>, level: i32, name: i32, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is valid for `len` bytes of writing and `len` for one write.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, buf.as_mut_ptr().cast(), &mut len) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(len as usize) }
}

/// `setsockopt(2)` with `value`'s bytes.
pub fn setsockopt(fd: BorrowedFd<'_>, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is valid for reading `value.len()` bytes.
    let r =
        unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value.as_ptr().cast(), value.len() as libc::socklen_t) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Sandboxes the calling thread (only it: no other thread, and it has no children) with a
/// Landlock ruleset that handles TCP connects and allows none: how the Landlock probe asks the
/// kernel whether such a sandbox also holds MPTCP sockets. Fails with the kernel's errno where
/// Landlock or its network rules are missing.
pub fn landlock_deny_tcp_connects_of_this_thread() -> io::Result<()> {
    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
        handled_access_net: u64,
    }
    const LANDLOCK_ACCESS_NET_CONNECT_TCP: u64 = 2;
    let attr = RulesetAttr { handled_access_fs: 0, handled_access_net: LANDLOCK_ACCESS_NET_CONNECT_TCP };
    // SAFETY: `attr` is valid for reading its size; the kernel returns a new descriptor or -1.
    let fd =
        unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, &raw const attr, size_of::<RulesetAttr>(), 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let ruleset = owned_fd(fd);
    // SAFETY: prctl with integer arguments; PR_SET_NO_NEW_PRIVS applies to the calling thread.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a plain syscall on a descriptor we own; it restricts the calling thread only.
    if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `connect(2)` of a socket to an IPv4 address.
pub fn connect_v4(fd: BorrowedFd<'_>, addr: std::net::SocketAddrV4) -> io::Result<()> {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in for the length given.
    let r = unsafe {
        libc::connect(fd.as_raw_fd(), (&raw const sin).cast(), size_of::<libc::sockaddr_in>() as libc::socklen_t)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
