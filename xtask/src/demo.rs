//! `cargo xtask demo`: an unmodified python3 gets TCP sockets, then MPTCP ones after
//! `mptcpify enable --cgroup`, then a real two-path MPTCP transfer between two network
//! namespaces. Runs on this host if its kernel takes the program, else in the 6.12 VM.
use std::process::Command;

use anyhow::{Result, bail};

use crate::{artifacts, kernels, setup, topology, vm, workspace_root};

const SCRIPT: &str = r#"
set -eu
M=$MPTCPIFY_BIN
CG=/sys/fs/cgroup/mptcpify-demo
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() { "$M" reset >/dev/null 2>&1 || true; ip netns del demo-srv 2>/dev/null || true; ip netns del demo-cli 2>/dev/null || true; }
trap cleanup EXIT
in_cg() { sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" "$@"; }
PROBE='import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
p = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
print("   python3: socket(AF_INET, SOCK_STREAM, 0) ->", {6: "IPPROTO_TCP (6)", 262: "IPPROTO_MPTCP (262)"}.get(p, p))'

say "kernel $(uname -r); an unmodified python3 in cgroup mptcpify-demo"
mkdir -p $CG
in_cg python3 -c "$PROBE"
say "mptcpify enable --cgroup mptcpify-demo"
"$M" enable --cgroup mptcpify-demo
in_cg python3 -c "$PROBE"

say "two network namespaces joined by two veth pairs (two paths)"
@TOPOLOGY@echo "   path 1: c1 10.77.1.1 <-> s1 10.77.1.2, path 2: c2 10.77.2.1 <-> s2 10.77.2.2; a default route through each"

say "mptcpify paths auto (client): endpoints for both uplinks, limits to cover them"
"$M" paths --netns demo-cli auto
"$M" paths --netns demo-cli | sed 's/^/   /'

say "unmodified python3 server and client, both in the enabled cgroup"
in_cg ip netns exec demo-srv python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.77.1.2", 5201)); s.listen(1)
c, _ = s.accept()
print("   server: accepted socket protocol", c.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))
c.sendall(b"x" * (8 << 20))
c.recv(16); c.close()' &
SRV=$!
sleep 1
rm -f /run/mptcpify-demo-held
in_cg ip netns exec demo-cli python3 -c '
import socket, time
s = socket.create_connection(("10.77.1.2", 5201))
time.sleep(1)                         # the second subflow joins meanwhile
n = 0
while n < 8 << 20:
    d = s.recv(1 << 16)
    if not d: break
    n += len(d)
info = s.getsockopt(284, 1, 256)      # SOL_MPTCP, MPTCP_INFO
flags = int.from_bytes(info[8:12], "little")
print("   client: protocol", s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL),
      "| extra subflows", info[0], "| fallback to TCP:", bool(flags & 1), "| received", n, "bytes", flush=True)
open("/run/mptcpify-demo-held", "w").close()
time.sleep(3)                         # held open for `mptcpify connections`
s.sendall(b"bye")' &
CLI=$!
while [ ! -e /run/mptcpify-demo-held ]; do sleep 0.1; done
say "mptcpify connections (while the client holds its connection)"
"$M" connections | sed 's/^/   /'
wait $CLI
wait $SRV
for d in c1 c2; do
  echo "   bytes received over $d: $(ip netns exec demo-cli cat /sys/class/net/$d/statistics/rx_bytes)"
done
say "kernel MPTCP counters in the client namespace"
ip netns exec demo-cli nstat -az | grep -E 'MPTcpExt(MPCapableSYNACKRX|MPJoinSynAckRx|AddAddr) ' | sed 's/^/   /'
say "mptcpify status: what became of the upgraded connections, per rule"
"$M" status
"#;

pub fn run() -> Result<()> {
    setup::all()?;
    let a = artifacts::build()?;
    let env = a.env();
    let script = SCRIPT.replace("@TOPOLOGY@", &topology::script("demo", 77, None));
    let argv: Vec<String> = vec!["bash".into(), "-c".into(), script.clone()];
    let on_host = a.host_accepts_program();
    let status = if on_host {
        Command::new("bash").arg("-c").arg(&script).envs(env).status()?.code().unwrap_or(1)
    } else {
        eprintln!("(this host's kernel refuses fmod_ret programs: running the demo in a Debian 6.12 VM)");
        let mut opts = vm::VmOptions::new(kernels::resolve("6.12")?);
        opts.env = env;
        vm::run_in_vm(&opts, &workspace_root(), &argv)?.status
    };
    if status != 0 {
        bail!("the demo failed (exit status {status})");
    }
    Ok(())
}
