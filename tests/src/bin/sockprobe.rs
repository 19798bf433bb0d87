//! An "unmodified program" for the tests: makes sockets the ordinary way and reports what the
//! kernel gave it. One line per request on stdout:
//!   `SPEC proto=N` or `SPEC errno=N`; for `connect4`/`connect6`:
//!   `SPEC client=N server=N fallback=0|1 remote_key=0|1`.
//! `setopt4:LEVEL:NAME[:TEXT]` makes a TCP socket and sets option NAME at LEVEL on it (TEXT's
//! bytes, else a zeroed 256-byte buffer: what TCP_MD5SIG takes), then prints
//! `SPEC proto=N errno=N` (errno 0: accepted).
//! `landlock4:ALLOWED:TARGET` sandboxes the process with Landlock (TCP bind and connect handled,
//! connect allowed to port ALLOWED only), then makes a TCP socket the ordinary way and connects
//! it to 127.0.0.1:TARGET: `SPEC proto=N errno=N`. `landlock-mptcp4:…` asks for IPPROTO_MPTCP
//! itself (what an upgraded socket is).
//! `--raw` makes `socket` with the raw syscall (no libc wrapper), for the static build.
//! `--wait` prints `ready` and waits for a line on stdin first (so a PID rule can be added).
//! `--serve` prints `ready`, then makes one socket per SPEC line read from stdin, until EOF (a
//! caller that stays put while the rules change around it).
//! `SPEC@NAME` makes the socket on a thread named NAME (as JVMs, tokio and Envoy name theirs);
//! the process keeps its own command name.
use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
};

const SOL_MPTCP: i32 = 284;
const MPTCP_INFO: i32 = 1;
const FLAG_FALLBACK: u32 = 1;
const FLAG_REMOTE_KEY_RECEIVED: u32 = 2;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn socket(raw: bool, domain: i32, ty: i32, proto: i32) -> Result<i32, i32> {
    // SAFETY: plain syscalls on integers; the fd is closed by the caller.
    let fd = unsafe {
        if raw { libc::syscall(libc::SYS_socket, domain, ty, proto) as i32 } else { libc::socket(domain, ty, proto) }
    };
    if fd < 0 { Err(errno()) } else { Ok(fd) }
}

fn protocol(fd: i32) -> i32 {
    let mut v: i32 = -1;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: v and len are valid for the kernel to write.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL, (&raw mut v).cast(), &mut len) };
    if r < 0 { -errno() } else { v }
}

/// `mptcpi_flags` from MPTCP_INFO, or the errno (a plain TCP socket has none).
fn mptcp_flags(fd: i32) -> Result<u32, i32> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf and len are valid for the kernel to write.
    let r = unsafe { libc::getsockopt(fd, SOL_MPTCP, MPTCP_INFO, buf.as_mut_ptr().cast(), &mut len) };
    if r < 0 {
        return Err(errno());
    }
    // struct mptcp_info: six u8 counters, padding, then `__u32 mptcpi_flags` at offset 8.
    Ok(u32::from_ne_bytes(buf[8..12].try_into().unwrap()))
}

fn one_socket(raw: bool, spec: &str) -> String {
    let (domain, ty, proto) = match spec {
        "tcp4" => (libc::AF_INET, libc::SOCK_STREAM, 0),
        "tcp6" => (libc::AF_INET6, libc::SOCK_STREAM, 0),
        "tcp4-flags" => (libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0),
        "tcp4-ipproto" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_TCP),
        "udp4" => (libc::AF_INET, libc::SOCK_DGRAM, 0),
        "unix" => (libc::AF_UNIX, libc::SOCK_STREAM, 0),
        "sctp4" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP),
        "raw4" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        other => return format!("{other} unknown-spec"),
    };
    match socket(raw, domain, ty, proto) {
        Ok(fd) => {
            let p = protocol(fd);
            // SAFETY: we own fd.
            unsafe { libc::close(fd) };
            format!("{spec} proto={p}")
        }
        Err(e) => format!("{spec} errno={e}"),
    }
}

/// `setopt4:LEVEL:NAME[:TEXT]`: an option set as a program sets it, on a socket made as TCP.
fn set_option(spec: &str) -> String {
    let mut parts = spec.splitn(4, ':').skip(1);
    let (Some(level), Some(name)) =
        (parts.next().and_then(|l| l.parse().ok()), parts.next().and_then(|n| n.parse().ok()))
    else {
        return format!("{spec} unknown-spec");
    };
    let value: Vec<u8> = parts.next().map_or_else(|| vec![0u8; 256], |t| t.as_bytes().to_vec());
    let fd = match socket(false, libc::AF_INET, libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return format!("{spec} errno={e}"),
    };
    // SAFETY: value is valid for reading value.len() bytes.
    let r = unsafe { libc::setsockopt(fd, level, name, value.as_ptr().cast(), value.len() as libc::socklen_t) };
    let errno = if r < 0 { errno() } else { 0 };
    let p = protocol(fd);
    // SAFETY: we own fd.
    unsafe { libc::close(fd) };
    format!("{spec} proto={p} errno={errno}")
}

/// `landlock4:ALLOWED:TARGET` / `landlock-mptcp4:ALLOWED:TARGET`.
fn landlocked(spec: &str) -> String {
    let mut parts = spec.split(':');
    let proto = if parts.next() == Some("landlock-mptcp4") { 262 } else { 0 };
    let (Some(allowed), Some(target)) =
        (parts.next().and_then(|p| p.parse::<u16>().ok()), parts.next().and_then(|p| p.parse::<u16>().ok()))
    else {
        return format!("{spec} unknown-spec");
    };
    if let Err(e) = sandbox(allowed) {
        return format!("{spec} landlock_errno={e}");
    }
    let fd = match socket(false, libc::AF_INET, libc::SOCK_STREAM, proto) {
        Ok(fd) => fd,
        Err(e) => return format!("{spec} errno={e}"),
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: target.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sin is a valid sockaddr_in for the length given; we own fd.
    let r = unsafe { libc::connect(fd, (&raw const sin).cast(), size_of::<libc::sockaddr_in>() as libc::socklen_t) };
    let errno = if r < 0 { errno() } else { 0 };
    let p = protocol(fd);
    // SAFETY: we own fd.
    unsafe { libc::close(fd) };
    format!("{spec} proto={p} errno={errno}")
}

/// Landlock: TCP bind and connect handled; connect allowed to `port` only.
fn sandbox(port: u16) -> Result<(), i32> {
    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
        handled_access_net: u64,
    }
    #[repr(C)]
    struct NetPortAttr {
        allowed_access: u64,
        port: u64,
    }
    const BIND_TCP: u64 = 1;
    const CONNECT_TCP: u64 = 2;
    const LANDLOCK_RULE_NET_PORT: u32 = 2;
    let attr = RulesetAttr { handled_access_fs: 0, handled_access_net: BIND_TCP | CONNECT_TCP };
    // SAFETY: plain syscalls on valid structs and a descriptor we own.
    unsafe {
        let fd = libc::syscall(libc::SYS_landlock_create_ruleset, &raw const attr, size_of::<RulesetAttr>(), 0u32);
        if fd < 0 {
            return Err(errno());
        }
        let rule = NetPortAttr { allowed_access: CONNECT_TCP, port: port.into() };
        if libc::syscall(libc::SYS_landlock_add_rule, fd, LANDLOCK_RULE_NET_PORT, &raw const rule, 0u32) < 0
            || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
            || libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) < 0
        {
            return Err(errno());
        }
        libc::close(fd as i32);
    }
    Ok(())
}

fn connect(spec: &str) -> String {
    let addr = if spec == "connect6" { "[::1]:0" } else { "127.0.0.1:0" };
    let result = (|| -> std::io::Result<String> {
        let listener = TcpListener::bind(addr)?;
        let mut client = TcpStream::connect(listener.local_addr()?)?;
        let (mut server, _) = listener.accept()?;
        // A round trip of data: MPTCP has exchanged keys by the time it arrives.
        client.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf)?;
        server.write_all(b"pong")?;
        client.read_exact(&mut buf)?;
        let flags = mptcp_flags(client.as_raw_fd());
        let (fallback, remote_key) = match flags {
            Ok(f) => ((f & FLAG_FALLBACK != 0) as u8, (f & FLAG_REMOTE_KEY_RECEIVED != 0) as u8),
            Err(e) => {
                return Ok(format!(
                    "{spec} client={} server={} mptcp_info_errno={e}",
                    protocol(client.as_raw_fd()),
                    protocol(server.as_raw_fd())
                ));
            }
        };
        Ok(format!(
            "{spec} client={} server={} fallback={fallback} remote_key={remote_key}",
            protocol(client.as_raw_fd()),
            protocol(server.as_raw_fd())
        ))
    })();
    result.unwrap_or_else(|e| format!("{spec} error={e}"))
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let raw = args.first().is_some_and(|a| a == "--raw");
    if raw {
        args.remove(0);
    }
    if args.first().is_some_and(|a| a == "--serve") {
        println!("ready");
        std::io::stdout().flush().unwrap();
        for spec in std::io::stdin().lock().lines().map_while(Result::ok) {
            println!("{}", one_socket(raw, spec.trim()));
            std::io::stdout().flush().unwrap();
        }
        return;
    }
    if args.first().is_some_and(|a| a == "--wait") {
        args.remove(0);
        println!("ready");
        std::io::stdout().flush().unwrap();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).unwrap();
    }
    for spec in &args {
        let line = match spec.split_once('@') {
            Some((socket, thread)) => {
                let socket = socket.to_owned();
                let named = std::thread::Builder::new().name(thread.to_owned());
                let made = named.spawn(move || one_socket(raw, &socket)).unwrap().join().unwrap();
                format!("{spec} {}", made.split_once(' ').map_or("", |(_, rest)| rest))
            }
            None if spec.starts_with("connect") => connect(spec),
            None if spec.starts_with("setopt4:") => set_option(spec),
            None if spec.starts_with("landlock") => landlocked(spec),
            None => one_socket(raw, spec),
        };
        println!("{line}");
    }
}
