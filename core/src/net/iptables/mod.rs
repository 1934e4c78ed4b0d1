//! iptables rules in `iptables-save` syntax, as typed values.
//!
//! A [`Rule`] is what one `-A CHAIN ...` line of `iptables-save` says: the
//! IP header part (`-s`, `-d`, `-i`, `-o`, `-p tcp|udp|icmp`), the
//! extension matches (`-m tcp|udp`, `addrtype`, `mark`, `comment`,
//! `statistic --mode random`, `conntrack --ctstate`) in the order they were
//! written, and an optional target (`ACCEPT`, `DROP`, `RETURN`, `REJECT`,
//! a jump to a user-defined chain, `DNAT`, `MASQUERADE`, `MARK`). A
//! [`Ruleset`] is a whole multi-table dump (`*nat`, `:CHAIN POLICY [p:b]`,
//! rules, `COMMIT`), usable as `iptables-restore` input. Everything here is
//! data: evaluating rules is the simulator's job.
//!
//! The vocabulary is what the rules on a node are made of: kube-proxy's
//! iptables mode (`sim/src/kube_proxy.rs`), docker's nat and filter rules,
//! and the plan's own (the masquerade rule, faults' DROP rules). Other
//! iptables modules, targets, protocols and options (`-m recent`,
//! `multiport`, `-g`, `SNAT`, `LOG`, NAT ranges, ...) are refused by the
//! parser rather than carried as values the simulator cannot evaluate; add
//! one together with its evaluation in `sim/src/netfilter/eval.rs`.
//!
//! # Parsing guarantees
//!
//! - Parsing never panics, whatever the input.
//! - Anything not understood (an unknown option or module, a missing value,
//!   an unbalanced quote, a `!` where iptables refuses one, a combination
//!   iptables or the kernel rejects such as `-m tcp` without `-p tcp`) is
//!   rejected with a [`ParseError`] naming the offending token and its
//!   index; nothing is silently dropped.
//! - Values are normalised the way the kernel stores them, so that two rules
//!   are equal exactly when the kernel holds the same rule: the header
//!   options are fields (the kernel keeps them in a fixed header, and
//!   `iptables-save` prints them in the fixed order `-s -d -i -o -p`),
//!   addresses get their prefix length and lose host bits (`10.0.0.1` is
//!   `10.0.0.1/32`), a positive `/0` and `-p all` are no match at all,
//!   numbers such as marks print in hex, `--dport 80` after `-p tcp` loads
//!   the `tcp` match implicitly, and defaults `iptables-save` prints are
//!   filled in (`--reject-with icmp-port-unreachable`).
//! - So `Rule::parse(x).emit()` is the line `iptables-save` prints after
//!   `iptables-restore` of `x`, and `parse(emit(r)) == r` for every rule.
//!   Two things are kept as written instead, because kube-proxy writes them
//!   that way and a simulator wants what was asked for: the decimal text of
//!   `--probability`, and which of `--set-xmark`/`--or-mark`/`--xor-mark` a
//!   `MARK` target used. [`Rule::to_saved`] applies the kernel's rounding
//!   to those too, giving exactly what `iptables-save` will print.
//! - The tests check all of this against real iptables v1.8.9 (nf_tables
//!   and legacy) when run with `--ignored` as root (see
//!   `real_iptables_agrees_with_generated_rules`).
//!
//! Quoting follows iptables: arguments are split on blanks, a double-quoted
//! part may contain blanks and backslash-escaped `"`, `\`, `'`, and strings
//! (comments) are printed quoted exactly when `iptables-save`
//! quotes them (anything beyond `[A-Za-z0-9_-]`, e.g.
//! `"default/svc:http cluster IP"`). [`Rule::to_args`] gives the unquoted
//! argv for `iptables -t TABLE -C|-A|-D CHAIN ...`.
//!
//! The module is three files: `model.rs` holds the types and what the
//! kernel would refuse (the rules a [`Rule`] value must keep), `parse.rs`
//! reads `iptables-save` text and argv into them, and `emit.rs` writes them
//! back. Every public item is re-exported here, so callers use
//! `net::iptables::{Rule, Ruleset, ...}` and never the file a type lives in.

mod emit;
mod model;
mod parse;
#[cfg(test)]
mod tests;

pub use model::*;
pub use parse::ParseError;
