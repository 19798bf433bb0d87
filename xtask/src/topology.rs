//! The two-path test network used by the demo and the benchmark: namespaces `<p>-cli` and
//! `<p>-srv` joined by veth pairs c1–s1 (10.<net>.1.0/24) and c2–s2 (10.<net>.2.0/24). The
//! client has an MPTCP `subflow` endpoint on its second address with per-source routing, so an
//! MPTCP connection to the server's first address opens a second subflow over path 2.

/// Shell commands that build the network (run as root; `set -e` is the caller's).
pub fn script(prefix: &str, net: u8, shape_mbit: Option<u32>) -> String {
    let (cli, srv) = (format!("{prefix}-cli"), format!("{prefix}-srv"));
    let mut s = format!(
        r#"ip netns add {cli}; ip netns add {srv}
ip link add c1 netns {cli} type veth peer name s1 netns {srv}
ip link add c2 netns {cli} type veth peer name s2 netns {srv}
ip -n {cli} addr add 10.{net}.1.1/24 dev c1; ip -n {srv} addr add 10.{net}.1.2/24 dev s1
ip -n {cli} addr add 10.{net}.2.1/24 dev c2; ip -n {srv} addr add 10.{net}.2.2/24 dev s2
for ns in {cli} {srv}; do
  ip -n $ns link set lo up
  ip netns exec $ns sysctl -qw net.mptcp.enabled=1
  ip -n $ns mptcp limits set subflow 2 add_addr_accepted 2
done
for d in c1 c2; do ip -n {cli} link set $d up; done
for d in s1 s2; do ip -n {srv} link set $d up; done
ip -n {cli} mptcp endpoint add 10.{net}.2.1 dev c2 subflow
ip -n {cli} rule add from 10.{net}.2.1 table 2
ip -n {cli} route add default dev c2 table 2
ip -n {srv} route add 10.{net}.2.1 dev s2
"#
    );
    if let Some(mbit) = shape_mbit {
        // Each direction of each path: a token bucket at `mbit`, then 5 ms of delay.
        s.push_str(&format!(
            r#"for p in "{cli} c1" "{cli} c2" "{srv} s1" "{srv} s2"; do
  set -- $p
  ip netns exec $1 tc qdisc add dev $2 root handle 1: tbf rate {mbit}mbit burst 64kb latency 100ms
  ip netns exec $1 tc qdisc add dev $2 parent 1:1 handle 10: netem delay 5ms limit 10000
done
"#
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shaping_is_optional_and_names_follow_the_prefix() {
        let plain = script("demo", 77, None);
        assert!(plain.contains("ip netns add demo-cli; ip netns add demo-srv"));
        assert!(plain.contains("mptcp endpoint add 10.77.2.1 dev c2 subflow"));
        assert!(!plain.contains("tbf"));
        let shaped = script("mb", 88, Some(25));
        assert!(shaped.contains("tbf rate 25mbit") && shaped.contains("netem delay 5ms"));
    }
}
