//! Netfilter as a node runs it: the `raw`, `mangle`, `nat` and `filter`
//! tables with their built-in and user-defined chains, evaluated hook by hook
//! in the kernel's order, with connection tracking.
//!
//! # State
//!
//! [`Netfilter`] is one node's rules. Rules are the typed
//! [`kscratch_core::net::iptables::Rule`]s, so the text a real node runs
//! (`iptables-save`) is exactly what is evaluated here.
//!
//! Chains that every node has in common (kube-proxy's `KUBE-*` chains) live
//! in a [`ChainSet`] built once and shared by reference
//! ([`Netfilter::attach_shared`]). A chain name is looked up in the node's own
//! chains first, then in the shared set. Changing a shared chain on one node
//! (a fault deleting a rule) copies that one chain into the node
//! (copy-on-write); deleting it hides it on that node only. The shared set
//! itself is never modified, so 5,000 nodes hold one copy of a 100,000-rule
//! kube-proxy table.
//!
//! Operations mirror the `iptables` commands: [`Netfilter::append`] (`-A`),
//! [`Netfilter::insert`] (`-I`), [`Netfilter::check`] (`-C`),
//! [`Netfilter::ensure_rule`] (`-C || -A` / `-C || -I 1`),
//! [`Netfilter::delete`] (`-D`), [`Netfilter::new_chain`] (`-N`),
//! [`Netfilter::flush_chain`] (`-F`), [`Netfilter::delete_chain`] (`-F`
//! then `-X`), [`Netfilter::set_policy`] (`-P`), [`Netfilter::dump`]
//! (`iptables-save`) and [`Netfilter::restore`] (`iptables-restore
//! [--noflush]`). As `iptables` does, they refuse jumps to chains that do not
//! exist, policies on user-defined chains, and deleting chains still in use.
//!
//! # Evaluation
//!
//! [`Netfilter::hook`] runs one hook for one packet:
//!
//! | hook | order |
//! |---|---|
//! | PREROUTING | raw, *conntrack lookup*, mangle, nat (destination NAT) |
//! | INPUT | mangle, filter, nat (source NAT), *conntrack confirm* |
//! | FORWARD | mangle, filter |
//! | OUTPUT | raw, *conntrack lookup*, mangle, nat (destination NAT), filter |
//! | POSTROUTING | mangle, nat (source NAT), *conntrack confirm* |
//!
//! The caller (the packet walk) calls the hooks of one packet in kernel
//! order on a node, with that node's [`Conntrack`]: PREROUTING → routing →
//! FORWARD or INPUT → POSTROUTING for a received packet, OUTPUT → routing →
//! POSTROUTING for a local one. The connection is attached at PREROUTING or
//! OUTPUT and stays attached to the packet for the node's later hooks (the
//! kernel keeps it on the skb); a packet looped back through `lo` after
//! POSTROUTING keeps it too. Bridged traffic under br_netfilter
//! (`bridge-nf-call-iptables=1`) takes PREROUTING → FORWARD → POSTROUTING
//! with the bridge as both input and output interface.
//!
//! The `nat` chains are only consulted for the first packet of a connection;
//! later packets and replies get the translation recorded in conntrack
//! (DNAT and its undoing at PREROUTING/OUTPUT for the original and reply
//! directions, SNAT and its undoing at POSTROUTING/INPUT), as the kernel
//! does. A source NAT whose reply tuple would clash with an existing
//! connection moves the source port, as the kernel does.
//!
//! Matches: every one [`kscratch_core::net::iptables`] models, which is what
//! kube-proxy, docker and the plan write: `-s/-d` (with `!`), `-p`, `-i/-o`
//! (`+` wildcards), `-m tcp|udp` ports and ranges, `-m addrtype
//! --src-type/--dst-type` (LOCAL, BROADCAST, MULTICAST and UNICAST as the
//! kernel classifies against the node's addresses, [`LocalAddresses`]),
//! `-m mark`, `-m comment`, `-m statistic --mode random` and `-m conntrack
//! --ctstate` (with the DNAT pseudo-state). Targets: ACCEPT, DROP, REJECT,
//! RETURN, jumps, DNAT, MASQUERADE (the source becomes the primary address
//! of the output interface, preferring the one whose subnet holds the next
//! hop) and MARK. The matches over `Match` and `Jump` in `eval.rs` are
//! exhaustive, so a variant added to the model does not compile until it
//! is evaluated here. A target used where the kernel refuses it (DNAT outside nat
//! PREROUTING/OUTPUT, REJECT outside filter) or a jump to a chain that does
//! not exist gives [`Verdict::Error`] naming it: nothing unknown silently
//! matches.
//!
//! `-m statistic` asks a [`Branches`] oracle; [`explore`] runs a closure over
//! every sequence of answers, so a caller can prove that a Service reaches
//! all its endpoints and with which probability.
//!
//! Every matched rule, policy, conntrack decision and translation is
//! appended to a trace ([`TraceEntry`]), naming table, chain, rule number
//! and the rule's `iptables-save` text.
//!
//! Chains with many rules of the form `-d X/32 -p P ... --dport N` (or
//! `-p P ... --dport N` without `-d`), such as kube-proxy's `KUBE-SERVICES`
//! and `KUBE-NODEPORTS`, are indexed by (destination, protocol, port); the
//! index only preselects candidates, which are still evaluated in rule order
//! together with the rules it cannot index, so the semantics are exactly a
//! linear scan's.
//!
//! ```
//! use kscratch_core::net::iptables::{Rule, Table};
//! use kscratch_sim::netfilter::{Conntrack, Hook, HookCx, Netfilter, NodeAddrs, TakeFirst, Verdict};
//! use kscratch_sim::packet::Packet;
//!
//! let mut nf = Netfilter::new();
//! nf.append(Table::Nat, Rule::parse("-A POSTROUTING ! -d 10.10.0.0/16 -m addrtype ! --dst-type LOCAL -j MASQUERADE").unwrap()).unwrap();
//! let mut addrs = NodeAddrs::new();
//! addrs.add("eth0", "192.168.0.11/24".parse().unwrap());
//! addrs.add("cbr0", "10.10.1.1/24".parse().unwrap());
//! let mut pkt = Packet::tcp("10.10.1.5".parse().unwrap(), 40000, "8.8.8.8".parse().unwrap(), 53);
//! let mut ct = Conntrack::new();
//! let mut trace = Vec::new();
//! let cx = HookCx::forward(&addrs, "cbr0", "eth0");
//! for hook in [Hook::Prerouting, Hook::Forward, Hook::Postrouting] {
//!     assert_eq!(nf.hook(hook, &mut pkt, &cx, &mut ct, &mut TakeFirst, &mut trace), Verdict::Accept);
//! }
//! assert_eq!(pkt.src.to_string(), "192.168.0.11");
//! ```

mod branches;
mod conntrack;
mod eval;
#[cfg(test)]
mod tests;

pub use branches::{
    explore, merge_outcomes, Branches, ExploreError, Outcome, SeededBranches, TakeFirst,
};
pub use conntrack::{Conn, Conntrack, Direction};

use ipnet::IpNet;
use kscratch_core::net::iptables::{
    AddrType, Jump, ParseError, Policy, RejectWith, Rule, Ruleset, Table, TableDump,
};
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

/// A netfilter hook (the built-in chain of that name in each table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    /// The built-in chain name (`PREROUTING`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "PREROUTING",
            Hook::Input => "INPUT",
            Hook::Forward => "FORWARD",
            Hook::Output => "OUTPUT",
            Hook::Postrouting => "POSTROUTING",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a packet was when something happened to it: a rule, or a chain's
/// policy when `index` is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub hook: Hook,
    pub table: Table,
    pub chain: String,
    /// 1-based rule number in the chain (`iptables -L --line-numbers`);
    /// `None` for the chain's policy.
    pub index: Option<usize>,
    /// The rule's `iptables-save` line, or the policy name.
    pub rule: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}/{} rule {}: {}", self.table, self.chain, i, self.rule),
            None => write!(f, "{}/{} policy {}", self.table, self.chain, self.rule),
        }
    }
}

/// The outcome of one hook for one packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// The packet continues (to routing, the next hook, or out).
    Accept,
    /// Silently dropped by a rule or a policy.
    Drop { by: RuleRef },
    /// Dropped with an ICMP error (or TCP reset) to the sender.
    Reject {
        by: RuleRef,
        #[serde(serialize_with = "ser_reject_with")]
        with: RejectWith,
    },
    /// The rules could not be evaluated (a target used where the kernel
    /// refuses it, a jump to a missing chain, a loop): never a silent match.
    Error(String),
}

fn ser_reject_with<S: Serializer>(w: &RejectWith, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(w.name())
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("ACCEPT"),
            Verdict::Drop { by } => write!(f, "DROP by {by}"),
            Verdict::Reject { by, with } => write!(f, "REJECT ({}) by {by}", with.name()),
            Verdict::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// Which translation a [`TraceEntry::Nat`] applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatKind {
    /// Destination NAT of an original-direction packet.
    Dnat,
    /// Source NAT (SNAT or MASQUERADE) of an original-direction packet.
    Snat,
    /// A reply's source restored from the DNAT (endpoint back to VIP).
    UnDnat,
    /// A reply's destination restored from the SNAT (node back to pod).
    UnSnat,
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatKind::Dnat => "DNAT",
            NatKind::Snat => "SNAT",
            NatKind::UnDnat => "un-DNAT",
            NatKind::UnSnat => "un-SNAT",
        })
    }
}

/// One step of a traversal, for hop-by-hop traces.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TraceEntry {
    /// A rule matched (whatever its target: a jump, MARK, LOG, a verdict).
    Rule {
        hook: Hook,
        table: Table,
        chain: String,
        /// 1-based rule number in the chain.
        index: usize,
        /// The rule's `iptables-save` line.
        rule: String,
        /// The target name (`KUBE-SVC-...`, `DNAT`, `ACCEPT`), empty if none.
        target: String,
    },
    /// The packet fell off a built-in chain and got its policy.
    Policy {
        hook: Hook,
        table: Table,
        chain: String,
        policy: String,
    },
    /// Conntrack attached the packet to a connection.
    Conntrack {
        hook: Hook,
        state: String,
        direction: Direction,
    },
    /// An address translation was applied to the packet, from a rule
    /// (first packet) or from the connection (later packets and replies).
    Nat {
        hook: Hook,
        nat: NatKind,
        from: String,
        to: String,
    },
}

impl fmt::Display for TraceEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceEntry::Rule {
                table,
                chain,
                index,
                rule,
                ..
            } => {
                write!(f, "{table}/{chain} rule {index}: {rule}")
            }
            TraceEntry::Policy {
                table,
                chain,
                policy,
                ..
            } => {
                write!(f, "{table}/{chain} policy {policy}")
            }
            TraceEntry::Conntrack {
                hook,
                state,
                direction,
            } => {
                write!(f, "conntrack at {hook}: {state} ({direction})")
            }
            TraceEntry::Nat {
                hook,
                nat,
                from,
                to,
            } => write!(f, "{nat} at {hook}: {from} -> {to}"),
        }
    }
}

/// A node's addresses as netfilter needs them: which are local
/// (`-m addrtype --dst-type LOCAL`), which are broadcast, and which one
/// MASQUERADE picks on an interface. Implement [`LocalAddresses::addresses`]
/// for a node model and the rest follows the kernel; [`NodeAddrs`] is a
/// ready-made implementation.
pub trait LocalAddresses {
    /// Every address of the node with the interface it is on; on each
    /// interface the primary (first added) address comes first.
    fn addresses(&self) -> Box<dyn Iterator<Item = (&str, IpNet)> + '_>;

    /// Whether `ip` is one of the node's own addresses (loopback
    /// `127.0.0.0/8` and `::1` always are).
    fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.addresses().any(|(_, n)| n.addr() == ip)
    }

    /// The address type the kernel gives `ip` (`inet_addr_type`). An IPv4 address on
    /// a subnet of more than two addresses makes the subnet's broadcast
    /// address BROADCAST, as the kernel's local routing table does.
    fn addr_type(&self, ip: IpAddr) -> AddrType {
        match ip {
            IpAddr::V4(v4) => {
                if v4.octets()[0] == 0 || v4.is_broadcast() {
                    return AddrType::Broadcast;
                }
                if v4.is_multicast() {
                    return AddrType::Multicast;
                }
            }
            IpAddr::V6(v6) => {
                if v6.is_multicast() {
                    return AddrType::Multicast;
                }
            }
        }
        if ip.is_loopback() {
            return AddrType::Local;
        }
        let mut broadcast = false;
        for (_, net) in self.addresses() {
            if net.addr() == ip {
                return AddrType::Local;
            }
            if let (IpNet::V4(n), IpAddr::V4(v4)) = (net, ip) {
                broadcast |= n.prefix_len() < 31 && n.broadcast() == v4;
            }
        }
        if broadcast {
            AddrType::Broadcast
        } else {
            AddrType::Unicast
        }
    }

    /// The source address MASQUERADE picks on `iface` for a packet from
    /// `family_of`'s family: the first address whose subnet holds
    /// `next_hop`, else the primary address (the kernel's `inet_select_addr`).
    fn masquerade_source(
        &self,
        iface: &str,
        family_of: IpAddr,
        next_hop: Option<IpAddr>,
    ) -> Option<IpAddr> {
        let mut first = None;
        for (name, net) in self.addresses() {
            if name != iface || net.addr().is_ipv4() != family_of.is_ipv4() {
                continue;
            }
            if next_hop.is_some_and(|hop| net.contains(&hop)) {
                return Some(net.addr());
            }
            first.get_or_insert(net.addr());
        }
        first
    }
}

/// A list of a node's addresses by interface, for callers without a node
/// model of their own (and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAddrs {
    by_iface: BTreeMap<String, Vec<IpNet>>,
}

impl NodeAddrs {
    /// No addresses (loopback is local all the same).
    pub fn new() -> NodeAddrs {
        NodeAddrs::default()
    }

    /// Add `addr` (with its prefix, as `ip addr add` takes it) on `iface`.
    pub fn add(&mut self, iface: &str, addr: IpNet) {
        let list = self.by_iface.entry(iface.to_string()).or_default();
        if !list.contains(&addr) {
            list.push(addr);
        }
    }

    /// The addresses of `iface`, primary first.
    pub fn iface_addrs(&self, iface: &str) -> &[IpNet] {
        self.by_iface.get(iface).map_or(&[], Vec::as_slice)
    }
}

impl LocalAddresses for NodeAddrs {
    fn addresses(&self) -> Box<dyn Iterator<Item = (&str, IpNet)> + '_> {
        Box::new(
            self.by_iface
                .iter()
                .flat_map(|(iface, nets)| nets.iter().map(move |n| (iface.as_str(), *n))),
        )
    }
}

/// What one hook needs to know about where the packet is: the interfaces
/// (absent where the kernel has none: no input interface at OUTPUT and
/// POSTROUTING of local packets, no output interface at PREROUTING and
/// INPUT), the node's addresses, and the next hop the routing decision
/// chose (for MASQUERADE's source address).
#[derive(Clone, Copy)]
pub struct HookCx<'a> {
    pub in_iface: Option<&'a str>,
    pub out_iface: Option<&'a str>,
    pub addrs: &'a dyn LocalAddresses,
    pub next_hop: Option<IpAddr>,
}

impl fmt::Debug for HookCx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookCx")
            .field("in_iface", &self.in_iface)
            .field("out_iface", &self.out_iface)
            .field("next_hop", &self.next_hop)
            .finish_non_exhaustive()
    }
}

impl<'a> HookCx<'a> {
    /// No interfaces yet; set them with the builder methods.
    pub fn new(addrs: &'a dyn LocalAddresses) -> HookCx<'a> {
        HookCx {
            in_iface: None,
            out_iface: None,
            addrs,
            next_hop: None,
        }
    }

    /// A packet received on `in_iface` and routed out of `out_iface`.
    pub fn forward(
        addrs: &'a dyn LocalAddresses,
        in_iface: &'a str,
        out_iface: &'a str,
    ) -> HookCx<'a> {
        HookCx {
            in_iface: Some(in_iface),
            out_iface: Some(out_iface),
            addrs,
            next_hop: None,
        }
    }

    /// A packet received on `in_iface` for this node.
    pub fn input(addrs: &'a dyn LocalAddresses, in_iface: &'a str) -> HookCx<'a> {
        HookCx {
            in_iface: Some(in_iface),
            out_iface: None,
            addrs,
            next_hop: None,
        }
    }

    /// A packet this node sends out of `out_iface`.
    pub fn output(addrs: &'a dyn LocalAddresses, out_iface: &'a str) -> HookCx<'a> {
        HookCx {
            in_iface: None,
            out_iface: Some(out_iface),
            addrs,
            next_hop: None,
        }
    }

    /// Set the input interface.
    pub fn with_in(mut self, iface: &'a str) -> HookCx<'a> {
        self.in_iface = Some(iface);
        self
    }

    /// Set the output interface.
    pub fn with_out(mut self, iface: &'a str) -> HookCx<'a> {
        self.out_iface = Some(iface);
        self
    }

    /// Set the next hop the route chose.
    pub fn with_next_hop(mut self, hop: IpAddr) -> HookCx<'a> {
        self.next_hop = Some(hop);
        self
    }
}

/// Why an `iptables`-style operation was refused (the messages follow
/// iptables' own where it has one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetfilterError {
    #[error("{table}: no chain/target/match by the name {chain}")]
    NoSuchChain { table: Table, chain: String },
    #[error("{table}: chain {chain} already exists")]
    ChainExists { table: Table, chain: String },
    #[error("{table}: {chain} is a built-in chain and cannot be deleted")]
    BuiltinChain { table: Table, chain: String },
    #[error("{table}: cannot set a policy on user-defined chain {chain}")]
    PolicyOnUserChain { table: Table, chain: String },
    #[error("{table}: cannot delete chain {chain}: still referenced from chain {from}")]
    ChainInUse {
        table: Table,
        chain: String,
        from: String,
    },
    #[error("{table}: cannot jump to built-in chain {chain}")]
    JumpToBuiltin { table: Table, chain: String },
    #[error("{table}: bad rule or does not exist: {rule}")]
    NoSuchRule { table: Table, rule: String },
    #[error("{table}: index of insertion too big: {chain} {position}")]
    BadPosition {
        table: Table,
        chain: String,
        position: usize,
    },
    #[error("invalid chain name {name:?}: {message}")]
    BadChainName { name: String, message: String },
    #[error("shared chain set defines built-in chain {table}/{chain}")]
    SharedBuiltin { table: Table, chain: String },
    #[error("invalid rule: {0}")]
    InvalidRule(#[from] ParseError),
}

/// A chain with its rules. Built-in chains have a policy; user-defined
/// chains do not.
#[derive(Debug, Clone)]
pub struct Chain {
    name: String,
    policy: Option<Policy>,
    rules: Vec<Rule>,
    /// Built on first evaluation, dropped by every change.
    index: OnceLock<Option<eval::ChainIndex>>,
}

impl Chain {
    fn new(name: &str, policy: Option<Policy>) -> Chain {
        Chain {
            name: name.to_string(),
            policy,
            rules: Vec::new(),
            index: OnceLock::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy of a built-in chain; `None` for user-defined chains.
    pub fn policy(&self) -> Option<Policy> {
        self.policy
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    fn changed(&mut self) {
        self.index = OnceLock::new();
    }

    fn references(&self, target: &str) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(&r.target, Some(Jump::Chain(c)) if c == target))
    }
}

/// User-defined chains shared by many nodes (kube-proxy's `KUBE-*` chains),
/// built once and attached to each node by `Arc`. Immutable once shared.
#[derive(Debug, Clone, Default)]
pub struct ChainSet {
    tables: [BTreeMap<String, Chain>; 4],
    /// Per table, the jump targets not defined in the set (the chains a
    /// node must provide), computed once so that attaching the set to
    /// thousands of nodes does not rescan its rules.
    external: OnceLock<[BTreeSet<String>; 4]>,
}

impl ChainSet {
    /// An empty set.
    pub fn new() -> ChainSet {
        ChainSet::default()
    }

    /// Declare a user-defined chain (no-op if it exists).
    pub fn declare(&mut self, table: Table, name: &str) -> Result<(), NetfilterError> {
        if table.is_builtin(name) {
            return Err(NetfilterError::SharedBuiltin {
                table,
                chain: name.to_string(),
            });
        }
        check_chain_name(name)?;
        self.tables[tix(table)]
            .entry(name.to_string())
            .or_insert_with(|| Chain::new(name, None));
        self.external = OnceLock::new();
        Ok(())
    }

    /// Append a rule to its declared chain. Jump targets are checked when
    /// the set is attached to a node.
    pub fn append(&mut self, table: Table, rule: Rule) -> Result<(), NetfilterError> {
        rule.validate()?;
        let chain = self.tables[tix(table)]
            .get_mut(&rule.chain)
            .ok_or_else(|| NetfilterError::NoSuchChain {
                table,
                chain: rule.chain.clone(),
            })?;
        chain.rules.push(rule);
        chain.changed();
        self.external = OnceLock::new();
        Ok(())
    }

    /// The user-defined chains of a [`Ruleset`] (a restore file); rules in
    /// built-in chains are refused, as a shared set holds none.
    pub fn from_ruleset(set: &Ruleset) -> Result<ChainSet, NetfilterError> {
        let mut out = ChainSet::new();
        for td in &set.tables {
            for c in td.chains() {
                out.declare(td.table, &c.name)?;
            }
            for c in td.chains() {
                for r in &c.rules {
                    out.append(td.table, r.clone())?;
                }
            }
        }
        Ok(out)
    }

    /// A chain by name.
    pub fn chain(&self, table: Table, name: &str) -> Option<&Chain> {
        self.tables[tix(table)].get(name)
    }

    /// The chains of a table, by name.
    pub fn chains(&self, table: Table) -> impl Iterator<Item = &Chain> {
        self.tables[tix(table)].values()
    }

    /// Number of chains in all tables.
    pub fn chain_count(&self) -> usize {
        self.tables.iter().map(BTreeMap::len).sum()
    }

    /// Number of rules in all tables.
    pub fn rule_count(&self) -> usize {
        self.tables
            .iter()
            .flat_map(|t| t.values())
            .map(|c| c.rules.len())
            .sum()
    }

    /// Per table, the chains the set's rules jump to without defining them.
    pub fn external_targets(&self, table: Table) -> &BTreeSet<String> {
        let all = self.external.get_or_init(|| {
            Table::ALL.map(|t| {
                let chains = &self.tables[tix(t)];
                let mut out = BTreeSet::new();
                for rule in chains.values().flat_map(|c| c.rules.iter()) {
                    if let Some(Jump::Chain(c)) = &rule.target {
                        if !chains.contains_key(c) {
                            out.insert(c.clone());
                        }
                    }
                }
                out
            })
        });
        &all[tix(table)]
    }

    /// Build every chain's evaluation index now (they are otherwise built
    /// on first use), so that the first packet does not pay for it.
    pub fn prepare(&self) {
        for c in self.tables.iter().flat_map(|t| t.values()) {
            eval::index_of(c);
        }
    }
}

/// Where [`Netfilter::ensure_rule`] puts a missing rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// `iptables -A`
    Append,
    /// `iptables -I CHAIN 1`
    Prepend,
}

/// One node's netfilter rules: its own chains plus an optional shared set.
#[derive(Debug, Clone)]
pub struct Netfilter {
    tables: [LocalTable; 4],
    shared: Option<Arc<ChainSet>>,
}

impl Default for Netfilter {
    fn default() -> Netfilter {
        Netfilter::new()
    }
}

impl Netfilter {
    /// A fresh node: every table's built-in chains, empty, policy ACCEPT.
    pub fn new() -> Netfilter {
        let tables = Table::ALL.map(|t| {
            let mut lt = LocalTable::default();
            for name in t.builtin_chains() {
                lt.chains
                    .insert(name.to_string(), Chain::new(name, Some(Policy::Accept)));
            }
            lt
        });
        Netfilter {
            tables,
            shared: None,
        }
    }

    /// Attach a shared chain set (kube-proxy's chains), replacing the
    /// previous one. As a kube-proxy resync rewrites all its chains, this
    /// node's own copies or deletions of chains the set defines are dropped.
    /// Jumps in the set must lead to chains that exist on this node.
    pub fn attach_shared(&mut self, set: Arc<ChainSet>) -> Result<(), NetfilterError> {
        // `ChainSet::declare` refuses built-in chain names, so the set holds
        // none; the checks here cost O(node's own chains), not O(set).
        let mut next = self.clone();
        for table in Table::ALL {
            let lt = &mut next.tables[tix(table)];
            lt.shared_hidden = false;
            // Walk the node's few own entries, not the set's thousands.
            let shared = &set.tables[tix(table)];
            lt.chains.retain(|name, _| !shared.contains_key(name));
            lt.hidden.retain(|name| !shared.contains_key(name));
        }
        // External targets must be the node's own chains, not the old set's.
        next.shared = None;
        for table in Table::ALL {
            for target in set.external_targets(table) {
                if table.is_builtin(target) {
                    return Err(NetfilterError::JumpToBuiltin {
                        table,
                        chain: target.clone(),
                    });
                }
                if next.chain(table, target).is_none() {
                    return Err(NetfilterError::NoSuchChain {
                        table,
                        chain: target.clone(),
                    });
                }
            }
        }
        next.shared = Some(set);
        *self = next;
        Ok(())
    }

    /// The attached shared set.
    pub fn shared(&self) -> Option<&Arc<ChainSet>> {
        self.shared.as_ref()
    }

    /// A chain as this node sees it (own chains first, then shared).
    pub fn chain(&self, table: Table, name: &str) -> Option<&Chain> {
        let lt = &self.tables[tix(table)];
        if let Some(c) = lt.chains.get(name) {
            return Some(c);
        }
        self.visible_shared(table, name)
    }

    /// A chain's rules.
    pub fn rules(&self, table: Table, chain: &str) -> Option<&[Rule]> {
        self.chain(table, chain).map(Chain::rules)
    }

    /// Chain names as `iptables-save` lists them: built-in chains in kernel
    /// order, then user-defined chains sorted by name.
    pub fn chain_names(&self, table: Table) -> Vec<String> {
        let mut names: Vec<String> = table
            .builtin_chains()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut user: BTreeSet<&str> = BTreeSet::new();
        let lt = &self.tables[tix(table)];
        for name in lt.chains.keys() {
            if !table.is_builtin(name) {
                user.insert(name);
            }
        }
        if let Some(set) = &self.shared {
            if !lt.shared_hidden {
                for name in set.tables[tix(table)].keys() {
                    if !lt.hidden.contains(name) {
                        user.insert(name);
                    }
                }
            }
        }
        names.extend(user.into_iter().map(str::to_string));
        names
    }

    /// A fingerprint of the node's own chains and rules (not the shared set,
    /// which is identified by [`Netfilter::shared_id`]). Rules that match on
    /// or rewrite an address are handed to `with_addresses` instead of being
    /// hashed, in order, so the caller can normalize the node's own
    /// addresses; their positions still count.
    pub fn local_fingerprint(&self, with_addresses: &mut dyn FnMut(&Rule)) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = rustc_hash::FxHasher::default();
        for (t, lt) in Table::ALL.iter().zip(&self.tables) {
            t.hash(&mut h);
            lt.hidden.hash(&mut h);
            lt.shared_hidden.hash(&mut h);
            for (name, c) in &lt.chains {
                name.hash(&mut h);
                c.policy.hash(&mut h);
                c.rules.len().hash(&mut h);
                for r in &c.rules {
                    if rule_has_addresses(r) {
                        with_addresses(r);
                        0xa5u8.hash(&mut h);
                    } else {
                        r.hash(&mut h);
                    }
                }
            }
        }
        h.finish()
    }

    /// Identity of the attached shared chain set (same set, same id).
    pub fn shared_id(&self) -> Option<usize> {
        self.shared.as_ref().map(|s| Arc::as_ptr(s) as usize)
    }

    /// Rules held by this node alone (not counting the shared set).
    pub fn local_rule_count(&self) -> usize {
        self.tables
            .iter()
            .flat_map(|t| t.chains.values())
            .map(|c| c.rules.len())
            .sum()
    }

    /// Chains held by this node alone (built-in ones, its own, and copies of
    /// shared chains it changed).
    pub fn local_chain_count(&self) -> usize {
        self.tables.iter().map(|t| t.chains.len()).sum()
    }

    /// `iptables -N`: create a user-defined chain.
    pub fn new_chain(&mut self, table: Table, name: &str) -> Result<(), NetfilterError> {
        check_chain_name(name)?;
        if self.chain(table, name).is_some() || table.is_builtin(name) {
            return Err(NetfilterError::ChainExists {
                table,
                chain: name.to_string(),
            });
        }
        let lt = &mut self.tables[tix(table)];
        lt.chains.insert(name.to_string(), Chain::new(name, None));
        Ok(())
    }

    /// `iptables -N` unless the chain exists; returns whether it was created.
    pub fn ensure_chain(&mut self, table: Table, name: &str) -> Result<bool, NetfilterError> {
        if self.chain(table, name).is_some() {
            return Ok(false);
        }
        self.new_chain(table, name)?;
        Ok(true)
    }

    /// `iptables -C`: whether an identical rule is in its chain.
    pub fn check(&self, table: Table, rule: &Rule) -> bool {
        self.chain(table, &rule.chain)
            .is_some_and(|c| c.rules.contains(rule))
    }

    /// `iptables -A`: append the rule to its chain (`rule.chain`).
    pub fn append(&mut self, table: Table, rule: Rule) -> Result<(), NetfilterError> {
        rule.validate()?;
        self.check_target(table, &rule)?;
        let chain = self.chain_mut(table, &rule.chain)?;
        chain.rules.push(rule);
        chain.changed();
        Ok(())
    }

    /// `iptables -I CHAIN position`: insert at a 1-based position.
    pub fn insert(
        &mut self,
        table: Table,
        rule: Rule,
        position: usize,
    ) -> Result<(), NetfilterError> {
        rule.validate()?;
        self.check_target(table, &rule)?;
        let len = self.chain(table, &rule.chain).map(|c| c.rules.len());
        match len {
            None => {
                return Err(NetfilterError::NoSuchChain {
                    table,
                    chain: rule.chain.clone(),
                })
            }
            Some(len) if position == 0 || position > len + 1 => {
                return Err(NetfilterError::BadPosition {
                    table,
                    chain: rule.chain.clone(),
                    position,
                });
            }
            Some(_) => {}
        }
        let chain = self.chain_mut(table, &rule.chain)?;
        chain.rules.insert(position - 1, rule);
        chain.changed();
        Ok(())
    }

    /// `iptables -C ... || iptables -A|-I 1 ...`: add the rule unless an
    /// identical one exists; returns whether it was added.
    pub fn ensure_rule(
        &mut self,
        table: Table,
        rule: Rule,
        at: Position,
    ) -> Result<bool, NetfilterError> {
        if self.check(table, &rule) {
            return Ok(false);
        }
        match at {
            Position::Append => self.append(table, rule)?,
            Position::Prepend => self.insert(table, rule, 1)?,
        }
        Ok(true)
    }

    /// `iptables -D CHAIN spec`: delete the first identical rule.
    pub fn delete(&mut self, table: Table, rule: &Rule) -> Result<(), NetfilterError> {
        let found = self
            .chain(table, &rule.chain)
            .and_then(|c| c.rules.iter().position(|r| r == rule));
        let Some(pos) = found else {
            return Err(NetfilterError::NoSuchRule {
                table,
                rule: rule.emit(),
            });
        };
        let chain = self.chain_mut(table, &rule.chain)?;
        chain.rules.remove(pos);
        chain.changed();
        Ok(())
    }

    /// Delete every rule identical to `rule` (repeat `-D` until it fails);
    /// returns how many were deleted.
    pub fn delete_all(&mut self, table: Table, rule: &Rule) -> usize {
        let count = self
            .chain(table, &rule.chain)
            .map_or(0, |c| c.rules.iter().filter(|r| *r == rule).count());
        if count == 0 {
            return 0;
        }
        if let Ok(chain) = self.chain_mut(table, &rule.chain) {
            chain.rules.retain(|r| r != rule);
            chain.changed();
        }
        count
    }

    /// `iptables -D CHAIN position`: delete the rule at a 1-based position.
    pub fn delete_at(
        &mut self,
        table: Table,
        chain: &str,
        position: usize,
    ) -> Result<Rule, NetfilterError> {
        let len = self
            .chain(table, chain)
            .map(|c| c.rules.len())
            .ok_or_else(|| NetfilterError::NoSuchChain {
                table,
                chain: chain.to_string(),
            })?;
        if position == 0 || position > len {
            return Err(NetfilterError::BadPosition {
                table,
                chain: chain.to_string(),
                position,
            });
        }
        let c = self.chain_mut(table, chain)?;
        let rule = c.rules.remove(position - 1);
        c.changed();
        Ok(rule)
    }

    /// `iptables -F CHAIN`: remove every rule of a chain.
    pub fn flush_chain(&mut self, table: Table, chain: &str) -> Result<(), NetfilterError> {
        let policy = self.chain(table, chain).map(Chain::policy).ok_or_else(|| {
            NetfilterError::NoSuchChain {
                table,
                chain: chain.to_string(),
            }
        })?;
        // No need to copy a shared chain's rules just to drop them.
        self.tables[tix(table)]
            .chains
            .insert(chain.to_string(), Chain::new(chain, policy));
        Ok(())
    }

    /// `iptables -F CHAIN; iptables -X CHAIN`: delete a user-defined chain
    /// that no other rule jumps to.
    pub fn delete_chain(&mut self, table: Table, chain: &str) -> Result<(), NetfilterError> {
        if table.is_builtin(chain) {
            return Err(NetfilterError::BuiltinChain {
                table,
                chain: chain.to_string(),
            });
        }
        if self.chain(table, chain).is_none() {
            return Err(NetfilterError::NoSuchChain {
                table,
                chain: chain.to_string(),
            });
        }
        for name in self.chain_names(table) {
            if name == chain {
                continue;
            }
            if self
                .chain(table, &name)
                .is_some_and(|c| c.references(chain))
            {
                return Err(NetfilterError::ChainInUse {
                    table,
                    chain: chain.to_string(),
                    from: name,
                });
            }
        }
        let in_shared = self.visible_shared(table, chain).is_some();
        let lt = &mut self.tables[tix(table)];
        lt.chains.remove(chain);
        if in_shared {
            lt.hidden.insert(chain.to_string());
        }
        Ok(())
    }

    /// `iptables -t TABLE -F; iptables -t TABLE -X`: empty every chain and
    /// delete every user-defined one (shared ones are hidden on this node).
    pub fn reset_table(&mut self, table: Table) {
        let lt = &mut self.tables[tix(table)];
        lt.chains.retain(|name, _| table.is_builtin(name));
        for c in lt.chains.values_mut() {
            c.rules.clear();
            c.changed();
        }
        lt.hidden.clear();
        lt.shared_hidden = true;
    }

    /// `iptables -P CHAIN POLICY` (built-in chains only).
    pub fn set_policy(
        &mut self,
        table: Table,
        chain: &str,
        policy: Policy,
    ) -> Result<(), NetfilterError> {
        if !table.is_builtin(chain) {
            return Err(NetfilterError::PolicyOnUserChain {
                table,
                chain: chain.to_string(),
            });
        }
        let c = self.chain_mut(table, chain)?;
        c.policy = Some(policy);
        Ok(())
    }

    /// `iptables-save`: every table that is not pristine (a pristine table
    /// has only empty built-in chains with policy ACCEPT, as an unused
    /// table on a fresh node), chains in `iptables-save` order.
    pub fn dump(&self) -> Ruleset {
        let mut set = Ruleset::default();
        for table in Table::ALL {
            if !self.is_pristine(table) {
                set.tables.push(self.dump_table(table));
            }
        }
        set
    }

    /// `iptables-save -t TABLE`.
    pub fn dump_table(&self, table: Table) -> TableDump {
        let mut td = TableDump::new(table);
        let names = self.chain_names(table);
        for name in &names {
            let policy = self.chain(table, name).and_then(Chain::policy);
            // Names were validated when the chains were created.
            let _ = td.declare_chain(name, policy);
        }
        for name in &names {
            if let Some(c) = self.chain(table, name) {
                for r in &c.rules {
                    let _ = td.append(r.clone());
                }
            }
        }
        td
    }

    /// `iptables-restore [--noflush]`: load a dump. Without `noflush` each
    /// table in the dump replaces the node's table entirely (shared chains
    /// are hidden until the next [`Netfilter::attach_shared`]); with it,
    /// declared user-defined chains are created or flushed and rules are
    /// appended. A built-in chain declared with a policy gets it; `-` keeps
    /// the current one. All or nothing: on error the node is unchanged.
    pub fn restore(&mut self, set: &Ruleset, noflush: bool) -> Result<(), NetfilterError> {
        let mut next = self.clone();
        for td in &set.tables {
            let table = td.table;
            if !noflush {
                next.reset_table(table);
            }
            for c in td.chains() {
                if table.is_builtin(&c.name) {
                    if let Some(p) = c.policy {
                        next.set_policy(table, &c.name, p)?;
                    }
                } else if c.policy.is_some() {
                    return Err(NetfilterError::PolicyOnUserChain {
                        table,
                        chain: c.name.clone(),
                    });
                } else if next.chain(table, &c.name).is_some() {
                    next.flush_chain(table, &c.name)?;
                } else {
                    next.new_chain(table, &c.name)?;
                }
            }
            for c in td.chains() {
                for r in &c.rules {
                    next.append(table, r.clone())?;
                }
            }
        }
        *self = next;
        Ok(())
    }

    fn is_pristine(&self, table: Table) -> bool {
        self.chain_names(table).iter().all(|name| {
            table.is_builtin(name)
                && self
                    .chain(table, name)
                    .is_some_and(|c| c.rules.is_empty() && c.policy == Some(Policy::Accept))
        })
    }

    fn visible_shared(&self, table: Table, name: &str) -> Option<&Chain> {
        let lt = &self.tables[tix(table)];
        if lt.shared_hidden || lt.hidden.contains(name) {
            return None;
        }
        self.shared.as_ref()?.tables[tix(table)].get(name)
    }

    /// The chain to change, copied from the shared set first if needed.
    fn chain_mut(&mut self, table: Table, name: &str) -> Result<&mut Chain, NetfilterError> {
        let copy = if self.tables[tix(table)].chains.contains_key(name) {
            None
        } else {
            let shared =
                self.visible_shared(table, name)
                    .ok_or_else(|| NetfilterError::NoSuchChain {
                        table,
                        chain: name.to_string(),
                    })?;
            Some(shared.clone())
        };
        let lt = &mut self.tables[tix(table)];
        match copy {
            Some(c) => Ok(lt.chains.entry(name.to_string()).or_insert(c)),
            None => lt
                .chains
                .get_mut(name)
                .ok_or_else(|| NetfilterError::NoSuchChain {
                    table,
                    chain: name.to_string(),
                }),
        }
    }

    /// iptables refuses a jump to a chain that does not exist or is built in.
    fn check_target(&self, table: Table, rule: &Rule) -> Result<(), NetfilterError> {
        if let Some(Jump::Chain(c)) = &rule.target {
            if table.is_builtin(c) {
                return Err(NetfilterError::JumpToBuiltin {
                    table,
                    chain: c.clone(),
                });
            }
            if self.chain(table, c).is_none() {
                return Err(NetfilterError::NoSuchChain {
                    table,
                    chain: c.clone(),
                });
            }
        }
        Ok(())
    }
}

/// A table as one node holds it.
#[derive(Debug, Clone, Default)]
struct LocalTable {
    /// Built-in chains, the node's own chains, and copies of shared chains
    /// it changed (which shadow the shared ones).
    chains: BTreeMap<String, Chain>,
    /// Shared chains deleted on this node.
    hidden: BTreeSet<String>,
    /// The whole table was replaced (restore without `--noflush`, or
    /// `-F`/`-X` of the table): no shared chain is visible.
    shared_hidden: bool,
}

/// Position of a table in per-table arrays.
fn tix(table: Table) -> usize {
    match table {
        Table::Raw => 0,
        Table::Mangle => 1,
        Table::Nat => 2,
        Table::Filter => 3,
    }
}

/// Chain names as iptables accepts them. The core's rule validation knows
/// the rules; the names of standard targets are refused too, as iptables
/// cannot tell such a chain from the target.
fn check_chain_name(name: &str) -> Result<(), NetfilterError> {
    const TARGETS: [&str; 9] = [
        "ACCEPT",
        "DROP",
        "RETURN",
        "REJECT",
        "DNAT",
        "SNAT",
        "MASQUERADE",
        "MARK",
        "LOG",
    ];
    if TARGETS.contains(&name) {
        return Err(NetfilterError::BadChainName {
            name: name.to_string(),
            message: "the name of a standard target".to_string(),
        });
    }
    // The core keeps its chain-name check private; a scratch table dump
    // applies it.
    TableDump::new(Table::Filter)
        .declare_chain(name, None)
        .map_err(|e| NetfilterError::BadChainName {
            name: name.to_string(),
            message: e.message,
        })
}

/// Whether a rule matches on or rewrites an address (and so needs per-node
/// normalization). Comments are hashed as they are: text that differs per
/// node only splits classes further, which is safe.
fn rule_has_addresses(r: &Rule) -> bool {
    use kscratch_core::net::iptables::Jump;
    r.source.is_some() || r.destination.is_some() || matches!(r.target, Some(Jump::Dnat { .. }))
}
