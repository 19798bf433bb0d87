//! One module per CLI command, each thin over the layers below: [`rules`] (enable, exclude,
//! disable), [`status`], [`sync`], [`lifecycle`] (reset, probe, logs), [`run`], [`monitor`],
//! [`doctor`]. Every command validates all its input before it changes anything.
pub mod doctor;
pub mod lifecycle;
pub mod monitor;
pub mod rules;
pub mod run;
pub mod status;
pub mod sync;
