//! The hook-cost benchmark's workload: `sockbench N [mptcp|empty-hook]` makes N sockets
//! (`socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)` through libc, so that LD_PRELOAD tools such
//! as mptcpize see them too) and closes each at once. `mptcp` asks for IPPROTO_MPTCP explicitly;
//! `empty-hook` (root) first attaches an fmod_ret program that only returns 0, to measure the
//! kernel's trampoline alone. Prints nanoseconds per socket()+close() (after an untimed tenth as
//! warm-up) and the protocol of the last socket.
//! `connect` times N connect()+close() to a listener of its own on 127.0.0.1 (accepted and
//! closed by a thread); `burst` opens N connections to it at once, then closes them all. Both
//! print nanoseconds per connection and the protocol of the last client socket.
//! `setsockopt` times N setsockopt(TCP_USER_TIMEOUT) calls on one TCP socket (an option MPTCP
//! refuses, so that the compatibility guard's watchers do all their work) and prints nanoseconds
//! per call and the socket's protocol.
use std::{
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .expect("usage: sockbench N [mptcp|empty-hook|connect|burst|setsockopt]");
    let mode = args.next();
    if mode.as_deref() == Some("setsockopt") {
        let (ns, proto) = set_options(n);
        println!("{ns:.1} {proto}");
        return;
    }
    if let Some(m @ ("connect" | "burst")) = mode.as_deref() {
        let (ns, proto) = connections(n, m == "burst");
        println!("{ns:.1} {proto}");
        return;
    }
    let proto = if mode.as_deref() == Some("mptcp") { 262 } else { 0 };
    let _link = (mode.as_deref() == Some("empty-hook"))
        .then(|| mptcpify::bpf::loader::attach_empty_program().unwrap_or_else(|e| panic!("{e:#}")));
    // Untimed first: attaching or detaching a program patches kernel text, and under emulation
    // the next calls pay for translating that code again; the timed loop must not.
    socket_close_loop(n / 10, proto);
    let start = std::time::Instant::now();
    let last = socket_close_loop(n, proto);
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{ns:.1} {last}");
}

/// Makes and closes `n` sockets; returns the protocol of the last one (-1 if none).
fn socket_close_loop(n: u64, proto: i32) -> i32 {
    let mut last = -1;
    for i in 0..n {
        // SAFETY: plain syscalls on integers; each fd is closed right away.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, proto);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            if i + 1 == n {
                let mut v: i32 = 0;
                let mut len = size_of::<i32>() as libc::socklen_t;
                libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL, (&raw mut v).cast(), &mut len);
                last = v;
            }
            libc::close(fd);
        }
    }
    last
}

/// ns per setsockopt(TCP_USER_TIMEOUT) on one socket, and its protocol.
fn set_options(n: u64) -> (f64, i32) {
    let s = std::net::TcpListener::bind("127.0.0.1:0").expect("a TCP socket");
    let fd = s.as_raw_fd();
    let set = |v: i32| {
        // SAFETY: v is valid for reading 4 bytes; the fd is open for the call.
        let r = unsafe {
            libc::setsockopt(fd, libc::SOL_TCP, libc::TCP_USER_TIMEOUT, (&raw const v).cast(), size_of::<i32>() as _)
        };
        assert_eq!(r, 0, "setsockopt: {}", std::io::Error::last_os_error());
    };
    (0..n / 10).for_each(|i| set(i as i32 % 1000));
    let start = std::time::Instant::now();
    (0..n).for_each(|i| set(i as i32 % 1000));
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    let mut v: i32 = -1;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: v and len are valid for the kernel to write.
    unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL, (&raw mut v).cast(), &mut len) };
    (ns, v)
}

/// ns per connection over loopback, and the protocol of the last client socket. Sockets come
/// from std (protocol 0), so only a rule upgrades them; the listener is made the same way.
fn connections(n: u64, burst: bool) -> (f64, i32) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        // Accepted and closed at once, so a burst never waits on a full backlog.
        for s in listener.incoming() {
            drop(s);
        }
    });
    let connect = || TcpStream::connect(addr).expect("connecting");
    let warm_up: Vec<TcpStream> = (0..n / 10).map(|_| connect()).collect();
    drop(warm_up);
    let start = std::time::Instant::now();
    let last = if burst {
        let all: Vec<TcpStream> = (0..n).map(|_| connect()).collect();
        let last = protocol(all.last().expect("n > 0"));
        drop(all);
        last
    } else {
        let mut last = -1;
        for i in 0..n {
            let s = connect();
            if i + 1 == n {
                last = protocol(&s);
            }
        }
        last
    };
    (start.elapsed().as_nanos() as f64 / n as f64, last)
}

fn protocol(s: &TcpStream) -> i32 {
    let mut v: i32 = -1;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: v and len are valid for the kernel to write; the fd is open for the call.
    unsafe { libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL, (&raw mut v).cast(), &mut len) };
    v
}
