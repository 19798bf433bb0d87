//! Privileged tests: the real program in a kernel with the hook, checked on real sockets.
//! Run as root in the 6.12 VM by `cargo xtask test` (one binary, so one boot).
mod agent;
mod compat;
mod core;
mod differential;
mod doctor;
mod kernel_facts;
mod killed_edits;
mod kubernetes;
mod monitor;
mod outcomes;
mod paths;
mod run;
mod selectors;
