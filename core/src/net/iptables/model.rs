//! The types of an iptables rule and dump, and the rules a value must keep
//! to be one the kernel accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

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

/// A layer-4 protocol for `-p`. `-p all` (protocol 0) is no protocol match at
/// all and is represented by `None` in [`Rule::protocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
    /// Any other protocol number (never 0, 1, 6, 17, 58 or 132, which have
    /// variants); printed by name when `/etc/protocols` has one (`gre`).
    Other(u8),
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Icmp => 1,
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmpv6 => 58,
            Protocol::Sctp => 132,
            Protocol::Other(n) => n,
        }
    }

    /// The protocol for a number; `None` for 0 (`all`).
    pub fn from_number(n: u8) -> Option<Protocol> {
        Some(match n {
            0 => return None,
            1 => Protocol::Icmp,
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            58 => Protocol::Icmpv6,
            132 => Protocol::Sctp,
            n => Protocol::Other(n),
        })
    }
}

/// Protocol names as `iptables-save` prints them: its own table for the
/// common ones, then `/etc/protocols` (Debian's netbase list, embedded so
/// output does not depend on the host).
pub(super) const PROTOCOL_NAMES: &[(u8, &str)] = &[
    (1, "icmp"),
    (2, "igmp"),
    (3, "ggp"),
    (4, "ipencap"),
    (5, "st"),
    (6, "tcp"),
    (8, "egp"),
    (9, "igp"),
    (12, "pup"),
    (17, "udp"),
    (20, "hmp"),
    (22, "xns-idp"),
    (27, "rdp"),
    (29, "iso-tp4"),
    (33, "dccp"),
    (36, "xtp"),
    (37, "ddp"),
    (38, "idpr-cmtp"),
    (41, "ipv6"),
    (43, "ipv6-route"),
    (44, "ipv6-frag"),
    (45, "idrp"),
    (46, "rsvp"),
    (47, "gre"),
    (50, "esp"),
    (51, "ah"),
    (57, "skip"),
    (58, "ipv6-icmp"),
    (59, "ipv6-nonxt"),
    (60, "ipv6-opts"),
    (73, "rspf"),
    (81, "vmtp"),
    (88, "eigrp"),
    (89, "ospf"),
    (93, "ax.25"),
    (94, "ipip"),
    (97, "etherip"),
    (98, "encap"),
    (103, "pim"),
    (108, "ipcomp"),
    (112, "vrrp"),
    (115, "l2tp"),
    (124, "isis"),
    (132, "sctp"),
    (133, "fc"),
    (135, "mobility-header"),
    (136, "udplite"),
    (137, "mpls-in-ip"),
    (138, "manet"),
    (139, "hip"),
    (140, "shim6"),
    (141, "wesp"),
    (142, "rohc"),
    (143, "ethernet"),
];

/// An interface for `-i`/`-o`: a name, or a prefix when it ends in `+`
/// (`veth+` matches every `veth*`; a lone `+` matches any interface).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Interface {
    /// The name, without the trailing `+`.
    pub name: String,
    /// Whether the name is a prefix (written with a trailing `+`).
    pub wildcard: bool,
}

impl Interface {
    /// An exact interface name such as `docker0`, or a prefix if it ends in `+`.
    pub fn new(name: &str) -> Result<Interface, ParseError> {
        Interface::parse(name).map_err(|m| ParseError::new(m, name, 0))
    }
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

/// Port options of the `tcp`, `udp` and `sctp` matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PortMatch {
    /// `--sport`
    pub sport: Option<Negatable<PortRange>>,
    /// `--dport`
    pub dport: Option<Negatable<PortRange>>,
}

/// An address type of the `addrtype` match (the kernel's route types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddrType {
    Unspec,
    Unicast,
    Local,
    Broadcast,
    Anycast,
    Multicast,
    Blackhole,
    Unreachable,
    Prohibit,
    Throw,
    Nat,
    Xresolve,
}

impl AddrType {
    pub(super) const ALL: [AddrType; 12] = [
        AddrType::Unspec,
        AddrType::Unicast,
        AddrType::Local,
        AddrType::Broadcast,
        AddrType::Anycast,
        AddrType::Multicast,
        AddrType::Blackhole,
        AddrType::Unreachable,
        AddrType::Prohibit,
        AddrType::Throw,
        AddrType::Nat,
        AddrType::Xresolve,
    ];

    /// The upper-case name `iptables-save` prints.
    pub fn name(self) -> &'static str {
        match self {
            AddrType::Unspec => "UNSPEC",
            AddrType::Unicast => "UNICAST",
            AddrType::Local => "LOCAL",
            AddrType::Broadcast => "BROADCAST",
            AddrType::Anycast => "ANYCAST",
            AddrType::Multicast => "MULTICAST",
            AddrType::Blackhole => "BLACKHOLE",
            AddrType::Unreachable => "UNREACHABLE",
            AddrType::Prohibit => "PROHIBIT",
            AddrType::Throw => "THROW",
            AddrType::Nat => "NAT",
            AddrType::Xresolve => "XRESOLVE",
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
    /// `--limit-iface-in`
    pub limit_iface_in: bool,
    /// `--limit-iface-out`
    pub limit_iface_out: bool,
}

/// A connection tracking state, for `-m conntrack --ctstate` and `-m state --state`.
/// The declaration order is the order `iptables-save` prints a set in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CtState {
    Invalid,
    New,
    Related,
    Established,
    Untracked,
    /// Only for `--ctstate`: the connection is source-NATed.
    Snat,
    /// Only for `--ctstate`: the connection is destination-NATed.
    Dnat,
}

impl CtState {
    pub(super) const ALL: [CtState; 7] = [
        CtState::Invalid,
        CtState::New,
        CtState::Related,
        CtState::Established,
        CtState::Untracked,
        CtState::Snat,
        CtState::Dnat,
    ];

    /// The upper-case name `iptables-save` prints.
    pub fn name(self) -> &'static str {
        match self {
            CtState::Invalid => "INVALID",
            CtState::New => "NEW",
            CtState::Related => "RELATED",
            CtState::Established => "ESTABLISHED",
            CtState::Untracked => "UNTRACKED",
            CtState::Snat => "SNAT",
            CtState::Dnat => "DNAT",
        }
    }
}

/// Which ports `-m multiport` compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MultiportKind {
    /// `--sports`
    Source,
    /// `--dports`
    Destination,
    /// `--ports`: source or destination.
    Either,
}

/// The `statistic` match's mode.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StatisticMode {
    /// `--mode random --probability P`
    Random { probability: Probability },
    /// `--mode nth --every N --packet P` (`packet` is 0-based, below `every`).
    Nth { every: u32, packet: u32 },
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

/// Options of the `statistic` match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatisticMatch {
    pub mode: StatisticMode,
    /// `! --probability` / `! --every`
    pub negated: bool,
}

impl StatisticMatch {
    /// The probability this match matches a packet: `P` for random mode,
    /// `1/every` for nth mode (inverted when negated).
    pub fn probability(&self) -> f64 {
        let p = match &self.mode {
            StatisticMode::Random { probability } => probability.probability(),
            StatisticMode::Nth { every, .. } => 1.0 / f64::from((*every).max(1)),
        };
        if self.negated {
            1.0 - p
        } else {
            p
        }
    }
}

/// What `-m recent` does with its address list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecentCommand {
    /// `--set`: add the address, always matches.
    Set,
    /// `--rcheck`: is the address in the list?
    Rcheck,
    /// `--update`: like `--rcheck`, and refresh the last-seen time.
    Update,
    /// `--remove`: remove the address if present.
    Remove,
}

/// Which address `-m recent` records: `--rsource` (the default) or `--rdest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum RecentSide {
    #[default]
    Source,
    Dest,
}

/// Options of the `recent` match, which kube-proxy uses for
/// `sessionAffinity: ClientIP`. `iptables-save` always prints the name,
/// mask and side, so they are stored with their defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecentMatch {
    /// The command; negated as `! --rcheck`.
    pub command: Negatable<RecentCommand>,
    /// `--seconds`: only entries seen within this many seconds (never `Some(0)`).
    pub seconds: Option<u32>,
    /// `--reap`: purge older entries (needs `seconds`).
    pub reap: bool,
    /// `--hitcount`: at least this many hits (1 to 255).
    pub hitcount: Option<u32>,
    /// `--rttl`
    pub rttl: bool,
    /// `--name` (default `DEFAULT`).
    pub name: String,
    /// `--mask` (default `255.255.255.255`).
    pub mask: IpAddr,
    pub side: RecentSide,
}

impl RecentMatch {
    /// `-m recent --set --name NAME --mask 255.255.255.255 --rsource`
    pub fn set(name: impl Into<String>) -> RecentMatch {
        RecentMatch {
            command: Negatable::is(RecentCommand::Set),
            seconds: None,
            reap: false,
            hitcount: None,
            rttl: false,
            name: name.into(),
            mask: IpAddr::V4(Ipv4Addr::BROADCAST),
            side: RecentSide::Source,
        }
    }

    /// `-m recent --rcheck --seconds S --reap --name NAME ...`, as kube-proxy
    /// writes for session affinity.
    pub fn rcheck(name: impl Into<String>, seconds: u32) -> RecentMatch {
        RecentMatch {
            command: Negatable::is(RecentCommand::Rcheck),
            seconds: Some(seconds),
            reap: true,
            ..RecentMatch::set(name)
        }
    }
}

/// An extension match (`-m NAME --options`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    /// `-m tcp` (needs `-p tcp`).
    Tcp(PortMatch),
    /// `-m udp` (needs `-p udp`).
    Udp(PortMatch),
    /// `-m sctp` (needs `-p sctp`).
    Sctp(PortMatch),
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
    /// `-m statistic`
    Statistic(StatisticMatch),
    /// `-m conntrack [!] --ctstate STATES`
    Conntrack {
        ctstate: Negatable<BTreeSet<CtState>>,
    },
    /// `-m state [!] --state STATES`
    State(Negatable<BTreeSet<CtState>>),
    /// `-m multiport [!] --dports|--sports|--ports P,P:P,...` (needs `-p tcp|udp|sctp`).
    Multiport {
        kind: MultiportKind,
        ports: Negatable<Vec<PortRange>>,
    },
    /// `-m recent`
    Recent(RecentMatch),
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
        Match::Statistic(StatisticMatch {
            mode: StatisticMode::Random { probability },
            negated: false,
        })
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
            Match::Sctp(_) => "sctp",
            Match::AddrType(_) => "addrtype",
            Match::Mark { .. } => "mark",
            Match::Comment(_) => "comment",
            Match::Statistic(_) => "statistic",
            Match::Conntrack { .. } => "conntrack",
            Match::State(_) => "state",
            Match::Multiport { .. } => "multiport",
            Match::Recent(_) => "recent",
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

/// A NAT address (range) with an optional port (range), as in
/// `--to-destination 10.180.0.1:80` or `--to-source 10.0.0.1-10.0.0.9:1024-2048`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NatRange {
    pub addr: IpAddr,
    /// Last address of a range (same family as `addr`, not below it).
    pub addr_last: Option<IpAddr>,
    pub ports: Option<PortRange>,
}

impl NatRange {
    /// One address, optionally with one port.
    pub fn new(addr: IpAddr, port: Option<u16>) -> NatRange {
        NatRange {
            addr,
            addr_last: None,
            ports: port.map(PortRange::port),
        }
    }
}

/// How a `MARK` target changes the packet mark, kept as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MarkAction {
    /// `--set-xmark value[/mask]`: zero the mask bits, then XOR the value.
    SetXmark { value: u32, mask: Option<u32> },
    /// `--set-mark value[/mask]`: zero the mask bits, then OR the value.
    SetMark { value: u32, mask: Option<u32> },
    /// `--and-mark bits`
    AndMark(u32),
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
            MarkAction::SetMark { value, mask } => {
                let mask = mask.unwrap_or(u32::MAX);
                (value, mask | value)
            }
            MarkAction::AndMark(bits) => (0, !bits),
            MarkAction::OrMark(bits) => (bits, bits),
            MarkAction::XorMark(bits) => (bits, 0),
        }
    }
}

/// What a rule does with a matching packet (`-j` or `-g`).
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
    /// `-g CHAIN`: continue in CHAIN; `RETURN` goes back to our caller.
    Goto(String),
    /// `-j DNAT --to-destination ADDR[:PORT] [--random] [--persistent]`
    Dnat {
        to: NatRange,
        random: bool,
        persistent: bool,
    },
    /// `-j SNAT --to-source ADDR[:PORT] [--random] [--random-fully] [--persistent]`
    Snat {
        to: NatRange,
        random: bool,
        random_fully: bool,
        persistent: bool,
    },
    /// `-j MASQUERADE [--to-ports P[-Q]] [--random] [--random-fully]`
    Masquerade {
        to_ports: Option<PortRange>,
        random: bool,
        random_fully: bool,
    },
    /// `-j MARK --set-xmark|--set-mark|--and-mark|--or-mark|--xor-mark ...`
    Mark(MarkAction),
    /// `-j LOG [--log-prefix TEXT] [--log-level N]`
    Log {
        prefix: Option<String>,
        level: Option<u8>,
    },
}

impl Jump {
    /// `-j DNAT --to-destination addr[:port]`
    pub fn dnat(addr: IpAddr, port: Option<u16>) -> Jump {
        Jump::Dnat {
            to: NatRange::new(addr, port),
            random: false,
            persistent: false,
        }
    }

    /// `-j SNAT --to-source addr[:port]`
    pub fn snat(addr: IpAddr, port: Option<u16>) -> Jump {
        Jump::Snat {
            to: NatRange::new(addr, port),
            random: false,
            random_fully: false,
            persistent: false,
        }
    }

    /// `-j MASQUERADE`
    pub fn masquerade() -> Jump {
        Jump::Masquerade {
            to_ports: None,
            random: false,
            random_fully: false,
        }
    }

    /// `-j REJECT --reject-with icmp-port-unreachable`
    pub fn reject() -> Jump {
        Jump::Reject {
            with: RejectWith::default(),
        }
    }

    /// `-j CHAIN`
    pub fn chain(chain: impl Into<String>) -> Jump {
        Jump::Chain(chain.into())
    }

    /// The name after `-j`/`-g`.
    pub fn name(&self) -> &str {
        match self {
            Jump::Accept => "ACCEPT",
            Jump::Drop => "DROP",
            Jump::Return => "RETURN",
            Jump::Reject { .. } => "REJECT",
            Jump::Chain(c) | Jump::Goto(c) => c,
            Jump::Dnat { .. } => "DNAT",
            Jump::Snat { .. } => "SNAT",
            Jump::Masquerade { .. } => "MASQUERADE",
            Jump::Mark(_) => "MARK",
            Jump::Log { .. } => "LOG",
        }
    }
}

/// One iptables rule: `-A CHAIN [header] [matches...] [-j|-g target]`.
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
    /// `-j`/`-g`; `None` only counts packets.
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
    /// `--probability` quantised to the kernel's 31-bit fraction, every
    /// MARK target as `--set-xmark value/mask`, and LOG's default level 4
    /// left out. Compare `desired.to_saved()` with parsed `iptables-save`
    /// output to tell whether a rule is already in place.
    pub fn to_saved(&self) -> Rule {
        let mut r = self.clone();
        for m in &mut r.matches {
            if let Match::Statistic(StatisticMatch {
                mode: StatisticMode::Random { probability },
                ..
            }) = m
            {
                *probability = probability.to_saved();
            }
        }
        match &mut r.target {
            Some(Jump::Mark(action)) => {
                let (value, mask) = action.as_xmark();
                *action = MarkAction::SetXmark {
                    value,
                    mask: Some(mask),
                };
            }
            Some(Jump::Log { level, .. }) if *level == Some(4) => *level = None,
            _ => {}
        }
        r
    }

    /// `-i name` (`name+` for a prefix).
    pub fn in_interface(mut self, iface: Interface) -> Rule {
        self.in_interface = Some(Negatable::is(iface));
        self
    }

    /// `! -i name`
    pub fn not_in_interface(mut self, iface: Interface) -> Rule {
        self.in_interface = Some(Negatable::not(iface));
        self
    }

    /// `-o name`
    pub fn out_interface(mut self, iface: Interface) -> Rule {
        self.out_interface = Some(Negatable::is(iface));
        self
    }

    /// `! -o name`
    pub fn not_out_interface(mut self, iface: Interface) -> Rule {
        self.out_interface = Some(Negatable::not(iface));
        self
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

    /// `-g CHAIN`
    pub fn goto(self, chain: impl Into<String>) -> Rule {
        self.target(Jump::Goto(chain.into()))
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
            Some(Jump::Chain(c)) | Some(Jump::Goto(c)) => {
                check_chain_name(c).map_err(|m| ParseError::new(m, c.as_str(), 0))?;
            }
            Some(Jump::Log {
                prefix: Some(p), ..
            }) => {
                check_save_string(p, 29).map_err(|m| ParseError::new(m, p.as_str(), 0))?;
            }
            Some(t) if target_sets_ports(t) && !protocol_has_ports(proto) => {
                return Err(ParseError::new(
                    "NAT ports need -p tcp, udp, sctp or dccp",
                    t.name(),
                    0,
                ));
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

    /// The dump of one table, mutable.
    pub fn table_mut(&mut self, table: Table) -> Option<&mut TableDump> {
        self.tables.iter_mut().find(|t| t.table == table)
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

/// `-m recent --name`: printed bare by iptables-save, so no blanks or quotes.
pub(super) fn check_recent_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 200 {
        return Err("recent list name must be 1 to 200 characters");
    }
    if name
        .chars()
        .any(|c| !c.is_ascii_graphic() || matches!(c, '"' | '\'' | '\\' | '/'))
    {
        return Err("recent list name must be printable ASCII without blanks, quotes or /");
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

/// NAT port ranges need a protocol with ports: TCP, UDP, SCTP or DCCP (33).
pub(super) fn protocol_has_ports(proto: Option<Protocol>) -> bool {
    matches!(
        proto,
        Some(Protocol::Tcp | Protocol::Udp | Protocol::Sctp | Protocol::Other(33))
    )
}

/// Whether a target sets NAT ports (which needs `protocol_has_ports`).
pub(super) fn target_sets_ports(t: &Jump) -> bool {
    match t {
        Jump::Dnat { to, .. } | Jump::Snat { to, .. } => to.ports.is_some(),
        Jump::Masquerade { to_ports, .. } => to_ports.is_some(),
        _ => false,
    }
}

/// The kernel runs `-m tcp` only on rules with `-p tcp` (and so on).
pub(super) fn protocol_allows(proto: Option<Protocol>, m: &Match) -> bool {
    match m {
        Match::Tcp(_) => proto == Some(Protocol::Tcp),
        Match::Udp(_) => proto == Some(Protocol::Udp),
        Match::Sctp(_) => proto == Some(Protocol::Sctp),
        Match::Multiport { .. } => {
            matches!(proto, Some(Protocol::Tcp | Protocol::Udp | Protocol::Sctp))
        }
        _ => true,
    }
}
