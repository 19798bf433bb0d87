//! What the kernel program needs to read the caller's `net.mptcp.enabled` itself, found in the
//! running kernel: struct member offsets from its BTF and the address of `mptcp_pernet_id` from
//! `/proc/kallsyms`. With them a selected process in a namespace where MPTCP is disabled keeps
//! getting working TCP sockets instead of ENOPROTOOPT.
use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetnsOffsets {
    pub task_nsproxy: u32,
    pub nsproxy_net_ns: u32,
    pub net_gen: u32,
    pub pernet_mptcp_enabled: u32,
    pub pernet_id_addr: u64,
}

/// Byte offset of `member` in `struct name`, looking through anonymous struct/union members.
fn member_offset(btf: &Btf, name: &str, member: &str) -> Result<u32> {
    let ty = btf
        .resolve_types_by_name(name)
        .with_context(|| format!("struct {name} is not in this kernel's BTF"))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
        .ok_or_else(|| anyhow!("struct {name} is not in this kernel's BTF"))?;
    find_member(btf, &ty, member)?
        .map(|bits| bits / 8)
        .ok_or_else(|| anyhow!("struct {name} has no member {member} in this kernel"))
}

fn find_member(btf: &Btf, ty: &Type, member: &str) -> Result<Option<u32>> {
    let (Type::Struct(s) | Type::Union(s)) = ty else { return Ok(None) };
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == member {
            return Ok(Some(m.bit_offset()));
        }
        if name.is_empty() {
            let inner = btf.resolve_chained_type(m)?;
            if let Some(off) = find_member(btf, &inner, member)? {
                return Ok(Some(m.bit_offset() + off));
            }
        }
    }
    Ok(None)
}

/// Address of `symbol` in `/proc/kallsyms` text; `None` if absent or hidden (shown as zeros).
/// Searches with `str::find` rather than line by line: 160k lines parsed one by one take
/// seconds in a debug build under emulation.
pub fn kallsyms_address(kallsyms: &str, symbol: &str) -> Option<u64> {
    let mut from = 0;
    while let Some(i) = kallsyms[from..].find(symbol).map(|i| i + from) {
        from = i + symbol.len();
        let before_ok = kallsyms[..i].ends_with(' ');
        let after_ok = matches!(kallsyms.as_bytes().get(from), None | Some(b'\n' | b'\t'));
        if !(before_ok && after_ok) {
            continue;
        }
        let start = kallsyms[..i].rfind('\n').map_or(0, |n| n + 1);
        let addr = kallsyms[start..i].split_whitespace().next()?;
        return u64::from_str_radix(addr, 16).ok().filter(|&a| a != 0);
    }
    None
}

/// Reads `/proc/kallsyms` in large chunks (the kernel hands out a page per read regardless).
fn kallsyms_text() -> Result<String> {
    use std::io::Read as _;
    let mut text = String::with_capacity(16 << 20);
    std::fs::File::open("/proc/kallsyms")
        .and_then(|f| std::io::BufReader::with_capacity(1 << 20, f).read_to_string(&mut text))
        .context("reading /proc/kallsyms")?;
    Ok(text)
}

pub fn find() -> Result<NetnsOffsets> {
    // In memory: the file backend seeks once per type (~100k syscalls).
    let bytes = std::fs::read("/sys/kernel/btf/vmlinux").context("reading /sys/kernel/btf/vmlinux")?;
    let btf = Btf::from_bytes(&bytes).context("parsing /sys/kernel/btf/vmlinux")?;
    let Some(pernet_id_addr) = kallsyms_address(&kallsyms_text()?, "mptcp_pernet_id") else {
        bail!("mptcp_pernet_id is not in /proc/kallsyms (needs CONFIG_KALLSYMS_ALL and kernel.kptr_restrict < 2)");
    };
    Ok(NetnsOffsets {
        task_nsproxy: member_offset(&btf, "task_struct", "nsproxy")?,
        nsproxy_net_ns: member_offset(&btf, "nsproxy", "net_ns")?,
        net_gen: member_offset(&btf, "net", "gen")?,
        pernet_mptcp_enabled: member_offset(&btf, "mptcp_pernet", "mptcp_enabled")?,
        pernet_id_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_lines_are_matched_by_whole_name() {
        let text = "ffffffff9b665be0 b mptcp_pernet_id_other\nffffffff9b665be8 b mptcp_pernet_id\n0000000000000000 T hidden\nffffffffc0001000 t in_module\t[veth]\n";
        assert_eq!(kallsyms_address(text, "mptcp_pernet_id"), Some(0xffffffff9b665be8));
        assert_eq!(kallsyms_address(text, "in_module"), Some(0xffffffffc0001000));
        assert_eq!(kallsyms_address(text, "pernet_id"), None, "whole names only");
        assert_eq!(kallsyms_address(text, "hidden"), None, "kptr_restrict zeroes are not addresses");
        assert_eq!(kallsyms_address(text, "absent"), None);
    }

    #[test]
    fn offsets_come_from_this_kernels_btf() {
        // Every Linux with BTF has these; the values differ by build.
        let Ok(bytes) = std::fs::read("/sys/kernel/btf/vmlinux") else { return };
        let btf = Btf::from_bytes(&bytes).unwrap();
        let nsproxy = member_offset(&btf, "task_struct", "nsproxy").unwrap();
        assert!(nsproxy > 0 && nsproxy % 8 == 0, "{nsproxy}");
        assert_eq!(member_offset(&btf, "nsproxy", "count").unwrap(), 0);
        let e = member_offset(&btf, "nsproxy", "no_such_member").unwrap_err().to_string();
        assert!(e.contains("has no member no_such_member"), "{e}");
        assert!(member_offset(&btf, "no_such_struct_xyz", "a").is_err());
    }
}
