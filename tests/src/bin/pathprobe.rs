//! An unmodified program that moves bytes over one connection and says how MPTCP carried them:
//!   `pathprobe serve ADDR:PORT send|receive BYTES`: prints `ready`, accepts one connection,
//!   sends or receives BYTES, prints `accepted proto=N`;
//!   `pathprobe connect ADDR:PORT send|receive BYTES SETTLE_MS`: connects, waits SETTLE_MS for
//!   subflows to join, moves BYTES, prints `proto=N subflows=N add_addr_accepted=N fallback=0|1`;
//!   with `hold` for the direction, the client sends (the server receives) BYTES, both print
//!   their line and keep the connection open for HOLD_MS more (`serve ADDR hold BYTES HOLD_MS`,
//!   `connect ADDR hold BYTES SETTLE_MS HOLD_MS`): a live connection to look at.
//! Sockets are made the ordinary way (std's TcpStream: protocol 0), so only a rule upgrades them.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::Duration,
};

const SOL_MPTCP: i32 = 284;
const MPTCP_INFO: i32 = 1;

fn protocol(fd: i32) -> i32 {
    let mut v: i32 = -1;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: v and len are valid for the kernel to write.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL, (&raw mut v).cast(), &mut len) };
    if r < 0 { -1 } else { v }
}

/// `struct mptcp_info`: subflows (u8 at 0), add_addr_accepted (u8 at 2), flags (u32 at 8).
fn mptcp_info(fd: i32) -> Option<(u8, u8, u32)> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf and len are valid for the kernel to write.
    let r = unsafe { libc::getsockopt(fd, SOL_MPTCP, MPTCP_INFO, buf.as_mut_ptr().cast(), &mut len) };
    (r == 0).then(|| (buf[0], buf[2], u32::from_ne_bytes(buf[8..12].try_into().unwrap())))
}

fn transfer(s: &mut TcpStream, send: bool, bytes: usize) {
    if send {
        let chunk = vec![0x5au8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).expect("sending");
            left -= n;
        }
        s.shutdown(std::net::Shutdown::Write).expect("shutting down");
        let _ = s.read(&mut [0u8; 1]);
    } else {
        let mut got = 0;
        let mut buf = vec![0u8; 1 << 16];
        while got < bytes {
            match s.read(&mut buf).expect("receiving") {
                0 => break,
                n => got += n,
            }
        }
        assert_eq!(got, bytes, "the peer closed early");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [role, addr, direction, bytes, rest @ ..] = args.as_slice() else {
        panic!("usage: pathprobe serve|connect ADDR:PORT send|receive BYTES [SETTLE_MS]")
    };
    let send = direction == "send";
    let hold = direction == "hold";
    let bytes: usize = bytes.parse().expect("BYTES");
    let hold_ms = |at: usize| -> u64 { if hold { rest.get(at).map_or(0, |s| s.parse().expect("HOLD_MS")) } else { 0 } };
    match role.as_str() {
        "serve" => {
            let listener = TcpListener::bind(addr).expect("binding");
            println!("ready");
            let (mut s, _) = listener.accept().expect("accepting");
            let proto = protocol(s.as_raw_fd());
            if hold {
                s.read_exact(&mut vec![0u8; bytes]).expect("receiving");
            } else {
                transfer(&mut s, send, bytes);
            }
            println!("accepted proto={proto}");
            std::thread::sleep(Duration::from_millis(hold_ms(0)));
        }
        "connect" => {
            let settle: u64 = rest.first().map_or(0, |s| s.parse().expect("SETTLE_MS"));
            let mut s = TcpStream::connect(addr).expect("connecting");
            std::thread::sleep(Duration::from_millis(settle));
            if hold {
                s.write_all(&vec![0x5au8; bytes]).expect("sending");
            } else {
                transfer(&mut s, send, bytes);
            }
            let proto = protocol(s.as_raw_fd());
            // The path manager opens joins from a worker once the connection is established:
            // give it a second to start one before saying how many there are.
            let info = || mptcp_info(s.as_raw_fd()).unwrap_or((0, 0, 1));
            let since = std::time::Instant::now();
            let mut got = info();
            while proto == 262 && got.0 == 0 && got.2 & 1 == 0 && since.elapsed() < Duration::from_secs(1) {
                std::thread::sleep(Duration::from_millis(20));
                got = info();
            }
            let (subflows, accepted, flags) = got;
            println!("proto={proto} subflows={subflows} add_addr_accepted={accepted} fallback={}", flags & 1);
            std::io::stdout().flush().expect("flushing");
            std::thread::sleep(Duration::from_millis(hold_ms(1)));
        }
        other => panic!("unknown role {other}"),
    }
}
