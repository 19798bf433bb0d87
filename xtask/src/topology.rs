//! The two-path test network used by the demo and the benchmark: namespaces `<p>-cli` and
//! `<p>-srv` joined by veth pairs c1–s1 (10.<net>.1.0/24) and c2–s2 (10.<net>.2.0/24). The
//! client is a two-homed host: a default route through each path (metric 100 via path 1, 200
//! via path 2). No MPTCP endpoint, limit or rule: `mptcpify paths auto` makes what it needs.

/// One direction of one path: a token bucket at `mbit`, then `delay_ms` of delay.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub mbit: u32,
    pub delay_ms: u32,
}

/// Shell commands that build the network (run as root; `set -e` is the caller's). `shapes`:
/// path 1's and path 2's, each applied in both directions.
pub fn script(prefix: &str, net: u8, shapes: Option<[Shape; 2]>) -> String {
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
done
for d in c1 c2; do ip -n {cli} link set $d up; done
for d in s1 s2; do ip -n {srv} link set $d up; done
ip -n {cli} route add default via 10.{net}.1.2 dev c1 metric 100
ip -n {cli} route add default via 10.{net}.2.2 dev c2 metric 200
"#
    );
    if let Some(shapes) = shapes {
        for (path, shape) in shapes.iter().enumerate() {
            let (p, mbit, delay) = (path + 1, shape.mbit, shape.delay_ms);
            s.push_str(&format!(
                r#"for p in "{cli} c{p}" "{srv} s{p}"; do
  set -- $p
  ip netns exec $1 tc qdisc add dev $2 root handle 1: tbf rate {mbit}mbit burst 64kb latency 100ms
  ip netns exec $1 tc qdisc add dev $2 parent 1:1 handle 10: netem delay {delay}ms limit 10000
done
"#
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shaping_is_per_path_and_names_follow_the_prefix() {
        let plain = script("demo", 77, None);
        assert!(plain.contains("ip netns add demo-cli; ip netns add demo-srv"));
        assert!(plain.contains("route add default via 10.77.2.2 dev c2 metric 200"));
        assert!(!plain.contains("endpoint") && !plain.contains("rule"), "mptcpify makes them");
        assert!(!plain.contains("tbf"));
        let shaped = script("mb", 88, Some([Shape { mbit: 50, delay_ms: 5 }, Shape { mbit: 20, delay_ms: 40 }]));
        assert!(shaped.contains("tbf rate 50mbit") && shaped.contains("netem delay 5ms"));
        assert!(shaped.contains("tbf rate 20mbit") && shaped.contains("netem delay 40ms"));
    }
}
