//! The pinned state in bpffs and everything that edits it: where it lives and its lock
//! ([`pins`]), handles on the pinned maps ([`maps`]), the rules and their all-or-nothing
//! bookkeeping ([`rules`]; [`memstore`] for tests, feature `test-helpers`), what cgroup rules
//! were made from ([`origin`]), the compatibility guard's maps ([`guard`]), the state's layout version and edit journal ([`meta`]), and the
//! program's decision rule modelled in user space ([`selection`]).
pub mod guard;
pub mod maps;
#[cfg(any(test, feature = "test-helpers"))]
pub mod memstore;
pub mod meta;
pub mod origin;
pub mod pins;
pub mod rules;
pub mod selection;
