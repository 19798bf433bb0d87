//! Addresses of kernel symbols.
//!
//! `/proc/kallsyms` formats all of its ~200k lines (7 MB) for every reader: ~400 ms under
//! emulation, a third of a cold load. The kernel answers the same question for one name through
//! `bpf_kallsyms_lookup_name()` (Linux >= 5.16), callable from a `BPF_PROG_TYPE_SYSCALL` program
//! run once with `BPF_PROG_TEST_RUN`, under the same rule as the file (addresses are shown only
//! with `kernel.kptr_restrict` and CAP_SYSLOG allowing it). That program is under twenty
//! instructions, assembled here (see [`super::asm`]); the file stays as the fallback.
use std::os::fd::AsFd as _;

use anyhow::{Result, anyhow, bail};
use aya_obj::generated::{bpf_func_id, bpf_insn};

use super::{
    asm::{ADD64_IMM, CALL, EXIT, FP, LD_IMM64, LDX_DW, MOV64_IMM, MOV64_REG, ST_DW, STX_DW, insn},
    sys,
};

/// The address of `symbol`, from the kernel's own lookup or, where that program cannot run,
/// from `/proc/kallsyms`.
pub fn address(symbol: &str) -> Result<u64> {
    match bpf_lookup(symbol) {
        Ok(addr) => Ok(addr),
        Err(BpfLookup::Refused(e)) => Err(e),
        Err(BpfLookup::Unavailable(e)) => {
            log::debug!("bpf_kallsyms_lookup_name({symbol}): {e:#}; reading /proc/kallsyms");
            file_lookup(symbol)
        }
    }
}

/// Why the kernel's lookup gave no address.
#[derive(Debug, thiserror::Error)]
pub enum BpfLookup {
    /// The lookup ran and the kernel said no; `/proc/kallsyms` would say the same.
    #[error(transparent)]
    Refused(anyhow::Error),
    /// The lookup program could not be loaded or run (kernel < 5.16, no BPF privileges).
    #[error(transparent)]
    Unavailable(anyhow::Error),
}

/// The address of `symbol` as `/proc/kallsyms` shows it.
pub fn file_lookup(symbol: &str) -> Result<u64> {
    kallsyms_address(&kallsyms_text()?, symbol).ok_or_else(|| {
        anyhow!("{symbol} is not in /proc/kallsyms (needs CONFIG_KALLSYMS_ALL and kernel.kptr_restrict < 2)")
    })
}

/// The program: copies `symbol` (NUL-terminated) onto its stack, calls
/// `bpf_kallsyms_lookup_name(name, size, 0, &addr)`, stores `addr` at offset 0 of its context and
/// returns the helper's result (0 or -errno).
pub fn lookup_program(symbol: &str) -> Result<Vec<bpf_insn>> {
    if symbol.is_empty() || symbol.len() >= 128 || symbol.contains('\0') {
        bail!("not a symbol name: {symbol:?}");
    }
    let mut name = symbol.as_bytes().to_vec();
    name.push(0);
    let name_size = name.len() as i32;
    name.resize(name.len().next_multiple_of(8), 0);
    let name_at = -(name.len() as i16);
    let addr_at = name_at - 8;

    let mut p = vec![insn(MOV64_REG, 6, 1, 0, 0)];
    for (i, chunk) in name.chunks(8).enumerate() {
        let v = u64::from_ne_bytes(chunk.try_into().expect("8-byte chunks"));
        p.push(insn(LD_IMM64, 1, 0, 0, v as u32 as i32));
        p.push(insn(0, 0, 0, 0, (v >> 32) as u32 as i32));
        p.push(insn(STX_DW, FP, 1, name_at + 8 * i as i16, 0));
    }
    p.extend([
        insn(ST_DW, FP, 0, addr_at, 0),
        insn(MOV64_REG, 1, FP, 0, 0),
        insn(ADD64_IMM, 1, 0, 0, name_at.into()),
        insn(MOV64_IMM, 2, 0, 0, name_size),
        insn(MOV64_IMM, 3, 0, 0, 0),
        insn(MOV64_REG, 4, FP, 0, 0),
        insn(ADD64_IMM, 4, 0, 0, addr_at.into()),
        insn(CALL, 0, 0, 0, bpf_func_id::BPF_FUNC_kallsyms_lookup_name as i32),
        insn(LDX_DW, 1, FP, addr_at, 0),
        insn(STX_DW, 6, 1, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    Ok(p)
}

/// The address of `symbol` from the kernel's `bpf_kallsyms_lookup_name()`.
pub fn bpf_lookup(symbol: &str) -> Result<u64, BpfLookup> {
    let program = lookup_program(symbol).map_err(BpfLookup::Refused)?;
    let prog = sys::load_syscall("mptcpify_ksym", &program, c"GPL").map_err(|e| {
        let log = if e.verifier_log.is_empty() { String::new() } else { format!("\n{}", e.verifier_log) };
        BpfLookup::Unavailable(anyhow!("loading the lookup program: {}{log}", e.error))
    })?;
    let mut ctx = [0u8; 8];
    let ret = sys::run_syscall(prog.as_fd(), &mut ctx)
        .map_err(|e| BpfLookup::Unavailable(anyhow!("running the lookup program: {e}")))?;
    let addr = u64::from_ne_bytes(ctx);
    match -(ret as i32) {
        0 if addr != 0 => Ok(addr),
        0 => Err(BpfLookup::Refused(anyhow!("the kernel returned no address for {symbol}"))),
        libc::EPERM => Err(BpfLookup::Refused(anyhow!(
            "the kernel hides symbol addresses (kernel.kptr_restrict is 2, or 1 without CAP_SYSLOG), so \
             {symbol} cannot be found"
        ))),
        libc::ENOENT => {
            Err(BpfLookup::Refused(anyhow!("{symbol} is not among the kernel's symbols (needs CONFIG_KALLSYMS_ALL)")))
        }
        errno => Err(BpfLookup::Refused(anyhow!("looking up {symbol}: {}", std::io::Error::from_raw_os_error(errno)))),
    }
}

/// Address of `symbol` in `/proc/kallsyms` text; `None` if absent or hidden (shown as zeros).
/// Searches with `str::find` rather than line by line: 160k lines parsed one by one take
/// seconds in a debug build under emulation.
pub fn kallsyms_address(kallsyms: &str, symbol: &str) -> Option<u64> {
    if symbol.is_empty() || symbol.contains(char::is_whitespace) {
        return None;
    }
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
        .map_err(|e| anyhow!("reading /proc/kallsyms: {e}"))?;
    Ok(text)
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

    /// Found by the kallsyms fuzz target: an empty name matched at the same place forever.
    #[test]
    fn names_that_no_line_can_hold_are_never_found() {
        let text = "ffffffff9b665be8 b mptcp_pernet_id\n";
        for name in ["", " ", "b mptcp_pernet_id", "mptcp_pernet_id\n", "a\tb"] {
            assert_eq!(kallsyms_address(text, name), None, "{name:?}");
        }
    }

    #[test]
    fn lookup_program_carries_the_name_on_its_stack() {
        let p = lookup_program("mptcp_pernet_id").unwrap();
        // 15 characters + NUL: two 8-byte stores, each an ld_imm64 pair and a store.
        assert_eq!(p.len(), 1 + 2 * 3 + 11);
        let chunk = |i: usize| (p[1 + 3 * i].imm as u32 as u64) | ((p[2 + 3 * i].imm as u32 as u64) << 32);
        let mut bytes = chunk(0).to_ne_bytes().to_vec();
        bytes.extend(chunk(1).to_ne_bytes());
        assert_eq!(&bytes, b"mptcp_pernet_id\0");
        let size = p.iter().find(|i| i.code == MOV64_IMM && i.dst_reg() == 2).unwrap().imm;
        assert_eq!(size, 16, "name size counts the NUL");
        assert_eq!(p.last().unwrap().code, EXIT);
        // A 16-byte name needs a third chunk for its NUL.
        assert_eq!(lookup_program("abcdefghijklmnop").unwrap().len(), 1 + 3 * 3 + 11);
        assert!(lookup_program("").is_err());
        assert!(lookup_program("a\0b").is_err());
    }
}
