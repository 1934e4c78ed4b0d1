//! `ip route` syntax.
