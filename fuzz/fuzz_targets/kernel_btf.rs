//! The kernel's BTF (`/sys/kernel/btf/vmlinux`, or whatever a container mounts there): any bytes
//! are indexed or refused without a panic, and the lookups the loader makes end, bounded, on
//! whatever types were indexed (cycles, huge member counts, offsets that overflow).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mptcpify::bpf::kernel_btf::KernelBtf;

/// A BTF header around the input, split into its type and string sections at `split`, so that
/// most inputs reach the type decoder instead of failing the header.
fn framed(body: &[u8], split: usize) -> Vec<u8> {
    let split = split.min(body.len());
    let (types, strings) = (split as u32, (body.len() - split) as u32);
    let mut data = Vec::with_capacity(24 + body.len());
    data.extend(0xeb9fu16.to_ne_bytes());
    data.extend([1u8, 0]);
    for word in [24u32, 0, types, types, strings] {
        data.extend(word.to_ne_bytes());
    }
    data.extend(body);
    data
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        // Type records are 12-byte aligned more often than not: split at a multiple of 4.
        let split = usize::from(mode >> 1) * 4 + rest.len() / 2;
        framed(rest, split)
    };
    let Ok(btf) = KernelBtf::parse(bytes) else { return };
    let _ = btf.func_id("update_socket_protocol");
    for (name, member) in [("task_struct", "comm"), ("a", "b"), ("", ""), ("s", "")] {
        let _ = btf.member_offset(name, member);
    }
});
