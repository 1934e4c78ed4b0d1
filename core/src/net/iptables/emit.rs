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
        f.write_str(self.name())
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

impl fmt::Display for NatTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.port) {
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}"),
            (a, Some(p)) => write!(f, "{a}:{p}"),
            (a, None) => write!(f, "{a}"),
        }
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
        Match::Tcp(p) | Match::Udp(p) => emit_ports(a, p),
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
        Match::Statistic(probability) => {
            a.push("--mode").push("random");
            a.push("--probability").push(probability.as_str());
        }
        Match::Conntrack { ctstate } => {
            a.neg(ctstate.negated)
                .push("--ctstate")
                .push(join_set(&ctstate.value, CtState::name));
        }
    }
}

fn emit_target(t: &Jump, a: &mut Args) {
    a.push("-j").push(t.name());
    match t {
        Jump::Reject { with } => {
            a.push("--reject-with").push(with.name());
        }
        Jump::Dnat { to } => {
            a.push("--to-destination").push(to.to_string());
        }
        Jump::Masquerade { random_fully } => {
            if *random_fully {
                a.push("--random-fully");
            }
        }
        Jump::Mark(action) => {
            let (opt, text) = match *action {
                MarkAction::SetXmark { value, mask } => ("--set-xmark", mark_text(value, mask)),
                MarkAction::OrMark(v) => ("--or-mark", hex(v)),
                MarkAction::XorMark(v) => ("--xor-mark", hex(v)),
            };
            a.push(opt).push(text);
        }
        Jump::Accept | Jump::Drop | Jump::Return | Jump::Chain(_) => {}
    }
}
