//! kscratch-core: everything that turns a scenario into a plan.
//!
//! Invariant: this crate does no IO. No files, sockets, clock or randomness:
//! whatever it needs (the scenario text, the IPAM lock) comes in as arguments,
//! so the same input gives the same bytes of plan on any machine.

pub mod diag;
pub mod diff;
pub mod exec;
pub mod ipam;
pub mod net;
pub mod plan;
pub mod ports;
pub mod release;
pub mod render;
pub mod rollout;
pub mod scenario;

pub use diag::{Diagnostic, Diagnostics};
pub use scenario::{load, Scenario};
