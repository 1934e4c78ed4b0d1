//! iptables rules in `iptables-save` syntax.
