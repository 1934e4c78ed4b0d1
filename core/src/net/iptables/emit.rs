//! Writing the model back as `iptables-save` text and as argv, quoted and
//! ordered exactly as iptables prints it.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use serde::{Serialize, Serializer};

use super::model::*;

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.wildcard {
            f.write_str("+")?;
        }
        Ok(())
    }
}

impl PortRange {
    fn fmt_with(&self, sep: char) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}{sep}{}", self.first, self.last)
        }
    }
}

impl fmt::Display for Probability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
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

impl Rule {
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

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.emit())
    }
}

impl TableDump {
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

impl Ruleset {
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

impl Serialize for Ruleset {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.emit())
    }
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
