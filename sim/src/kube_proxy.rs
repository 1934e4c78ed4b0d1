//! The fake kube-proxy: programs iptables-mode rules from Services and their
//! endpoints exactly as kube-proxy's iptables proxier (1.28 and later) writes
//! them, so that the chains the simulator evaluates are the ones a real node
//! would run.
//!
//! What it writes (`pkg/proxy/iptables/proxier.go`, `syncProxyRules`):
//!
//! - nat `KUBE-SERVICES`: per service port with endpoints
//!   `-d VIP/32 -p tcp -m comment --comment "ns/svc:port cluster IP" -m tcp --dport P -j KUBE-SVC-<hash>`,
//!   and last `-m comment --comment "kubernetes service nodeports; NOTE: ..." -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`;
//! - `KUBE-SVC-<hash>`: `! -s CLUSTER_CIDR -d VIP/32 ... -j KUBE-MARK-MASQ`
//!   (when a cluster CIDR is known; without `! -s` under `masquerade_all`),
//!   then one rule per endpoint, sorted by `ip:port` text, each but the last
//!   with `-m statistic --mode random --probability 1/(n-i)` printed as
//!   kube-proxy does (`%0.10f`);
//! - `KUBE-SEP-<hash>`: `-s EP/32 -j KUBE-MARK-MASQ` (hairpin), then
//!   `-p tcp -m tcp -j DNAT --to-destination EP:PORT`;
//! - `KUBE-NODEPORTS` and `KUBE-EXT-<hash>` for node ports (the external
//!   chain marks for masquerade and jumps to `KUBE-SVC-<hash>`);
//! - `KUBE-MARK-MASQ` (`-j MARK --or-mark 0x4000`), `KUBE-POSTROUTING`
//!   (`-m mark ! --mark 0x4000/0x4000 -j RETURN`, `-j MARK --xor-mark 0x4000`,
//!   `-j MASQUERADE --random-fully`);
//! - filter `KUBE-SERVICES` / `KUBE-EXTERNAL-SERVICES`: REJECT for service
//!   ports without endpoints; `KUBE-FORWARD` (drop INVALID, accept marked and
//!   RELATED,ESTABLISHED traffic); `KUBE-FIREWALL` (the localnet guard);
//!   empty `KUBE-NODEPORTS`, `KUBE-PROXY-FIREWALL` and the
//!   `KUBE-PROXY-CANARY` chains of the monitor;
//! - the jumps from the built-in chains, each ensured with `-C || -I 1` in
//!   kube-proxy's order.
//!
//! Chain names are kube-proxy's: `KUBE-SVC-` + the first 16 characters of
//! base32(sha256("ns/svc:port" + "tcp")), `KUBE-SEP-` likewise with the
//! endpoint's `ip:port` appended. Above 1,000 endpoints kube-proxy's
//! "large cluster mode" drops the comments of the `KUBE-SVC-*` and
//! `KUBE-SEP-*` rules, and so does this.
//!
//! Not modelled (the checks do not depend on them): external IPs, load
//! balancer IPs and source ranges, `Local` traffic policies (`KUBE-SVL-*`,
//! the `node` of an endpoint is kept for reports only), session affinity
//! (`-m recent`), topology hints, IPv6, and the nfacct counters (kube-proxy
//! only adds `-m nfacct` rules when the kernel has nfacct; this writes them
//! as for a kernel without it). Kube-proxy iterates a Go map, so its rule
//! order across services varies between syncs; this writes services sorted
//! by `ns/svc:port`. Older kube-proxies (roughly before 1.24) differ in
//! ways not modelled: the `! -s CIDR ... -j KUBE-MARK-MASQ` rule sat in
//! `KUBE-SERVICES` beside the jump, node ports jumped straight to
//! `KUBE-SVC-*` (no `KUBE-EXT-*` chains), and older still `KUBE-POSTROUTING`
//! was a single `-m mark --mark 0x4000/0x4000 -j MASQUERADE` rule.

use crate::netfilter::{ChainSet, Netfilter, NetfilterError, Position};
use crate::packet::Proto;
use data_encoding::BASE32;
use ipnet::IpNet;
use kscratch_core::net::iptables::{
    AddrType, CtState, Jump, MarkAction, Match, PortMatch, Probability, Protocol, Rule, Ruleset,
    Table, TableDump,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
pub const KUBE_PROXY_CANARY: &str = "KUBE-PROXY-CANARY";
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";

/// 127.0.0.0/8, which `KUBE-FIREWALL` guards.
const LOCALNET: IpNet = IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8);

/// Above this many endpoints kube-proxy drops per-endpoint comments.
pub const LARGE_CLUSTER_ENDPOINTS_THRESHOLD: usize = 1000;

/// The kube-proxy flags that change the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeProxyConfig {
    /// `--cluster-cidr`: traffic to a VIP from outside it is masqueraded
    /// (kube-proxy's "cluster CIDR" local traffic detector).
    pub cluster_cidr: Option<IpNet>,
    /// `--masquerade-all`: masquerade all traffic to VIPs.
    pub masquerade_all: bool,
    /// `--iptables-masquerade-bit` (default 14: mark 0x4000).
    pub masquerade_bit: u8,
    /// `--iptables-localhost-nodeports` (default true): node ports answer on
    /// 127.0.0.1 and `KUBE-FIREWALL` guards localnet traffic.
    pub localhost_nodeports: bool,
    /// Whether the node's iptables supports `MASQUERADE --random-fully`
    /// (any iptables since 1.6.2).
    pub random_fully: bool,
    /// `net.netfilter.nf_conntrack_tcp_be_liberal` is set: no INVALID drop rule.
    pub conntrack_tcp_be_liberal: bool,
}

impl Default for KubeProxyConfig {
    fn default() -> KubeProxyConfig {
        KubeProxyConfig {
            cluster_cidr: None,
            masquerade_all: false,
            masquerade_bit: 14,
            localhost_nodeports: true,
            random_fully: true,
            conntrack_tcp_be_liberal: false,
        }
    }
}

/// What a node's kube-proxy read at start ([`crate::components::kube_proxy_settings`]
/// from its unit, `--config` file and kubeconfig): the settings that shape
/// its rules and the apiserver it lists Services from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeProxySettings {
    pub config: KubeProxyConfig,
    /// The apiserver URL: `--master`, else its kubeconfig's server.
    pub server: String,
}

impl KubeProxyConfig {
    /// The masquerade mark, `1 << masquerade_bit`.
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << u32::from(self.masquerade_bit.min(31))
    }
}

/// A Service with a cluster IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterService {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: IpAddr,
    pub ports: Vec<ServicePort>,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port name (may be empty for a single-port Service).
    pub name: String,
    pub protocol: Proto,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// One ready endpoint of a service port: the address and (target) port
/// traffic is DNATed to, and the node the pod runs on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub node: String,
}

impl Endpoint {
    /// `ip:port` as kube-proxy prints it (`net.JoinHostPort`).
    pub fn host_port(&self) -> String {
        match self.ip {
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
            IpAddr::V4(a) => format!("{a}:{}", self.port),
        }
    }
}

/// A service port's identity, `ns/svc:port` (kube-proxy's `ServicePortName`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
}

impl ServicePortName {
    pub fn new(namespace: &str, name: &str, port: &str) -> ServicePortName {
        ServicePortName {
            namespace: namespace.to_string(),
            name: name.to_string(),
            port: port.to_string(),
        }
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// The endpoints of every service port (kube-proxy's `EndpointsMap`).
pub type EndpointsMap = BTreeMap<ServicePortName, Vec<Endpoint>>;

/// Why the rules could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeProxyError {
    #[error("service port {service}: protocol {protocol} is not a Service protocol")]
    UnsupportedProtocol { service: String, protocol: String },
    #[error("service port {service}: port 0 is not a valid port")]
    ZeroPort { service: String },
    #[error("service port {service} is defined twice")]
    DuplicatePort { service: String },
    #[error(
        "service {service}: cluster IP {ip} is not IPv4 (the simulated kube-proxy is IPv4 only)"
    )]
    NotIpv4 { service: String, ip: IpAddr },
    #[error(transparent)]
    Netfilter(#[from] NetfilterError),
}

/// The result of one sync: the `KUBE-*` chains every node shares, and the
/// jumps each node needs from its built-in chains.
#[derive(Debug, Clone)]
pub struct KubeProxyRules {
    /// The chains kube-proxy restores (identical on every node).
    pub chains: Arc<ChainSet>,
    /// The jumps kube-proxy ensures in built-in chains, in its order; each
    /// is inserted at the top of its chain unless already present.
    pub jumps: Vec<(Table, Rule)>,
    /// More than [`LARGE_CLUSTER_ENDPOINTS_THRESHOLD`] endpoints.
    pub large_cluster_mode: bool,
}

impl KubeProxyRules {
    /// Program a node: attach the shared chains and ensure the jumps.
    pub fn install(&self, nf: &mut Netfilter) -> Result<(), NetfilterError> {
        nf.attach_shared(self.chains.clone())?;
        for (table, rule) in &self.jumps {
            nf.ensure_rule(*table, rule.clone(), Position::Prepend)?;
        }
        Ok(())
    }

    /// What `iptables-save` prints on a node that has only kube-proxy's
    /// rules: mangle, nat and filter with the jumps in the built-in chains
    /// (in the order prepending leaves them) and the `KUBE-*` chains sorted
    /// by name. Built-in chains are declared with `-` so that
    /// `iptables-restore` keeps the node's policies.
    pub fn ruleset(&self) -> Ruleset {
        let mut set = Ruleset::default();
        for table in [Table::Mangle, Table::Nat, Table::Filter] {
            let mut td = TableDump::new(table);
            // Names are valid by construction: declaring and appending cannot fail.
            for name in table.builtin_chains() {
                let _ = td.declare_chain(name, None);
            }
            for chain in self.chains.chains(table) {
                let _ = td.declare_chain(chain.name(), None);
            }
            for name in table.builtin_chains() {
                for (t, rule) in self.jumps.iter().rev() {
                    if *t == table && rule.chain == *name {
                        let _ = td.append(rule.clone());
                    }
                }
            }
            for chain in self.chains.chains(table) {
                for rule in chain.rules() {
                    let _ = td.append(rule.clone());
                }
            }
            set.tables.push(td);
        }
        set
    }
}

/// kube-proxy's `portProtoHash`: the first 16 characters of the base32 of
/// sha256(service port name + protocol).
pub fn port_proto_hash(service_port_name: &str, protocol: &str) -> String {
    let digest = Sha256::digest(format!("{service_port_name}{protocol}").as_bytes());
    BASE32.encode(&digest)[..16].to_string()
}

/// `KUBE-SVC-<hash>`: the chain that spreads a service port over its endpoints.
pub fn service_chain_name(spn: &ServicePortName, protocol: Proto) -> String {
    format!(
        "KUBE-SVC-{}",
        port_proto_hash(&spn.to_string(), protocol.name())
    )
}

/// `KUBE-EXT-<hash>`: the chain for a service port's external (node port) traffic.
pub fn external_chain_name(spn: &ServicePortName, protocol: Proto) -> String {
    format!(
        "KUBE-EXT-{}",
        port_proto_hash(&spn.to_string(), protocol.name())
    )
}

/// `KUBE-SEP-<hash>`: one endpoint's chain.
pub fn endpoint_chain_name(spn: &ServicePortName, protocol: Proto, endpoint: &Endpoint) -> String {
    let digest =
        Sha256::digest(format!("{spn}{}{}", protocol.name(), endpoint.host_port()).as_bytes());
    format!("KUBE-SEP-{}", &BASE32.encode(&digest)[..16])
}

/// kube-proxy's `computeProbability`: `1/n` printed with `%0.10f`.
pub fn probability_text(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// Write the rules for `services` and their `endpoints` (one full sync).
pub fn sync(
    config: &KubeProxyConfig,
    services: &[ClusterService],
    endpoints: &EndpointsMap,
) -> Result<KubeProxyRules, KubeProxyError> {
    let mut ports: BTreeMap<ServicePortName, (&ClusterService, &ServicePort)> = BTreeMap::new();
    for svc in services {
        for port in &svc.ports {
            let spn = ServicePortName::new(&svc.namespace, &svc.name, &port.name);
            if port.protocol == Proto::Icmp {
                return Err(KubeProxyError::UnsupportedProtocol {
                    service: spn.to_string(),
                    protocol: port.protocol.name().to_string(),
                });
            }
            if port.port == 0 || port.node_port == Some(0) {
                return Err(KubeProxyError::ZeroPort {
                    service: spn.to_string(),
                });
            }
            if !svc.cluster_ip.is_ipv4() {
                return Err(KubeProxyError::NotIpv4 {
                    service: spn.to_string(),
                    ip: svc.cluster_ip,
                });
            }
            if ports.insert(spn.clone(), (svc, port)).is_some() {
                return Err(KubeProxyError::DuplicatePort {
                    service: spn.to_string(),
                });
            }
        }
    }
    // Ready IPv4 endpoints, once each, sorted by their `ip:port` text as
    // kube-proxy's EndpointsMap sorts them.
    let endpoints_of = |spn: &ServicePortName| -> Vec<&Endpoint> {
        let mut seen = BTreeSet::new();
        let mut eps: Vec<&Endpoint> = endpoints
            .get(spn)
            .into_iter()
            .flatten()
            .filter(|e| e.ip.is_ipv4() && e.port != 0 && seen.insert((e.ip, e.port)))
            .collect();
        eps.sort_by_cached_key(|e| e.host_port());
        eps
    };
    let total_endpoints: usize = ports.keys().map(|spn| endpoints_of(spn).len()).sum();
    let large = total_endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD;

    let mut w = Writer {
        set: ChainSet::new(),
        mark: config.masquerade_mark(),
    };
    for name in [
        KUBE_SERVICES,
        KUBE_EXTERNAL_SERVICES,
        KUBE_FORWARD,
        KUBE_NODEPORTS,
        KUBE_PROXY_FIREWALL,
    ] {
        w.set.declare(Table::Filter, name)?;
    }
    for name in [
        KUBE_SERVICES,
        KUBE_NODEPORTS,
        KUBE_POSTROUTING,
        KUBE_MARK_MASQ,
    ] {
        w.set.declare(Table::Nat, name)?;
    }
    // The kubelet-owned firewall chain kube-proxy ensures, and the canary
    // chains its monitor creates in every table.
    w.set.declare(Table::Filter, KUBE_FIREWALL)?;
    for table in [Table::Mangle, Table::Nat, Table::Filter] {
        w.set.declare(table, KUBE_PROXY_CANARY)?;
    }

    let mark = w.mark;
    w.nat(
        Rule::new(KUBE_POSTROUTING)
            .with(Match::mark(mark, mark, true))
            .target(Jump::Return),
    )?;
    w.nat(Rule::new(KUBE_POSTROUTING).target(Jump::Mark(MarkAction::XorMark(mark))))?;
    w.nat(
        Rule::new(KUBE_POSTROUTING)
            .comment("kubernetes service traffic requiring SNAT")
            .target(Jump::Masquerade {
                random_fully: config.random_fully,
            }),
    )?;
    w.nat(Rule::new(KUBE_MARK_MASQ).target(Jump::Mark(MarkAction::OrMark(mark))))?;
    let localnet = LOCALNET;
    if config.localhost_nodeports {
        w.filter(
            Rule::new(KUBE_FIREWALL)
                .comment("block incoming localnet connections")
                .destination(localnet)
                .not_source(localnet)
                .with(Match::ctstate(
                    &[CtState::Related, CtState::Established, CtState::Dnat],
                    true,
                ))
                .target(Jump::Drop),
        )?;
    }

    for (spn, (svc, port)) in &ports {
        let proto = port.protocol;
        let vip = host(svc.cluster_ip);
        let eps = endpoints_of(spn);
        let svc_chain = service_chain_name(spn, proto);
        let ext_chain = external_chain_name(spn, proto);
        let has_endpoints = !eps.is_empty();

        if has_endpoints {
            w.nat(
                Rule::new(KUBE_SERVICES)
                    .comment(format!("{spn} cluster IP"))
                    .with(port_match(proto, port.port))
                    .protocol(protocol(proto))
                    .destination(vip)
                    .jump(&svc_chain),
            )?;
        } else {
            w.filter(
                Rule::new(KUBE_SERVICES)
                    .comment(format!("{spn} has no endpoints"))
                    .with(port_match(proto, port.port))
                    .protocol(protocol(proto))
                    .destination(vip)
                    .target(Jump::reject()),
            )?;
        }
        if let Some(node_port) = port.node_port {
            if has_endpoints {
                w.nat(
                    Rule::new(KUBE_NODEPORTS)
                        .comment(spn.to_string())
                        .with(port_match(proto, node_port))
                        .protocol(protocol(proto))
                        .jump(&ext_chain),
                )?;
            } else {
                w.filter(
                    Rule::new(KUBE_EXTERNAL_SERVICES)
                        .comment(format!("{spn} has no endpoints"))
                        .with(Match::dst_type(AddrType::Local, false))
                        .with(port_match(proto, node_port))
                        .protocol(protocol(proto))
                        .target(Jump::reject()),
                )?;
            }
        }
        if !has_endpoints {
            continue;
        }

        w.set.declare(Table::Nat, &svc_chain)?;
        let masq = Rule::new(&svc_chain)
            .comment(format!("{spn} cluster IP"))
            .with(port_match(proto, port.port))
            .protocol(protocol(proto))
            .destination(vip);
        if config.masquerade_all {
            w.nat(masq.jump(KUBE_MARK_MASQ))?;
        } else if let Some(cidr) = config.cluster_cidr {
            w.nat(masq.not_source(cidr).jump(KUBE_MARK_MASQ))?;
        }
        if port.node_port.is_some() {
            w.set.declare(Table::Nat, &ext_chain)?;
            w.nat(
                Rule::new(&ext_chain)
                    .comment(format!(
                        "masquerade traffic for {spn} external destinations"
                    ))
                    .jump(KUBE_MARK_MASQ),
            )?;
            w.nat(Rule::new(&ext_chain).jump(&svc_chain))?;
        }
        let n = eps.len();
        for (i, ep) in eps.iter().enumerate() {
            let mut rule = Rule::new(&svc_chain);
            if !large {
                rule = rule.comment(format!("{spn} -> {}", ep.host_port()));
            }
            if i + 1 < n {
                let p = Probability::new(&probability_text(n - i))
                    .map_err(NetfilterError::InvalidRule)?;
                rule = rule.with(Match::random(p));
            }
            w.nat(rule.jump(endpoint_chain_name(spn, proto, ep)))?;
        }
        for ep in &eps {
            let sep = endpoint_chain_name(spn, proto, ep);
            w.set.declare(Table::Nat, &sep)?;
            let base = || {
                let r = Rule::new(&sep);
                if large {
                    r
                } else {
                    r.comment(spn.to_string())
                }
            };
            w.nat(base().source(host(ep.ip)).jump(KUBE_MARK_MASQ))?;
            w.nat(
                base()
                    .with(port_match_any(proto))
                    .protocol(protocol(proto))
                    .target(Jump::dnat(ep.ip, Some(ep.port))),
            )?;
        }
    }

    // Tail call to the node ports: must stay the last rule of KUBE-SERVICES.
    let mut nodeports = Rule::new(KUBE_SERVICES)
        .comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
        .with(Match::dst_type(AddrType::Local, false));
    if !config.localhost_nodeports {
        nodeports = nodeports.not_destination(localnet);
    }
    w.nat(nodeports.jump(KUBE_NODEPORTS))?;

    if !config.conntrack_tcp_be_liberal {
        w.filter(
            Rule::new(KUBE_FORWARD)
                .with(Match::ctstate(&[CtState::Invalid], false))
                .target(Jump::Drop),
        )?;
    }
    w.filter(
        Rule::new(KUBE_FORWARD)
            .comment("kubernetes forwarding rules")
            .with(Match::mark(mark, mark, false))
            .target(Jump::Accept),
    )?;
    w.filter(
        Rule::new(KUBE_FORWARD)
            .comment("kubernetes forwarding conntrack rule")
            .with(Match::ctstate(
                &[CtState::Related, CtState::Established],
                false,
            ))
            .target(Jump::Accept),
    )?;

    let set = w.set;
    set.prepare();
    Ok(KubeProxyRules {
        chains: Arc::new(set),
        jumps: jump_rules(),
        large_cluster_mode: large,
    })
}

/// kube-proxy's `iptablesJumpChains` followed by `iptablesKubeletJumpChains`:
/// (table, built-in chain, extra matches, comment, target chain).
fn jump_rules() -> Vec<(Table, Rule)> {
    let new = || Match::ctstate(&[CtState::New], false);
    let jump = |chain: &str, ct_new: bool, comment: &str, to: &str| {
        let mut r = Rule::new(chain);
        if ct_new {
            r = r.with(new());
        }
        if !comment.is_empty() {
            r = r.comment(comment);
        }
        r.jump(to)
    };
    let ext = "kubernetes externally-visible service portals";
    let portals = "kubernetes service portals";
    let lbfw = "kubernetes load balancer firewall";
    vec![
        (
            Table::Filter,
            jump("INPUT", true, ext, KUBE_EXTERNAL_SERVICES),
        ),
        (
            Table::Filter,
            jump("FORWARD", true, ext, KUBE_EXTERNAL_SERVICES),
        ),
        (
            Table::Filter,
            jump(
                "INPUT",
                false,
                "kubernetes health check service ports",
                KUBE_NODEPORTS,
            ),
        ),
        (Table::Filter, jump("FORWARD", true, portals, KUBE_SERVICES)),
        (Table::Filter, jump("OUTPUT", true, portals, KUBE_SERVICES)),
        (
            Table::Filter,
            jump(
                "FORWARD",
                false,
                "kubernetes forwarding rules",
                KUBE_FORWARD,
            ),
        ),
        (
            Table::Filter,
            jump("INPUT", true, lbfw, KUBE_PROXY_FIREWALL),
        ),
        (
            Table::Filter,
            jump("OUTPUT", true, lbfw, KUBE_PROXY_FIREWALL),
        ),
        (
            Table::Filter,
            jump("FORWARD", true, lbfw, KUBE_PROXY_FIREWALL),
        ),
        (Table::Nat, jump("OUTPUT", false, portals, KUBE_SERVICES)),
        (
            Table::Nat,
            jump("PREROUTING", false, portals, KUBE_SERVICES),
        ),
        (
            Table::Nat,
            jump(
                "POSTROUTING",
                false,
                "kubernetes postrouting rules",
                KUBE_POSTROUTING,
            ),
        ),
        (Table::Filter, jump("INPUT", false, "", KUBE_FIREWALL)),
        (Table::Filter, jump("OUTPUT", false, "", KUBE_FIREWALL)),
    ]
}

struct Writer {
    set: ChainSet,
    mark: u32,
}

impl Writer {
    fn nat(&mut self, rule: Rule) -> Result<(), NetfilterError> {
        self.set.append(Table::Nat, rule)
    }

    fn filter(&mut self, rule: Rule) -> Result<(), NetfilterError> {
        self.set.append(Table::Filter, rule)
    }
}

fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

fn protocol(p: Proto) -> Protocol {
    match p {
        Proto::Tcp => Protocol::Tcp,
        Proto::Udp => Protocol::Udp,
        Proto::Icmp => Protocol::Icmp,
    }
}

/// `-m tcp --dport P` (or udp).
fn port_match(p: Proto, port: u16) -> Match {
    match p {
        Proto::Udp => Match::udp_dport(port),
        _ => Match::tcp_dport(port),
    }
}

/// `-m tcp` without options, as kube-proxy writes before DNAT.
fn port_match_any(p: Proto) -> Match {
    match p {
        Proto::Udp => Match::Udp(PortMatch::default()),
        _ => Match::Tcp(PortMatch::default()),
    }
}

#[cfg(test)]
mod tests {
    //! Modelled on kube-proxy's own tests (`pkg/proxy/iptables/proxier_test.go`):
    //! the expected rules of `TestOverallIPTablesRules` and the packet-tracer
    //! cases (single endpoint, several endpoints as a set, hairpin
    //! masquerade, REJECT for no endpoints, masquerade of off-cluster
    //! sources, node ports).

    use super::*;
    use crate::netfilter::{
        explore, merge_outcomes, Branches, Conntrack, Hook, HookCx, LocalAddresses, NatKind,
        NodeAddrs, TakeFirst, TraceEntry, Verdict,
    };
    use crate::packet::Packet;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn service(ns: &str, name: &str, vip: &str, node_port: Option<u16>) -> ClusterService {
        ClusterService {
            namespace: ns.to_string(),
            name: name.to_string(),
            cluster_ip: ip(vip),
            ports: vec![ServicePort {
                name: "p80".to_string(),
                protocol: Proto::Tcp,
                port: 80,
                node_port,
            }],
        }
    }

    fn endpoints(list: &[(&str, &str, &[&str])]) -> EndpointsMap {
        list.iter()
            .map(|(ns, name, ips)| {
                let eps = ips
                    .iter()
                    .map(|a| Endpoint {
                        ip: ip(a),
                        port: 80,
                        node: "node-a".to_string(),
                    })
                    .collect();
                (ServicePortName::new(ns, name, "p80"), eps)
            })
            .collect()
    }

    /// The services of kube-proxy's `TestOverallIPTablesRules` that this
    /// model covers (ClusterIP, NodePort, two endpoints, no endpoints).
    fn overall() -> (KubeProxyConfig, Vec<ClusterService>, EndpointsMap) {
        let config = KubeProxyConfig {
            cluster_cidr: Some("10.0.0.0/8".parse().expect("net")),
            // kube-proxy's fake iptables in that test has no --random-fully.
            random_fully: false,
            ..KubeProxyConfig::default()
        };
        let services = vec![
            service("ns1", "svc1", "172.30.0.41", None),
            service("ns3", "svc3", "172.30.0.43", Some(3003)),
            service("ns4", "svc4", "172.30.0.44", None),
            service("ns6", "svc6", "172.30.0.46", None),
        ];
        let eps = endpoints(&[
            ("ns1", "svc1", &["10.180.0.1"]),
            ("ns3", "svc3", &["10.180.0.3"]),
            ("ns4", "svc4", &["10.180.0.5", "10.180.0.4"]),
        ]);
        (config, services, eps)
    }

    /// Lines of kube-proxy's expected output for those services, as
    /// kube-proxy writes them (before iptables normalises them).
    const KUBE_PROXY_FILTER: &str = r#"
-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
"#;

    const KUBE_PROXY_NAT: &str = r#"
-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
"#;

    /// Every non-empty chain of `table` equals kube-proxy's lines for it.
    fn assert_chains_equal(rules: &KubeProxyRules, table: Table, expected_text: &str) {
        let mut expected: BTreeMap<String, Vec<Rule>> = BTreeMap::new();
        for line in expected_text.lines().filter(|l| !l.trim().is_empty()) {
            let r = Rule::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            expected.entry(r.chain.clone()).or_default().push(r);
        }
        let actual: BTreeMap<String, Vec<Rule>> = rules
            .chains
            .chains(table)
            .filter(|c| !c.rules().is_empty())
            .map(|c| (c.name().to_string(), c.rules().to_vec()))
            .collect();
        for (chain, want) in &expected {
            let got = actual
                .get(chain)
                .unwrap_or_else(|| panic!("{table}: chain {chain} missing"));
            let got_text: Vec<String> = got.iter().map(Rule::emit).collect();
            let want_text: Vec<String> = want.iter().map(Rule::emit).collect();
            assert_eq!(got_text, want_text, "{table}/{chain}");
            assert_eq!(got, want, "{table}/{chain}");
        }
        assert_eq!(
            actual.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{table}: chains"
        );
    }

    #[test]
    fn rules_are_the_ones_kube_proxy_writes() {
        let (config, services, eps) = overall();
        let rules = sync(&config, &services, &eps).expect("sync");
        assert!(!rules.large_cluster_mode);
        assert_chains_equal(&rules, Table::Nat, KUBE_PROXY_NAT);
        assert_chains_equal(&rules, Table::Filter, KUBE_PROXY_FILTER);
        // Declared even when empty, as kube-proxy's restore input does.
        for chain in [
            KUBE_EXTERNAL_SERVICES,
            KUBE_NODEPORTS,
            KUBE_PROXY_FIREWALL,
            KUBE_PROXY_CANARY,
        ] {
            assert!(
                rules.chains.chain(Table::Filter, chain).is_some(),
                "{chain}"
            );
        }
    }

    #[test]
    fn chain_names_are_kube_proxys_hashes() {
        let spn = ServicePortName::new("ns1", "svc1", "p80");
        assert_eq!(
            service_chain_name(&spn, Proto::Tcp),
            "KUBE-SVC-XPGD46QRK7WJZT7O"
        );
        let ep = Endpoint {
            ip: ip("10.180.0.1"),
            port: 80,
            node: String::new(),
        };
        assert_eq!(
            endpoint_chain_name(&spn, Proto::Tcp, &ep),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        let spn3 = ServicePortName::new("ns3", "svc3", "p80");
        assert_eq!(
            external_chain_name(&spn3, Proto::Tcp),
            "KUBE-EXT-X27LE4BHSL4DOUIK"
        );
        assert_eq!(ServicePortName::new("ns", "svc", "").to_string(), "ns/svc");
        assert_eq!(probability_text(3), "0.3333333333");
        assert_eq!(probability_text(2), "0.5000000000");
    }

    #[test]
    fn jumps_and_ruleset_match_a_node_running_kube_proxy() {
        let (config, services, eps) = overall();
        let rules = sync(&config, &services, &eps).expect("sync");
        let text = rules.ruleset().emit();
        let forward: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A FORWARD"))
            .collect();
        assert_eq!(
            forward,
            [
                "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
                "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
                "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
                "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
            ]
        );
        assert!(text.contains(
            "-A KUBE-SERVICES -d 172.30.0.41/32 -p tcp -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O\n"
        ));
        // The text parses back to the same dump (what iptables-restore reads).
        assert_eq!(Ruleset::parse(&text).expect("parse"), rules.ruleset());
        // Loading it on a node gives the same rules as installing them.
        let mut installed = Netfilter::new();
        rules.install(&mut installed).expect("install");
        let mut restored = Netfilter::new();
        restored.restore(&rules.ruleset(), true).expect("restore");
        assert_eq!(restored.dump().emit(), installed.dump().emit());
        // Installing twice (a resync) adds no duplicate jumps.
        rules.install(&mut installed).expect("reinstall");
        assert_eq!(restored.dump().emit(), installed.dump().emit());
    }

    #[test]
    fn large_clusters_drop_per_endpoint_comments() {
        let services: Vec<ClusterService> = (0..501)
            .map(|i| {
                service(
                    "big",
                    &format!("s{i}"),
                    &format!("172.30.{}.{}", i / 200, i % 200 + 1),
                    None,
                )
            })
            .collect();
        let eps: EndpointsMap = (0..501)
            .map(|i| {
                let list = (0..2)
                    .map(|k| Endpoint {
                        ip: ip(&format!("10.181.{}.{}", i / 100, (i % 100) * 2 + k + 1)),
                        port: 80,
                        node: String::new(),
                    })
                    .collect();
                (ServicePortName::new("big", &format!("s{i}"), "p80"), list)
            })
            .collect();
        let rules = sync(&KubeProxyConfig::default(), &services, &eps).expect("sync");
        assert!(rules.large_cluster_mode);
        let spn = ServicePortName::new("big", "s0", "p80");
        let svc = rules
            .chains
            .chain(Table::Nat, &service_chain_name(&spn, Proto::Tcp))
            .expect("svc chain");
        assert!(
            svc.rules().iter().all(|r| !r.emit().contains("--comment")),
            "{:?}",
            svc.rules()
        );
        // KUBE-SERVICES keeps its comments.
        let services_chain = rules
            .chains
            .chain(Table::Nat, KUBE_SERVICES)
            .expect("chain");
        assert!(services_chain.rules()[0]
            .emit()
            .contains("\"big/s0:p80 cluster IP\""));
    }

    #[test]
    fn invalid_services_are_refused() {
        let mut svc = service("ns", "svc", "172.30.0.1", None);
        svc.ports[0].protocol = Proto::Icmp;
        assert!(matches!(
            sync(&KubeProxyConfig::default(), &[svc], &EndpointsMap::new()),
            Err(KubeProxyError::UnsupportedProtocol { .. })
        ));
        let twice = vec![
            service("ns", "svc", "172.30.0.1", None),
            service("ns", "svc", "172.30.0.2", None),
        ];
        assert!(matches!(
            sync(&KubeProxyConfig::default(), &twice, &EndpointsMap::new()),
            Err(KubeProxyError::DuplicatePort { .. })
        ));
    }

    /// A node of kube-proxy's tests: node IP 192.168.0.2 on eth0, local pods
    /// 10.180.0.0/24 on cbr0 (gateway 10.180.0.254), cluster CIDR 10.0.0.0/8.
    struct TestNode {
        nf: Netfilter,
        addrs: NodeAddrs,
    }

    impl TestNode {
        fn new() -> TestNode {
            let (config, services, eps) = overall();
            let mut services = services;
            services.push(service("ns7", "svc7", "172.30.0.47", None));
            let mut eps = eps;
            eps.extend(endpoints(&[(
                "ns7",
                "svc7",
                &["10.180.0.7", "10.180.1.7", "10.180.2.7"],
            )]));
            let rules = sync(&config, &services, &eps).expect("sync");
            let mut nf = Netfilter::new();
            rules.install(&mut nf).expect("install");
            let mut addrs = NodeAddrs::new();
            addrs.add("lo", "127.0.0.1/8".parse().expect("net"));
            addrs.add("eth0", "192.168.0.2/24".parse().expect("net"));
            addrs.add("cbr0", "10.180.0.254/24".parse().expect("net"));
            TestNode { nf, addrs }
        }

        fn out_iface(&self, dst: IpAddr) -> &'static str {
            let pods: IpNet = "10.180.0.0/24".parse().expect("net");
            if pods.contains(&dst) {
                "cbr0"
            } else {
                "eth0"
            }
        }

        /// A packet arriving on `in_iface` (or from the node itself when
        /// `None`): the verdict, the packet as it leaves, and the trace.
        fn send(
            &self,
            in_iface: Option<&'static str>,
            mut pkt: Packet,
            ct: &mut Conntrack,
            br: &mut dyn Branches,
        ) -> (Verdict, Packet, Vec<TraceEntry>) {
            let mut trace = Vec::new();
            let nf = &self.nf;
            let first = match in_iface {
                Some(i) => {
                    let cx = HookCx::input(&self.addrs, i);
                    nf.hook(Hook::Prerouting, &mut pkt, &cx, ct, br, &mut trace)
                }
                None => {
                    let cx = HookCx::output(&self.addrs, self.out_iface(pkt.dst));
                    nf.hook(Hook::Output, &mut pkt, &cx, ct, br, &mut trace)
                }
            };
            if first != Verdict::Accept {
                return (first, pkt, trace);
            }
            let out = self.out_iface(pkt.dst);
            if let Some(i) = in_iface {
                let cx = HookCx::forward(&self.addrs, i, out);
                if self.addrs.is_local(pkt.dst) {
                    let v = nf.hook(
                        Hook::Input,
                        &mut pkt,
                        &HookCx::input(&self.addrs, i),
                        ct,
                        br,
                        &mut trace,
                    );
                    return (v, pkt, trace);
                }
                let v = nf.hook(Hook::Forward, &mut pkt, &cx, ct, br, &mut trace);
                if v != Verdict::Accept {
                    return (v, pkt, trace);
                }
            }
            let cx = HookCx {
                in_iface,
                out_iface: Some(out),
                addrs: &self.addrs,
                next_hop: None,
            };
            let v = nf.hook(Hook::Postrouting, &mut pkt, &cx, ct, br, &mut trace);
            (v, pkt, trace)
        }

        /// Every outcome of a new connection, merged by (verdict, destination, source).
        fn trace_packet(
            &self,
            in_iface: Option<&'static str>,
            src: &str,
            dst: &str,
            dport: u16,
        ) -> BTreeMap<(String, String, String), f64> {
            let outcomes = explore(64, |br| {
                let pkt = Packet::tcp(ip(src), 40000, ip(dst), dport);
                let (v, p, _) = self.send(in_iface, pkt, &mut Conntrack::new(), br);
                (
                    v.to_string(),
                    format!("{}:{}", p.dst, p.dport),
                    p.src.to_string(),
                )
            })
            .expect("explore");
            merge_outcomes(&outcomes)
        }
    }

    fn one(v: &str, dst: &str, src: &str) -> BTreeMap<(String, String, String), f64> {
        BTreeMap::from([((v.to_string(), dst.to_string(), src.to_string()), 1.0)])
    }

    #[test]
    fn a_single_endpoint_is_reached_without_masquerade() {
        let node = TestNode::new();
        // A pod on another node (inside the cluster CIDR) via this node.
        assert_eq!(
            node.trace_packet(Some("eth0"), "10.0.0.2", "172.30.0.41", 80),
            one("ACCEPT", "10.180.0.1:80", "10.0.0.2")
        );
        // A local pod.
        assert_eq!(
            node.trace_packet(Some("cbr0"), "10.180.0.9", "172.30.0.41", 80),
            one("ACCEPT", "10.180.0.1:80", "10.180.0.9")
        );
    }

    #[test]
    fn several_endpoints_are_reached_as_a_set() {
        let node = TestNode::new();
        let set = node.trace_packet(Some("cbr0"), "10.180.0.9", "172.30.0.47", 80);
        let dsts: Vec<&str> = set.keys().map(|(_, d, _)| d.as_str()).collect();
        assert_eq!(dsts, ["10.180.0.7:80", "10.180.1.7:80", "10.180.2.7:80"]);
        for p in set.values() {
            assert!((p - 1.0 / 3.0).abs() < 1e-9, "{set:?}");
        }
        assert!((set.values().sum::<f64>() - 1.0).abs() < 1e-9);
        // Two endpoints: one half each.
        let two = node.trace_packet(Some("cbr0"), "10.180.0.9", "172.30.0.44", 80);
        assert_eq!(two.len(), 2);
        assert!(two.values().all(|p| (p - 0.5).abs() < 1e-12));
    }

    #[test]
    fn an_endpoint_reaching_its_own_service_is_masqueraded() {
        let node = TestNode::new();
        // Hairpin: the only endpoint of svc1 talks to svc1.
        assert_eq!(
            node.trace_packet(Some("cbr0"), "10.180.0.1", "172.30.0.41", 80),
            one("ACCEPT", "10.180.0.1:80", "10.180.0.254")
        );
        let (v, pkt, trace) = node.send(
            Some("cbr0"),
            Packet::tcp(ip("10.180.0.1"), 40000, ip("172.30.0.41"), 80),
            &mut Conntrack::new(),
            &mut TakeFirst,
        );
        assert_eq!(v, Verdict::Accept);
        assert_eq!(pkt.mark, 0, "KUBE-POSTROUTING clears the mark");
        let chains: Vec<&str> = trace
            .iter()
            .filter_map(|e| match e {
                TraceEntry::Rule {
                    table: Table::Nat,
                    chain,
                    ..
                } => Some(chain.as_str()),
                _ => None,
            })
            .collect();
        assert!(
            chains.contains(&"KUBE-SEP-SXIVWICOYRO3J4NJ") && chains.contains(&"KUBE-MARK-MASQ"),
            "{chains:?}"
        );
        assert!(chains.contains(&"KUBE-POSTROUTING"));
    }

    #[test]
    fn replies_of_a_service_connection_come_back_from_the_vip() {
        let node = TestNode::new();
        let mut ct = Conntrack::new();
        let (v, pkt, _) = node.send(
            Some("cbr0"),
            Packet::tcp(ip("10.180.0.1"), 40000, ip("172.30.0.41"), 80),
            &mut ct,
            &mut TakeFirst,
        );
        assert_eq!(v, Verdict::Accept);
        let (v, reply, trace) = node.send(Some("cbr0"), pkt.reply(), &mut ct, &mut TakeFirst);
        assert_eq!(v, Verdict::Accept);
        assert_eq!((reply.src, reply.sport), (ip("172.30.0.41"), 80));
        assert_eq!((reply.dst, reply.dport), (ip("10.180.0.1"), 40000));
        let kinds: Vec<NatKind> = trace
            .iter()
            .filter_map(|e| {
                if let TraceEntry::Nat { nat, .. } = e {
                    Some(*nat)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(kinds, [NatKind::UnSnat, NatKind::UnDnat]);
    }

    #[test]
    fn a_service_without_endpoints_is_rejected() {
        let node = TestNode::new();
        let (v, _, _) = node.send(
            Some("cbr0"),
            Packet::tcp(ip("10.180.0.9"), 40000, ip("172.30.0.46"), 80),
            &mut Conntrack::new(),
            &mut TakeFirst,
        );
        match v {
            Verdict::Reject { by, with } => {
                assert_eq!(
                    (by.table, by.chain.as_str()),
                    (Table::Filter, KUBE_SERVICES)
                );
                assert!(
                    by.rule.contains("\"ns6/svc6:p80 has no endpoints\""),
                    "{}",
                    by.rule
                );
                assert_eq!(with.name(), "icmp-port-unreachable");
            }
            other => panic!("expected REJECT, got {other}"),
        }
        // From the node itself (OUTPUT) as well.
        let (v, _, _) = node.send(
            None,
            Packet::tcp(ip("192.168.0.2"), 40000, ip("172.30.0.46"), 80),
            &mut Conntrack::new(),
            &mut TakeFirst,
        );
        assert!(matches!(v, Verdict::Reject { .. }), "{v}");
    }

    #[test]
    fn traffic_from_outside_the_cluster_is_masqueraded() {
        let node = TestNode::new();
        // An off-cluster client routed to the VIP through this node.
        assert_eq!(
            node.trace_packet(Some("eth0"), "192.168.0.100", "172.30.0.41", 80),
            one("ACCEPT", "10.180.0.1:80", "10.180.0.254")
        );
        // The node itself (OUTPUT): its source is outside the cluster CIDR.
        assert_eq!(
            node.trace_packet(None, "192.168.0.2", "172.30.0.41", 80),
            one("ACCEPT", "10.180.0.1:80", "10.180.0.254")
        );
        // A node port from outside: external traffic is always masqueraded.
        assert_eq!(
            node.trace_packet(Some("eth0"), "192.168.0.100", "192.168.0.2", 3003),
            one("ACCEPT", "10.180.0.3:80", "10.180.0.254")
        );
        // A port nobody serves is left alone (delivered to the node).
        assert_eq!(
            node.trace_packet(Some("eth0"), "192.168.0.100", "192.168.0.2", 3004),
            one("ACCEPT", "192.168.0.2:3004", "192.168.0.100")
        );
    }
}
