//! The `--kubernetes` mode: pods on this node selected by annotation or namespace label get their
//! cgroup enabled. [`pods`] holds the pure rules, [`watch`] the kube-rs watchers.
pub mod events;
pub mod pods;
pub mod watch;
