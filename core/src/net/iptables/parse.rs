//! Reading `iptables-save` text, `iptables-restore` input and argv into the
//! model. Parsing never panics and names the token it could not understand.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer};

use super::model::*;

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

impl Protocol {
    /// Parse a `-p` value (name, case-insensitive, or number). `Ok(None)` is `all`.
    pub(super) fn parse(s: &str) -> Result<Option<Protocol>, &'static str> {
        let lower = s.to_ascii_lowercase();
        let number: u8 = match lower.as_str() {
            "all" | "ip" | "hopopt" => 0,
            "tcp" => 6,
            "udp" => 17,
            "icmp" => 1,
            n if is_decimal(n) => n.parse().map_err(|_| "unknown protocol")?,
            _ => return Err("unknown or unsupported protocol (tcp, udp, icmp or all)"),
        };
        match number {
            0 => Ok(None),
            1 => Ok(Some(Protocol::Icmp)),
            6 => Ok(Some(Protocol::Tcp)),
            17 => Ok(Some(Protocol::Udp)),
            _ => Err("unknown or unsupported protocol (tcp, udp, icmp or all)"),
        }
    }
}

impl Interface {
    pub(super) fn parse(s: &str) -> Result<Interface, &'static str> {
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

impl PortRange {
    /// Parse `p`, `a:b`, `:b` or `a:` (match syntax, as `-m tcp --dport`).
    pub(super) fn parse_match(s: &str) -> Result<PortRange, &'static str> {
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
}

impl AddrType {
    pub(super) fn parse(s: &str) -> Option<AddrType> {
        AddrType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

impl CtState {
    pub(super) fn parse(s: &str) -> Option<CtState> {
        CtState::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

impl Probability {
    pub(super) fn parse(s: &str) -> Result<Probability, &'static str> {
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

impl RejectWith {
    /// The short alias iptables also accepts (`port-unreach`, `tcp-rst`, ...).
    pub(super) fn alias(self) -> &'static str {
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

    pub(super) fn parse(s: &str) -> Option<RejectWith> {
        RejectWith::ALL
            .into_iter()
            .find(|r| r.name() == s || r.alias() == s)
    }
}

impl NatTo {
    /// `a.b.c.d[:port]`, `[v6]:port` or a bare IPv6 address.
    pub(super) fn parse(s: &str) -> Result<NatTo, &'static str> {
        const BAD: &str = "invalid address[:port] for NAT (ranges are not supported)";
        let (addr, port) = if let Some(rest) = s.strip_prefix('[') {
            let (a, rest) = rest.split_once(']').ok_or(BAD)?;
            let port = match rest {
                "" => None,
                r => Some(r.strip_prefix(':').ok_or(BAD)?),
            };
            (IpAddr::V6(a.parse::<Ipv6Addr>().map_err(|_| BAD)?), port)
        } else if s.matches(':').count() > 1 {
            (IpAddr::V6(s.parse::<Ipv6Addr>().map_err(|_| BAD)?), None)
        } else {
            let (a, port) = match s.split_once(':') {
                Some((a, p)) => (a, Some(p)),
                None => (s, None),
            };
            (IpAddr::V4(a.parse::<Ipv4Addr>().map_err(|_| BAD)?), port)
        };
        let port = port.map(parse_port).transpose()?;
        Ok(NatTo { addr, port })
    }
}

impl Rule {
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

    /// Build a rule from an argv after the chain (no quoting: each element is
    /// one argument), the inverse of [`Rule::to_args`].
    pub fn from_args<S: AsRef<str>>(chain: &str, args: &[S]) -> Result<Rule, ParseError> {
        check_chain_name(chain).map_err(|m| ParseError::new(m, chain, 0))?;
        let toks: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        parse_spec(chain, &toks, 0)
    }
}

impl FromStr for Rule {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Rule, ParseError> {
        Rule::parse(s)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Rule, D::Error> {
        let s = String::deserialize(deserializer)?;
        Rule::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Ruleset {
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
}

impl FromStr for Ruleset {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Ruleset, ParseError> {
        Ruleset::parse(s)
    }
}

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
    /// `--mode` seen, and `--probability`.
    Statistic {
        mode: bool,
        probability: Option<Probability>,
    },
    Conntrack(Option<Negatable<BTreeSet<CtState>>>),
}

/// Targets of iptables' standard extensions that nothing here writes: a
/// rule naming one is refused rather than read as a jump to a chain of
/// that name.
pub(super) const UNMODELLED_TARGETS: &[&str] = &[
    "SNAT", "LOG", "NFLOG", "REDIRECT", "NETMAP", "CT", "NOTRACK", "TRACE", "CONNMARK", "TPROXY",
    "NFQUEUE", "TCPMSS", "CHECKSUM", "CLASSIFY", "SET",
];

/// A target while its options are being read.
struct PendingTarget {
    target: Jump,
    /// Token index of the target name, for errors.
    at: usize,
    /// Whether the target's required option was seen (`--to-destination`,
    /// a MARK operation; for REJECT: `--reject-with`).
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
                    "addrtype" => PendingMatch::AddrType(AddrTypeMatch::default()),
                    "mark" => PendingMatch::Mark(None),
                    "comment" => PendingMatch::Comment(None),
                    "statistic" => PendingMatch::Statistic {
                        mode: false,
                        probability: None,
                    },
                    "conntrack" => PendingMatch::Conntrack(None),
                    _ => return Err(cur.err(vi, "unknown or unsupported match module")),
                };
                pending.push((vi, m));
            }
            "-g" | "--goto" => {
                return Err(cur.err(
                    i,
                    "goto (-g) is not supported: kube-proxy, docker and kscratch only jump (-j)",
                ));
            }
            "-j" | "--jump" => {
                if negated {
                    return Err(cur.err(i, format!("! is not allowed before {tok}")));
                }
                if target.is_some() {
                    return Err(cur.err(i, "multiple -j flags not allowed"));
                }
                let (vi, name) = cur.value(i)?;
                let t = match name {
                    "ACCEPT" => Jump::Accept,
                    "DROP" => Jump::Drop,
                    "RETURN" => Jump::Return,
                    "REJECT" => Jump::Reject {
                        with: RejectWith::default(),
                    },
                    // The address is a placeholder until --to-destination.
                    "DNAT" => Jump::dnat(IpAddr::V4(Ipv4Addr::UNSPECIFIED), None),
                    "MASQUERADE" => Jump::masquerade(),
                    "MARK" => Jump::Mark(MarkAction::OrMark(0)),
                    t if UNMODELLED_TARGETS.contains(&t) => {
                        return Err(cur.err(
                            vi,
                            "unsupported target (kscratch models ACCEPT, DROP, RETURN, REJECT, DNAT, MASQUERADE, MARK and jumps to chains)",
                        ));
                    }
                    chain => {
                        check_chain_name(chain).map_err(|m| cur.err(vi, m))?;
                        Jump::Chain(chain.to_string())
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
                        ) && matches!(value, Protocol::Tcp | Protocol::Udp) =>
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
                "MARK target needs --set-xmark, --or-mark or --xor-mark",
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
            return Err(cur.err(t.at, "NAT ports need -p tcp or udp"));
        }
        if matches!(t.target, Jump::Dnat { .. }) && !t.has_action {
            return Err(cur.err(t.at, "DNAT target needs --to-destination"));
        }
        rule.target = Some(t.target);
    }
    Ok(rule)
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
        PendingMatch::AddrType(t) => {
            let slot = match opt {
                "--src-type" => &mut t.src_type,
                "--dst-type" => &mut t.dst_type,
                _ => return Ok(Offer::NotMine),
            };
            if slot.is_some() {
                return Err(dup(cur));
            }
            let (vi, v) = cur.value(i)?;
            let set = parse_set(v, AddrType::parse, "unknown or unsupported address type")
                .map_err(|e| cur.err(vi, e))?;
            *slot = Some(Negatable {
                negated,
                value: set,
            });
        }
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
        PendingMatch::Statistic { mode, probability } => match opt {
            "--mode" => {
                no_neg(cur)?;
                if *mode {
                    return Err(dup(cur));
                }
                let (vi, v) = cur.value(i)?;
                if v != "random" {
                    return Err(cur.err(vi, "unsupported statistic mode (only random)"));
                }
                *mode = true;
            }
            "--probability" => {
                no_neg(cur)?;
                if probability.is_some() {
                    return Err(dup(cur));
                }
                let (vi, v) = cur.value(i)?;
                *probability = Some(Probability::parse(v).map_err(|e| cur.err(vi, e))?);
            }
            _ => return Ok(Offer::NotMine),
        },
        PendingMatch::Conntrack(slot) => {
            if opt != "--ctstate" {
                return Ok(Offer::NotMine);
            }
            if slot.is_some() {
                return Err(dup(cur));
            }
            let (vi, v) = cur.value(i)?;
            let set = parse_set(v, CtState::parse, "unknown or unsupported connection state")
                .map_err(|e| cur.err(vi, e))?;
            *slot = Some(Negatable {
                negated,
                value: set,
            });
        }
    }
    Ok(Offer::Taken)
}

fn finish_match(m: PendingMatch) -> Result<Match, &'static str> {
    Ok(match m {
        PendingMatch::Ports(Protocol::Udp, p) => Match::Udp(p),
        PendingMatch::Ports(_, p) => Match::Tcp(p),
        PendingMatch::AddrType(t) => {
            if t.src_type.is_none() && t.dst_type.is_none() {
                return Err("addrtype needs --src-type or --dst-type");
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
            mode: true,
            probability: Some(p),
        } => Match::Statistic(p),
        PendingMatch::Statistic { .. } => {
            return Err("statistic needs --mode random --probability P")
        }
        PendingMatch::Conntrack(Some(ctstate)) => Match::Conntrack { ctstate },
        PendingMatch::Conntrack(None) => return Err("conntrack match needs --ctstate"),
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
        Jump::Dnat { to } => {
            if !matches!(opt, "--to-destination" | "--to") {
                return Ok(Offer::NotMine);
            }
            check(cur, has_action)?;
            let (vi, v) = cur.value(i)?;
            *to = NatTo::parse(v).map_err(|e| cur.err(vi, e))?;
            t.has_action = true;
        }
        Jump::Masquerade { random_fully } => {
            if opt != "--random-fully" {
                return Ok(Offer::NotMine);
            }
            check(cur, *random_fully)?;
            *random_fully = true;
        }
        Jump::Mark(action) => {
            let make: fn(u32, Option<u32>) -> Option<MarkAction> = match opt {
                "--set-xmark" => |v, m| Some(MarkAction::SetXmark { value: v, mask: m }),
                "--or-mark" => |v, m| m.is_none().then_some(MarkAction::OrMark(v)),
                "--xor-mark" => |v, m| m.is_none().then_some(MarkAction::XorMark(v)),
                _ => return Ok(Offer::NotMine),
            };
            if negated {
                return Err(cur.err(i, format!("! is not allowed before {opt}")));
            }
            if has_action {
                return Err(cur.err(
                    i,
                    "MARK target takes only one of --set-xmark, --or-mark, --xor-mark",
                ));
            }
            let (vi, v) = cur.value(i)?;
            let (value, mask) = parse_mark(v).map_err(|e| cur.err(vi, e))?;
            *action =
                make(value, mask).ok_or_else(|| cur.err(vi, format!("{opt} takes no mask")))?;
            t.has_action = true;
        }
        Jump::Accept | Jump::Drop | Jump::Return | Jump::Chain(_) => {
            return Ok(Offer::NotMine);
        }
    }
    Ok(Offer::Taken)
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
