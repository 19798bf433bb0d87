//! The hook-cost benchmark's workload: `sockbench N [mptcp|empty-hook]` makes N sockets
//! (`socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)` through libc, so that LD_PRELOAD tools such
//! as mptcpize see them too) and closes each at once. `mptcp` asks for IPPROTO_MPTCP explicitly;
//! `empty-hook` (root) first attaches an fmod_ret program that only returns 0, to measure the
//! kernel's trampoline alone. Prints nanoseconds per socket()+close() (after an untimed tenth as
//! warm-up) and the protocol of the last socket.
fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).expect("usage: sockbench N [mptcp|empty-hook]");
    let mode = args.next();
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
