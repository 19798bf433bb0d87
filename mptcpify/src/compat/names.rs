//! Names of socket options, for people: `TCP_USER_TIMEOUT` reads better than `6/18`. Display
//! only: which options MPTCP refuses is asked of the kernel ([`super::probe`]), never read from
//! here. Numbers from the kernel's uapi headers; an unnamed one shows as its number.
use mptcpify_common::{OPTION_GET, SockOpt};

const SOL_IP: u32 = 0;
const SOL_SOCKET: u32 = 1;
const SOL_TCP: u32 = 6;
const SOL_IPV6: u32 = 41;

const TCP: &[(u32, &str)] = &[
    (1, "TCP_NODELAY"),
    (2, "TCP_MAXSEG"),
    (3, "TCP_CORK"),
    (4, "TCP_KEEPIDLE"),
    (5, "TCP_KEEPINTVL"),
    (6, "TCP_KEEPCNT"),
    (7, "TCP_SYNCNT"),
    (8, "TCP_LINGER2"),
    (9, "TCP_DEFER_ACCEPT"),
    (10, "TCP_WINDOW_CLAMP"),
    (11, "TCP_INFO"),
    (12, "TCP_QUICKACK"),
    (13, "TCP_CONGESTION"),
    (14, "TCP_MD5SIG"),
    (16, "TCP_THIN_LINEAR_TIMEOUTS"),
    (17, "TCP_THIN_DUPACK"),
    (18, "TCP_USER_TIMEOUT"),
    (19, "TCP_REPAIR"),
    (20, "TCP_REPAIR_QUEUE"),
    (21, "TCP_QUEUE_SEQ"),
    (22, "TCP_REPAIR_OPTIONS"),
    (23, "TCP_FASTOPEN"),
    (24, "TCP_TIMESTAMP"),
    (25, "TCP_NOTSENT_LOWAT"),
    (26, "TCP_CC_INFO"),
    (27, "TCP_SAVE_SYN"),
    (28, "TCP_SAVED_SYN"),
    (29, "TCP_REPAIR_WINDOW"),
    (30, "TCP_FASTOPEN_CONNECT"),
    (31, "TCP_ULP"),
    (32, "TCP_MD5SIG_EXT"),
    (33, "TCP_FASTOPEN_KEY"),
    (34, "TCP_FASTOPEN_NO_COOKIE"),
    (35, "TCP_ZEROCOPY_RECEIVE"),
    (36, "TCP_INQ"),
    (37, "TCP_TX_DELAY"),
    (38, "TCP_AO_ADD_KEY"),
    (39, "TCP_AO_DEL_KEY"),
    (40, "TCP_AO_INFO"),
    (41, "TCP_AO_GET_KEYS"),
    (42, "TCP_AO_REPAIR"),
    (43, "TCP_IS_MPTCP"),
    (44, "TCP_RTO_MAX_MS"),
    (45, "TCP_RTO_MIN_US"),
    (46, "TCP_DELACK_MAX_US"),
];

const IP: &[(u32, &str)] = &[
    (1, "IP_TOS"),
    (2, "IP_TTL"),
    (3, "IP_HDRINCL"),
    (4, "IP_OPTIONS"),
    (5, "IP_ROUTER_ALERT"),
    (6, "IP_RECVOPTS"),
    (7, "IP_RETOPTS"),
    (8, "IP_PKTINFO"),
    (9, "IP_PKTOPTIONS"),
    (10, "IP_MTU_DISCOVER"),
    (11, "IP_RECVERR"),
    (12, "IP_RECVTTL"),
    (13, "IP_RECVTOS"),
    (14, "IP_MTU"),
    (15, "IP_FREEBIND"),
    (16, "IP_IPSEC_POLICY"),
    (17, "IP_XFRM_POLICY"),
    (18, "IP_PASSSEC"),
    (19, "IP_TRANSPARENT"),
    (20, "IP_RECVORIGDSTADDR"),
    (21, "IP_MINTTL"),
    (22, "IP_NODEFRAG"),
    (23, "IP_CHECKSUM"),
    (24, "IP_BIND_ADDRESS_NO_PORT"),
    (25, "IP_RECVFRAGSIZE"),
    (26, "IP_RECVERR_RFC4884"),
    (32, "IP_MULTICAST_IF"),
    (33, "IP_MULTICAST_TTL"),
    (34, "IP_MULTICAST_LOOP"),
    (35, "IP_ADD_MEMBERSHIP"),
    (36, "IP_DROP_MEMBERSHIP"),
    (37, "IP_UNBLOCK_SOURCE"),
    (38, "IP_BLOCK_SOURCE"),
    (39, "IP_ADD_SOURCE_MEMBERSHIP"),
    (40, "IP_DROP_SOURCE_MEMBERSHIP"),
    (41, "IP_MSFILTER"),
    (49, "IP_MULTICAST_ALL"),
    (50, "IP_UNICAST_IF"),
    (51, "IP_LOCAL_PORT_RANGE"),
    (52, "IP_PROTOCOL"),
];

/// Protocol-independent multicast options, the same numbers at `SOL_IP` and `SOL_IPV6`.
const MCAST: &[(u32, &str)] = &[
    (42, "MCAST_JOIN_GROUP"),
    (43, "MCAST_BLOCK_SOURCE"),
    (44, "MCAST_UNBLOCK_SOURCE"),
    (45, "MCAST_LEAVE_GROUP"),
    (46, "MCAST_JOIN_SOURCE_GROUP"),
    (47, "MCAST_LEAVE_SOURCE_GROUP"),
    (48, "MCAST_MSFILTER"),
];

const SOCKET: &[(u32, &str)] = &[
    (1, "SO_DEBUG"),
    (2, "SO_REUSEADDR"),
    (3, "SO_TYPE"),
    (4, "SO_ERROR"),
    (5, "SO_DONTROUTE"),
    (6, "SO_BROADCAST"),
    (7, "SO_SNDBUF"),
    (8, "SO_RCVBUF"),
    (9, "SO_KEEPALIVE"),
    (10, "SO_OOBINLINE"),
    (11, "SO_NO_CHECK"),
    (12, "SO_PRIORITY"),
    (13, "SO_LINGER"),
    (14, "SO_BSDCOMPAT"),
    (15, "SO_REUSEPORT"),
    (16, "SO_PASSCRED"),
    (17, "SO_PEERCRED"),
    (18, "SO_RCVLOWAT"),
    (19, "SO_SNDLOWAT"),
    (20, "SO_RCVTIMEO_OLD"),
    (21, "SO_SNDTIMEO_OLD"),
    (25, "SO_BINDTODEVICE"),
    (26, "SO_ATTACH_FILTER"),
    (27, "SO_DETACH_FILTER"),
    (28, "SO_PEERNAME"),
    (29, "SO_TIMESTAMP_OLD"),
    (30, "SO_ACCEPTCONN"),
    (31, "SO_PEERSEC"),
    (32, "SO_SNDBUFFORCE"),
    (33, "SO_RCVBUFFORCE"),
    (34, "SO_PASSSEC"),
    (35, "SO_TIMESTAMPNS_OLD"),
    (36, "SO_MARK"),
    (37, "SO_TIMESTAMPING_OLD"),
    (38, "SO_PROTOCOL"),
    (39, "SO_DOMAIN"),
    (40, "SO_RXQ_OVFL"),
    (41, "SO_WIFI_STATUS"),
    (42, "SO_PEEK_OFF"),
    (43, "SO_NOFCS"),
    (44, "SO_LOCK_FILTER"),
    (45, "SO_SELECT_ERR_QUEUE"),
    (46, "SO_BUSY_POLL"),
    (47, "SO_MAX_PACING_RATE"),
    (48, "SO_BPF_EXTENSIONS"),
    (49, "SO_INCOMING_CPU"),
    (50, "SO_ATTACH_BPF"),
    (51, "SO_ATTACH_REUSEPORT_CBPF"),
    (52, "SO_ATTACH_REUSEPORT_EBPF"),
    (53, "SO_CNX_ADVICE"),
    (54, "SCM_TIMESTAMPING_OPT_STATS"),
    (55, "SO_MEMINFO"),
    (56, "SO_INCOMING_NAPI_ID"),
    (57, "SO_COOKIE"),
    (58, "SCM_TIMESTAMPING_PKTINFO"),
    (59, "SO_PEERGROUPS"),
    (60, "SO_ZEROCOPY"),
    (61, "SO_TXTIME"),
    (62, "SO_BINDTOIFINDEX"),
    (63, "SO_TIMESTAMP_NEW"),
    (64, "SO_TIMESTAMPNS_NEW"),
    (65, "SO_TIMESTAMPING_NEW"),
    (66, "SO_RCVTIMEO_NEW"),
    (67, "SO_SNDTIMEO_NEW"),
    (68, "SO_DETACH_REUSEPORT_BPF"),
    (69, "SO_PREFER_BUSY_POLL"),
    (70, "SO_BUSY_POLL_BUDGET"),
    (71, "SO_NETNS_COOKIE"),
    (72, "SO_BUF_LOCK"),
    (73, "SO_RESERVE_MEM"),
    (74, "SO_TXREHASH"),
    (75, "SO_RCVMARK"),
    (76, "SO_PASSPIDFD"),
    (77, "SO_PEERPIDFD"),
    (78, "SO_DEVMEM_LINEAR"),
    (79, "SO_DEVMEM_DMABUF"),
    (80, "SO_DEVMEM_DONTNEED"),
    (81, "SCM_TS_OPT_ID"),
    (82, "SO_RCVPRIORITY"),
];

const IPV6: &[(u32, &str)] = &[
    (1, "IPV6_ADDRFORM"),
    (2, "IPV6_2292PKTINFO"),
    (3, "IPV6_2292HOPOPTS"),
    (4, "IPV6_2292DSTOPTS"),
    (5, "IPV6_2292RTHDR"),
    (6, "IPV6_2292PKTOPTIONS"),
    (7, "IPV6_CHECKSUM"),
    (8, "IPV6_2292HOPLIMIT"),
    (9, "IPV6_NEXTHOP"),
    (10, "IPV6_AUTHHDR"),
    (11, "IPV6_FLOWINFO"),
    (16, "IPV6_UNICAST_HOPS"),
    (17, "IPV6_MULTICAST_IF"),
    (18, "IPV6_MULTICAST_HOPS"),
    (19, "IPV6_MULTICAST_LOOP"),
    (20, "IPV6_ADD_MEMBERSHIP"),
    (21, "IPV6_DROP_MEMBERSHIP"),
    (22, "IPV6_ROUTER_ALERT"),
    (23, "IPV6_MTU_DISCOVER"),
    (24, "IPV6_MTU"),
    (25, "IPV6_RECVERR"),
    (26, "IPV6_V6ONLY"),
    (27, "IPV6_JOIN_ANYCAST"),
    (28, "IPV6_LEAVE_ANYCAST"),
    (29, "IPV6_MULTICAST_ALL"),
    (30, "IPV6_ROUTER_ALERT_ISOLATE"),
    (31, "IPV6_RECVERR_RFC4884"),
    (32, "IPV6_FLOWLABEL_MGR"),
    (33, "IPV6_FLOWINFO_SEND"),
    (34, "IPV6_IPSEC_POLICY"),
    (35, "IPV6_XFRM_POLICY"),
    (36, "IPV6_HDRINCL"),
    (49, "IPV6_RECVPKTINFO"),
    (50, "IPV6_PKTINFO"),
    (51, "IPV6_RECVHOPLIMIT"),
    (52, "IPV6_HOPLIMIT"),
    (53, "IPV6_RECVHOPOPTS"),
    (54, "IPV6_HOPOPTS"),
    (55, "IPV6_RTHDRDSTOPTS"),
    (56, "IPV6_RECVRTHDR"),
    (57, "IPV6_RTHDR"),
    (58, "IPV6_RECVDSTOPTS"),
    (59, "IPV6_DSTOPTS"),
    (60, "IPV6_RECVPATHMTU"),
    (61, "IPV6_PATHMTU"),
    (62, "IPV6_DONTFRAG"),
    (66, "IPV6_RECVTCLASS"),
    (67, "IPV6_TCLASS"),
    (70, "IPV6_AUTOFLOWLABEL"),
    (72, "IPV6_ADDR_PREFERENCES"),
    (73, "IPV6_MINHOPCOUNT"),
    (74, "IPV6_ORIGDSTADDR"),
    (75, "IPV6_TRANSPARENT"),
    (76, "IPV6_UNICAST_IF"),
    (77, "IPV6_RECVFRAGSIZE"),
    (78, "IPV6_FREEBIND"),
];

/// `SOL_TCP`, or the level's number.
pub fn level_name(level: u32) -> String {
    match level {
        SOL_IP => "SOL_IP".into(),
        SOL_SOCKET => "SOL_SOCKET".into(),
        SOL_TCP => "SOL_TCP".into(),
        SOL_IPV6 => "SOL_IPV6".into(),
        other => format!("level {other}"),
    }
}

/// `TCP_USER_TIMEOUT`, or `SOL_TCP/99` for an option without a name here.
pub fn option_name(option: SockOpt) -> String {
    let tables: &[&[(u32, &str)]] = match option.level {
        SOL_TCP => &[TCP],
        SOL_IP => &[IP, MCAST],
        SOL_SOCKET => &[SOCKET],
        SOL_IPV6 => &[IPV6, MCAST],
        _ => &[],
    };
    match tables.iter().flat_map(|t| t.iter()).find(|(n, _)| *n == option.name) {
        Some((_, name)) => (*name).into(),
        None => format!("{}/{}", level_name(option.level), option.name),
    }
}

/// `setsockopt` or `getsockopt`, for `OPTION_SET` and [`OPTION_GET`].
pub fn call_name(op: u32) -> &'static str {
    if op == OPTION_GET { "getsockopt" } else { "setsockopt" }
}

/// `ENOPROTOOPT`, `EOPNOTSUPP`, or the number.
pub fn errno_name(errno: i32) -> String {
    match errno {
        libc::ENOPROTOOPT => "ENOPROTOOPT".into(),
        libc::EOPNOTSUPP => "EOPNOTSUPP".into(),
        other => format!("errno {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_c_library() {
        use libc::{SOL_IP as IP, SOL_IPV6 as IP6, SOL_SOCKET as SOCK, SOL_TCP as TCP};
        for (level, value, name) in [
            (TCP, libc::TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT"),
            (TCP, libc::TCP_MD5SIG, "TCP_MD5SIG"),
            (TCP, libc::TCP_ULP, "TCP_ULP"),
            (IP, libc::IP_TTL, "IP_TTL"),
            (IP, libc::IP_RECVERR, "IP_RECVERR"),
            (IP, libc::IP_ROUTER_ALERT, "IP_ROUTER_ALERT"),
            (IP, libc::IP_MINTTL, "IP_MINTTL"),
            (IP, libc::IP_NODEFRAG, "IP_NODEFRAG"),
            (IP, libc::IP_BIND_ADDRESS_NO_PORT, "IP_BIND_ADDRESS_NO_PORT"),
            (IP, libc::IP_MULTICAST_TTL, "IP_MULTICAST_TTL"),
            (IP, libc::MCAST_JOIN_GROUP, "MCAST_JOIN_GROUP"),
            (IP6, libc::MCAST_MSFILTER, "MCAST_MSFILTER"),
            (SOCK, libc::SO_ZEROCOPY, "SO_ZEROCOPY"),
            (SOCK, libc::SO_MAX_PACING_RATE, "SO_MAX_PACING_RATE"),
            (IP6, libc::IPV6_RECVERR, "IPV6_RECVERR"),
            (IP6, libc::IPV6_2292PKTOPTIONS, "IPV6_2292PKTOPTIONS"),
            (IP6, libc::IPV6_FLOWINFO, "IPV6_FLOWINFO"),
            (IP6, libc::IPV6_MULTICAST_IF, "IPV6_MULTICAST_IF"),
            (IP6, libc::IPV6_HOPLIMIT, "IPV6_HOPLIMIT"),
            (IP6, libc::IPV6_TRANSPARENT, "IPV6_TRANSPARENT"),
            (IP6, libc::IPV6_UNICAST_IF, "IPV6_UNICAST_IF"),
            (IP6, libc::IPV6_RECVFRAGSIZE, "IPV6_RECVFRAGSIZE"),
            (IP6, libc::IPV6_FREEBIND, "IPV6_FREEBIND"),
        ] {
            assert_eq!(option_name(SockOpt { level: level as u32, name: value as u32 }), name);
        }
    }

    #[test]
    fn every_table_is_sorted_without_duplicates() {
        for table in [TCP, IP, MCAST, SOCKET, IPV6] {
            assert!(table.windows(2).all(|w| w[0].0 < w[1].0), "{table:?}");
        }
    }

    #[test]
    fn unnamed_options_and_levels_show_their_numbers() {
        assert_eq!(option_name(SockOpt { level: 6, name: 99 }), "SOL_TCP/99");
        assert_eq!(option_name(SockOpt { level: 284, name: 1 }), "level 284/1");
    }
}
