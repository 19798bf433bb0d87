//! mptcpify: make unmodified programs use Multipath TCP.
//!
//! A kernel program on `update_socket_protocol` (fmod_ret) turns `socket(AF_INET[6],
//! SOCK_STREAM, 0|IPPROTO_TCP)` into `IPPROTO_MPTCP` for processes selected by cgroup or PID.
//! This crate loads it ([`loader`], with the raw calls in [`sys`]), keeps its pinned state
//! ([`state`]) and edits the rules ([`rules`]) for the CLI in `main.rs`.
pub mod agent;
pub mod asm;
pub mod cgroup;
pub mod checks;
pub mod cli;
pub mod commands;
pub mod doctor;
pub mod kallsyms;
pub mod kernel_btf;
pub mod loader;
pub mod monitor;
pub mod mounts;
pub mod netns;
pub mod process;
pub mod rules;
pub mod run;
pub mod selection;
pub mod state;
pub mod systemd;
pub mod targets;
pub(crate) mod sys;
