//! Text formats of the Linux networking tools, as typed values with `parse`
//! and `emit` that round-trip: what the real machine runs is what the
//! simulator understood.

pub mod iptables;
pub mod route;
