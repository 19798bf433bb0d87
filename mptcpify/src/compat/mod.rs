//! Transparency beyond `socket()`: what an upgraded program may meet that TCP would have let it
//! do. [`probe`] asks the running kernel which socket options it refuses on MPTCP but accepts on
//! TCP; [`names`] names them for people. The refusals themselves are seen by the kernel
//! program (its `options` module) and kept in the pinned state ([`crate::state::guard`]).
pub mod names;
pub mod probe;
