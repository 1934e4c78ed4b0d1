//! iptables rules in `iptables-save` syntax, as typed values.
//!
//! A [`Rule`] is what one `-A CHAIN ...` line of `iptables-save` says: the
//! IP header part (`-s`, `-d`, `-i`, `-o`, `-p`), the extension matches
//! (`-m tcp|udp|sctp`, `addrtype`, `mark`, `comment`, `statistic`,
//! `conntrack`, `state`, `multiport`, `recent`) in the order they were
//! written, and an optional target (`ACCEPT`, `DROP`, `RETURN`, `REJECT`,
//! a jump or goto to a user-defined chain, `DNAT`, `SNAT`, `MASQUERADE`,
//! `MARK`, `LOG`). A [`Ruleset`] is a whole multi-table dump (`*nat`,
//! `:CHAIN POLICY [p:b]`, rules, `COMMIT`), usable as `iptables-restore`
//! input. Everything here is data: evaluating rules is the simulator's job.
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
//!   filled in (`--reject-with icmp-port-unreachable`, `-m recent`'s
//!   `--name DEFAULT --mask 255.255.255.255 --rsource`).
//! - So `Rule::parse(x).emit()` is the line `iptables-save` prints after
//!   `iptables-restore` of `x`, and `parse(emit(r)) == r` for every rule.
//!   Two things are kept as written instead, because kube-proxy writes them
//!   that way and a simulator wants what was asked for: the decimal text of
//!   `--probability`, and which of `--set-xmark`/`--set-mark`/`--or-mark`/
//!   `--and-mark`/`--xor-mark` a `MARK` target used. [`Rule::to_saved`]
//!   applies the kernel's rounding to those too (and drops LOG's default
//!   level), giving exactly what `iptables-save` will print.
//! - The tests check all of this against real iptables v1.8.9 (nf_tables
//!   and legacy) when run with `--ignored` as root (see
//!   `real_iptables_agrees_with_generated_rules`).
//!
//! Quoting follows iptables: arguments are split on blanks, a double-quoted
//! part may contain blanks and backslash-escaped `"`, `\`, `'`, and strings
//! (comments, log prefixes) are printed quoted exactly when `iptables-save`
//! quotes them (anything beyond `[A-Za-z0-9_-]`, e.g.
//! `"default/svc:http cluster IP"`). [`Rule::to_args`] gives the unquoted
//! argv for `iptables -t TABLE -C|-A|-D CHAIN ...`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a rule or dump was rejected: a message, the offending token and its
/// position (token index within the line or argv; line number in a dump).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What is wrong, in iptables' own words where possible.
    pub message: String,
    /// The token that could not be understood (empty for an empty input).
    pub token: String,
    /// Index of that token: in the line's tokens for [`Rule::parse`] (0 is
    /// `-A`), in the argv for [`Rule::from_args`].
    pub index: usize,
    /// 1-based line number, set when parsing a whole [`Ruleset`].
    pub line: Option<usize>,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        write!(
            f,
            "{} (token {} {:?})",
            self.message, self.index, self.token
        )
    }
}

impl std::error::Error for ParseError {}

impl ParseError {
    pub(crate) fn new(
        message: impl Into<String>,
        token: impl Into<String>,
        index: usize,
    ) -> ParseError {
        ParseError {
            message: message.into(),
            token: token.into(),
            index,
            line: None,
        }
    }

    fn at_line(mut self, line: usize) -> ParseError {
        self.line = Some(line);
        self
    }
}

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

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Table {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Table, ParseError> {
        match s {
            "filter" => Ok(Table::Filter),
            "nat" => Ok(Table::Nat),
            "mangle" => Ok(Table::Mangle),
            "raw" => Ok(Table::Raw),
            _ => Err(ParseError::new("unknown table", s, 0)),
        }
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

    /// Parse a `-p` value (name, case-insensitive, or number). `Ok(None)` is `all`.
    fn parse(s: &str) -> Result<Option<Protocol>, &'static str> {
        let lower = s.to_ascii_lowercase();
        let number = match lower.as_str() {
            "all" | "ip" | "hopopt" => 0,
            "icmpv6" => 58,
            "ipv6-mh" | "mh" => 135,
            name => match PROTOCOL_NAMES.iter().find(|(_, n)| *n == name) {
                Some((num, _)) => *num,
                None if is_decimal(name) => name.parse().map_err(|_| "unknown protocol")?,
                None => return Err("unknown protocol"),
            },
        };
        Ok(Protocol::from_number(number))
    }
}

/// Protocol names as `iptables-save` prints them: its own table for the
/// common ones, then `/etc/protocols` (Debian's netbase list, embedded so
/// output does not depend on the host).
const PROTOCOL_NAMES: &[(u8, &str)] = &[
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

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Sctp => f.write_str("sctp"),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Icmpv6 => f.write_str("ipv6-icmp"),
            Protocol::Other(n) => match PROTOCOL_NAMES.iter().find(|(num, _)| num == n) {
                Some((_, name)) => f.write_str(name),
                None => write!(f, "{n}"),
            },
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

impl Interface {
    /// An exact interface name such as `docker0`, or a prefix if it ends in `+`.
    pub fn new(name: &str) -> Result<Interface, ParseError> {
        Interface::parse(name).map_err(|m| ParseError::new(m, name, 0))
    }

    fn parse(s: &str) -> Result<Interface, &'static str> {
        let (name, wildcard) = match s.strip_suffix('+') {
            Some(prefix) => (prefix, true),
            None => (s, false),
        };
        // The kernel keeps interface names in IFNAMSIZ (16) bytes with a
        // NUL, and iptables counts the `+` too.
        if s.len() > 15 {
            return Err("interface name longer than 15 characters");
        }
        if name.is_empty() && !wildcard {
            return Err("empty interface name");
        }
        if name.starts_with('-')
            || name.chars().any(|c| {
                c.is_whitespace() || c.is_control() || matches!(c, '/' | '"' | '\'' | '\\' | '+')
            })
        {
            return Err("invalid interface name");
        }
        Ok(Interface {
            name: name.to_string(),
            wildcard,
        })
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.wildcard {
            f.write_str("+")?;
        }
        Ok(())
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

    /// Parse `p`, `a:b`, `:b` or `a:` (match syntax, as `-m tcp --dport`).
    fn parse_match(s: &str) -> Result<PortRange, &'static str> {
        match s.split_once(':') {
            None => parse_port(s).map(PortRange::port),
            Some((a, b)) => {
                let first = if a.is_empty() { 0 } else { parse_port(a)? };
                let last = if b.is_empty() {
                    u16::MAX
                } else {
                    parse_port(b)?
                };
                PortRange::range(first, last).ok_or("invalid port range: first port above last")
            }
        }
    }

    /// Parse `p` or `a-b` (NAT target syntax, as `--to-ports`).
    fn parse_nat(s: &str) -> Result<PortRange, &'static str> {
        match s.split_once('-') {
            None => parse_port(s).map(PortRange::port),
            Some((a, b)) => PortRange::range(parse_port(a)?, parse_port(b)?)
                .ok_or("invalid port range: first port above last"),
        }
    }

    fn fmt_with(&self, sep: char) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}{sep}{}", self.first, self.last)
        }
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
    const ALL: [AddrType; 12] = [
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

    fn parse(s: &str) -> Option<AddrType> {
        AddrType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
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
    const ALL: [CtState; 7] = [
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

    fn parse(s: &str) -> Option<CtState> {
        CtState::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
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
    text: String,
    /// The parsed value, kept so that evaluation never re-parses the text.
    value: f64,
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
    fn from_text(text: String) -> Probability {
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

    fn parse(s: &str) -> Result<Probability, &'static str> {
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits_ok = !int.is_empty()
            && int.bytes().all(|b| b.is_ascii_digit())
            && frac.bytes().all(|b| b.is_ascii_digit())
            && !(s.contains('.') && frac.is_empty());
        if !digits_ok || s.len() > 32 {
            return Err("invalid probability");
        }
        match s.parse::<f64>() {
            Ok(p) if (0.0..=1.0).contains(&p) => Ok(Probability {
                text: s.to_string(),
                value: p,
            }),
            _ => Err("probability must be between 0 and 1"),
        }
    }
}

impl fmt::Display for Probability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
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

impl RecentCommand {
    fn option(self) -> &'static str {
        match self {
            RecentCommand::Set => "--set",
            RecentCommand::Rcheck => "--rcheck",
            RecentCommand::Update => "--update",
            RecentCommand::Remove => "--remove",
        }
    }
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
    const ALL: [RejectWith; 8] = [
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

    /// The short alias iptables also accepts (`port-unreach`, `tcp-rst`, ...).
    fn alias(self) -> &'static str {
        match self {
            RejectWith::IcmpNetUnreachable => "net-unreach",
            RejectWith::IcmpHostUnreachable => "host-unreach",
            RejectWith::IcmpPortUnreachable => "port-unreach",
            RejectWith::IcmpProtoUnreachable => "proto-unreach",
            RejectWith::IcmpNetProhibited => "net-prohib",
            RejectWith::IcmpHostProhibited => "host-prohib",
            RejectWith::IcmpAdminProhibited => "admin-prohib",
            RejectWith::TcpReset => "tcp-rst",
        }
    }

    fn parse(s: &str) -> Option<RejectWith> {
        RejectWith::ALL
            .into_iter()
            .find(|r| r.name() == s || r.alias() == s)
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

    fn parse(s: &str) -> Result<NatRange, &'static str> {
        const BAD: &str = "invalid address[:port] for NAT";
        let (addrs, ports) = if let Some(rest) = s.strip_prefix('[') {
            // IPv6 with ports: [a]:p or [a]-[b]:p-q
            let (a, rest) = rest.split_once(']').ok_or(BAD)?;
            let (b, rest) = match rest.strip_prefix("-[") {
                Some(r) => {
                    let (b, r) = r.split_once(']').ok_or(BAD)?;
                    (Some(b), r)
                }
                None => (None, rest),
            };
            let ports = match rest {
                "" => None,
                r => Some(r.strip_prefix(':').ok_or(BAD)?),
            };
            let a: Ipv6Addr = a.parse().map_err(|_| BAD)?;
            let b = b
                .map(|b| b.parse::<Ipv6Addr>().map_err(|_| BAD))
                .transpose()?;
            ((IpAddr::V6(a), b.map(IpAddr::V6)), ports)
        } else if s.matches(':').count() > 1 {
            // Bare IPv6, no ports: a or a-b
            let (a, b) = match s.split_once('-') {
                Some((a, b)) => (a, Some(b)),
                None => (s, None),
            };
            let a: Ipv6Addr = a.parse().map_err(|_| BAD)?;
            let b = b
                .map(|b| b.parse::<Ipv6Addr>().map_err(|_| BAD))
                .transpose()?;
            ((IpAddr::V6(a), b.map(IpAddr::V6)), None)
        } else {
            let (addrs, ports) = match s.split_once(':') {
                Some((a, p)) => (a, Some(p)),
                None => (s, None),
            };
            let (a, b) = match addrs.split_once('-') {
                Some((a, b)) => (a, Some(b)),
                None => (addrs, None),
            };
            let a: Ipv4Addr = a.parse().map_err(|_| BAD)?;
            let b = b
                .map(|b| b.parse::<Ipv4Addr>().map_err(|_| BAD))
                .transpose()?;
            ((IpAddr::V4(a), b.map(IpAddr::V4)), ports)
        };
        let (addr, addr_last) = addrs;
        if let Some(last) = addr_last {
            if last < addr {
                return Err("invalid NAT address range: first address above last");
            }
        }
        let ports = ports.map(PortRange::parse_nat).transpose()?;
        Ok(NatRange {
            addr,
            addr_last,
            ports,
        })
    }
}

impl fmt::Display for NatRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.ports.is_some()) {
            (IpAddr::V6(a), true) => {
                write!(f, "[{a}]")?;
                if let Some(b) = self.addr_last {
                    write!(f, "-[{b}]")?;
                }
            }
            (a, _) => {
                write!(f, "{a}")?;
                if let Some(b) = self.addr_last {
                    write!(f, "-{b}")?;
                }
            }
        }
        if let Some(p) = self.ports {
            write!(f, ":{}", p.fmt_with('-'))?;
        }
        Ok(())
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

    /// Parse one `iptables-save` rule line: `-A CHAIN ...`.
    pub fn parse(line: &str) -> Result<Rule, ParseError> {
        let toks = tokenize(line)?;
        let Some(first) = toks.first() else {
            return Err(ParseError::new("empty rule, expected -A CHAIN", "", 0));
        };
        if first != "-A" && first != "--append" {
            return Err(ParseError::new("expected -A CHAIN", first.as_str(), 0));
        }
        let Some(chain) = toks.get(1) else {
            return Err(ParseError::new(
                "missing chain name after -A",
                first.as_str(),
                0,
            ));
        };
        check_chain_name(chain).map_err(|m| ParseError::new(m, chain.as_str(), 1))?;
        parse_spec(chain, &toks[2..], 2)
    }

    /// Parse the rule text after the chain (`! -d 10.0.0.0/8 -j MASQUERADE`),
    /// as given to `iptables -A CHAIN ...` in a shell.
    pub fn parse_in_chain(chain: &str, spec: &str) -> Result<Rule, ParseError> {
        check_chain_name(chain).map_err(|m| ParseError::new(m, chain, 0))?;
        let toks = tokenize(spec)?;
        parse_spec(chain, &toks, 0)
    }

    /// Build a rule from an argv after the chain (no quoting: each element is
    /// one argument), the inverse of [`Rule::to_args`].
    pub fn from_args<S: AsRef<str>>(chain: &str, args: &[S]) -> Result<Rule, ParseError> {
        check_chain_name(chain).map_err(|m| ParseError::new(m, chain, 0))?;
        let toks: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        parse_spec(chain, &toks, 0)
    }

    /// The `iptables-save` line: `-A CHAIN ...`.
    pub fn emit(&self) -> String {
        let mut out = format!("-A {}", self.chain);
        for arg in self.spec_args() {
            out.push(' ');
            if arg.save_string {
                out.push_str(&save_string(&arg.text));
            } else {
                out.push_str(&arg.text);
            }
        }
        out
    }

    /// The arguments after the chain, unquoted, for
    /// `iptables -t TABLE -C|-A|-D CHAIN args...`.
    pub fn to_args(&self) -> Vec<String> {
        self.spec_args().into_iter().map(|a| a.text).collect()
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
    fn positive_protocol(&self) -> Option<Protocol> {
        match &self.protocol {
            Some(Negatable {
                negated: false,
                value,
            }) => Some(*value),
            _ => None,
        }
    }

    fn spec_args(&self) -> Vec<Arg> {
        let mut a = Args::default();
        if let Some(s) = &self.source {
            a.neg(s.negated).push("-s").push(s.value.to_string());
        }
        if let Some(d) = &self.destination {
            a.neg(d.negated).push("-d").push(d.value.to_string());
        }
        if let Some(i) = &self.in_interface {
            a.neg(i.negated).push("-i").push(i.value.to_string());
        }
        if let Some(o) = &self.out_interface {
            a.neg(o.negated).push("-o").push(o.value.to_string());
        }
        if let Some(p) = &self.protocol {
            a.neg(p.negated).push("-p").push(p.value.to_string());
        }
        for m in &self.matches {
            a.push("-m").push(m.module());
            emit_match(m, &mut a);
        }
        if let Some(t) = &self.target {
            emit_target(t, &mut a);
        }
        a.0
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.emit())
    }
}

impl FromStr for Rule {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Rule, ParseError> {
        Rule::parse(s)
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.emit())
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Rule, D::Error> {
        let s = String::deserialize(deserializer)?;
        Rule::parse(&s).map_err(serde::de::Error::custom)
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
    chains: Vec<Chain>,
    /// Chain name to position in `chains`, for cheap lookup.
    index: BTreeMap<String, usize>,
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

    fn emit_into(&self, out: &mut String) {
        for c in &self.comments {
            out.push_str(&format!("#{c}\n"));
        }
        out.push_str(&format!("*{}\n", self.table));
        for c in &self.chains {
            let policy = c.policy.map_or("-", Policy::name);
            out.push_str(&format!(
                ":{} {} [{}:{}]\n",
                c.name, policy, c.counters.packets, c.counters.bytes
            ));
        }
        for c in &self.chains {
            for r in &c.rules {
                out.push_str(&r.emit());
                out.push('\n');
            }
        }
        out.push_str("COMMIT\n");
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

    /// Parse `iptables-save` output (or an `iptables-restore` file that only
    /// declares chains and appends rules). Comments are kept before a table
    /// and after the last one; comment lines inside a table are skipped, as
    /// `iptables-restore` does. Errors carry the line number.
    pub fn parse(text: &str) -> Result<Ruleset, ParseError> {
        let mut set = Ruleset::default();
        let mut pending_comments = Vec::new();
        let mut open: Option<TableDump> = None;
        for (n, raw) in text.lines().enumerate() {
            let lineno = n + 1;
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            // Comment text is kept verbatim (only leading blanks and a CR go).
            let comment = raw.trim_start().strip_prefix('#');
            if let Some(c) = comment.map(|c| c.strip_suffix('\r').unwrap_or(c)) {
                if open.is_none() {
                    pending_comments.push(c.to_string());
                }
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                if let Some(t) = &open {
                    return Err(ParseError::new(
                        format!("table {} not committed before the next one", t.table),
                        line,
                        0,
                    )
                    .at_line(lineno));
                }
                let table = Table::from_str(name).map_err(|e| e.at_line(lineno))?;
                if set.table(table).is_some() {
                    return Err(ParseError::new("table appears twice", line, 0).at_line(lineno));
                }
                let mut t = TableDump::new(table);
                t.comments = std::mem::take(&mut pending_comments);
                open = Some(t);
                continue;
            }
            let Some(t) = open.as_mut() else {
                let tok = line.split_whitespace().next().unwrap_or(line);
                return Err(
                    ParseError::new("expected *table before this line", tok, 0).at_line(lineno)
                );
            };
            if line == "COMMIT" {
                if let Some(t) = open.take() {
                    set.tables.push(t);
                }
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                parse_chain_decl(t, decl).map_err(|e| e.at_line(lineno))?;
                continue;
            }
            if line.starts_with("-A ") || line.starts_with("--append ") {
                let rule = Rule::parse(line).map_err(|e| e.at_line(lineno))?;
                if !t.index.contains_key(&rule.chain) {
                    return Err(ParseError::new(
                        "rule appended to a chain not declared in this table",
                        rule.chain,
                        1,
                    )
                    .at_line(lineno));
                }
                t.append(rule).map_err(|e| e.at_line(lineno))?;
                continue;
            }
            let tok = line.split_whitespace().next().unwrap_or(line);
            return Err(ParseError::new(
                "unsupported line (only :CHAIN, -A, COMMIT and # comments are understood)",
                tok,
                0,
            )
            .at_line(lineno));
        }
        if let Some(t) = open {
            return Err(ParseError::new(
                format!("table {} is missing COMMIT", t.table),
                format!("*{}", t.table),
                0,
            )
            .at_line(text.lines().count()));
        }
        set.trailing_comments = pending_comments;
        Ok(set)
    }

    /// The `iptables-save` text: per table, comments, `*table`, chain
    /// declarations, rules grouped by chain in declaration order, `COMMIT`.
    pub fn emit(&self) -> String {
        let mut out = String::new();
        for t in &self.tables {
            t.emit_into(&mut out);
        }
        for c in &self.trailing_comments {
            out.push_str(&format!("#{c}\n"));
        }
        out
    }
}

impl fmt::Display for Ruleset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.emit())
    }
}

impl FromStr for Ruleset {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Ruleset, ParseError> {
        Ruleset::parse(s)
    }
}

impl Serialize for Ruleset {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.emit())
    }
}

// ---------------------------------------------------------------------------
// Tokens and quoting.

/// Split a line the way `iptables-restore` does: blanks separate arguments;
/// `"` opens a quoted part in which blanks are kept and `\` escapes the next
/// character; the closing quote ends the argument.
fn tokenize(line: &str) -> Result<Vec<String>, ParseError> {
    let mut toks = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut quote_open = false;
    let mut escaped = false;
    for c in line.chars() {
        if quote_open {
            if escaped {
                cur.push(c);
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quote_open = false;
                toks.push(std::mem::take(&mut cur));
                in_token = false;
            } else {
                cur.push(c);
            }
            continue;
        }
        match c {
            '"' => {
                quote_open = true;
                in_token = true;
            }
            c if c.is_whitespace() => {
                if in_token {
                    toks.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            c => {
                cur.push(c);
                in_token = true;
            }
        }
    }
    if quote_open {
        return Err(ParseError::new(
            "unterminated quoted string",
            cur,
            toks.len(),
        ));
    }
    if in_token {
        toks.push(cur);
    }
    Ok(toks)
}

/// Quote a string exactly as iptables' `xtables_save_string` does.
fn save_string(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Strings printed with `save_string` must survive a line-based dump.
fn check_save_string(s: &str, max_len: usize) -> Result<(), String> {
    if s.len() > max_len {
        return Err(format!("string longer than {max_len} bytes"));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err("control characters (such as newlines) are not allowed".to_string());
    }
    Ok(())
}

/// `-m recent --name`: printed bare by iptables-save, so no blanks or quotes.
fn check_recent_name(name: &str) -> Result<(), &'static str> {
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
fn check_chain_name(name: &str) -> Result<(), &'static str> {
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

/// One emitted argument; `save_string` ones are quoted like iptables-save does.
struct Arg {
    text: String,
    save_string: bool,
}

#[derive(Default)]
struct Args(Vec<Arg>);

impl Args {
    fn push(&mut self, s: impl Into<String>) -> &mut Args {
        self.0.push(Arg {
            text: s.into(),
            save_string: false,
        });
        self
    }
    fn push_string(&mut self, s: &str) -> &mut Args {
        self.0.push(Arg {
            text: s.to_string(),
            save_string: true,
        });
        self
    }
    fn neg(&mut self, negated: bool) -> &mut Args {
        if negated {
            self.push("!");
        }
        self
    }
}

fn hex(v: u32) -> String {
    format!("0x{v:x}")
}

fn mark_text(value: u32, mask: Option<u32>) -> String {
    match mask {
        Some(m) => format!("0x{value:x}/0x{m:x}"),
        None => hex(value),
    }
}

fn join_set<T: Copy>(set: &BTreeSet<T>, name: impl Fn(T) -> &'static str) -> String {
    set.iter().map(|t| name(*t)).collect::<Vec<_>>().join(",")
}

fn emit_ports(a: &mut Args, p: &PortMatch) {
    if let Some(s) = &p.sport {
        a.neg(s.negated).push("--sport").push(s.value.fmt_with(':'));
    }
    if let Some(d) = &p.dport {
        a.neg(d.negated).push("--dport").push(d.value.fmt_with(':'));
    }
}

fn emit_match(m: &Match, a: &mut Args) {
    match m {
        Match::Tcp(p) | Match::Udp(p) | Match::Sctp(p) => emit_ports(a, p),
        Match::AddrType(t) => {
            if let Some(s) = &t.src_type {
                a.neg(s.negated)
                    .push("--src-type")
                    .push(join_set(&s.value, AddrType::name));
            }
            if let Some(d) = &t.dst_type {
                a.neg(d.negated)
                    .push("--dst-type")
                    .push(join_set(&d.value, AddrType::name));
            }
            if t.limit_iface_in {
                a.push("--limit-iface-in");
            }
            if t.limit_iface_out {
                a.push("--limit-iface-out");
            }
        }
        Match::Mark {
            negated,
            value,
            mask,
        } => {
            let mask = (*mask != u32::MAX).then_some(*mask);
            a.neg(*negated).push("--mark").push(mark_text(*value, mask));
        }
        Match::Comment(c) => {
            a.push("--comment").push_string(c);
        }
        Match::Statistic(s) => match &s.mode {
            StatisticMode::Random { probability } => {
                a.push("--mode").push("random");
                a.neg(s.negated)
                    .push("--probability")
                    .push(probability.as_str());
            }
            StatisticMode::Nth { every, packet } => {
                a.push("--mode").push("nth");
                a.neg(s.negated).push("--every").push(every.to_string());
                // iptables-save always prints --packet, and restore requires it.
                a.push("--packet").push(packet.to_string());
            }
        },
        Match::Conntrack { ctstate } => {
            a.neg(ctstate.negated)
                .push("--ctstate")
                .push(join_set(&ctstate.value, CtState::name));
        }
        Match::State(states) => {
            a.neg(states.negated)
                .push("--state")
                .push(join_set(&states.value, CtState::name));
        }
        Match::Recent(r) => {
            a.neg(r.command.negated).push(r.command.value.option());
            if let Some(s) = r.seconds {
                a.push("--seconds").push(s.to_string());
            }
            if r.reap {
                a.push("--reap");
            }
            if let Some(h) = r.hitcount {
                a.push("--hitcount").push(h.to_string());
            }
            if r.rttl {
                a.push("--rttl");
            }
            a.push("--name").push(r.name.as_str());
            a.push("--mask").push(r.mask.to_string());
            a.push(match r.side {
                RecentSide::Source => "--rsource",
                RecentSide::Dest => "--rdest",
            });
        }
        Match::Multiport { kind, ports } => {
            let opt = match kind {
                MultiportKind::Source => "--sports",
                MultiportKind::Destination => "--dports",
                MultiportKind::Either => "--ports",
            };
            let list = ports
                .value
                .iter()
                .map(|p| p.fmt_with(':'))
                .collect::<Vec<_>>()
                .join(",");
            a.neg(ports.negated).push(opt).push(list);
        }
    }
}

fn emit_target(t: &Jump, a: &mut Args) {
    match t {
        Jump::Goto(c) => {
            a.push("-g").push(c.as_str());
            return;
        }
        other => {
            a.push("-j").push(other.name());
        }
    }
    match t {
        Jump::Reject { with } => {
            a.push("--reject-with").push(with.name());
        }
        Jump::Dnat {
            to,
            random,
            persistent,
        } => {
            a.push("--to-destination").push(to.to_string());
            if *random {
                a.push("--random");
            }
            if *persistent {
                a.push("--persistent");
            }
        }
        Jump::Snat {
            to,
            random,
            random_fully,
            persistent,
        } => {
            a.push("--to-source").push(to.to_string());
            if *random {
                a.push("--random");
            }
            if *random_fully {
                a.push("--random-fully");
            }
            if *persistent {
                a.push("--persistent");
            }
        }
        Jump::Masquerade {
            to_ports,
            random,
            random_fully,
        } => {
            if let Some(p) = to_ports {
                a.push("--to-ports").push(p.fmt_with('-'));
            }
            if *random {
                a.push("--random");
            }
            if *random_fully {
                a.push("--random-fully");
            }
        }
        Jump::Mark(action) => {
            let (opt, text) = match *action {
                MarkAction::SetXmark { value, mask } => ("--set-xmark", mark_text(value, mask)),
                MarkAction::SetMark { value, mask } => ("--set-mark", mark_text(value, mask)),
                MarkAction::AndMark(v) => ("--and-mark", hex(v)),
                MarkAction::OrMark(v) => ("--or-mark", hex(v)),
                MarkAction::XorMark(v) => ("--xor-mark", hex(v)),
            };
            a.push(opt).push(text);
        }
        Jump::Log { prefix, level } => {
            if let Some(p) = prefix {
                a.push("--log-prefix").push_string(p);
            }
            if let Some(l) = level {
                a.push("--log-level").push(l.to_string());
            }
        }
        Jump::Accept | Jump::Drop | Jump::Return | Jump::Chain(_) | Jump::Goto(_) => {}
    }
}

// ---------------------------------------------------------------------------
// Parsing a rule specification.

fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn parse_port(s: &str) -> Result<u16, &'static str> {
    if !is_decimal(s) {
        return Err("invalid port (service names are not resolved)");
    }
    s.parse().map_err(|_| "port out of range")
}

/// An unsigned number as C's `strtoul(s, NULL, 0)` reads it: `0x` hex,
/// leading `0` octal, else decimal.
fn parse_u32(s: &str) -> Result<u32, &'static str> {
    const BAD: &str = "invalid number";
    let r = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BAD);
        }
        u32::from_str_radix(h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        if !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(BAD);
        }
        u32::from_str_radix(&s[1..], 8)
    } else {
        if !is_decimal(s) {
            return Err(BAD);
        }
        s.parse()
    };
    r.map_err(|_| "number out of range")
}

fn parse_mark(s: &str) -> Result<(u32, Option<u32>), &'static str> {
    match s.split_once('/') {
        Some((v, m)) => Ok((parse_u32(v)?, Some(parse_u32(m)?))),
        None => Ok((parse_u32(s)?, None)),
    }
}

/// `addr`, `addr/len` or `addr/dotted-mask`, host bits cleared as the kernel does.
fn parse_net(s: &str) -> Result<IpNet, &'static str> {
    const BAD: &str = "invalid address (host names are not resolved)";
    if s.contains(',') {
        return Err("address lists are not supported (iptables expands them into several rules)");
    }
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| BAD)?;
    let net = match (addr, len) {
        (IpAddr::V4(a), None) => IpNet::V4(Ipv4Net::new(a, 32).map_err(|_| BAD)?),
        (IpAddr::V6(a), None) => IpNet::V6(Ipv6Net::new(a, 128).map_err(|_| BAD)?),
        (IpAddr::V4(a), Some(l)) => {
            let prefix = if is_decimal(l) {
                l.parse::<u8>().map_err(|_| "invalid prefix length")?
            } else {
                let mask: Ipv4Addr = l.parse().map_err(|_| BAD)?;
                ipnet::ipv4_mask_to_prefix(mask).map_err(|_| "non-contiguous netmask")?
            };
            IpNet::V4(Ipv4Net::new(a, prefix).map_err(|_| "invalid prefix length")?)
        }
        (IpAddr::V6(a), Some(l)) => {
            let prefix = if is_decimal(l) {
                l.parse::<u8>().map_err(|_| "invalid prefix length")?
            } else {
                let mask: Ipv6Addr = l.parse().map_err(|_| BAD)?;
                ipnet::ipv6_mask_to_prefix(mask).map_err(|_| "non-contiguous netmask")?
            };
            IpNet::V6(Ipv6Net::new(a, prefix).map_err(|_| "invalid prefix length")?)
        }
    };
    Ok(net.trunc())
}

fn parse_set<T: Ord>(
    s: &str,
    one: impl Fn(&str) -> Option<T>,
    what: &'static str,
) -> Result<BTreeSet<T>, &'static str> {
    let mut set = BTreeSet::new();
    for item in s.split(',') {
        set.insert(one(item).ok_or(what)?);
    }
    Ok(set)
}

/// The tokens of a rule specification with their position in the line.
struct Cursor<'a> {
    toks: &'a [String],
    pos: usize,
    base: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, i: usize, msg: impl Into<String>) -> ParseError {
        let tok = self.toks.get(i).cloned().unwrap_or_default();
        ParseError::new(msg, tok, self.base + i)
    }

    /// The value after the option at `opt_i`.
    fn value(&mut self, opt_i: usize) -> Result<(usize, &'a str), ParseError> {
        let toks: &'a [String] = self.toks;
        match toks.get(self.pos) {
            Some(v) => {
                self.pos += 1;
                Ok((self.pos - 1, v.as_str()))
            }
            None => Err(self.err(opt_i, format!("option {} needs a value", self.toks[opt_i]))),
        }
    }
}

/// A match while its options are being read; required options are checked at the end.
enum PendingMatch {
    Ports(Protocol, PortMatch),
    AddrType(AddrTypeMatch),
    Mark(Option<(bool, u32, u32)>),
    Comment(Option<String>),
    Statistic {
        mode: Option<String>,
        probability: Option<Probability>,
        every: Option<u32>,
        packet: Option<u32>,
        negated: bool,
    },
    Conntrack(Option<Negatable<BTreeSet<CtState>>>),
    State(Option<Negatable<BTreeSet<CtState>>>),
    Multiport(Option<(MultiportKind, Negatable<Vec<PortRange>>)>),
    Recent(Box<PendingRecent>),
}

#[derive(Default)]
struct PendingRecent {
    command: Option<Negatable<RecentCommand>>,
    seconds: Option<u32>,
    reap: bool,
    hitcount: Option<u32>,
    rttl: bool,
    name: Option<String>,
    mask: Option<IpAddr>,
    side: Option<RecentSide>,
}

/// A target while its options are being read.
struct PendingTarget {
    target: Jump,
    /// Token index of the target name, for errors.
    at: usize,
    /// Whether the target's required option was seen (`--to-destination`,
    /// `--to-source`, a MARK operation; for REJECT: `--reject-with`).
    has_action: bool,
}

/// Outcome of offering an option to a match or target.
enum Offer {
    Taken,
    NotMine,
}

fn parse_spec(chain: &str, toks: &[String], base: usize) -> Result<Rule, ParseError> {
    let mut rule = Rule::new(chain);
    let mut cur = Cursor { toks, pos: 0, base };
    // Each pending match with the token index of its module name.
    let mut pending: Vec<(usize, PendingMatch)> = Vec::new();
    let mut target: Option<PendingTarget> = None;
    // How many matches existed when the target was given: options after the
    // target go to it first, options after a later `-m` to that match first.
    let mut target_after = 0usize;
    let mut negate: Option<usize> = None;
    // `-s 0.0.0.0/0` leaves `rule.source` empty, so duplicates are tracked here.
    let mut addr_seen = [false; 2];

    while cur.pos < toks.len() {
        let i = cur.pos;
        let tok = toks[i].as_str();
        cur.pos += 1;
        if tok == "!" {
            if negate.is_some() {
                return Err(cur.err(i, "double negation"));
            }
            negate = Some(i);
            continue;
        }
        let negated = negate.take().is_some();
        match tok {
            "-s" | "--source" | "--src" | "-d" | "--destination" | "--dst" => {
                let is_src = matches!(tok, "-s" | "--source" | "--src");
                let (slot, seen) = if is_src {
                    (&mut rule.source, &mut addr_seen[0])
                } else {
                    (&mut rule.destination, &mut addr_seen[1])
                };
                if *seen {
                    return Err(cur.err(i, format!("multiple {tok} flags not allowed")));
                }
                *seen = true;
                let (vi, v) = cur.value(i)?;
                let net = parse_net(v).map_err(|m| cur.err(vi, m))?;
                *slot = addr_match(negated, net);
            }
            "-i" | "--in-interface" | "-o" | "--out-interface" => {
                let is_in = matches!(tok, "-i" | "--in-interface");
                let slot = if is_in {
                    &mut rule.in_interface
                } else {
                    &mut rule.out_interface
                };
                if slot.is_some() {
                    return Err(cur.err(i, format!("multiple {tok} flags not allowed")));
                }
                let (vi, v) = cur.value(i)?;
                let iface = Interface::parse(v).map_err(|m| cur.err(vi, m))?;
                *slot = Some(Negatable {
                    negated,
                    value: iface,
                });
            }
            "-p" | "--protocol" => {
                if rule.protocol.is_some() {
                    return Err(cur.err(i, "multiple -p flags not allowed"));
                }
                let (vi, v) = cur.value(i)?;
                match Protocol::parse(v).map_err(|m| cur.err(vi, m))? {
                    Some(p) => rule.protocol = Some(Negatable { negated, value: p }),
                    None if negated => {
                        return Err(cur.err(vi, "rule would never match protocol (! -p all)"))
                    }
                    None => {}
                }
            }
            "-m" | "--match" => {
                if negated {
                    return Err(cur.err(i, "! is not allowed before -m"));
                }
                let (vi, name) = cur.value(i)?;
                let m = match name {
                    "tcp" => PendingMatch::Ports(Protocol::Tcp, PortMatch::default()),
                    "udp" => PendingMatch::Ports(Protocol::Udp, PortMatch::default()),
                    "sctp" => PendingMatch::Ports(Protocol::Sctp, PortMatch::default()),
                    "addrtype" => PendingMatch::AddrType(AddrTypeMatch::default()),
                    "mark" => PendingMatch::Mark(None),
                    "comment" => PendingMatch::Comment(None),
                    "statistic" => PendingMatch::Statistic {
                        mode: None,
                        probability: None,
                        every: None,
                        packet: None,
                        negated: false,
                    },
                    "conntrack" => PendingMatch::Conntrack(None),
                    "state" => PendingMatch::State(None),
                    "multiport" => PendingMatch::Multiport(None),
                    "recent" => PendingMatch::Recent(Box::default()),
                    _ => return Err(cur.err(vi, "unknown or unsupported match module")),
                };
                pending.push((vi, m));
            }
            "-j" | "--jump" | "-g" | "--goto" => {
                if negated {
                    return Err(cur.err(i, format!("! is not allowed before {tok}")));
                }
                if target.is_some() {
                    return Err(cur.err(i, "multiple -j/-g flags not allowed"));
                }
                let goto = matches!(tok, "-g" | "--goto");
                let (vi, name) = cur.value(i)?;
                let t = if goto {
                    check_chain_name(name).map_err(|m| cur.err(vi, m))?;
                    if matches!(
                        name,
                        "ACCEPT"
                            | "DROP"
                            | "RETURN"
                            | "REJECT"
                            | "DNAT"
                            | "SNAT"
                            | "MASQUERADE"
                            | "MARK"
                            | "LOG"
                    ) {
                        return Err(cur.err(vi, "-g needs a user-defined chain"));
                    }
                    Jump::Goto(name.to_string())
                } else {
                    match name {
                        "ACCEPT" => Jump::Accept,
                        "DROP" => Jump::Drop,
                        "RETURN" => Jump::Return,
                        "REJECT" => Jump::Reject {
                            with: RejectWith::default(),
                        },
                        // The address is a placeholder until --to-destination.
                        "DNAT" => Jump::Dnat {
                            to: NatRange::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), None),
                            random: false,
                            persistent: false,
                        },
                        "SNAT" => Jump::Snat {
                            to: NatRange::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), None),
                            random: false,
                            random_fully: false,
                            persistent: false,
                        },
                        "MASQUERADE" => Jump::masquerade(),
                        "MARK" => Jump::Mark(MarkAction::OrMark(0)),
                        "LOG" => Jump::Log {
                            prefix: None,
                            level: None,
                        },
                        chain => {
                            check_chain_name(chain).map_err(|m| cur.err(vi, m))?;
                            Jump::Chain(chain.to_string())
                        }
                    }
                };
                target = Some(PendingTarget {
                    target: t,
                    at: vi,
                    has_action: false,
                });
                target_after = pending.len();
            }
            opt if opt.starts_with('-') && opt.len() > 1 => {
                // Offer the option to its possible owners, the most recently
                // given first: matches after the target, the target, then
                // the matches before it.
                let mut taken = false;
                let after = (target_after..pending.len()).rev().map(Some);
                let before = (0..target_after).rev().map(Some);
                let order: Vec<Option<usize>> = after
                    .chain(target.is_some().then_some(None))
                    .chain(before)
                    .collect();
                for owner in order {
                    let offer = match owner {
                        Some(k) => offer_match(&mut pending[k].1, opt, i, negated, &mut cur)?,
                        None => match target.as_mut() {
                            Some(t) => offer_target(t, opt, i, negated, &mut cur)?,
                            None => Offer::NotMine,
                        },
                    };
                    if let Offer::Taken = offer {
                        taken = true;
                        break;
                    }
                }
                if !taken {
                    // `-p tcp --dport 80` loads the tcp match implicitly.
                    let implicit = match &rule.protocol {
                        Some(Negatable {
                            negated: false,
                            value,
                        }) if matches!(
                            opt,
                            "--dport" | "--sport" | "--destination-port" | "--source-port"
                        ) && matches!(
                            value,
                            Protocol::Tcp | Protocol::Udp | Protocol::Sctp
                        ) =>
                        {
                            Some(*value)
                        }
                        _ => None,
                    };
                    match implicit {
                        Some(p) => {
                            let mut m = PendingMatch::Ports(p, PortMatch::default());
                            offer_match(&mut m, opt, i, negated, &mut cur)?;
                            pending.push((i, m));
                        }
                        None => return Err(cur.err(i, "unknown option")),
                    }
                }
            }
            _ => return Err(cur.err(i, "unexpected argument")),
        }
    }
    if let Some(n) = negate {
        return Err(cur.err(n, "! must be followed by an option"));
    }
    let proto = rule.positive_protocol();
    for (at, m) in pending {
        let m = finish_match(m).map_err(|msg| cur.err(at, msg))?;
        if !protocol_allows(proto, &m) {
            return Err(cur.err(
                at,
                format!("-m {} needs a matching -p protocol", m.module()),
            ));
        }
        rule.matches.push(m);
    }
    if let Some(t) = target {
        if matches!(t.target, Jump::Mark(_)) && !t.has_action {
            return Err(cur.err(
                t.at,
                "MARK target needs --set-xmark, --set-mark, --and-mark, --or-mark or --xor-mark",
            ));
        }
        let tcp = rule.positive_protocol() == Some(Protocol::Tcp);
        if matches!(
            t.target,
            Jump::Reject {
                with: RejectWith::TcpReset
            }
        ) && !tcp
        {
            return Err(cur.err(t.at, "REJECT --reject-with tcp-reset needs -p tcp"));
        }
        if target_sets_ports(&t.target) && !protocol_has_ports(rule.positive_protocol()) {
            return Err(cur.err(t.at, "NAT ports need -p tcp, udp, sctp or dccp"));
        }
        if !t.has_action {
            match t.target {
                Jump::Dnat { .. } => {
                    return Err(cur.err(t.at, "DNAT target needs --to-destination"))
                }
                Jump::Snat { .. } => return Err(cur.err(t.at, "SNAT target needs --to-source")),
                _ => {}
            }
        }
        rule.target = Some(t.target);
    }
    Ok(rule)
}

/// An address match as the kernel stores it: host bits cleared, and a
/// positive `/0` (which matches everything) is no match at all.
fn addr_match(negated: bool, net: IpNet) -> Option<Negatable<IpNet>> {
    let net = net.trunc();
    (negated || net.prefix_len() != 0).then_some(Negatable {
        negated,
        value: net,
    })
}

/// NAT port ranges need a protocol with ports: TCP, UDP, SCTP or DCCP (33).
fn protocol_has_ports(proto: Option<Protocol>) -> bool {
    matches!(
        proto,
        Some(Protocol::Tcp | Protocol::Udp | Protocol::Sctp | Protocol::Other(33))
    )
}

/// Whether a target sets NAT ports (which needs `protocol_has_ports`).
fn target_sets_ports(t: &Jump) -> bool {
    match t {
        Jump::Dnat { to, .. } | Jump::Snat { to, .. } => to.ports.is_some(),
        Jump::Masquerade { to_ports, .. } => to_ports.is_some(),
        _ => false,
    }
}

/// The kernel runs `-m tcp` only on rules with `-p tcp` (and so on).
fn protocol_allows(proto: Option<Protocol>, m: &Match) -> bool {
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

/// Offer `opt` (at token `i`) to a pending match.
fn offer_match(
    m: &mut PendingMatch,
    opt: &str,
    i: usize,
    negated: bool,
    cur: &mut Cursor<'_>,
) -> Result<Offer, ParseError> {
    let no_neg = |cur: &Cursor<'_>| -> Result<(), ParseError> {
        if negated {
            Err(cur.err(i, format!("! is not allowed before {opt}")))
        } else {
            Ok(())
        }
    };
    let dup = |cur: &Cursor<'_>| cur.err(i, format!("multiple {opt} flags not allowed"));
    match m {
        PendingMatch::Ports(_, p) => {
            let slot = match opt {
                "--sport" | "--source-port" => &mut p.sport,
                "--dport" | "--destination-port" => &mut p.dport,
                _ => return Ok(Offer::NotMine),
            };
            if slot.is_some() {
                return Err(dup(cur));
            }
            let (vi, v) = cur.value(i)?;
            let r = PortRange::parse_match(v).map_err(|e| cur.err(vi, e))?;
            *slot = Some(Negatable { negated, value: r });
        }
        PendingMatch::AddrType(t) => match opt {
            "--src-type" | "--dst-type" => {
                let slot = if opt == "--src-type" {
                    &mut t.src_type
                } else {
                    &mut t.dst_type
                };
                if slot.is_some() {
                    return Err(dup(cur));
                }
                let (vi, v) = cur.value(i)?;
                let set = parse_set(v, AddrType::parse, "unknown address type")
                    .map_err(|e| cur.err(vi, e))?;
                *slot = Some(Negatable {
                    negated,
                    value: set,
                });
            }
            "--limit-iface-in" | "--limit-iface-out" => {
                no_neg(cur)?;
                let flag = if opt == "--limit-iface-in" {
                    &mut t.limit_iface_in
                } else {
                    &mut t.limit_iface_out
                };
                if *flag {
                    return Err(dup(cur));
                }
                *flag = true;
            }
            _ => return Ok(Offer::NotMine),
        },
        PendingMatch::Mark(slot) => {
            if opt != "--mark" {
                return Ok(Offer::NotMine);
            }
            if slot.is_some() {
                return Err(dup(cur));
            }
            let (vi, v) = cur.value(i)?;
            let (value, mask) = parse_mark(v).map_err(|e| cur.err(vi, e))?;
            *slot = Some((negated, value, mask.unwrap_or(u32::MAX)));
        }
        PendingMatch::Comment(slot) => {
            if opt != "--comment" {
                return Ok(Offer::NotMine);
            }
            no_neg(cur)?;
            if slot.is_some() {
                return Err(dup(cur));
            }
            let (vi, v) = cur.value(i)?;
            check_save_string(v, 255).map_err(|e| cur.err(vi, e))?;
            *slot = Some(v.to_string());
        }
        PendingMatch::Statistic {
            mode,
            probability,
            every,
            packet,
            negated: neg,
        } => match opt {
            "--mode" => {
                no_neg(cur)?;
                if mode.is_some() {
                    return Err(dup(cur));
                }
                let (vi, v) = cur.value(i)?;
                if v != "random" && v != "nth" {
                    return Err(cur.err(vi, "unknown statistic mode (random or nth)"));
                }
                *mode = Some(v.to_string());
            }
            "--probability" => {
                if probability.is_some() {
                    return Err(dup(cur));
                }
                let (vi, v) = cur.value(i)?;
                *probability = Some(Probability::parse(v).map_err(|e| cur.err(vi, e))?);
                *neg |= negated;
            }
            "--every" => {
                if every.is_some() {
                    return Err(dup(cur));
                }
                let (vi, v) = cur.value(i)?;
                let n = parse_u32(v).map_err(|e| cur.err(vi, e))?;
                if n == 0 {
                    return Err(cur.err(vi, "--every must be at least 1"));
                }
                *every = Some(n);
                *neg |= negated;
            }
            "--packet" => {
                no_neg(cur)?;
                if packet.is_some() {
                    return Err(dup(cur));
                }
                let (vi, v) = cur.value(i)?;
                *packet = Some(parse_u32(v).map_err(|e| cur.err(vi, e))?);
            }
            _ => return Ok(Offer::NotMine),
        },
        PendingMatch::Conntrack(_) | PendingMatch::State(_) => {
            let want = if matches!(m, PendingMatch::Conntrack(_)) {
                "--ctstate"
            } else {
                "--state"
            };
            if opt != want {
                return Ok(Offer::NotMine);
            }
            let is_state = want == "--state";
            let slot = match m {
                PendingMatch::Conntrack(s) | PendingMatch::State(s) => s,
                _ => return Ok(Offer::NotMine),
            };
            if slot.is_some() {
                return Err(dup(cur));
            }
            let (vi, v) = cur.value(i)?;
            let set = parse_set(
                v,
                |s| {
                    CtState::parse(s)
                        .filter(|c| !is_state || !matches!(c, CtState::Snat | CtState::Dnat))
                },
                "unknown connection state",
            )
            .map_err(|e| cur.err(vi, e))?;
            *slot = Some(Negatable {
                negated,
                value: set,
            });
        }
        PendingMatch::Recent(r) => {
            let command = match opt {
                "--set" => Some(RecentCommand::Set),
                "--rcheck" => Some(RecentCommand::Rcheck),
                "--update" => Some(RecentCommand::Update),
                "--remove" => Some(RecentCommand::Remove),
                _ => None,
            };
            if let Some(c) = command {
                if r.command.is_some() {
                    return Err(cur.err(
                        i,
                        "recent takes only one of --set, --rcheck, --update, --remove",
                    ));
                }
                r.command = Some(Negatable { negated, value: c });
                return Ok(Offer::Taken);
            }
            match opt {
                "--seconds" | "--hitcount" => {
                    no_neg(cur)?;
                    let slot = if opt == "--seconds" {
                        &mut r.seconds
                    } else {
                        &mut r.hitcount
                    };
                    if slot.is_some() {
                        return Err(dup(cur));
                    }
                    let (vi, v) = cur.value(i)?;
                    *slot = Some(parse_u32(v).map_err(|e| cur.err(vi, e))?);
                }
                "--reap" | "--rttl" => {
                    no_neg(cur)?;
                    let flag = if opt == "--reap" {
                        &mut r.reap
                    } else {
                        &mut r.rttl
                    };
                    if *flag {
                        return Err(dup(cur));
                    }
                    *flag = true;
                }
                "--name" => {
                    no_neg(cur)?;
                    if r.name.is_some() {
                        return Err(dup(cur));
                    }
                    let (vi, v) = cur.value(i)?;
                    check_recent_name(v).map_err(|e| cur.err(vi, e))?;
                    r.name = Some(v.to_string());
                }
                "--mask" => {
                    no_neg(cur)?;
                    if r.mask.is_some() {
                        return Err(dup(cur));
                    }
                    let (vi, v) = cur.value(i)?;
                    r.mask = Some(
                        v.parse()
                            .map_err(|_| cur.err(vi, "invalid --mask address"))?,
                    );
                }
                "--rsource" | "--rdest" => {
                    no_neg(cur)?;
                    if r.side.is_some() {
                        return Err(cur.err(i, "recent takes only one of --rsource, --rdest"));
                    }
                    r.side = Some(if opt == "--rsource" {
                        RecentSide::Source
                    } else {
                        RecentSide::Dest
                    });
                }
                _ => return Ok(Offer::NotMine),
            }
        }
        PendingMatch::Multiport(slot) => {
            let kind = match opt {
                "--sports" | "--source-ports" => MultiportKind::Source,
                "--dports" | "--destination-ports" => MultiportKind::Destination,
                "--ports" => MultiportKind::Either,
                _ => return Ok(Offer::NotMine),
            };
            if slot.is_some() {
                return Err(cur.err(i, "multiport takes only one of --sports, --dports, --ports"));
            }
            let (vi, v) = cur.value(i)?;
            let mut ports = Vec::new();
            for p in v.split(',') {
                ports.push(PortRange::parse_match(p).map_err(|e| cur.err(vi, e))?);
            }
            // The kernel's xt_multiport holds 15 slots; a range takes two.
            let slots: usize = ports
                .iter()
                .map(|p| if p.first == p.last { 1 } else { 2 })
                .sum();
            if slots > 15 {
                return Err(cur.err(vi, "too many ports specified (at most 15)"));
            }
            *slot = Some((
                kind,
                Negatable {
                    negated,
                    value: ports,
                },
            ));
        }
    }
    Ok(Offer::Taken)
}

fn finish_match(m: PendingMatch) -> Result<Match, &'static str> {
    Ok(match m {
        PendingMatch::Ports(Protocol::Tcp, p) => Match::Tcp(p),
        PendingMatch::Ports(Protocol::Udp, p) => Match::Udp(p),
        PendingMatch::Ports(_, p) => Match::Sctp(p),
        PendingMatch::AddrType(t) => {
            if t.src_type.is_none() && t.dst_type.is_none() {
                return Err("addrtype needs --src-type or --dst-type");
            }
            if t.limit_iface_in && t.limit_iface_out {
                return Err("addrtype takes only one of --limit-iface-in, --limit-iface-out");
            }
            Match::AddrType(t)
        }
        PendingMatch::Mark(Some((negated, value, mask))) => Match::Mark {
            negated,
            value,
            mask,
        },
        PendingMatch::Mark(None) => return Err("mark match needs --mark"),
        PendingMatch::Comment(Some(c)) => Match::Comment(c),
        PendingMatch::Comment(None) => return Err("comment match needs --comment"),
        PendingMatch::Statistic {
            mode,
            probability,
            every,
            packet,
            negated,
        } => {
            let mode = match (mode.as_deref(), probability, every) {
                (Some("random"), Some(probability), None) if packet.is_none() => {
                    StatisticMode::Random { probability }
                }
                (Some("random"), _, _) => {
                    return Err(
                        "statistic --mode random needs --probability (and no --every/--packet)",
                    )
                }
                (Some("nth"), None, Some(every)) => {
                    let Some(packet) = packet else {
                        return Err("statistic --every needs --packet");
                    };
                    if packet >= every {
                        return Err("statistic --packet must be below --every");
                    }
                    StatisticMode::Nth { every, packet }
                }
                (Some("nth"), _, _) => {
                    return Err("statistic --mode nth needs --every (and no --probability)")
                }
                _ => return Err("statistic match needs --mode"),
            };
            Match::Statistic(StatisticMatch { mode, negated })
        }
        PendingMatch::Conntrack(Some(ctstate)) => Match::Conntrack { ctstate },
        PendingMatch::Conntrack(None) => return Err("conntrack match needs --ctstate"),
        PendingMatch::State(Some(s)) => Match::State(s),
        PendingMatch::State(None) => return Err("state match needs --state"),
        PendingMatch::Multiport(Some((kind, ports))) => Match::Multiport { kind, ports },
        PendingMatch::Recent(r) => {
            let Some(command) = r.command else {
                return Err("recent needs one of --set, --rcheck, --update, --remove");
            };
            // iptables-save leaves out a zero --seconds or --hitcount.
            let seconds = r.seconds.filter(|s| *s != 0);
            let hitcount = r.hitcount.filter(|h| *h != 0);
            if r.reap && seconds.is_none() {
                return Err("recent --reap needs --seconds");
            }
            // iptables prints --seconds as a signed int.
            if seconds.is_some_and(|s| s > i32::MAX as u32) {
                return Err("recent --seconds above 2147483647");
            }
            // The kernel keeps at most ip_pkt_list_tot (<= 255) timestamps.
            if hitcount.is_some_and(|h| h > 255) {
                return Err("recent --hitcount above 255");
            }
            let checks = matches!(command.value, RecentCommand::Rcheck | RecentCommand::Update);
            if !checks && (seconds.is_some() || hitcount.is_some() || r.rttl) {
                return Err("recent --seconds, --hitcount and --rttl need --rcheck or --update");
            }
            Match::Recent(RecentMatch {
                command,
                seconds,
                reap: r.reap,
                hitcount,
                rttl: r.rttl,
                name: r.name.unwrap_or_else(|| "DEFAULT".to_string()),
                mask: r.mask.unwrap_or(IpAddr::V4(Ipv4Addr::BROADCAST)),
                side: r.side.unwrap_or_default(),
            })
        }
        PendingMatch::Multiport(None) => {
            return Err("multiport needs --sports, --dports or --ports")
        }
    })
}

/// Offer `opt` (at token `i`) to the target.
fn offer_target(
    t: &mut PendingTarget,
    opt: &str,
    i: usize,
    negated: bool,
    cur: &mut Cursor<'_>,
) -> Result<Offer, ParseError> {
    let check = |cur: &Cursor<'_>, already: bool| -> Result<(), ParseError> {
        if negated {
            return Err(cur.err(i, format!("! is not allowed before {opt}")));
        }
        if already {
            return Err(cur.err(i, format!("multiple {opt} flags not allowed")));
        }
        Ok(())
    };
    let has_action = t.has_action;
    match &mut t.target {
        Jump::Reject { with } => {
            if opt != "--reject-with" {
                return Ok(Offer::NotMine);
            }
            check(cur, has_action)?;
            let (vi, v) = cur.value(i)?;
            *with =
                RejectWith::parse(v).ok_or_else(|| cur.err(vi, "unknown --reject-with type"))?;
            t.has_action = true;
        }
        Jump::Dnat {
            to,
            random,
            persistent,
        } => match opt {
            "--to-destination" | "--to" => {
                check(cur, has_action)?;
                let (vi, v) = cur.value(i)?;
                *to = NatRange::parse(v).map_err(|e| cur.err(vi, e))?;
                t.has_action = true;
            }
            "--random" => {
                check(cur, *random)?;
                *random = true;
            }
            "--persistent" => {
                check(cur, *persistent)?;
                *persistent = true;
            }
            _ => return Ok(Offer::NotMine),
        },
        Jump::Snat {
            to,
            random,
            random_fully,
            persistent,
        } => match opt {
            "--to-source" | "--to" => {
                check(cur, has_action)?;
                let (vi, v) = cur.value(i)?;
                *to = NatRange::parse(v).map_err(|e| cur.err(vi, e))?;
                t.has_action = true;
            }
            "--random" => {
                check(cur, *random)?;
                *random = true;
            }
            "--random-fully" => {
                check(cur, *random_fully)?;
                *random_fully = true;
            }
            "--persistent" => {
                check(cur, *persistent)?;
                *persistent = true;
            }
            _ => return Ok(Offer::NotMine),
        },
        Jump::Masquerade {
            to_ports,
            random,
            random_fully,
        } => match opt {
            "--to-ports" => {
                check(cur, to_ports.is_some())?;
                let (vi, v) = cur.value(i)?;
                *to_ports = Some(PortRange::parse_nat(v).map_err(|e| cur.err(vi, e))?);
            }
            "--random" => {
                check(cur, *random)?;
                *random = true;
            }
            "--random-fully" => {
                check(cur, *random_fully)?;
                *random_fully = true;
            }
            _ => return Ok(Offer::NotMine),
        },
        Jump::Mark(action) => {
            let make: fn(u32, Option<u32>) -> Option<MarkAction> = match opt {
                "--set-xmark" => |v, m| Some(MarkAction::SetXmark { value: v, mask: m }),
                "--set-mark" => |v, m| Some(MarkAction::SetMark { value: v, mask: m }),
                "--and-mark" => |v, m| m.is_none().then_some(MarkAction::AndMark(v)),
                "--or-mark" => |v, m| m.is_none().then_some(MarkAction::OrMark(v)),
                "--xor-mark" => |v, m| m.is_none().then_some(MarkAction::XorMark(v)),
                _ => return Ok(Offer::NotMine),
            };
            if negated {
                return Err(cur.err(i, format!("! is not allowed before {opt}")));
            }
            if has_action {
                return Err(cur.err(i, "MARK target takes only one of --set-xmark, --set-mark, --and-mark, --or-mark, --xor-mark"));
            }
            let (vi, v) = cur.value(i)?;
            let (value, mask) = parse_mark(v).map_err(|e| cur.err(vi, e))?;
            *action =
                make(value, mask).ok_or_else(|| cur.err(vi, format!("{opt} takes no mask")))?;
            t.has_action = true;
        }
        Jump::Log { prefix, level } => match opt {
            "--log-prefix" => {
                check(cur, prefix.is_some())?;
                let (vi, v) = cur.value(i)?;
                check_save_string(v, 29).map_err(|e| cur.err(vi, e))?;
                *prefix = Some(v.to_string());
            }
            "--log-level" => {
                check(cur, level.is_some())?;
                let (vi, v) = cur.value(i)?;
                *level = Some(parse_log_level(v).ok_or_else(|| cur.err(vi, "unknown log level"))?);
            }
            _ => return Ok(Offer::NotMine),
        },
        Jump::Accept | Jump::Drop | Jump::Return | Jump::Chain(_) | Jump::Goto(_) => {
            return Ok(Offer::NotMine);
        }
    }
    Ok(Offer::Taken)
}

fn parse_log_level(s: &str) -> Option<u8> {
    const NAMES: [&str; 8] = [
        "emerg", "alert", "crit", "error", "warning", "notice", "info", "debug",
    ];
    if is_decimal(s) {
        return s.parse::<u8>().ok().filter(|l| *l <= 7);
    }
    match s {
        "err" => Some(3),
        "warn" => Some(4),
        "panic" => Some(0),
        _ => NAMES.iter().position(|n| *n == s).map(|p| p as u8),
    }
}

/// `NAME POLICY [packets:bytes]` after the `:`.
fn parse_chain_decl(t: &mut TableDump, decl: &str) -> Result<(), ParseError> {
    let parts: Vec<&str> = decl.split_whitespace().collect();
    let Some(&name) = parts.first() else {
        return Err(ParseError::new("missing chain name after :", ":", 0));
    };
    let Some(&policy) = parts.get(1) else {
        return Err(ParseError::new("missing policy after chain name", name, 0));
    };
    let policy = match policy {
        "-" => None,
        "ACCEPT" => Some(Policy::Accept),
        "DROP" => Some(Policy::Drop),
        other => {
            return Err(ParseError::new(
                "invalid policy (ACCEPT, DROP or -)",
                other,
                1,
            ))
        }
    };
    let counters = match parts.get(2) {
        None => Counters::default(),
        Some(c) => parse_counters(c).ok_or_else(|| ParseError::new("invalid counters", *c, 2))?,
    };
    if let Some(extra) = parts.get(3) {
        return Err(ParseError::new(
            "unexpected argument after counters",
            *extra,
            3,
        ));
    }
    t.declare_chain(name, policy)?;
    if let Some(c) = t.chain_mut(name) {
        c.counters = counters;
    }
    Ok(())
}

fn parse_counters(s: &str) -> Option<Counters> {
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    let (p, b) = inner.split_once(':')?;
    if !is_decimal(p) || !is_decimal(b) {
        return None;
    }
    Some(Counters {
        packets: p.parse().ok()?,
        bytes: b.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What `iptables-save -t nat` prints on a node where kube-proxy (iptables
    /// mode) programs a ClusterIP service with three endpoints and a NodePort
    /// service, next to docker's rules and the guide's masquerade rule.
    /// Checked against iptables v1.8.9 (nf_tables and legacy): restoring
    /// it and saving again gives these lines back (counters aside).
    const KUBE_NAT: &str = r#"# Generated by iptables-save v1.8.7 on Mon Jan  1 00:00:00 2024
*nat
:PREROUTING ACCEPT [12:720]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [40:2400]
:POSTROUTING ACCEPT [40:2400]
:DOCKER - [0:0]
:KUBE-MARK-DROP - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-SEP-BBBBBBBBBBBBBBBB - [0:0]
:KUBE-SEP-CCCCCCCCCCCCCCCC - [0:0]
:KUBE-SEP-DDDDDDDDDDDDDDDD - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING ! -d 10.10.0.0/16 -m addrtype ! --dst-type LOCAL -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODEPORTS -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-AAAAAAAAAAAAAAAA -s 10.10.1.5/32 -m comment --comment "default/svc:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-AAAAAAAAAAAAAAAA -p tcp -m comment --comment "default/svc:http" -m tcp -j DNAT --to-destination 10.10.1.5:8080
-A KUBE-SEP-BBBBBBBBBBBBBBBB -s 10.10.2.7/32 -m comment --comment "default/svc:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-BBBBBBBBBBBBBBBB -p tcp -m comment --comment "default/svc:http" -m tcp -j DNAT --to-destination 10.10.2.7:8080
-A KUBE-SEP-CCCCCCCCCCCCCCCC -s 10.10.3.9/32 -m comment --comment "default/svc:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-CCCCCCCCCCCCCCCC -p tcp -m comment --comment "default/svc:http" -m tcp -j DNAT --to-destination 10.10.3.9:8080
-A KUBE-SEP-DDDDDDDDDDDDDDDD -s 10.10.1.6/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-DDDDDDDDDDDDDDDD -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.10.1.6:80
-A KUBE-SERVICES ! -s 10.10.0.0/16 -d 10.0.0.10/32 -p tcp -m comment --comment "default/svc:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SERVICES -d 10.0.0.10/32 -p tcp -m comment --comment "default/svc:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -d 10.0.0.11/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j KUBE-MARK-MASQ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "default/web:http" -j KUBE-SEP-DDDDDDDDDDDDDDDD
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "default/svc:http" -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-AAAAAAAAAAAAAAAA
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "default/svc:http" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-BBBBBBBBBBBBBBBB
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "default/svc:http" -j KUBE-SEP-CCCCCCCCCCCCCCCC
COMMIT
# Completed on Mon Jan  1 00:00:00 2024
"#;

    /// kube-proxy's filter table rules (iptables-save form).
    const KUBE_FILTER: &str = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-FIREWALL -m comment --comment "kubernetes firewall for dropping marked packets" -m mark --mark 0x8000/0x8000 -j DROP
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-SERVICES -d 10.0.0.12/32 -p tcp -m comment --comment "default/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-SERVICES -d 10.0.0.13/32 -p udp -m comment --comment "default/dns:dns has no endpoints" -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable
COMMIT
"#;

    fn rule(s: &str) -> Rule {
        Rule::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn kube_proxy_nat_dump_round_trips_byte_for_byte() {
        let set = Ruleset::parse(KUBE_NAT).unwrap();
        assert_eq!(set.emit(), KUBE_NAT);
        let nat = set.table(Table::Nat).unwrap();
        assert_eq!(nat.chains().len(), 16);
        assert_eq!(nat.chains()[4].name, "DOCKER");
        assert_eq!(
            nat.chain("PREROUTING").unwrap().counters,
            Counters {
                packets: 12,
                bytes: 720
            }
        );
        assert_eq!(nat.chain("KUBE-SERVICES").unwrap().policy, None);
        assert_eq!(nat.rules("KUBE-SVC-XPGD46QRK7WJZT7O").unwrap().len(), 3);
        assert!(nat.rules("KUBE-NOPE").is_none());
        assert_eq!(
            set.trailing_comments,
            vec![" Completed on Mon Jan  1 00:00:00 2024"]
        );
    }

    /// What kube-proxy itself writes to iptables-restore for the same
    /// rules: its own option order, no `/32`, unquoted comments,
    /// `--or-mark`/`--xor-mark` and 10-decimal probabilities.
    #[test]
    fn kube_proxy_restore_input_is_saved_as_the_fixture() {
        let saved = Ruleset::parse(KUBE_NAT).unwrap();
        let nat = saved.table(Table::Nat).unwrap();
        for (written, chain, index) in [
            ("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000", "KUBE-MARK-MASQ", 0),
            ("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN", "KUBE-POSTROUTING", 0),
            ("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000", "KUBE-POSTROUTING", 1),
            ("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully", "KUBE-POSTROUTING", 2),
            ("-A KUBE-SERVICES -m comment --comment \"default/svc:http cluster IP\" -m tcp -p tcp -d 10.0.0.10 --dport 80 ! -s 10.10.0.0/16 -j KUBE-MARK-MASQ", "KUBE-SERVICES", 0),
            ("-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment default/svc:http -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-AAAAAAAAAAAAAAAA", "KUBE-SVC-XPGD46QRK7WJZT7O", 0),
            ("-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment default/svc:http -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-BBBBBBBBBBBBBBBB", "KUBE-SVC-XPGD46QRK7WJZT7O", 1),
            ("-A KUBE-SEP-AAAAAAAAAAAAAAAA -m comment --comment default/svc:http -s 10.10.1.5 -j KUBE-MARK-MASQ", "KUBE-SEP-AAAAAAAAAAAAAAAA", 0),
            ("-A KUBE-SEP-AAAAAAAAAAAAAAAA -m comment --comment default/svc:http -m tcp -p tcp -j DNAT --to-destination 10.10.1.5:8080", "KUBE-SEP-AAAAAAAAAAAAAAAA", 1),
        ] {
            let r = rule(written);
            // Kept as written, so the fake kube-proxy can write exactly this.
            assert_eq!(Rule::parse(&r.emit()).unwrap(), r);
            assert_eq!(r.to_saved(), nat.rules(chain).unwrap()[index], "{written}");
        }
    }

    #[test]
    fn kube_proxy_filter_dump_round_trips_and_types_the_fields() {
        let set = Ruleset::parse(KUBE_FILTER).unwrap();
        assert_eq!(set.emit(), KUBE_FILTER);
        let f = set.table(Table::Filter).unwrap();
        assert_eq!(f.chain("FORWARD").unwrap().policy, Some(Policy::Drop));
        let fw = &f.rules("KUBE-FIREWALL").unwrap()[1];
        assert_eq!(
            fw.matches[1],
            Match::Conntrack {
                ctstate: Negatable::not(BTreeSet::from([
                    CtState::Related,
                    CtState::Established,
                    CtState::Dnat
                ]))
            }
        );
        assert_eq!(fw.target, Some(Jump::Drop));
    }

    #[test]
    fn statistic_probability_keeps_its_text_and_value() {
        let r = rule(
            "-A KUBE-SVC-X -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-A",
        );
        let Match::Statistic(s) = &r.matches[0] else {
            panic!("not statistic: {r:?}")
        };
        assert!((s.probability() - 0.33333333349).abs() < 1e-12);
        assert!(r.emit().contains("--probability 0.33333333349"));
        // kube-proxy's own 10-decimal text also round-trips as written.
        let r = rule(
            "-A KUBE-SVC-X -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-A",
        );
        assert!(r
            .emit()
            .ends_with("--probability 0.3333333333 -j KUBE-SEP-A"));
        assert_eq!(
            Probability::from_f64(0.5).unwrap().as_str(),
            "0.50000000000"
        );
    }

    #[test]
    fn guide_masquerade_rule_is_typed() {
        let line = "-A POSTROUTING ! -d 10.10.0.0/16 -m addrtype ! --dst-type LOCAL -j MASQUERADE";
        let r = rule(line);
        assert_eq!(r.emit(), line);
        let built = Rule::new("POSTROUTING")
            .not_destination("10.10.0.0/16".parse().unwrap())
            .with(Match::dst_type(AddrType::Local, true))
            .target(Jump::masquerade());
        assert_eq!(r, built);
        assert_eq!(
            r.to_args(),
            [
                "!",
                "-d",
                "10.10.0.0/16",
                "-m",
                "addrtype",
                "!",
                "--dst-type",
                "LOCAL",
                "-j",
                "MASQUERADE"
            ]
        );
        assert_eq!(Rule::from_args("POSTROUTING", &r.to_args()).unwrap(), r);
        assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{line}\""));
    }

    #[test]
    fn docker_nat_rules_round_trip() {
        for line in [
            "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
            "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
            "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
            "-A DOCKER -i docker0 -j RETURN",
            "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-A FORWARD -i veth+ -j ACCEPT",
        ] {
            assert_eq!(rule(line).emit(), line);
        }
        let r = rule("-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE");
        assert_eq!(
            r.out_interface,
            Some(Negatable::not(Interface {
                name: "docker0".into(),
                wildcard: false
            }))
        );
    }

    #[test]
    fn kube_proxy_restore_input_normalises_to_iptables_save_form() {
        // kube-proxy writes restore input in its own option order, without
        // /32 and without quoting; the kernel stores the same rule either way.
        let written = rule("-A KUBE-SERVICES -m comment --comment ns1/svc1:p80 -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O");
        let saved = rule("-A KUBE-SERVICES -d 172.30.0.41/32 -p tcp -m comment --comment \"ns1/svc1:p80\" -m tcp --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(written, saved);
        assert_eq!(written.emit(), saved.emit());
        // Implicit tcp match, decimal marks, REJECT default, or-mark kept.
        assert_eq!(
            rule("-A X -p tcp --dport 8080 -j REJECT").emit(),
            "-A X -p tcp -m tcp --dport 8080 -j REJECT --reject-with icmp-port-unreachable"
        );
        assert_eq!(
            rule("-A X -m mark --mark 16384/16384 -j ACCEPT").emit(),
            "-A X -m mark --mark 0x4000/0x4000 -j ACCEPT"
        );
        assert_eq!(
            rule("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000").emit(),
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"
        );
        assert_eq!(
            rule("-A X -p all -s 10.1.2.3/8 -j ACCEPT").emit(),
            "-A X -s 10.0.0.0/8 -j ACCEPT"
        );
        assert_eq!(
            rule("-A X -s 10.1.0.0/255.255.0.0 -j ACCEPT").emit(),
            "-A X -s 10.1.0.0/16 -j ACCEPT"
        );
        assert_eq!(
            rule("-A X -p tcp -m multiport --dports 80,443,8000:8080 -j ACCEPT").emit(),
            "-A X -p tcp -m multiport --dports 80,443,8000:8080 -j ACCEPT"
        );
        assert_eq!(
            rule("-A X -m state --state ESTABLISHED,NEW -j ACCEPT").emit(),
            "-A X -m state --state NEW,ESTABLISHED -j ACCEPT"
        );
    }

    #[test]
    fn session_affinity_rules_round_trip() {
        let set = "-A KUBE-SEP-AAAAAAAAAAAAAAAA -p tcp -m comment --comment \"default/svc:http\" -m recent --set --name KUBE-SEP-AAAAAAAAAAAAAAAA --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.10.1.5:8080";
        let check = "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"default/svc:http\" -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-AAAAAAAAAAAAAAAA --mask 255.255.255.255 --rsource -j KUBE-SEP-AAAAAAAAAAAAAAAA";
        assert_eq!(rule(set).emit(), set);
        assert_eq!(rule(check).emit(), check);
        assert_eq!(
            rule(check).matches[1],
            Match::Recent(RecentMatch::rcheck("KUBE-SEP-AAAAAAAAAAAAAAAA", 10800))
        );
        // kube-proxy's input form leaves out the defaults iptables-save prints.
        let short = rule("-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment default/svc:http -m recent --name KUBE-SEP-AAAAAAAAAAAAAAAA --rcheck --seconds 10800 --reap -j KUBE-SEP-AAAAAAAAAAAAAAAA");
        assert_eq!(short.emit(), check);
        let e = Rule::parse("-A X -m recent --name A --reap").unwrap_err();
        assert_eq!((e.token.as_str(), e.index), ("recent", 3));
    }

    #[test]
    fn targets_round_trip() {
        for line in [
            "-A X -j ACCEPT",
            "-A X -j DROP",
            "-A X -j RETURN",
            "-A X -p tcp -j REJECT --reject-with tcp-reset",
            "-A X -g KUBE-SEP-A",
            "-A X -p tcp -m tcp -j DNAT --to-destination 10.180.0.1:80",
            "-A X -p udp -j DNAT --to-destination 10.0.0.1-10.0.0.9:1024-2048 --random --persistent",
            "-A X -p tcp -j DNAT --to-destination [fd00::1]:80",
            "-A X -j DNAT --to-destination fd00::1",
            "-A X -j SNAT --to-source 192.168.1.10 --random-fully",
            "-A X -p tcp -j MASQUERADE --to-ports 1024-65535 --random",
            "-A X -j MARK --set-xmark 0x4000/0xffffffff",
            "-A X -j MARK --set-mark 0x1",
            "-A X -j MARK --and-mark 0xffffbfff",
            "-A X -j MARK --xor-mark 0x4000",
            "-A X -j LOG --log-prefix \"dropped: \" --log-level 6",
            "-A X -m comment --comment \"say \\\"hi\\\" \\\\ it\\'s\" -j ACCEPT",
            "-A X -m comment --comment \"\"",
            "-A X",
            "-A X -p udp -m udp ! --sport 1:1023 -m statistic --mode nth ! --every 3 --packet 1",
            "-A X -m addrtype --src-type UNICAST,LOCAL --limit-iface-in -j ACCEPT",
        ] {
            let r = rule(line);
            assert_eq!(r.emit(), line);
            assert_eq!(Rule::from_args("X", &r.to_args()).unwrap(), r, "{line}");
        }
        let r = rule("-A X -j MARK --xor-mark 0x4000");
        assert_eq!(r.target, Some(Jump::Mark(MarkAction::XorMark(0x4000))));
        assert_eq!(MarkAction::OrMark(0x4000).as_xmark(), (0x4000, 0x4000));
    }

    #[test]
    fn errors_name_the_offending_token() {
        let cases: &[(&str, &str, usize)] = &[
            ("-A X -m frobnicate -j ACCEPT", "frobnicate", 3),
            ("-A X -p tcp --frob 1", "--frob", 4),
            ("-A X -s", "-s", 2),
            ("-A X -s not-an-ip", "not-an-ip", 3),
            ("-A X -m comment --comment \"open", "open", 5),
            ("-A X -m tcp --dport 80", "tcp", 3),
            ("-A X -m mark -j ACCEPT", "mark", 3),
            ("-A X -j MARK", "MARK", 3),
            ("-A X ! -m tcp", "-m", 3),
            ("-A X -d 10.0.0.0/8 !", "!", 4),
            ("-A X -j ACCEPT -j DROP", "-j", 4),
            ("-A X -p tcp -m tcp --dport http", "http", 7),
            ("-A X -m statistic --mode random", "statistic", 3),
            (
                "-A X -j DNAT --to-destination 10.0.0.1:99999",
                "10.0.0.1:99999",
                5,
            ),
            ("-A X stray", "stray", 2),
            ("-I X -j ACCEPT", "-I", 0),
            ("", "", 0),
        ];
        for (line, token, index) in cases {
            let e = Rule::parse(line).expect_err(line);
            assert_eq!((e.token.as_str(), e.index), (*token, *index), "{line}: {e}");
        }
    }

    #[test]
    fn dump_errors_carry_line_numbers() {
        let e = Ruleset::parse("*nat\n:POSTROUTING ACCEPT [0:0]\n-A KUBE-X -j ACCEPT\nCOMMIT\n")
            .unwrap_err();
        assert_eq!((e.line, e.token.as_str()), (Some(3), "KUBE-X"));
        let e = Ruleset::parse("*nat\n:POSTROUTING ACCEPT [0:0]\n").unwrap_err();
        assert!(e.message.contains("COMMIT"), "{e}");
        let e = Ruleset::parse("*nat\n:KUBE-X ACCEPT [0:0]\nCOMMIT\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        let e = Ruleset::parse("*bogus\nCOMMIT\n").unwrap_err();
        assert_eq!(e.token, "bogus");
        let e = Ruleset::parse("*nat\n-F\nCOMMIT\n").unwrap_err();
        assert_eq!(e.token, "-F");
    }

    #[test]
    fn table_serializes_lowercase() {
        assert_eq!(serde_json::to_string(&Table::Nat).unwrap(), "\"nat\"");
        assert!(Table::Filter < Table::Nat);
    }

    // --- property tests -------------------------------------------------

    fn arb_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 0u8..=32)
                .prop_map(|(a, l)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap()).trunc()),
            (any::<u128>(), 0u8..=128)
                .prop_map(|(a, l)| IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), l).unwrap()).trunc()),
        ]
    }

    fn arb_neg<T: fmt::Debug + Clone>(
        s: impl Strategy<Value = T>,
    ) -> impl Strategy<Value = Negatable<T>> {
        (any::<bool>(), s).prop_map(|(negated, value)| Negatable { negated, value })
    }

    fn arb_iface() -> impl Strategy<Value = Interface> {
        ("[a-z][a-z0-9.]{0,13}", any::<bool>())
            .prop_map(|(name, wildcard)| Interface { name, wildcard })
    }

    fn arb_range() -> impl Strategy<Value = PortRange> {
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| PortRange {
            first: a.min(b),
            last: a.max(b),
        })
    }

    fn arb_ports() -> impl Strategy<Value = PortMatch> {
        (
            proptest::option::of(arb_neg(arb_range())),
            proptest::option::of(arb_neg(arb_range())),
        )
            .prop_map(|(sport, dport)| PortMatch { sport, dport })
    }

    fn arb_set<T: Ord + Copy + fmt::Debug + 'static>(
        all: &'static [T],
    ) -> impl Strategy<Value = BTreeSet<T>> {
        proptest::sample::subsequence(all, 1..=all.len().min(3))
            .prop_map(|v| v.into_iter().collect())
    }

    fn arb_text(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just(' '),
                Just('"'),
                Just('\\'),
                Just('\''),
                Just('/'),
                Just(':'),
                Just('é'),
                proptest::char::range('a', 'z'),
                proptest::char::range('0', '9'),
                Just('-'),
                Just('_'),
            ],
            0..max,
        )
        .prop_map(|v| v.into_iter().collect::<String>())
        .prop_filter("fits", move |s| s.len() <= max)
    }

    fn arb_generic_match() -> impl Strategy<Value = Match> {
        prop_oneof![
            (
                proptest::option::of(arb_neg(arb_set(&AddrType::ALL))),
                proptest::option::of(arb_neg(arb_set(&AddrType::ALL))),
                any::<bool>(),
                any::<bool>()
            )
                .prop_filter("one type, one limit", |(s, d, i, o)| {
                    (s.is_some() || d.is_some()) && !(*i && *o)
                })
                .prop_map(
                    |(src_type, dst_type, limit_iface_in, limit_iface_out)| Match::AddrType(
                        AddrTypeMatch {
                            src_type,
                            dst_type,
                            limit_iface_in,
                            limit_iface_out
                        }
                    )
                ),
            (
                any::<bool>(),
                any::<u32>(),
                prop_oneof![Just(u32::MAX), any::<u32>()]
            )
                .prop_map(|(negated, value, mask)| Match::Mark {
                    negated,
                    value,
                    mask
                }),
            arb_text(255).prop_map(Match::Comment),
            (any::<bool>(), 0u32..=1_000_000_000u32).prop_map(|(negated, n)| Match::Statistic(
                StatisticMatch {
                    mode: StatisticMode::Random {
                        probability: Probability::from_f64(f64::from(n) / 1e9).unwrap()
                    },
                    negated,
                }
            )),
            (any::<bool>(), 1u32..100, 0u32..100).prop_map(|(negated, every, p)| Match::Statistic(
                StatisticMatch {
                    mode: StatisticMode::Nth {
                        every,
                        packet: p % every
                    },
                    negated,
                }
            )),
            arb_neg(arb_set(&CtState::ALL)).prop_map(|ctstate| Match::Conntrack { ctstate }),
            arb_neg(arb_set(&CtState::ALL[..5])).prop_map(Match::State),
            (
                arb_neg(proptest::sample::select(vec![
                    RecentCommand::Set,
                    RecentCommand::Rcheck,
                    RecentCommand::Update,
                    RecentCommand::Remove
                ])),
                proptest::option::of(1u32..=i32::MAX as u32),
                any::<[bool; 3]>(),
                proptest::option::of(1u32..=20),
                "[A-Za-z0-9_.-]{1,30}",
                prop_oneof![
                    any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
                    any::<u128>().prop_map(|a| IpAddr::V6(a.into()))
                ],
            )
                .prop_map(
                    |(command, seconds, [reap, rttl, dest], hitcount, name, mask)| {
                        // --seconds, --hitcount, --rttl only make sense when checking.
                        let checks =
                            matches!(command.value, RecentCommand::Rcheck | RecentCommand::Update);
                        let (seconds, hitcount, rttl) = if checks {
                            (seconds, hitcount, rttl)
                        } else {
                            (None, None, false)
                        };
                        let side = if dest {
                            RecentSide::Dest
                        } else {
                            RecentSide::Source
                        };
                        Match::Recent(RecentMatch {
                            command,
                            reap: reap && seconds.is_some(),
                            seconds,
                            hitcount,
                            rttl,
                            name,
                            mask,
                            side,
                        })
                    }
                ),
        ]
    }

    fn arb_nat_range() -> impl Strategy<Value = NatRange> {
        prop_oneof![
            (
                any::<u32>(),
                proptest::option::of(any::<u16>()),
                proptest::option::of(arb_range())
            )
                .prop_map(|(a, extra, ports)| NatRange {
                    addr: IpAddr::V4(a.into()),
                    addr_last: extra
                        .map(|e| IpAddr::V4(Ipv4Addr::from(a.saturating_add(u32::from(e))))),
                    ports,
                }),
            (
                any::<u128>(),
                proptest::option::of(any::<u16>()),
                proptest::option::of(arb_range())
            )
                .prop_map(|(a, extra, ports)| NatRange {
                    addr: IpAddr::V6(a.into()),
                    addr_last: extra
                        .map(|e| IpAddr::V6(Ipv6Addr::from(a.saturating_add(u128::from(e))))),
                    ports,
                }),
        ]
    }

    fn arb_chain() -> impl Strategy<Value = String> {
        "[A-Z][A-Z0-9_-]{0,27}".prop_filter("not a target name", |c| {
            !matches!(
                c.as_str(),
                "ACCEPT"
                    | "DROP"
                    | "RETURN"
                    | "REJECT"
                    | "DNAT"
                    | "SNAT"
                    | "MASQUERADE"
                    | "MARK"
                    | "LOG"
            )
        })
    }

    fn arb_target() -> impl Strategy<Value = Jump> {
        let mark = prop_oneof![
            (any::<u32>(), proptest::option::of(any::<u32>()))
                .prop_map(|(value, mask)| MarkAction::SetXmark { value, mask }),
            (any::<u32>(), proptest::option::of(any::<u32>()))
                .prop_map(|(value, mask)| MarkAction::SetMark { value, mask }),
            any::<u32>().prop_map(MarkAction::AndMark),
            any::<u32>().prop_map(MarkAction::OrMark),
            any::<u32>().prop_map(MarkAction::XorMark),
        ];
        prop_oneof![
            Just(Jump::Accept),
            Just(Jump::Drop),
            Just(Jump::Return),
            proptest::sample::select(RejectWith::ALL.to_vec())
                .prop_map(|with| Jump::Reject { with }),
            arb_chain().prop_map(Jump::Chain),
            arb_chain().prop_map(Jump::Goto),
            (arb_nat_range(), any::<bool>(), any::<bool>()).prop_map(|(to, random, persistent)| {
                Jump::Dnat {
                    to,
                    random,
                    persistent,
                }
            }),
            (arb_nat_range(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
                |(to, random, random_fully, persistent)| Jump::Snat {
                    to,
                    random,
                    random_fully,
                    persistent
                }
            ),
            (
                proptest::option::of(arb_range()),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(to_ports, random, random_fully)| Jump::Masquerade {
                    to_ports,
                    random,
                    random_fully
                }),
            mark.prop_map(Jump::Mark),
            (
                proptest::option::of(arb_text(29)),
                proptest::option::of(0u8..=7)
            )
                .prop_map(|(prefix, level)| Jump::Log { prefix, level }),
        ]
    }

    prop_compose! {
        fn arb_rule()(
            chain in arb_chain(),
            source in proptest::option::of(arb_neg(arb_net())),
            destination in proptest::option::of(arb_neg(arb_net())),
            in_interface in proptest::option::of(arb_neg(arb_iface())),
            out_interface in proptest::option::of(arb_neg(arb_iface())),
            proto in proptest::option::of((any::<bool>(), prop_oneof![
                Just(Protocol::Tcp), Just(Protocol::Udp), Just(Protocol::Sctp), Just(Protocol::Icmp),
                Just(Protocol::Icmpv6), any::<u8>().prop_filter_map("named variant", |n| match Protocol::from_number(n) {
                    Some(Protocol::Other(n)) => Some(Protocol::Other(n)),
                    _ => None,
                }),
            ])),
            generic in proptest::collection::vec(arb_generic_match(), 0..4),
            ports in proptest::collection::vec(arb_ports(), 0..2),
            multi in proptest::option::of((prop_oneof![Just(MultiportKind::Source), Just(MultiportKind::Destination), Just(MultiportKind::Either)], arb_neg(proptest::collection::vec(arb_range(), 1..7)))),
            target in proptest::option::of(arb_target()),
        ) -> Rule {
            let protocol = proto.map(|(negated, value)| Negatable { negated, value });
            // A positive /0 is stored as no match, as the kernel does.
            let source = source.and_then(|n| addr_match(n.negated, n.value));
            let destination = destination.and_then(|n| addr_match(n.negated, n.value));
            let mut matches = generic;
            // Protocol matches only where the kernel accepts them.
            if let Some(Negatable { negated: false, value }) = &protocol {
                for p in ports {
                    match value {
                        Protocol::Tcp => matches.insert(0, Match::Tcp(p)),
                        Protocol::Udp => matches.push(Match::Udp(p)),
                        Protocol::Sctp => matches.push(Match::Sctp(p)),
                        _ => {}
                    }
                }
                if let (Some((kind, ports)), Protocol::Tcp | Protocol::Udp) = (multi, value) {
                    matches.push(Match::Multiport { kind, ports });
                }
            }
            // The kernel sends a TCP reset only for TCP.
            let tcp = matches!(protocol, Some(Negatable { negated: false, value: Protocol::Tcp }));
            let ports_ok = protocol_has_ports(protocol.as_ref().filter(|p| !p.negated).map(|p| p.value));
            let target = match target {
                Some(Jump::Reject { with: RejectWith::TcpReset }) if !tcp => Some(Jump::reject()),
                Some(Jump::Dnat { mut to, random, persistent }) if !ports_ok => {
                    to.ports = None;
                    Some(Jump::Dnat { to, random, persistent })
                }
                Some(Jump::Snat { mut to, random, random_fully, persistent }) if !ports_ok => {
                    to.ports = None;
                    Some(Jump::Snat { to, random, random_fully, persistent })
                }
                Some(Jump::Masquerade { random, random_fully, .. }) if !ports_ok => {
                    Some(Jump::Masquerade { to_ports: None, random, random_fully })
                }
                t => t,
            };
            Rule { chain, source, destination, in_interface, out_interface, protocol, matches, target }
        }
    }

    /// Whether iptables (IPv4, nf_tables flavour) loads the rule: no IPv6
    /// addresses, and no `! -s 0.0.0.0/0` (iptables-nft refuses a negated
    /// zero-length prefix that iptables-legacy accepts).
    fn real_iptables_accepts(r: &Rule) -> bool {
        let v4 = |n: &Option<Negatable<IpNet>>| match n {
            Some(Negatable {
                value: IpNet::V6(_),
                ..
            }) => false,
            Some(Negatable {
                negated: true,
                value,
            }) => value.prefix_len() != 0,
            _ => true,
        };
        let nat_v4 = |t: &NatRange| t.addr.is_ipv4();
        v4(&r.source)
            && v4(&r.destination)
            && r.matches.iter().all(|m| {
                !matches!(
                    m,
                    Match::Recent(RecentMatch {
                        mask: IpAddr::V6(_),
                        ..
                    })
                )
            })
            && match &r.target {
                Some(Jump::Dnat { to, .. }) | Some(Jump::Snat { to, .. }) => nat_v4(to),
                _ => true,
            }
    }

    /// Runs generated rules through the real `iptables-restore` and
    /// `iptables-save` in a private network namespace and checks that what
    /// comes back parses to the same rules. Needs root, `unshare` and
    /// iptables, so it is ignored by default: `.ci/run` runs it as root with
    /// `-- --ignored`. It uses the default `iptables` (nf_tables on current
    /// distributions), or `iptables-legacy` with `KSCRATCH_REAL_IPTABLES=legacy`.
    #[test]
    #[ignore = "needs root, unshare and iptables"]
    fn real_iptables_agrees_with_generated_rules() {
        let tool = match std::env::var("KSCRATCH_REAL_IPTABLES").as_deref() {
            Err(_) | Ok("1") => "iptables",
            Ok("legacy") => "iptables-legacy",
            Ok(other) => panic!("KSCRATCH_REAL_IPTABLES must be 1 or legacy, got {other:?}"),
        };
        use proptest::strategy::ValueTree;
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
        );
        let mut set = Ruleset::default();
        let mut wanted: Vec<(Table, Rule)> = Vec::new();
        while wanted.len() < 400 {
            let r = arb_rule().new_tree(&mut runner).unwrap().current();
            if !real_iptables_accepts(&r)
                || Table::Nat.is_builtin(&r.chain)
                || Table::Filter.is_builtin(&r.chain)
            {
                continue;
            }
            let table = match r.target {
                Some(Jump::Dnat { .. } | Jump::Snat { .. } | Jump::Masquerade { .. }) => Table::Nat,
                _ => Table::Filter,
            };
            wanted.push((table, r));
        }
        for table in [Table::Filter, Table::Nat] {
            let mut t = TableDump::new(table);
            for (_, r) in wanted.iter().filter(|(tb, _)| *tb == table) {
                for name in [
                    Some(&r.chain),
                    match &r.target {
                        Some(Jump::Chain(c) | Jump::Goto(c)) => Some(c),
                        _ => None,
                    },
                ]
                .into_iter()
                .flatten()
                {
                    if t.chain(name).is_none() {
                        t.declare_chain(name, None).unwrap();
                    }
                }
                t.append(r.clone()).unwrap();
            }
            set.tables.push(t);
        }
        let dir = std::env::temp_dir().join(format!("kscratch-ipt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("in.rules");
        std::fs::write(&input, set.emit()).unwrap();
        let out = std::process::Command::new("unshare")
            .arg("-n")
            .arg("sh")
            .arg("-c")
            .arg(format!(
                "{tool}-restore < {} && {tool}-save",
                input.display()
            ))
            .output()
            .expect("unshare and iptables are needed for KSCRATCH_REAL_IPTABLES=1");
        assert!(
            out.status.success(),
            "iptables-restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let saved = Ruleset::parse(&text).unwrap();
        // Every line iptables-save printed comes back byte for byte.
        for line in text.lines().filter(|l| l.starts_with("-A ")) {
            assert_eq!(Rule::parse(line).unwrap().emit(), line);
        }
        let mut mismatches = Vec::new();
        for t in &set.tables {
            let real = saved.table(t.table).unwrap();
            for c in t.chains() {
                let got = real.rules(&c.name).unwrap();
                for (ours, theirs) in c.rules.iter().zip(got) {
                    if ours.to_saved() != *theirs {
                        mismatches.push(format!(
                            "ours:   {}\nsaved:  {}",
                            ours.emit(),
                            theirs.emit()
                        ));
                    }
                }
                assert_eq!(c.rules.len(), got.len(), "{}", c.name);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            mismatches.is_empty(),
            "{} mismatches:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn rule_parse_emit_round_trips(r in arb_rule()) {
            prop_assert!(r.validate().is_ok(), "{:?}", r.validate());
            let text = r.emit();
            let back = Rule::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(&back, &r, "{}", text);
            prop_assert_eq!(back.emit(), text);
            let from_args = Rule::from_args(&r.chain, &r.to_args()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(from_args, r);
        }

        #[test]
        fn ruleset_parse_emit_round_trips(rules in proptest::collection::vec(arb_rule(), 0..12), table in proptest::sample::select(Table::ALL.to_vec()), comment in "[ -~]{0,40}") {
            let mut t = TableDump::with_builtin_chains(table);
            t.comments.push(comment.clone());
            for r in &rules {
                if t.chain(&r.chain).is_none() {
                    t.declare_chain(&r.chain, if table.is_builtin(&r.chain) { Some(Policy::Drop) } else { None }).unwrap();
                }
                t.append(r.clone()).unwrap();
            }
            let set = Ruleset { tables: vec![t, TableDump::with_builtin_chains(Table::Raw)], trailing_comments: vec![comment] };
            let set = if table == Table::Raw { Ruleset { tables: vec![set.tables[0].clone()], ..set } } else { set };
            let text = set.emit();
            let back = Ruleset::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(back, set);
        }

        #[test]
        fn rule_parse_never_panics(s in "\\PC{0,80}") {
            let _ = Rule::parse(&s);
            let _ = Rule::parse(&format!("-A X {s}"));
            let _ = Ruleset::parse(&s);
        }

        #[test]
        fn rule_parse_of_token_soup_never_panics(toks in proptest::collection::vec(proptest::sample::select(vec![
            "!", "-s", "-d", "-i", "-o", "-p", "-m", "-j", "-g", "tcp", "udp", "all", "addrtype", "mark", "comment",
            "statistic", "conntrack", "state", "multiport", "--dport", "--sport", "--dst-type", "--src-type", "LOCAL",
            "--mark", "0x4000/0x4000", "--comment", "\"a b", "\"x\"", "--mode", "random", "nth", "--every", "0", "3",
            "--probability", "0.5", "1.5", "--ctstate", "NEW,BOGUS", "--state", "--dports", "80,1:2", "99999",
            "DNAT", "SNAT", "MASQUERADE", "MARK", "LOG", "REJECT", "--to-destination", "[::1]:80", "1.2.3.4-1.2.3.1",
            "--to-ports", "5-1", "--set-xmark", "--or-mark", "1/2", "--log-prefix", "--log-level", "9", "KUBE-X",
            "10.0.0.0/33", "eth0+", "+", "--random-fully", "--reject-with", "", "-", "--",
        ]), 0..16)) {
            let line = format!("-A X {}", toks.join(" "));
            let _ = Rule::parse(&line);
        }
    }
}
