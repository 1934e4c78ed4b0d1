//! The types of an iptables rule and dump, and the rules a value must keep
//! to be one the kernel accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::parse::ParseError;

/// A netfilter table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Filter,
    Nat,
    Mangle,
    Raw,
}

impl Table {
    /// Every table, in the order `iptables-save` prints them on a typical node.
    pub const ALL: [Table; 4] = [Table::Raw, Table::Mangle, Table::Nat, Table::Filter];

    /// The name used by `-t` and `*table`.
    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
            Table::Mangle => "mangle",
            Table::Raw => "raw",
        }
    }

    /// The built-in chains of this table (the hooks it registers), in kernel order.
    pub fn builtin_chains(self) -> &'static [&'static str] {
        match self {
            Table::Filter => &["INPUT", "FORWARD", "OUTPUT"],
            Table::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
            Table::Mangle => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
            Table::Raw => &["PREROUTING", "OUTPUT"],
        }
    }

    /// Whether `chain` is one of this table's built-in chains.
    pub fn is_builtin(self, chain: &str) -> bool {
        self.builtin_chains().contains(&chain)
    }
}

/// A value with iptables' `!` in front of it or not.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Negatable<T> {
    /// `true` when the option was written as `! --option value`.
    pub negated: bool,
    pub value: T,
}

impl<T> Negatable<T> {
    /// A positive match on `value`.
    pub fn is(value: T) -> Negatable<T> {
        Negatable {
            negated: false,
            value,
        }
    }

    /// A negated match (`! ...`) on `value`.
    pub fn not(value: T) -> Negatable<T> {
        Negatable {
            negated: true,
            value,
        }
    }
}

/// A layer-4 protocol for `-p`: the ones kube-proxy, docker and the plan
/// write and the simulator's packets carry. `-p all` (protocol 0) is no
/// protocol match at all and is represented by `None` in [`Rule::protocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Icmp => 1,
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    /// The name `iptables-save` prints.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

/// An interface for `-i`/`-o`: a name, or a prefix when it ends in `+`
/// (`veth+` matches every `veth*`; a lone `+` matches any interface).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Interface {
    /// The name, without the trailing `+`.
    pub name: String,
    /// Whether the name is a prefix (written with a trailing `+`).
    pub wildcard: bool,
}

/// A port or an inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// A single port.
    pub fn port(port: u16) -> PortRange {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// An inclusive range; `None` when `first > last`.
    pub fn range(first: u16, last: u16) -> Option<PortRange> {
        (first <= last).then_some(PortRange { first, last })
    }

    /// Whether `port` is inside the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

/// Port options of the `tcp` and `udp` matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PortMatch {
    /// `--sport`
    pub sport: Option<Negatable<PortRange>>,
    /// `--dport`
    pub dport: Option<Negatable<PortRange>>,
}

/// An address type of the `addrtype` match: the route types the simulator
/// classifies a node's addresses into (kube-proxy and docker only ask for
/// `LOCAL`). The declaration order is the kernel's, which `iptables-save`
/// prints a set in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddrType {
    Unicast,
    Local,
    Broadcast,
    Multicast,
}

impl AddrType {
    pub(super) const ALL: [AddrType; 4] = [
        AddrType::Unicast,
        AddrType::Local,
        AddrType::Broadcast,
        AddrType::Multicast,
    ];

    /// The upper-case name `iptables-save` prints.
    pub fn name(self) -> &'static str {
        match self {
            AddrType::Unicast => "UNICAST",
            AddrType::Local => "LOCAL",
            AddrType::Broadcast => "BROADCAST",
            AddrType::Multicast => "MULTICAST",
        }
    }
}

/// Options of the `addrtype` match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AddrTypeMatch {
    /// `--src-type` (a comma-separated set in iptables syntax).
    pub src_type: Option<Negatable<BTreeSet<AddrType>>>,
    /// `--dst-type`
    pub dst_type: Option<Negatable<BTreeSet<AddrType>>>,
}

/// A connection tracking state for `-m conntrack --ctstate`, as kube-proxy
/// and docker ask for them. The declaration order is the order
/// `iptables-save` prints a set in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CtState {
    Invalid,
    New,
    Related,
    Established,
    /// The connection is destination-NATed.
    Dnat,
}

impl CtState {
    pub(super) const ALL: [CtState; 5] = [
        CtState::Invalid,
        CtState::New,
        CtState::Related,
        CtState::Established,
        CtState::Dnat,
    ];

    /// The upper-case name `iptables-save` prints.
    pub fn name(self) -> &'static str {
        match self {
            CtState::Invalid => "INVALID",
            CtState::New => "NEW",
            CtState::Related => "RELATED",
            CtState::Established => "ESTABLISHED",
            CtState::Dnat => "DNAT",
        }
    }
}

/// The probability of `-m statistic --mode random`, kept as its decimal text
/// so that the rule round-trips byte for byte (kube-proxy writes
/// `0.3333333333`, `iptables-save` prints `0.33333333349`) and stays `Eq`
/// and `Hash`.
#[derive(Debug, Clone)]
pub struct Probability {
    pub(super) text: String,
    /// The parsed value, kept so that evaluation never re-parses the text.
    pub(super) value: f64,
}

// Identity is the text: `0.5` and `0.50` are different rules to iptables-save.
impl PartialEq for Probability {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Probability {}

impl std::hash::Hash for Probability {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.text.hash(h)
    }
}

impl PartialOrd for Probability {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Probability {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl Probability {
    /// A probability from its decimal text (`0.5`, `0.33333333349`, `1`).
    pub fn new(text: &str) -> Result<Probability, ParseError> {
        Probability::parse(text).map_err(|m| ParseError::new(m, text, 0))
    }

    /// The probability printed with 11 decimals, as `iptables-save` does.
    pub fn from_f64(p: f64) -> Option<Probability> {
        (0.0..=1.0)
            .contains(&p)
            .then(|| Probability::from_text(format!("{p:.11}")))
    }

    /// The probability as a number in `[0, 1]`.
    pub fn probability(&self) -> f64 {
        self.value
    }

    /// From text this module formatted itself (always a valid decimal).
    pub(super) fn from_text(text: String) -> Probability {
        let value = text.parse().unwrap_or(0.0);
        Probability { text, value }
    }

    /// The probability as `iptables-save` prints it: the kernel keeps
    /// `round(p * 2^31)`, printed back with 11 decimals (`0.3333333333`
    /// becomes `0.33333333349`).
    pub fn to_saved(&self) -> Probability {
        let fixed = (self.probability() * 2_147_483_648.0).round();
        Probability::from_text(format!("{:.11}", fixed / 2_147_483_648.0))
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// An extension match (`-m NAME --options`): the modules kube-proxy,
/// docker and the plan write. Any other module is a parse error, never a
/// match the simulator would have to guess at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    /// `-m tcp` (needs `-p tcp`).
    Tcp(PortMatch),
    /// `-m udp` (needs `-p udp`).
    Udp(PortMatch),
    /// `-m addrtype`
    AddrType(AddrTypeMatch),
    /// `-m mark [!] --mark value[/mask]`; the mask is `0xffffffff` when not written.
    Mark {
        negated: bool,
        value: u32,
        mask: u32,
    },
    /// `-m comment --comment TEXT`
    Comment(String),
    /// `-m statistic --mode random --probability P`: kube-proxy's spread
    /// over endpoints.
    Statistic(Probability),
    /// `-m conntrack [!] --ctstate STATES`
    Conntrack {
        ctstate: Negatable<BTreeSet<CtState>>,
    },
}

impl Match {
    /// `-m comment --comment TEXT`
    pub fn comment(text: impl Into<String>) -> Match {
        Match::Comment(text.into())
    }

    /// `-m tcp --dport PORT`
    pub fn tcp_dport(port: u16) -> Match {
        Match::Tcp(PortMatch {
            sport: None,
            dport: Some(Negatable::is(PortRange::port(port))),
        })
    }

    /// `-m udp --dport PORT`
    pub fn udp_dport(port: u16) -> Match {
        Match::Udp(PortMatch {
            sport: None,
            dport: Some(Negatable::is(PortRange::port(port))),
        })
    }

    /// `-m addrtype --dst-type TYPE`, negated when `negated`.
    pub fn dst_type(t: AddrType, negated: bool) -> Match {
        Match::AddrType(AddrTypeMatch {
            dst_type: Some(Negatable {
                negated,
                value: BTreeSet::from([t]),
            }),
            ..AddrTypeMatch::default()
        })
    }

    /// `-m addrtype --src-type TYPE`, negated when `negated`.
    pub fn src_type(t: AddrType, negated: bool) -> Match {
        Match::AddrType(AddrTypeMatch {
            src_type: Some(Negatable {
                negated,
                value: BTreeSet::from([t]),
            }),
            ..AddrTypeMatch::default()
        })
    }

    /// `-m mark --mark value/mask`, negated when `negated`.
    pub fn mark(value: u32, mask: u32, negated: bool) -> Match {
        Match::Mark {
            negated,
            value,
            mask,
        }
    }

    /// `-m statistic --mode random --probability P`
    pub fn random(probability: Probability) -> Match {
        Match::Statistic(probability)
    }

    /// `-m conntrack --ctstate S1,S2`, negated when `negated`.
    pub fn ctstate(states: &[CtState], negated: bool) -> Match {
        Match::Conntrack {
            ctstate: Negatable {
                negated,
                value: states.iter().copied().collect(),
            },
        }
    }

    /// The module name after `-m`.
    pub fn module(&self) -> &'static str {
        match self {
            Match::Tcp(_) => "tcp",
            Match::Udp(_) => "udp",
            Match::AddrType(_) => "addrtype",
            Match::Mark { .. } => "mark",
            Match::Comment(_) => "comment",
            Match::Statistic(_) => "statistic",
            Match::Conntrack { .. } => "conntrack",
        }
    }
}

/// The ICMP error (or TCP reset) a `REJECT` target answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum RejectWith {
    IcmpNetUnreachable,
    IcmpHostUnreachable,
    /// The kernel's default.
    #[default]
    IcmpPortUnreachable,
    IcmpProtoUnreachable,
    IcmpNetProhibited,
    IcmpHostProhibited,
    IcmpAdminProhibited,
    TcpReset,
}

impl RejectWith {
    pub(super) const ALL: [RejectWith; 8] = [
        RejectWith::IcmpNetUnreachable,
        RejectWith::IcmpHostUnreachable,
        RejectWith::IcmpPortUnreachable,
        RejectWith::IcmpProtoUnreachable,
        RejectWith::IcmpNetProhibited,
        RejectWith::IcmpHostProhibited,
        RejectWith::IcmpAdminProhibited,
        RejectWith::TcpReset,
    ];

    /// The name `iptables-save` prints.
    pub fn name(self) -> &'static str {
        match self {
            RejectWith::IcmpNetUnreachable => "icmp-net-unreachable",
            RejectWith::IcmpHostUnreachable => "icmp-host-unreachable",
            RejectWith::IcmpPortUnreachable => "icmp-port-unreachable",
            RejectWith::IcmpProtoUnreachable => "icmp-proto-unreachable",
            RejectWith::IcmpNetProhibited => "icmp-net-prohibited",
            RejectWith::IcmpHostProhibited => "icmp-host-prohibited",
            RejectWith::IcmpAdminProhibited => "icmp-admin-prohibited",
            RejectWith::TcpReset => "tcp-reset",
        }
    }
}

/// Where DNAT sends a connection: an address with an optional port, as in
/// `--to-destination 10.180.0.1:80` (kube-proxy's and docker's only form;
/// iptables' address and port ranges are not modelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NatTo {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

/// How a `MARK` target changes the packet mark, kept as written:
/// kube-proxy writes `--or-mark`/`--xor-mark`, `iptables-save` prints
/// `--set-xmark`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MarkAction {
    /// `--set-xmark value[/mask]`: zero the mask bits, then XOR the value.
    SetXmark { value: u32, mask: Option<u32> },
    /// `--or-mark bits`
    OrMark(u32),
    /// `--xor-mark bits`
    XorMark(u32),
}

impl MarkAction {
    /// The kernel's form of every variant: `mark = (mark & !mask) ^ value`.
    /// (`iptables-save` prints every MARK target as `--set-xmark value/mask`.)
    pub fn as_xmark(self) -> (u32, u32) {
        match self {
            MarkAction::SetXmark { value, mask } => (value, mask.unwrap_or(u32::MAX)),
            MarkAction::OrMark(bits) => (bits, bits),
            MarkAction::XorMark(bits) => (bits, 0),
        }
    }
}

/// What a rule does with a matching packet (`-j`): the targets kube-proxy,
/// docker and the plan write.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Jump {
    Accept,
    Drop,
    Return,
    /// `-j REJECT --reject-with TYPE`
    Reject {
        with: RejectWith,
    },
    /// `-j CHAIN`: a user-defined chain; `RETURN` comes back here.
    Chain(String),
    /// `-j DNAT --to-destination ADDR[:PORT]`
    Dnat {
        to: NatTo,
    },
    /// `-j MASQUERADE [--random-fully]`
    Masquerade {
        random_fully: bool,
    },
    /// `-j MARK --set-xmark|--or-mark|--xor-mark ...`
    Mark(MarkAction),
}

impl Jump {
    /// `-j DNAT --to-destination addr[:port]`
    pub fn dnat(addr: IpAddr, port: Option<u16>) -> Jump {
        Jump::Dnat {
            to: NatTo { addr, port },
        }
    }

    /// `-j MASQUERADE`
    pub fn masquerade() -> Jump {
        Jump::Masquerade {
            random_fully: false,
        }
    }

    /// `-j REJECT --reject-with icmp-port-unreachable`
    pub fn reject() -> Jump {
        Jump::Reject {
            with: RejectWith::default(),
        }
    }

    /// The name after `-j`.
    pub fn name(&self) -> &str {
        match self {
            Jump::Accept => "ACCEPT",
            Jump::Drop => "DROP",
            Jump::Return => "RETURN",
            Jump::Reject { .. } => "REJECT",
            Jump::Chain(c) => c,
            Jump::Dnat { .. } => "DNAT",
            Jump::Masquerade { .. } => "MASQUERADE",
            Jump::Mark(_) => "MARK",
        }
    }
}

/// One iptables rule: `-A CHAIN [header] [matches...] [-j target]`.
///
/// The header options are fields because the kernel keeps them in the fixed
/// IP header part of a rule (and `iptables-save` prints them in the fixed
/// order `-s -d -i -o -p` whatever order they were given in); extension
/// matches are kept in the order written, which is evaluation order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub chain: String,
    /// `-s`
    pub source: Option<Negatable<IpNet>>,
    /// `-d`
    pub destination: Option<Negatable<IpNet>>,
    /// `-i`
    pub in_interface: Option<Negatable<Interface>>,
    /// `-o`
    pub out_interface: Option<Negatable<Interface>>,
    /// `-p`; `None` is `all`.
    pub protocol: Option<Negatable<Protocol>>,
    /// `-m ...` matches, in order.
    pub matches: Vec<Match>,
    /// `-j`; `None` only counts packets.
    pub target: Option<Jump>,
}

impl Rule {
    /// An empty rule in `chain` (matches everything, no target).
    pub fn new(chain: impl Into<String>) -> Rule {
        Rule {
            chain: chain.into(),
            source: None,
            destination: None,
            in_interface: None,
            out_interface: None,
            protocol: None,
            matches: Vec::new(),
            target: None,
        }
    }

    /// `-s net`
    pub fn source(mut self, net: IpNet) -> Rule {
        self.source = addr_match(false, net);
        self
    }

    /// `! -s net`
    pub fn not_source(mut self, net: IpNet) -> Rule {
        self.source = addr_match(true, net);
        self
    }

    /// `-d net`
    pub fn destination(mut self, net: IpNet) -> Rule {
        self.destination = addr_match(false, net);
        self
    }

    /// `! -d net`
    pub fn not_destination(mut self, net: IpNet) -> Rule {
        self.destination = addr_match(true, net);
        self
    }

    /// The rule as `iptables-save` prints it back once the kernel holds it:
    /// `--probability` quantised to the kernel's 31-bit fraction, and every
    /// MARK target as `--set-xmark value/mask`. Compare `desired.to_saved()` with parsed `iptables-save`
    /// output to tell whether a rule is already in place.
    pub fn to_saved(&self) -> Rule {
        let mut r = self.clone();
        for m in &mut r.matches {
            if let Match::Statistic(probability) = m {
                *probability = probability.to_saved();
            }
        }
        if let Some(Jump::Mark(action)) = &mut r.target {
            let (value, mask) = action.as_xmark();
            *action = MarkAction::SetXmark {
                value,
                mask: Some(mask),
            };
        }
        r
    }

    /// `-p proto`
    pub fn protocol(mut self, proto: Protocol) -> Rule {
        self.protocol = Some(Negatable::is(proto));
        self
    }

    /// Append an extension match.
    pub fn with(mut self, m: Match) -> Rule {
        self.matches.push(m);
        self
    }

    /// `-m comment --comment text`
    pub fn comment(self, text: impl Into<String>) -> Rule {
        self.with(Match::comment(text))
    }

    /// `-j target`
    pub fn target(mut self, target: Jump) -> Rule {
        self.target = Some(target);
        self
    }

    /// `-j CHAIN`
    pub fn jump(self, chain: impl Into<String>) -> Rule {
        self.target(Jump::Chain(chain.into()))
    }

    /// Check what iptables itself would refuse: an invalid chain or jump
    /// name, or a protocol match without its `-p` (the kernel only runs
    /// `-m tcp` on rules with `-p tcp`). Parsing always validates.
    pub fn validate(&self) -> Result<(), ParseError> {
        check_chain_name(&self.chain).map_err(|m| ParseError::new(m, self.chain.as_str(), 0))?;
        let proto = self.positive_protocol();
        for m in &self.matches {
            if !protocol_allows(proto, m) {
                return Err(ParseError::new(
                    format!("-m {} needs a matching -p protocol", m.module()),
                    m.module(),
                    0,
                ));
            }
            if let Match::Comment(c) = m {
                check_save_string(c, 255).map_err(|msg| ParseError::new(msg, c.as_str(), 0))?;
            }
        }
        match &self.target {
            Some(Jump::Chain(c)) => {
                check_chain_name(c).map_err(|m| ParseError::new(m, c.as_str(), 0))?;
            }
            Some(t) if target_sets_ports(t) && !protocol_has_ports(proto) => {
                return Err(ParseError::new("NAT ports need -p tcp or udp", t.name(), 0));
            }
            Some(Jump::Reject {
                with: RejectWith::TcpReset,
            }) if proto != Some(Protocol::Tcp) => {
                return Err(ParseError::new(
                    "REJECT --reject-with tcp-reset needs -p tcp",
                    "REJECT",
                    0,
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The protocol when written as `-p P` (not negated).
    pub(super) fn positive_protocol(&self) -> Option<Protocol> {
        match &self.protocol {
            Some(Negatable {
                negated: false,
                value,
            }) => Some(*value),
            _ => None,
        }
    }
}

/// A chain's default policy (built-in chains only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Policy {
    Accept,
    Drop,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Accept => "ACCEPT",
            Policy::Drop => "DROP",
        }
    }
}

/// Packet and byte counters, as in `[packets:bytes]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// A chain of a table dump with its rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    pub name: String,
    /// `None` is `-`: a user-defined chain (or a built-in chain whose policy
    /// `iptables-restore` should leave alone).
    pub policy: Option<Policy>,
    pub counters: Counters,
    /// The chain's rules in order; each rule's `chain` is this chain's name
    /// (`TableDump::append` keeps that true).
    pub rules: Vec<Rule>,
}

/// One table of an `iptables-save` dump: chain declarations in order, each
/// with its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDump {
    pub table: Table,
    /// `#` lines before `*table` (iptables-save's "Generated by" line).
    pub comments: Vec<String>,
    pub(super) chains: Vec<Chain>,
    /// Chain name to position in `chains`, for cheap lookup.
    pub(super) index: BTreeMap<String, usize>,
}

impl TableDump {
    /// An empty table (no chains declared).
    pub fn new(table: Table) -> TableDump {
        TableDump {
            table,
            comments: Vec::new(),
            chains: Vec::new(),
            index: BTreeMap::new(),
        }
    }

    /// A table with its built-in chains declared, policy ACCEPT, as on a fresh node.
    pub fn with_builtin_chains(table: Table) -> TableDump {
        let mut t = TableDump::new(table);
        for c in table.builtin_chains() {
            // Built-in names are valid and distinct, so this cannot fail.
            let _ = t.declare_chain(c, Some(Policy::Accept));
        }
        t
    }

    /// The chains in declaration order.
    pub fn chains(&self) -> &[Chain] {
        &self.chains
    }

    /// A chain by name.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.index.get(name).map(|&i| &self.chains[i])
    }

    /// A chain's rules by name.
    pub fn rules(&self, chain: &str) -> Option<&[Rule]> {
        self.chain(chain).map(|c| c.rules.as_slice())
    }

    /// Declare a chain (`:NAME POLICY [0:0]`). Built-in chains take a policy
    /// or `None`; user-defined chains must have `None`.
    pub fn declare_chain(&mut self, name: &str, policy: Option<Policy>) -> Result<(), ParseError> {
        check_chain_name(name).map_err(|m| ParseError::new(m, name, 0))?;
        if self.index.contains_key(name) {
            return Err(ParseError::new("chain declared twice", name, 0));
        }
        if policy.is_some() && !self.table.is_builtin(name) {
            return Err(ParseError::new(
                format!(
                    "cannot set a policy on user-defined chain in table {}",
                    self.table
                ),
                name,
                0,
            ));
        }
        self.index.insert(name.to_string(), self.chains.len());
        self.chains.push(Chain {
            name: name.to_string(),
            policy,
            counters: Counters::default(),
            rules: Vec::new(),
        });
        Ok(())
    }

    /// Append a rule to its (declared) chain.
    pub fn append(&mut self, rule: Rule) -> Result<(), ParseError> {
        match self.index.get(&rule.chain) {
            Some(&i) => {
                self.chains[i].rules.push(rule);
                Ok(())
            }
            None => Err(ParseError::new(
                "chain not declared in this table",
                rule.chain,
                0,
            )),
        }
    }

    /// Mutable access to a chain, e.g. to set counters or reorder rules.
    pub fn chain_mut(&mut self, name: &str) -> Option<&mut Chain> {
        self.index.get(name).map(|&i| &mut self.chains[i])
    }
}

/// A whole `iptables-save` dump (several tables), usable as `iptables-restore` input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Tables in dump order.
    pub tables: Vec<TableDump>,
    /// `#` lines after the last `COMMIT` (iptables-save's "Completed on" line).
    pub trailing_comments: Vec<String>,
}

impl Ruleset {
    /// The dump of one table.
    pub fn table(&self, table: Table) -> Option<&TableDump> {
        self.tables.iter().find(|t| t.table == table)
    }
}

/// Strings printed with `save_string` must survive a line-based dump.
pub(super) fn check_save_string(s: &str, max_len: usize) -> Result<(), String> {
    if s.len() > max_len {
        return Err(format!("string longer than {max_len} bytes"));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err("control characters (such as newlines) are not allowed".to_string());
    }
    Ok(())
}

/// Chain names as iptables accepts them (and as they survive a dump).
pub(super) fn check_chain_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty chain name");
    }
    // XT_EXTENSION_MAXNAMELEN is 29 including the NUL.
    if name.len() > 28 {
        return Err("chain name longer than 28 characters");
    }
    if name.starts_with('-') || name.starts_with('!') {
        return Err("chain name must not start with - or !");
    }
    if name
        .chars()
        .any(|c| !c.is_ascii_graphic() || matches!(c, '"' | '\'' | '\\'))
    {
        return Err("chain name must be printable ASCII without blanks or quotes");
    }
    Ok(())
}

/// An address match as the kernel stores it: host bits cleared, and a
/// positive `/0` (which matches everything) is no match at all.
pub(super) fn addr_match(negated: bool, net: IpNet) -> Option<Negatable<IpNet>> {
    let net = net.trunc();
    (negated || net.prefix_len() != 0).then_some(Negatable {
        negated,
        value: net,
    })
}

/// A NAT port needs a protocol with ports (of the modelled ones, TCP and UDP).
pub(super) fn protocol_has_ports(proto: Option<Protocol>) -> bool {
    matches!(proto, Some(Protocol::Tcp | Protocol::Udp))
}

/// Whether a target sets a NAT port (which needs `protocol_has_ports`).
pub(super) fn target_sets_ports(t: &Jump) -> bool {
    match t {
        Jump::Dnat { to } => to.port.is_some(),
        Jump::Accept
        | Jump::Drop
        | Jump::Return
        | Jump::Reject { .. }
        | Jump::Chain(_)
        | Jump::Masquerade { .. }
        | Jump::Mark(_) => false,
    }
}

/// The kernel runs `-m tcp` only on rules with `-p tcp` (and `udp` likewise).
pub(super) fn protocol_allows(proto: Option<Protocol>, m: &Match) -> bool {
    match m {
        Match::Tcp(_) => proto == Some(Protocol::Tcp),
        Match::Udp(_) => proto == Some(Protocol::Udp),
        Match::AddrType(_)
        | Match::Mark { .. }
        | Match::Comment(_)
        | Match::Statistic(_)
        | Match::Conntrack { .. } => true,
    }
}
