//! Hand-assembled BPF instructions, for the two tiny programs user space builds itself (the
//! kallsyms lookup and the benchmark's empty hook); the real program comes from aya-ebpf.
use aya_obj::generated::bpf_insn;

// Opcodes (`BPF_*` class | op | source), as the kernel's `filter.h` macros build them.
pub const MOV64_REG: u8 = 0xbf;
pub const MOV64_IMM: u8 = 0xb7;
pub const ADD64_IMM: u8 = 0x07;
pub const LD_IMM64: u8 = 0x18;
pub const STX_DW: u8 = 0x7b;
pub const ST_DW: u8 = 0x7a;
pub const LDX_DW: u8 = 0x79;
pub const CALL: u8 = 0x85;
pub const EXIT: u8 = 0x95;
/// The frame pointer register.
pub const FP: u8 = 10;

pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
    bpf_insn { code, _bitfield_align_1: [], _bitfield_1: bpf_insn::new_bitfield_1(dst, src), off, imm }
}
