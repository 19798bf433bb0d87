//! Everything that talks BPF to the kernel: loading and attaching the program ([`loader`]), the
//! raw `bpf(2)` calls aya cannot make ([`sys`], the crate's only `unsafe`), the two tiny
//! hand-assembled programs ([`asm`]), and the kernel facts the program needs: BTF ids and
//! offsets ([`kernel_btf`]), symbol addresses ([`kallsyms`]) and the netns check's inputs
//! ([`netns`]).
pub mod asm;
pub mod audit_watch;
pub mod kallsyms;
pub mod kernel_btf;
pub mod landlock;
pub mod loader;
pub mod netns;
#[allow(unsafe_code)]
pub(crate) mod sys;
