//! Packet evaluation: hooks in kernel order, chain traversal, matches,
//! targets, NAT through conntrack, and the per-chain index that keeps
//! kube-proxy-sized chains fast.

use super::conntrack::{Attachment, Begin};
use super::{
    Branches, Chain, Conntrack, Direction, Hook, HookCx, NatKind, Netfilter, RuleRef, TraceEntry,
    Verdict,
};
use crate::packet::{Packet, Proto, Tuple};
use ipnet::IpNet;
use kscratch_core::net::iptables::{
    CtState, Interface, Jump, Match, NatTo, Negatable, Policy, PortMatch, PortRange, Protocol,
    Rule, Table,
};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

/// Deepest chain nesting before evaluation gives up (iptables refuses
/// loops at load time; a simulator fault could still build one).
const MAX_DEPTH: usize = 128;
/// Most rules examined for one table traversal.
const MAX_STEPS: usize = 1_000_000;
/// Chains shorter than this are scanned linearly.
const INDEX_MIN_RULES: usize = 32;

impl Netfilter {
    /// Run one hook for one packet: the tables registered at `hook` in
    /// priority order, with connection tracking (see the module doc). The
    /// packet is rewritten in place (NAT, marks). Every matched rule, policy
    /// and translation is appended to `trace`.
    pub fn hook(
        &self,
        hook: Hook,
        pkt: &mut Packet,
        cx: &HookCx<'_>,
        ct: &mut Conntrack,
        branches: &mut dyn Branches,
        trace: &mut Vec<TraceEntry>,
    ) -> Verdict {
        self.run_hook(hook, pkt, cx, ct, branches, Some(trace))
    }

    /// [`Netfilter::hook`] without recording a trace (for bulk checks).
    pub fn hook_untraced(
        &self,
        hook: Hook,
        pkt: &mut Packet,
        cx: &HookCx<'_>,
        ct: &mut Conntrack,
        branches: &mut dyn Branches,
    ) -> Verdict {
        self.run_hook(hook, pkt, cx, ct, branches, None)
    }

    fn run_hook(
        &self,
        hook: Hook,
        pkt: &mut Packet,
        cx: &HookCx<'_>,
        ct: &mut Conntrack,
        branches: &mut dyn Branches,
        trace: Option<&mut Vec<TraceEntry>>,
    ) -> Verdict {
        let mut w = Walker {
            nf: self,
            hook,
            cx,
            branches,
            trace,
        };
        let verdict = w.hook(pkt, ct);
        if verdict == Verdict::Accept {
            if let Some(a) = ct.current_mut() {
                a.tuple_now = pkt.tuple();
                a.last_hook = hook;
            }
        }
        verdict
    }
}

/// One hook's evaluation state.
struct Walker<'n, 'x> {
    nf: &'n Netfilter,
    hook: Hook,
    cx: &'x HookCx<'x>,
    branches: &'x mut dyn Branches,
    trace: Option<&'x mut Vec<TraceEntry>>,
}

/// What a table decided.
enum TableOutcome {
    /// Go on with the next table (ACCEPT, or a policy of ACCEPT).
    Accept,
    /// The packet stops here (DROP, REJECT, error).
    Stop(Verdict),
    /// A NAT target matched (nat table only); the hook applies it.
    Nat(NatTarget, RuleRef),
}

enum NatTarget {
    Dnat(NatTo),
    Masquerade,
}

/// The conntrack facts `--ctstate` sees.
#[derive(Clone, Copy)]
struct CtView {
    state: CtState,
    dnat: bool,
}

impl CtView {
    /// Before conntrack (raw table): no connection, which `--ctstate` calls INVALID.
    fn untracked() -> CtView {
        CtView {
            state: CtState::Invalid,
            dnat: false,
        }
    }

    fn of(ct: &Conntrack) -> CtView {
        match ct.current() {
            Some(a) => CtView {
                state: a.state(),
                dnat: a.conn.is_dnat(),
            },
            None => CtView::untracked(),
        }
    }
}

impl Walker<'_, '_> {
    fn hook(&mut self, pkt: &mut Packet, ct: &mut Conntrack) -> Verdict {
        let hook = self.hook;
        match hook {
            Hook::Prerouting | Hook::Output => {
                if let Some(v) = self.table(Table::Raw, pkt, CtView::untracked()) {
                    return v;
                }
                if let Begin::Found { state, dir } = ct.begin(hook, pkt, self.cx.in_iface) {
                    self.record(|| TraceEntry::Conntrack {
                        hook,
                        state: state.name().to_string(),
                        direction: dir,
                    });
                }
                if let Some(v) = self.table(Table::Mangle, pkt, CtView::of(ct)) {
                    return v;
                }
                if let Some(v) = self.nat_destination(pkt, ct) {
                    return v;
                }
                if hook == Hook::Output {
                    if let Some(v) = self.table(Table::Filter, pkt, CtView::of(ct)) {
                        return v;
                    }
                }
            }
            Hook::Forward => {
                ct.attached(hook, pkt, self.cx.in_iface);
                for table in [Table::Mangle, Table::Filter] {
                    if let Some(v) = self.table(table, pkt, CtView::of(ct)) {
                        return v;
                    }
                }
            }
            Hook::Input | Hook::Postrouting => {
                ct.attached(hook, pkt, self.cx.in_iface);
                let tables: &[Table] = if hook == Hook::Input {
                    &[Table::Mangle, Table::Filter]
                } else {
                    &[Table::Mangle]
                };
                for &table in tables {
                    if let Some(v) = self.table(table, pkt, CtView::of(ct)) {
                        return v;
                    }
                }
                if let Some(v) = self.nat_source(pkt, ct) {
                    return v;
                }
                ct.confirm();
            }
        }
        Verdict::Accept
    }

    /// Run a table that cannot translate addresses; `Some` stops the packet.
    fn table(&mut self, table: Table, pkt: &mut Packet, view: CtView) -> Option<Verdict> {
        match self.run_table(table, pkt, view) {
            TableOutcome::Accept => None,
            TableOutcome::Stop(v) => Some(v),
            // run_table only returns NAT targets for the nat table.
            TableOutcome::Nat(_, by) => Some(Verdict::Error(format!(
                "NAT target outside the nat table at {by}"
            ))),
        }
    }

    /// The nat table at PREROUTING/OUTPUT: DNAT decided by the rules for a
    /// connection's first packet, from conntrack for the others.
    fn nat_destination(&mut self, pkt: &mut Packet, ct: &mut Conntrack) -> Option<Verdict> {
        let hook = self.hook;
        let (first, dir) = match ct.current() {
            Some(a) => (a.unconfirmed() && !a.dst_nat_done, a.dir),
            None => return None,
        };
        if first {
            match self.run_table(Table::Nat, pkt, CtView::of(ct)) {
                TableOutcome::Accept => {}
                TableOutcome::Stop(v) => return Some(v),
                TableOutcome::Nat(NatTarget::Dnat(range), by) => {
                    if range.addr.is_ipv4() != pkt.dst.is_ipv4() {
                        return Some(Verdict::Error(format!(
                            "DNAT to an address of the other family at {by}"
                        )));
                    }
                    let port = if has_ports(pkt.proto) {
                        range.port.unwrap_or(pkt.dport)
                    } else {
                        0
                    };
                    let from = endpoint(pkt.dst, pkt.dport, pkt.proto);
                    pkt.dst = range.addr;
                    pkt.dport = port;
                    if let Some(a) = ct.current_mut() {
                        a.conn.reply.src = range.addr;
                        a.conn.reply.sport = port;
                    }
                    let to = endpoint(pkt.dst, pkt.dport, pkt.proto);
                    self.record(|| TraceEntry::Nat {
                        hook,
                        nat: NatKind::Dnat,
                        from,
                        to,
                    });
                }
                TableOutcome::Nat(_, by) => {
                    return Some(Verdict::Error(format!(
                        "source NAT target at {hook} ({by})"
                    )));
                }
            }
            if let Some(a) = ct.current_mut() {
                a.dst_nat_done = true;
            }
        } else if let Some(a) = ct.current() {
            let (addr, port) = a.dst_translation();
            if (addr, port) != (pkt.dst, pkt.dport) {
                let from = endpoint(pkt.dst, pkt.dport, pkt.proto);
                pkt.dst = addr;
                pkt.dport = port;
                let to = endpoint(pkt.dst, pkt.dport, pkt.proto);
                let nat = if dir == Direction::Original {
                    NatKind::Dnat
                } else {
                    NatKind::UnSnat
                };
                self.record(|| TraceEntry::Nat {
                    hook,
                    nat,
                    from,
                    to,
                });
            }
        }
        None
    }

    /// The nat table at POSTROUTING/INPUT: SNAT or MASQUERADE decided by the
    /// rules for a connection's first packet, from conntrack for the others.
    fn nat_source(&mut self, pkt: &mut Packet, ct: &mut Conntrack) -> Option<Verdict> {
        let hook = self.hook;
        let (first, dir) = match ct.current() {
            Some(a) => (a.unconfirmed() && !a.src_nat_done, a.dir),
            None => return None,
        };
        if !first {
            if let Some(a) = ct.current() {
                let (addr, port) = a.src_translation();
                if (addr, port) != (pkt.src, pkt.sport) {
                    let from = endpoint(pkt.src, pkt.sport, pkt.proto);
                    pkt.src = addr;
                    pkt.sport = port;
                    let to = endpoint(pkt.src, pkt.sport, pkt.proto);
                    let nat = if dir == Direction::Original {
                        NatKind::Snat
                    } else {
                        NatKind::UnDnat
                    };
                    self.record(|| TraceEntry::Nat {
                        hook,
                        nat,
                        from,
                        to,
                    });
                }
            }
            return None;
        }
        let (new_src, by) = match self.run_table(Table::Nat, pkt, CtView::of(ct)) {
            TableOutcome::Accept => (pkt.src, None),
            TableOutcome::Stop(v) => return Some(v),
            TableOutcome::Nat(NatTarget::Masquerade, by) => {
                let src = self.cx.out_iface.and_then(|out| {
                    self.cx
                        .addrs
                        .masquerade_source(out, pkt.src, self.cx.next_hop)
                });
                match src {
                    Some(src) => (src, Some(by)),
                    // The kernel drops what it cannot masquerade (no address on the device).
                    None => return Some(Verdict::Drop { by }),
                }
            }
            TableOutcome::Nat(NatTarget::Dnat(_), by) => {
                return Some(Verdict::Error(format!("DNAT target at {hook} ({by})")));
            }
        };
        if new_src.is_ipv4() != pkt.src.is_ipv4() {
            let at = by.map(|b| b.to_string()).unwrap_or_default();
            return Some(Verdict::Error(format!(
                "SNAT to an address of the other family at {at}"
            )));
        }
        let a = ct.current()?;
        let Some(port) = unique_source_port(ct, a, new_src, pkt.sport) else {
            return Some(match by {
                Some(by) => Verdict::Drop { by },
                None => {
                    Verdict::Error("no free source port to keep the connection unique".to_string())
                }
            });
        };
        if (new_src, port) != (pkt.src, pkt.sport) {
            let from = endpoint(pkt.src, pkt.sport, pkt.proto);
            pkt.src = new_src;
            pkt.sport = port;
            let to = endpoint(pkt.src, pkt.sport, pkt.proto);
            self.record(|| TraceEntry::Nat {
                hook,
                nat: NatKind::Snat,
                from,
                to,
            });
        }
        if let Some(a) = ct.current_mut() {
            a.conn.reply.dst = new_src;
            a.conn.reply.dport = port;
            a.src_nat_done = true;
        }
        None
    }

    /// Traverse one table's built-in chain for this hook.
    fn run_table(&mut self, table: Table, pkt: &mut Packet, view: CtView) -> TableOutcome {
        let base_name = self.hook.name();
        if !table.is_builtin(base_name) {
            return TableOutcome::Accept;
        }
        let nf = self.nf;
        let Some(base) = nf.chain(table, base_name) else {
            return TableOutcome::Accept;
        };
        let mut stack: Vec<Frame<'_>> = vec![Frame::new(base, pkt)];
        let mut steps = 0usize;
        loop {
            let Some(frame) = stack.last_mut() else {
                return self.policy(table, base);
            };
            let chain = frame.chain;
            let Some(i) = frame.cursor.next() else {
                // Falling off a user-defined chain returns to the caller.
                stack.pop();
                continue;
            };
            steps += 1;
            if steps > MAX_STEPS {
                return TableOutcome::Stop(Verdict::Error(format!(
                    "{table}/{}: more than {MAX_STEPS} rules examined",
                    self.hook
                )));
            }
            #[cfg(test)]
            tests_support::count_rule();
            let Some(rule) = chain.rules.get(i) else {
                continue;
            };
            if !self.matches(rule, pkt, view) {
                continue;
            }
            let hook = self.hook;
            self.record(|| TraceEntry::Rule {
                hook,
                table,
                chain: chain.name.clone(),
                index: i + 1,
                rule: rule.emit(),
                target: rule
                    .target
                    .as_ref()
                    .map(|t| t.name().to_string())
                    .unwrap_or_default(),
            });
            let by = || RuleRef {
                hook,
                table,
                chain: chain.name.clone(),
                index: Some(i + 1),
                rule: rule.emit(),
            };
            let Some(target) = &rule.target else { continue };
            match target {
                Jump::Accept => return TableOutcome::Accept,
                Jump::Drop => return TableOutcome::Stop(Verdict::Drop { by: by() }),
                Jump::Reject { with } => {
                    if table != Table::Filter
                        || !matches!(hook, Hook::Input | Hook::Forward | Hook::Output)
                    {
                        return self.misplaced(
                            "REJECT",
                            "the filter table's INPUT, FORWARD and OUTPUT",
                            table,
                            by(),
                        );
                    }
                    return TableOutcome::Stop(Verdict::Reject {
                        by: by(),
                        with: *with,
                    });
                }
                Jump::Return => {
                    stack.pop();
                }
                Jump::Chain(name) => {
                    let Some(next) = nf.chain(table, name) else {
                        return TableOutcome::Stop(Verdict::Error(format!(
                            "{}: jump to {name}, which is no chain in table {table} (an unsupported target?)",
                            by()
                        )));
                    };
                    if next.policy.is_some() {
                        return TableOutcome::Stop(Verdict::Error(format!(
                            "{}: jump to built-in chain {name}",
                            by()
                        )));
                    }
                    if stack.len() >= MAX_DEPTH {
                        return TableOutcome::Stop(Verdict::Error(format!(
                            "{}: chains nested deeper than {MAX_DEPTH} (a loop?)",
                            by()
                        )));
                    }
                    stack.push(Frame::new(next, pkt));
                }
                Jump::Dnat { to, .. } => {
                    if table != Table::Nat || !matches!(hook, Hook::Prerouting | Hook::Output) {
                        return self.misplaced(
                            "DNAT",
                            "the nat table's PREROUTING and OUTPUT",
                            table,
                            by(),
                        );
                    }
                    return TableOutcome::Nat(NatTarget::Dnat(*to), by());
                }
                Jump::Masquerade { .. } => {
                    if table != Table::Nat || hook != Hook::Postrouting {
                        return self.misplaced(
                            "MASQUERADE",
                            "the nat table's POSTROUTING",
                            table,
                            by(),
                        );
                    }
                    return TableOutcome::Nat(NatTarget::Masquerade, by());
                }
                Jump::Mark(action) => {
                    let (value, mask) = action.as_xmark();
                    pkt.mark = (pkt.mark & !mask) ^ value;
                }
            }
        }
    }

    fn misplaced(&self, target: &str, valid: &str, table: Table, by: RuleRef) -> TableOutcome {
        TableOutcome::Stop(Verdict::Error(format!(
            "{by}: {target} is only valid in {valid} chains, not in {table} at {}",
            self.hook
        )))
    }

    /// Falling off (or RETURN from) the built-in chain: its policy.
    fn policy(&mut self, table: Table, base: &Chain) -> TableOutcome {
        let policy = base.policy.unwrap_or(Policy::Accept);
        let hook = self.hook;
        self.record(|| TraceEntry::Policy {
            hook,
            table,
            chain: base.name.clone(),
            policy: policy.name().to_string(),
        });
        match policy {
            Policy::Accept => TableOutcome::Accept,
            Policy::Drop => TableOutcome::Stop(Verdict::Drop {
                by: RuleRef {
                    hook,
                    table,
                    chain: base.name.clone(),
                    index: None,
                    rule: policy.name().to_string(),
                },
            }),
        }
    }

    fn record(&mut self, entry: impl FnOnce() -> TraceEntry) {
        if let Some(t) = self.trace.as_deref_mut() {
            t.push(entry());
        }
    }

    /// Whether the rule matches: the fixed header part first, then the
    /// extension matches in order (a failing one stops the evaluation, so a
    /// statistic match is only asked when everything before it matched).
    /// Every match the rule model holds is evaluated: the model refuses
    /// what this cannot evaluate when a rule is read.
    fn matches(&mut self, rule: &Rule, pkt: &Packet, ct: CtView) -> bool {
        if let Some(n) = &rule.source {
            if net_contains(&n.value, pkt.src) == n.negated {
                return false;
            }
        }
        if let Some(n) = &rule.destination {
            if net_contains(&n.value, pkt.dst) == n.negated {
                return false;
            }
        }
        if let Some(i) = &rule.in_interface {
            if iface_matches(&i.value, self.cx.in_iface) == i.negated {
                return false;
            }
        }
        if let Some(o) = &rule.out_interface {
            if iface_matches(&o.value, self.cx.out_iface) == o.negated {
                return false;
            }
        }
        if let Some(p) = &rule.protocol {
            if (p.value.number() == proto_number(pkt.proto)) == p.negated {
                return false;
            }
        }
        rule.matches.iter().all(|m| self.match_one(m, pkt, ct))
    }

    fn match_one(&mut self, m: &Match, pkt: &Packet, ct: CtView) -> bool {
        match m {
            Match::Tcp(pm) => pkt.proto == Proto::Tcp && ports_match(pm, pkt),
            Match::Udp(pm) => pkt.proto == Proto::Udp && ports_match(pm, pkt),
            Match::AddrType(a) => {
                let addrs = self.cx.addrs;
                let type_ok = |want: &Option<Negatable<BTreeSet<_>>>, ip: IpAddr| match want {
                    Some(n) => n.value.contains(&addrs.addr_type(ip)) != n.negated,
                    None => true,
                };
                type_ok(&a.src_type, pkt.src) && type_ok(&a.dst_type, pkt.dst)
            }
            Match::Mark {
                negated,
                value,
                mask,
            } => ((pkt.mark & mask) == *value) != *negated,
            Match::Comment(_) => true,
            Match::Statistic(p) => self.branches.choose(p.probability()),
            Match::Conntrack { ctstate } => states_match(&ctstate.value, ct) != ctstate.negated,
        }
    }
}

/// A chain being traversed, with the rules still to look at.
struct Frame<'n> {
    chain: &'n Chain,
    cursor: Cursor<'n>,
}

impl<'n> Frame<'n> {
    fn new(chain: &'n Chain, pkt: &Packet) -> Frame<'n> {
        Frame {
            chain,
            cursor: Cursor::new(chain, pkt),
        }
    }
}

/// The rule numbers of a chain that could match a packet, in rule order.
enum Cursor<'n> {
    Linear {
        next: usize,
        len: usize,
    },
    /// A merge of sorted lists: indexed rules for the packet's
    /// (destination, protocol, port), for (any destination, protocol,
    /// port), and the rules the index cannot decide.
    Merge {
        lists: [&'n [u32]; 3],
        pos: [usize; 3],
    },
}

impl<'n> Cursor<'n> {
    fn new(chain: &'n Chain, pkt: &Packet) -> Cursor<'n> {
        let linear = Cursor::Linear {
            next: 0,
            len: chain.rules.len(),
        };
        if tests_support::force_linear() {
            return linear;
        }
        let Some(idx) = index_of(chain) else {
            return linear;
        };
        let proto = proto_number(pkt.proto);
        let get = |dst: Option<IpAddr>| {
            idx.by_key
                .get(&IndexKey {
                    dst,
                    proto,
                    dport: pkt.dport,
                })
                .map_or(&[][..], Vec::as_slice)
        };
        Cursor::Merge {
            lists: [get(Some(pkt.dst)), get(None), &idx.others],
            pos: [0; 3],
        }
    }
}

impl Iterator for Cursor<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Cursor::Linear { next, len } => {
                if *next < *len {
                    *next += 1;
                    Some(*next - 1)
                } else {
                    None
                }
            }
            Cursor::Merge { lists, pos } => {
                let mut best: Option<(usize, u32)> = None;
                for k in 0..3 {
                    if let Some(&v) = lists[k].get(pos[k]) {
                        // (`Option::is_none_or` is newer than the workspace's MSRV.)
                        match best {
                            Some((_, b)) if b <= v => {}
                            _ => best = Some((k, v)),
                        }
                    }
                }
                let (k, v) = best?;
                pos[k] += 1;
                Some(v as usize)
            }
        }
    }
}

/// Rules of a chain keyed by the exact (destination host, protocol,
/// destination port) they require; `others` are the rules without such a
/// requirement. Rule numbers are 0-based and sorted in every list.
#[derive(Debug, Clone)]
pub(super) struct ChainIndex {
    by_key: HashMap<IndexKey, Vec<u32>>,
    others: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct IndexKey {
    /// `None`: the rule has no `-d`.
    dst: Option<IpAddr>,
    proto: u8,
    dport: u16,
}

/// The chain's index, built on first use; `None` when a linear scan is as good.
pub(super) fn index_of(chain: &Chain) -> Option<&ChainIndex> {
    chain
        .index
        .get_or_init(|| build_index(&chain.rules))
        .as_ref()
}

fn build_index(rules: &[Rule]) -> Option<ChainIndex> {
    if rules.len() < INDEX_MIN_RULES || rules.len() > u32::MAX as usize {
        return None;
    }
    let mut by_key: HashMap<IndexKey, Vec<u32>> = HashMap::new();
    let mut others = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        match index_key(rule) {
            Some(key) => by_key.entry(key).or_default().push(i as u32),
            None => others.push(i as u32),
        }
    }
    // Worth it only when most rules are keyed.
    if others.len() * 2 > rules.len() {
        return None;
    }
    Some(ChainIndex { by_key, others })
}

/// The key a rule can be found under: it must require one protocol, one
/// destination port of that protocol and, if it has `-d`, one host.
fn index_key(rule: &Rule) -> Option<IndexKey> {
    let proto = match &rule.protocol {
        Some(Negatable {
            negated: false,
            value,
        }) => *value,
        _ => return None,
    };
    let dst = match &rule.destination {
        None => None,
        Some(Negatable {
            negated: false,
            value,
        }) if value.prefix_len() == value.max_prefix_len() => Some(value.addr()),
        Some(_) => return None,
    };
    let dport = rule.matches.iter().find_map(|m| {
        let pm = match (m, proto) {
            (Match::Tcp(pm), Protocol::Tcp) | (Match::Udp(pm), Protocol::Udp) => pm,
            _ => return None,
        };
        match &pm.dport {
            Some(Negatable {
                negated: false,
                value,
            }) if value.first == value.last => Some(value.first),
            _ => None,
        }
    })?;
    Some(IndexKey {
        dst,
        proto: proto.number(),
        dport,
    })
}

fn net_contains(net: &IpNet, ip: IpAddr) -> bool {
    // Rules of the other family never match (iptables and ip6tables are
    // separate tables in the kernel).
    net.contains(&ip)
}

/// `-i`/`-o`: an exact name, or a prefix for `name+`. Where the kernel has
/// no device the name is empty, which only a lone `+` matches.
fn iface_matches(rule: &Interface, iface: Option<&str>) -> bool {
    let name = iface.unwrap_or("");
    if rule.wildcard {
        name.starts_with(rule.name.as_str())
    } else {
        name == rule.name
    }
}

fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
        Proto::Icmp => 1,
    }
}

fn has_ports(p: Proto) -> bool {
    matches!(p, Proto::Tcp | Proto::Udp)
}

fn ports_match(pm: &PortMatch, pkt: &Packet) -> bool {
    let ok = |want: &Option<Negatable<PortRange>>, port: u16| match want {
        Some(n) => n.value.contains(port) != n.negated,
        None => true,
    };
    ok(&pm.sport, pkt.sport) && ok(&pm.dport, pkt.dport)
}

/// `--ctstate` is a set: it matches when the connection's state is in it,
/// or when the set has DNAT and the connection is destination-translated.
fn states_match(set: &BTreeSet<CtState>, ct: CtView) -> bool {
    set.contains(&ct.state) || (ct.dnat && set.contains(&CtState::Dnat))
}

/// `addr:port` (`[addr]:port` for IPv6), or the address alone without ports.
fn endpoint(addr: IpAddr, port: u16, proto: Proto) -> String {
    match (addr, has_ports(proto)) {
        (IpAddr::V6(a), true) => format!("[{a}]:{port}"),
        (a, true) => format!("{a}:{port}"),
        (a, false) => a.to_string(),
    }
}

/// A source port that keeps the connection's reply tuple unique, as the
/// kernel's `get_unique_tuple`: the preferred port if free, else the next
/// free one in 1-1023 or 1024-65535, the class of the preferred port.
/// Protocols without ports cannot move.
fn unique_source_port(
    ct: &Conntrack,
    a: &Attachment,
    new_src: IpAddr,
    preferred: u16,
) -> Option<u16> {
    let reply = |port: u16| Tuple {
        proto: a.conn.reply.proto,
        src: a.conn.reply.src,
        sport: a.conn.reply.sport,
        dst: new_src,
        dport: port,
    };
    if !has_ports(a.conn.original.proto) || !ct.tuple_taken(&reply(preferred)) {
        return Some(preferred);
    }
    let (lo, hi) = if preferred < 1024 {
        (1, 1023)
    } else {
        (1024, u16::MAX)
    };
    let span = u32::from(hi - lo) + 1;
    let start = u32::from(preferred.clamp(lo, hi) - lo);
    (1..=span)
        .map(|k| lo + ((start + k) % span) as u16)
        .find(|&port| !ct.tuple_taken(&reply(port)))
}

/// Test hooks: a switch to disable the index (to compare it with a linear
/// scan) and a count of rules examined (to show the index works).
#[cfg(test)]
pub(super) mod tests_support {
    use std::cell::Cell;

    thread_local! {
        static FORCE_LINEAR: Cell<bool> = const { Cell::new(false) };
        static RULES: Cell<usize> = const { Cell::new(0) };
    }

    pub fn force_linear() -> bool {
        FORCE_LINEAR.with(Cell::get)
    }

    pub fn set_force_linear(on: bool) {
        FORCE_LINEAR.with(|c| c.set(on));
    }

    pub fn count_rule() {
        RULES.with(|c| c.set(c.get() + 1));
    }

    /// Rules examined on this thread since the last call.
    pub fn take_rule_count() -> usize {
        RULES.with(|c| c.replace(0))
    }
}

#[cfg(not(test))]
mod tests_support {
    #[inline(always)]
    pub fn force_linear() -> bool {
        false
    }
}
