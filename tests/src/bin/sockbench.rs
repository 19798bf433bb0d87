//! The hook-cost benchmark's workload: `sockbench N [mptcp]` makes N sockets
//! (`socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)` through libc, so that LD_PRELOAD tools such
//! as mptcpize see them too; `mptcp` asks for IPPROTO_MPTCP explicitly) and closes each at once.
//! Prints nanoseconds per socket()+close() and the protocol of the last socket.
fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).expect("usage: sockbench N [mptcp]");
    let proto = if args.next().as_deref() == Some("mptcp") { 262 } else { 0 };
    let mut last = -1;
    let start = std::time::Instant::now();
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
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{ns:.1} {last}");
}
