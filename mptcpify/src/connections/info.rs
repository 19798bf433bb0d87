//! The two kernel structures a connection's details come in, decoded from their bytes: an MPTCP
//! socket's `struct mptcp_info` and a subflow's `MPTCP_SUBFLOW_ATTR_*` attributes (both UAPI,
//! `linux/mptcp.h`). Older kernels send a shorter `mptcp_info`: missing fields read as `None`.
use netlink_packet_core::{NlaBuffer, NlasIterator};

/// `MPTCP_INFO_FLAG_FALLBACK`: the connection runs as plain TCP.
const INFO_FLAG_FALLBACK: u32 = 1 << 0;

/// What `mptcp_info` says about one MPTCP connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MptcpInfo {
    /// Extra subflows established (the first one is not counted).
    pub subflows: u8,
    pub fallback: bool,
    /// The connection's local token: its subflows carry it.
    pub token: u32,
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
}

impl MptcpInfo {
    /// `None` if shorter than the fields every MPTCP kernel has.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let u32_at = |off: usize| b.get(off..off + 4).map(|s| u32::from_ne_bytes(s.try_into().expect("4 bytes")));
        let u64_at = |off: usize| b.get(off..off + 8).map(|s| u64::from_ne_bytes(s.try_into().expect("8 bytes")));
        Some(Self {
            subflows: *b.first()?,
            fallback: u32_at(8)? & INFO_FLAG_FALLBACK != 0,
            token: u32_at(12)?,
            bytes_sent: u64_at(56),
            bytes_received: u64_at(64),
        })
    }
}

/// `MPTCP_SUBFLOW_ATTR_*` and `MPTCP_SUBFLOW_FLAG_*`.
const ATTR_TOKEN_LOC: u16 = 2;
const ATTR_FLAGS: u16 = 8;
const FLAG_JOIN_LOC: u32 = 1 << 3;
const FLAG_JOIN_REM: u32 = 1 << 2;
const FLAG_BKUP_REM: u32 = 1 << 4;
const FLAG_BKUP_LOC: u32 = 1 << 5;

/// What a subflow's attributes say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubflowInfo {
    /// The local token of the connection it belongs to (0 when the kernel withheld it).
    pub token: u32,
    /// An extra subflow (MP_JOIN), not the connection's first.
    pub join: bool,
    /// Marked backup by either end: it carries data only when no other subflow can.
    pub backup: bool,
}

impl SubflowInfo {
    pub fn parse(attrs: &[u8]) -> Self {
        let mut info = Self::default();
        for nla in NlasIterator::new(attrs).filter_map(Result::ok) {
            let nla: NlaBuffer<&[u8]> = nla;
            let value = nla.value();
            let Some(word) = value.get(..4).map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes"))) else {
                continue;
            };
            match nla.kind() {
                ATTR_TOKEN_LOC => info.token = word,
                ATTR_FLAGS => {
                    info.join = word & (FLAG_JOIN_LOC | FLAG_JOIN_REM) != 0;
                    info.backup = word & (FLAG_BKUP_LOC | FLAG_BKUP_REM) != 0;
                }
                _ => {}
            }
        }
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mptcp_info_reads_its_fields_and_tolerates_older_shorter_ones() {
        let mut b = vec![0u8; 96];
        b[0] = 1;
        b[8..12].copy_from_slice(&1u32.to_ne_bytes());
        b[12..16].copy_from_slice(&0xabcdu32.to_ne_bytes());
        b[56..64].copy_from_slice(&4096u64.to_ne_bytes());
        b[64..72].copy_from_slice(&512u64.to_ne_bytes());
        let i = MptcpInfo::parse(&b).unwrap();
        assert_eq!((i.subflows, i.fallback, i.token), (1, true, 0xabcd));
        assert_eq!((i.bytes_sent, i.bytes_received), (Some(4096), Some(512)));
        let old = MptcpInfo::parse(&b[..40]).unwrap();
        assert_eq!((old.token, old.bytes_sent), (0xabcd, None));
        assert_eq!(MptcpInfo::parse(&b[..10]), None);
    }

    #[test]
    fn subflow_attributes_give_token_join_and_backup() {
        let attr = |kind: u16, v: u32| {
            let mut a = 8u16.to_ne_bytes().to_vec();
            a.extend(kind.to_ne_bytes());
            a.extend(v.to_ne_bytes());
            a
        };
        let mut attrs = attr(ATTR_TOKEN_LOC, 77);
        attrs.extend(attr(ATTR_FLAGS, FLAG_JOIN_LOC | FLAG_BKUP_REM));
        assert_eq!(SubflowInfo::parse(&attrs), SubflowInfo { token: 77, join: true, backup: true });
        assert_eq!(SubflowInfo::parse(&attr(ATTR_FLAGS, 1 << 1)), SubflowInfo::default(), "MCAP_LOC only: the first");
        assert_eq!(SubflowInfo::parse(&[1, 2]), SubflowInfo::default(), "garbage reads as nothing");
    }
}
