//! Behaviour of the netfilter engine: NAT and conntrack on the paths the
//! checks use, the guide's and docker's masquerade rules, sharing between
//! nodes, the index, and the error cases.

use super::eval::tests_support;
use super::*;
use crate::kube_proxy::{
    self, ClusterService, Endpoint, EndpointsMap, KubeProxyConfig, ServicePort, ServicePortName,
};
use crate::packet::{Packet, Proto};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn rule(s: &str) -> Rule {
    Rule::parse(s).expect("test rule")
}

/// A node as the guide builds it: 192.168.0.11 on eth0, pod CIDR
/// 10.10.1.0/24 on the bridge cbr0.
fn node_addrs() -> NodeAddrs {
    let mut a = NodeAddrs::new();
    a.add("lo", "127.0.0.1/8".parse().expect("net"));
    a.add("eth0", "192.168.0.11/24".parse().expect("net"));
    a.add("cbr0", "10.10.1.1/24".parse().expect("net"));
    a
}

fn route(dst: IpAddr) -> &'static str {
    let pods: IpNet = "10.10.1.0/24".parse().expect("net");
    if pods.contains(&dst) {
        "cbr0"
    } else {
        "eth0"
    }
}

/// What a node does with a packet received on `in_iface`: PREROUTING, the
/// routing decision, then INPUT, or FORWARD and POSTROUTING.
fn walk(
    nf: &Netfilter,
    addrs: &NodeAddrs,
    pkt: &mut Packet,
    in_iface: &'static str,
    ct: &mut Conntrack,
    branches: &mut dyn Branches,
    trace: &mut Vec<TraceEntry>,
) -> Verdict {
    let cx = HookCx::input(addrs, in_iface);
    let v = nf.hook(Hook::Prerouting, pkt, &cx, ct, branches, trace);
    if v != Verdict::Accept {
        return v;
    }
    if addrs.is_local(pkt.dst) {
        return nf.hook(Hook::Input, pkt, &cx, ct, branches, trace);
    }
    let cx = HookCx::forward(addrs, in_iface, route(pkt.dst));
    let v = nf.hook(Hook::Forward, pkt, &cx, ct, branches, trace);
    if v != Verdict::Accept {
        return v;
    }
    nf.hook(Hook::Postrouting, pkt, &cx, ct, branches, trace)
}

fn guide_node() -> Netfilter {
    let mut nf = Netfilter::new();
    nf.append(
        Table::Nat,
        rule("-A POSTROUTING ! -d 10.10.0.0/16 -m addrtype ! --dst-type LOCAL -j MASQUERADE"),
    )
    .expect("append");
    nf
}

#[test]
fn pod_traffic_to_outside_is_masqueraded_to_the_node_ip() {
    let nf = guide_node();
    let addrs = node_addrs();
    let mut ct = Conntrack::new();
    let mut trace = Vec::new();
    let mut pkt = Packet::tcp(ip("10.10.1.5"), 40000, ip("8.8.8.8"), 53);
    let v = walk(
        &nf,
        &addrs,
        &mut pkt,
        "cbr0",
        &mut ct,
        &mut TakeFirst,
        &mut trace,
    );
    assert_eq!(v, Verdict::Accept);
    assert_eq!(pkt.src, ip("192.168.0.11"));
    assert_eq!(pkt.sport, 40000);
    assert!(trace.iter().any(|e| matches!(e, TraceEntry::Rule { table: Table::Nat, chain, target, .. } if chain == "POSTROUTING" && target == "MASQUERADE")));
    assert!(trace.iter().any(|e| matches!(e, TraceEntry::Nat { nat: NatKind::Snat, from, to, .. } if from == "10.10.1.5:40000" && to == "192.168.0.11:40000")));
    assert_eq!(ct.len(), 1);
}

#[test]
fn pod_to_pod_traffic_is_not_masqueraded() {
    let nf = guide_node();
    let addrs = node_addrs();
    for dst in ["10.10.2.7", "10.10.1.9"] {
        let mut ct = Conntrack::new();
        let mut trace = Vec::new();
        let mut pkt = Packet::tcp(ip("10.10.1.5"), 40000, ip(dst), 80);
        let v = walk(
            &nf,
            &addrs,
            &mut pkt,
            "cbr0",
            &mut ct,
            &mut TakeFirst,
            &mut trace,
        );
        assert_eq!(v, Verdict::Accept);
        assert_eq!(pkt.src, ip("10.10.1.5"), "to {dst}");
        assert!(
            !trace.iter().any(|e| matches!(e, TraceEntry::Nat { .. })),
            "to {dst}: {trace:?}"
        );
    }
    // A packet for the node itself is delivered, not masqueraded.
    let mut ct = Conntrack::new();
    let mut pkt = Packet::tcp(ip("10.10.1.5"), 40000, ip("192.168.0.11"), 10250);
    let v = walk(
        &nf,
        &addrs,
        &mut pkt,
        "cbr0",
        &mut ct,
        &mut TakeFirst,
        &mut Vec::new(),
    );
    assert_eq!(v, Verdict::Accept);
    assert_eq!(pkt.src, ip("10.10.1.5"));
}

#[test]
fn replies_are_translated_back_and_established() {
    let mut nf = guide_node();
    nf.set_policy(Table::Filter, "FORWARD", Policy::Drop)
        .expect("policy");
    nf.append(
        Table::Filter,
        rule("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
    )
    .expect("append");
    nf.append(Table::Filter, rule("-A FORWARD -i cbr0 -j ACCEPT"))
        .expect("append");
    let addrs = node_addrs();
    let mut ct = Conntrack::new();
    let mut out = Packet::tcp(ip("10.10.1.5"), 40000, ip("8.8.8.8"), 53);
    assert_eq!(
        walk(
            &nf,
            &addrs,
            &mut out,
            "cbr0",
            &mut ct,
            &mut TakeFirst,
            &mut Vec::new()
        ),
        Verdict::Accept
    );

    let mut reply = out.reply();
    assert_eq!(reply.dst, ip("192.168.0.11"));
    let mut trace = Vec::new();
    let v = walk(
        &nf,
        &addrs,
        &mut reply,
        "eth0",
        &mut ct,
        &mut TakeFirst,
        &mut trace,
    );
    assert_eq!(v, Verdict::Accept, "{trace:#?}");
    assert_eq!((reply.dst, reply.dport), (ip("10.10.1.5"), 40000));
    assert_eq!((reply.src, reply.sport), (ip("8.8.8.8"), 53));
    assert!(trace.iter().any(|e| matches!(e, TraceEntry::Conntrack { state, direction: Direction::Reply, .. } if state == "ESTABLISHED")));
    assert!(trace.iter().any(|e| matches!(
        e,
        TraceEntry::Nat {
            nat: NatKind::UnSnat,
            ..
        }
    )));
    // The reply was accepted by the conntrack rule, not the policy.
    assert!(trace
        .iter()
        .any(|e| matches!(e, TraceEntry::Rule { chain, index: 1, .. } if chain == "FORWARD")));
    // The nat table was not consulted for the reply.
    assert!(!trace.iter().any(|e| matches!(
        e,
        TraceEntry::Rule {
            table: Table::Nat,
            ..
        }
    )));

    // The next packet of the connection is ESTABLISHED and SNATed from conntrack.
    let mut again = Packet::tcp(ip("10.10.1.5"), 40000, ip("8.8.8.8"), 53);
    let mut trace = Vec::new();
    assert_eq!(
        walk(
            &nf,
            &addrs,
            &mut again,
            "cbr0",
            &mut ct,
            &mut TakeFirst,
            &mut trace
        ),
        Verdict::Accept
    );
    assert_eq!(again.src, ip("192.168.0.11"));
    assert!(trace.iter().any(|e| matches!(e, TraceEntry::Conntrack { state, direction: Direction::Original, .. } if state == "ESTABLISHED")));
    assert_eq!(ct.len(), 1);
}

#[test]
fn masquerade_moves_the_source_port_when_the_reply_tuple_is_taken() {
    let nf = guide_node();
    let addrs = node_addrs();
    let mut ct = Conntrack::new();
    let mut a = Packet::tcp(ip("10.10.1.5"), 40000, ip("8.8.8.8"), 53);
    let mut b = Packet::tcp(ip("10.10.1.6"), 40000, ip("8.8.8.8"), 53);
    assert_eq!(
        walk(
            &nf,
            &addrs,
            &mut a,
            "cbr0",
            &mut ct,
            &mut TakeFirst,
            &mut Vec::new()
        ),
        Verdict::Accept
    );
    assert_eq!(
        walk(
            &nf,
            &addrs,
            &mut b,
            "cbr0",
            &mut ct,
            &mut TakeFirst,
            &mut Vec::new()
        ),
        Verdict::Accept
    );
    assert_eq!(a.src, b.src);
    assert_ne!(a.sport, b.sport);
    // Each reply finds its own pod.
    for (pkt, pod) in [(a, "10.10.1.5"), (b, "10.10.1.6")] {
        let mut reply = pkt.reply();
        assert_eq!(
            walk(
                &nf,
                &addrs,
                &mut reply,
                "eth0",
                &mut ct,
                &mut TakeFirst,
                &mut Vec::new()
            ),
            Verdict::Accept
        );
        assert_eq!((reply.dst, reply.dport), (ip(pod), 40000));
    }
}

/// Docker's rules with `--bridge=cbr0 --ip-masq=true` on a node whose pod
/// CIDR is 10.10.1.0/24 (`iptables-save` after dockerd started).
const DOCKER_RULES: &str = "\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 10.10.1.0/24 ! -o cbr0 -j MASQUERADE
-A DOCKER -i cbr0 -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o cbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o cbr0 -j DOCKER
-A FORWARD -i cbr0 ! -o cbr0 -j ACCEPT
-A FORWARD -i cbr0 -o cbr0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i cbr0 ! -o cbr0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o cbr0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
";

#[test]
fn docker_ip_masq_masquerades_pod_traffic_to_other_nodes() {
    let mut nf = Netfilter::new();
    nf.restore(&Ruleset::parse(DOCKER_RULES).expect("docker rules"), true)
        .expect("restore");
    let addrs = node_addrs();
    let mut ct = Conntrack::new();
    let mut trace = Vec::new();
    let mut pkt = Packet::tcp(ip("10.10.1.5"), 40000, ip("10.10.2.7"), 8080);
    let v = walk(
        &nf,
        &addrs,
        &mut pkt,
        "cbr0",
        &mut ct,
        &mut TakeFirst,
        &mut trace,
    );
    assert_eq!(v, Verdict::Accept, "{trace:#?}");
    // The receiver would see the node's address, not the pod's: the
    // violation of "no NAT between pods" the guide warns about.
    assert_eq!(pkt.src, ip("192.168.0.11"));
    let responsible = trace.iter().find_map(|e| match e {
        TraceEntry::Rule {
            table: Table::Nat,
            rule,
            target,
            ..
        } if target == "MASQUERADE" => Some(rule.clone()),
        _ => None,
    });
    assert_eq!(
        responsible.as_deref(),
        Some("-A POSTROUTING -s 10.10.1.0/24 ! -o cbr0 -j MASQUERADE")
    );
    // Traffic between pods on the bridge is accepted and left alone.
    let mut local = Packet::tcp(ip("10.10.1.5"), 40000, ip("10.10.1.9"), 8080);
    let v = walk(
        &nf,
        &addrs,
        &mut local,
        "cbr0",
        &mut Conntrack::new(),
        &mut TakeFirst,
        &mut Vec::new(),
    );
    assert_eq!(v, Verdict::Accept);
    assert_eq!(local.src, ip("10.10.1.5"));
    // Docker's FORWARD policy drops what its rules do not accept.
    let mut inbound = Packet::tcp(ip("192.168.0.50"), 40000, ip("10.10.1.5"), 8080);
    let v = walk(
        &nf,
        &addrs,
        &mut inbound,
        "eth0",
        &mut Conntrack::new(),
        &mut TakeFirst,
        &mut Vec::new(),
    );
    match v {
        Verdict::Drop { by } => {
            assert_eq!(
                (by.table, by.chain.as_str(), by.index),
                (Table::Filter, "FORWARD", None)
            );
            assert_eq!(by.to_string(), "filter/FORWARD policy DROP");
        }
        other => panic!("expected the FORWARD policy to drop, got {other}"),
    }
}

fn small_cluster() -> kube_proxy::KubeProxyRules {
    let svc = |name: &str, vip: &str| ClusterService {
        namespace: "default".to_string(),
        name: name.to_string(),
        cluster_ip: ip(vip),
        ports: vec![ServicePort {
            name: "http".to_string(),
            protocol: Proto::Tcp,
            port: 80,
            node_port: None,
        }],
    };
    let ep = |addr: &str| Endpoint {
        ip: ip(addr),
        port: 8080,
        node: "node-1".to_string(),
    };
    let mut eps = EndpointsMap::new();
    eps.insert(
        ServicePortName::new("default", "web", "http"),
        vec![ep("10.10.1.5"), ep("10.10.2.5"), ep("10.10.3.5")],
    );
    eps.insert(
        ServicePortName::new("default", "api", "http"),
        vec![ep("10.10.2.6")],
    );
    let config = KubeProxyConfig {
        cluster_cidr: Some("10.10.0.0/16".parse().expect("net")),
        ..KubeProxyConfig::default()
    };
    kube_proxy::sync(
        &config,
        &[svc("web", "10.0.0.10"), svc("api", "10.0.0.11")],
        &eps,
    )
    .expect("sync")
}

#[test]
fn a_node_local_change_does_not_affect_nodes_sharing_the_chains() {
    let rules = small_cluster();
    let mut a = Netfilter::new();
    let mut b = Netfilter::new();
    rules.install(&mut a).expect("install a");
    rules.install(&mut b).expect("install b");
    let before_local = a.local_chain_count();
    let before = b.dump().emit();

    // A fault deletes the api Service's rule in KUBE-SERVICES on node a only.
    let svc_rule = a
        .rules(Table::Nat, "KUBE-SERVICES")
        .and_then(|rs| {
            rs.iter()
                .find(|r| r.emit().contains("default/api:http cluster IP"))
                .cloned()
        })
        .expect("api rule");
    a.delete(Table::Nat, &svc_rule).expect("delete");

    // Only that chain was copied into node a; the shared set is untouched.
    assert_eq!(a.local_chain_count(), before_local + 1);
    let (sa, sb) = (a.shared().expect("shared"), b.shared().expect("shared"));
    assert!(Arc::ptr_eq(sa, sb));
    assert!(Arc::ptr_eq(sa, &rules.chains));
    assert_eq!(b.dump().emit(), before);
    assert!(rules
        .chains
        .chain(Table::Nat, "KUBE-SERVICES")
        .expect("chain")
        .rules()
        .contains(&svc_rule));

    let addrs = node_addrs();
    let send = |nf: &Netfilter| {
        let mut pkt = Packet::tcp(ip("10.10.1.5"), 40000, ip("10.0.0.11"), 80);
        walk(
            nf,
            &addrs,
            &mut pkt,
            "cbr0",
            &mut Conntrack::new(),
            &mut TakeFirst,
            &mut Vec::new(),
        );
        pkt.dst
    };
    assert_eq!(send(&a), ip("10.0.0.11"), "node a lost the Service");
    assert_eq!(send(&b), ip("10.10.2.6"), "node b still has it");

    // Deleting a shared chain hides it on node a only.
    a.delete_chain(
        Table::Nat,
        &kube_proxy::service_chain_name(
            &ServicePortName::new("default", "api", "http"),
            Proto::Tcp,
        ),
    )
    .expect("no rule of node a jumps to it any more");
    assert!(b
        .chain(
            Table::Nat,
            &kube_proxy::service_chain_name(
                &ServicePortName::new("default", "api", "http"),
                Proto::Tcp
            )
        )
        .is_some());
}

#[test]
fn deleting_a_chain_in_use_is_refused() {
    let rules = small_cluster();
    let mut nf = Netfilter::new();
    rules.install(&mut nf).expect("install");
    let err = nf
        .delete_chain(Table::Nat, "KUBE-MARK-MASQ")
        .expect_err("in use");
    assert!(matches!(err, NetfilterError::ChainInUse { .. }), "{err}");
    assert!(matches!(
        nf.delete_chain(Table::Nat, "PREROUTING"),
        Err(NetfilterError::BuiltinChain { .. })
    ));
}

/// Every path a packet to the `web` VIP can take, as (verdict, final
/// destination, trace).
fn explore_web(nf: &Netfilter) -> Vec<Outcome<(String, IpAddr, Vec<TraceEntry>)>> {
    let addrs = node_addrs();
    explore(64, |br| {
        let mut ct = Conntrack::new();
        let mut trace = Vec::new();
        let mut pkt = Packet::tcp(ip("10.10.1.9"), 40000, ip("10.0.0.10"), 80);
        let v = walk(nf, &addrs, &mut pkt, "cbr0", &mut ct, br, &mut trace);
        (v.to_string(), pkt.dst, trace)
    })
    .expect("explore")
}

#[test]
fn same_input_gives_the_same_trace() {
    let mut nf = Netfilter::new();
    small_cluster().install(&mut nf).expect("install");
    let first = explore_web(&nf);
    let second = explore_web(&nf);
    assert_eq!(first.len(), 3);
    assert_eq!(first, second);
    let json = |o: &[Outcome<(String, IpAddr, Vec<TraceEntry>)>]| {
        serde_json::to_string(
            &o.iter()
                .map(|o| (&o.value, o.probability))
                .collect::<Vec<_>>(),
        )
        .expect("json")
    };
    assert_eq!(json(&first), json(&second));
    // A freshly built identical cluster gives identical bytes too.
    let mut other = Netfilter::new();
    small_cluster().install(&mut other).expect("install");
    assert_eq!(json(&explore_web(&other)), json(&first));
}

#[test]
fn misplaced_targets_and_unmodelled_matches_are_errors() {
    let addrs = node_addrs();
    let run = |nf: &Netfilter| {
        let mut pkt = Packet::tcp(ip("10.10.1.5"), 40000, ip("10.10.2.7"), 80);
        walk(
            nf,
            &addrs,
            &mut pkt,
            "cbr0",
            &mut Conntrack::new(),
            &mut TakeFirst,
            &mut Vec::new(),
        )
    };
    let mut nf = Netfilter::new();
    nf.append(
        Table::Filter,
        rule("-A FORWARD -j DNAT --to-destination 10.0.0.1"),
    )
    .expect("append");
    match run(&nf) {
        Verdict::Error(e) => assert!(
            e.contains("DNAT is only valid") && e.contains("FORWARD"),
            "{e}"
        ),
        other => panic!("expected an error, got {other}"),
    }
    let mut nf = Netfilter::new();
    nf.append(Table::Nat, rule("-A PREROUTING -j REJECT"))
        .expect("append");
    assert!(matches!(run(&nf), Verdict::Error(e) if e.contains("REJECT")));
    // A match the simulator cannot evaluate never reaches it: the rule
    // model refuses it when the rule is read.
    assert!(Rule::parse("-A FORWARD -m recent --rcheck --name x -j DROP").is_err());
    // iptables itself refuses a jump to something that is neither a chain
    // nor a target it knows.
    let mut nf = Netfilter::new();
    let err = nf
        .append(Table::Filter, rule("-A FORWARD -j NOWHERE"))
        .expect_err("unknown target");
    assert_eq!(
        err,
        NetfilterError::NoSuchChain {
            table: Table::Filter,
            chain: "NOWHERE".to_string()
        }
    );
    assert!(matches!(
        nf.append(Table::Filter, rule("-A FORWARD -j INPUT")),
        Err(NetfilterError::JumpToBuiltin { .. })
    ));
}

#[test]
fn ensure_rule_adds_once() {
    let mut nf = Netfilter::new();
    let r = rule("-A POSTROUTING ! -d 10.10.0.0/16 -m addrtype ! --dst-type LOCAL -j MASQUERADE");
    assert!(nf
        .ensure_rule(Table::Nat, r.clone(), Position::Append)
        .expect("ensure"));
    assert!(!nf
        .ensure_rule(Table::Nat, r.clone(), Position::Append)
        .expect("ensure"));
    assert_eq!(
        nf.rules(Table::Nat, "POSTROUTING").map(<[Rule]>::len),
        Some(1)
    );
    let first = rule("-A POSTROUTING -m comment --comment first");
    nf.ensure_rule(Table::Nat, first.clone(), Position::Prepend)
        .expect("ensure");
    assert_eq!(
        nf.rules(Table::Nat, "POSTROUTING").map(|r| r[0].clone()),
        Some(first)
    );
    nf.delete(Table::Nat, &r).expect("delete");
    assert_eq!(
        nf.delete(Table::Nat, &r),
        Err(NetfilterError::NoSuchRule {
            table: Table::Nat,
            rule: r.emit()
        })
    );
}

#[test]
fn mark_targets_follow_the_kernel_arithmetic() {
    let mut nf = Netfilter::new();
    for r in [
        "-A PREROUTING -j MARK --set-xmark 0xff/0xf0",
        "-A PREROUTING -j MARK --or-mark 0x4000",
        "-A PREROUTING -j MARK --xor-mark 0x1",
        "-A PREROUTING -j MARK --set-xmark 0x0/0xf",
        "-A PREROUTING -m mark --mark 0x40f0 -j ACCEPT",
        "-A PREROUTING -j DROP",
    ] {
        nf.append(Table::Mangle, rule(r)).expect("append");
    }
    let addrs = node_addrs();
    let mut pkt = Packet::tcp(ip("10.10.1.5"), 1, ip("10.10.1.6"), 2);
    pkt.mark = 0x0a;
    // (0x0a & !0xf0) ^ 0xff = 0xf5; | 0x4000 = 0x40f5; ^ 1 = 0x40f4; & !0xf = 0x40f0
    let v = nf.hook(
        Hook::Prerouting,
        &mut pkt,
        &HookCx::input(&addrs, "cbr0"),
        &mut Conntrack::new(),
        &mut TakeFirst,
        &mut Vec::new(),
    );
    assert_eq!(v, Verdict::Accept);
    assert_eq!(pkt.mark, 0x40f0);
}

#[test]
fn addrtype_classifies_like_the_kernel() {
    let a = node_addrs();
    assert_eq!(a.addr_type(ip("192.168.0.11")), AddrType::Local);
    assert_eq!(a.addr_type(ip("127.0.0.53")), AddrType::Local);
    assert_eq!(a.addr_type(ip("10.10.1.255")), AddrType::Broadcast);
    assert_eq!(a.addr_type(ip("255.255.255.255")), AddrType::Broadcast);
    assert_eq!(a.addr_type(ip("224.0.0.1")), AddrType::Multicast);
    assert_eq!(a.addr_type(ip("10.10.2.7")), AddrType::Unicast);
    assert_eq!(
        a.masquerade_source("eth0", ip("10.10.1.5"), None),
        Some(ip("192.168.0.11"))
    );
    assert_eq!(a.masquerade_source("eth1", ip("10.10.1.5"), None), None);
}

#[test]
fn masquerade_without_an_address_drops() {
    let nf = guide_node();
    let addrs = node_addrs();
    let mut pkt = Packet::tcp(ip("10.10.1.5"), 40000, ip("8.8.8.8"), 53);
    let mut ct = Conntrack::new();
    let cx = HookCx::forward(&addrs, "cbr0", "eth9");
    assert_eq!(
        nf.hook(
            Hook::Prerouting,
            &mut pkt,
            &cx,
            &mut ct,
            &mut TakeFirst,
            &mut Vec::new()
        ),
        Verdict::Accept
    );
    match nf.hook(
        Hook::Postrouting,
        &mut pkt,
        &cx,
        &mut ct,
        &mut TakeFirst,
        &mut Vec::new(),
    ) {
        Verdict::Drop { by } => assert_eq!(by.index, Some(1)),
        other => panic!("expected a drop, got {other}"),
    }
    assert!(ct.is_empty(), "a dropped first packet leaves no connection");
}

#[test]
fn locally_delivered_packets_keep_their_connection_through_lo() {
    let mut nf = Netfilter::new();
    nf.append(Table::Nat, rule("-A OUTPUT -d 10.0.0.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 127.0.0.1:6443")).expect("append");
    let addrs = node_addrs();
    let mut ct = Conntrack::new();
    let mut trace = Vec::new();
    let mut pkt = Packet::tcp(ip("192.168.0.11"), 50000, ip("10.0.0.1"), 443);
    let out = HookCx::output(&addrs, "lo");
    for hook in [Hook::Output, Hook::Postrouting] {
        assert_eq!(
            nf.hook(hook, &mut pkt, &out, &mut ct, &mut TakeFirst, &mut trace),
            Verdict::Accept
        );
    }
    let inp = HookCx::input(&addrs, "lo");
    for hook in [Hook::Prerouting, Hook::Input] {
        assert_eq!(
            nf.hook(hook, &mut pkt, &inp, &mut ct, &mut TakeFirst, &mut trace),
            Verdict::Accept
        );
    }
    assert_eq!((pkt.dst, pkt.dport), (ip("127.0.0.1"), 6443));
    assert_eq!(ct.len(), 1);
    let lookups = trace
        .iter()
        .filter(|e| matches!(e, TraceEntry::Conntrack { .. }))
        .count();
    assert_eq!(lookups, 1, "{trace:#?}");
    // The answer comes back as the VIP.
    let mut reply = pkt.reply();
    for hook in [Hook::Output, Hook::Postrouting] {
        assert_eq!(
            nf.hook(
                hook,
                &mut reply,
                &out,
                &mut ct,
                &mut TakeFirst,
                &mut Vec::new()
            ),
            Verdict::Accept
        );
    }
    assert_eq!((reply.src, reply.sport), (ip("10.0.0.1"), 443));
}

#[test]
fn dump_and_restore_round_trip() {
    let mut nf = Netfilter::new();
    nf.restore(&Ruleset::parse(DOCKER_RULES).expect("docker"), true)
        .expect("restore");
    small_cluster().install(&mut nf).expect("install");
    let dump = nf.dump();
    let text = dump.emit();
    assert_eq!(Ruleset::parse(&text).expect("parse"), dump);
    let mut fresh = Netfilter::new();
    fresh.restore(&dump, false).expect("restore");
    assert_eq!(fresh.dump().emit(), text);
    // Tables nobody touched are not printed.
    assert!(!text.contains("*raw"));
}

#[test]
fn restore_is_all_or_nothing() {
    let mut nf = guide_node();
    let before = nf.dump();
    let bad = Ruleset::parse("*nat\n:POSTROUTING ACCEPT [0:0]\n:FOO - [0:0]\n-A FOO -j MASQUERADE\n-A POSTROUTING -j FOO\nCOMMIT\n*filter\n:BAR - [0:0]\n-A BAR -j NOWHERE\nCOMMIT\n")
        .expect("parse");
    let err = nf
        .restore(&bad, false)
        .expect_err("jump to a missing chain");
    assert_eq!(
        err,
        NetfilterError::NoSuchChain {
            table: Table::Filter,
            chain: "NOWHERE".to_string()
        }
    );
    assert_eq!(nf.dump(), before);
}

#[test]
fn explore_enumerates_a_cascade_with_probabilities() {
    let outcomes = explore(16, |br| {
        if br.choose(1.0 / 3.0) {
            "a"
        } else if br.choose(0.5) {
            "b"
        } else if br.choose(0.0) || !br.choose(1.0) {
            "never"
        } else {
            "c"
        }
    })
    .expect("explore");
    let merged = merge_outcomes(&outcomes);
    assert_eq!(merged.keys().copied().collect::<Vec<_>>(), ["a", "b", "c"]);
    for p in merged.values() {
        assert!((p - 1.0 / 3.0).abs() < 1e-12);
    }
    assert!((merged.values().sum::<f64>() - 1.0).abs() < 1e-12);
    assert_eq!(outcomes[1].choices, [false, true]);
    assert_eq!(
        explore(2, |br| br.choose(0.5) && br.choose(0.5)).expect_err("limit"),
        ExploreError::TooManyPaths { limit: 2 }
    );
    let mut n = 0.0;
    let err = explore(8, |br| {
        n += 0.25;
        br.choose(n)
    })
    .expect_err("different questions on replay");
    assert_eq!(err, ExploreError::NotDeterministic { at: 0 });
}

/// A chain in the shape of `KUBE-SERVICES` with non-indexable rules mixed
/// in, evaluated with and without the index for many packets.
#[test]
fn the_index_gives_the_same_answers_as_a_linear_scan() {
    let mut nf = Netfilter::new();
    nf.new_chain(Table::Mangle, "SVC").expect("chain");
    nf.append(Table::Mangle, rule("-A PREROUTING -j SVC"))
        .expect("append");
    for i in 0..120u32 {
        let vip = format!("10.0.{}.{}", i / 50, i % 50);
        let port = 80 + (i % 3);
        let r = match i % 10 {
            3 => format!(
                "-A SVC -s 10.10.0.0/16 -j MARK --or-mark 0x{:x}",
                1 << (i % 16)
            ),
            5 => format!("-A SVC -p tcp -m tcp --dport {port} -m comment --comment np{i}"),
            7 => {
                format!("-A SVC -d {vip}/32 -p udp -m udp --dport {port} -m comment --comment u{i}")
            }
            9 => format!(
                "-A SVC -d 10.0.0.0/24 -p tcp -m tcp --dport {port} -m comment --comment net{i}"
            ),
            _ => format!(
                "-A SVC -d {vip}/32 -p tcp -m comment --comment \"svc {i}\" -m tcp --dport {port}"
            ),
        };
        nf.append(Table::Mangle, rule(&r)).expect("append");
        if i == 60 {
            // A duplicate key later in the chain must come in order too.
            nf.append(
                Table::Mangle,
                rule("-A SVC -d 10.0.0.0/32 -p tcp -m tcp --dport 80 -m comment --comment dup"),
            )
            .expect("append");
        }
    }
    nf.append(
        Table::Mangle,
        rule("-A SVC -d 10.0.1.1/32 -p tcp -m tcp --dport 81 -j ACCEPT"),
    )
    .expect("append");
    let addrs = node_addrs();
    let run = |pkt: &Packet| {
        let mut p = pkt.clone();
        let mut trace = Vec::new();
        let v = nf.hook(
            Hook::Prerouting,
            &mut p,
            &HookCx::input(&addrs, "cbr0"),
            &mut Conntrack::new(),
            &mut TakeFirst,
            &mut trace,
        );
        (v, p, trace)
    };
    let mut indexed_rules = 0;
    let mut linear_rules = 0;
    for src in ["10.10.1.5", "192.168.0.50"] {
        for i in 0..130u32 {
            for port in [80u16, 81, 82, 83] {
                let dst = ip(&format!("10.0.{}.{}", i / 50, i % 50));
                let mut pkts = vec![Packet::tcp(ip(src), 1000, dst, port)];
                let mut udp = Packet::tcp(ip(src), 1000, dst, port);
                udp.proto = Proto::Udp;
                pkts.push(udp);
                let mut icmp = Packet::tcp(ip(src), 0, dst, 0);
                icmp.proto = Proto::Icmp;
                pkts.push(icmp);
                for pkt in pkts {
                    tests_support::set_force_linear(false);
                    tests_support::take_rule_count();
                    let with_index = run(&pkt);
                    indexed_rules += tests_support::take_rule_count();
                    tests_support::set_force_linear(true);
                    let linear = run(&pkt);
                    linear_rules += tests_support::take_rule_count();
                    tests_support::set_force_linear(false);
                    assert_eq!(with_index, linear, "{pkt}");
                }
            }
        }
    }
    assert!(
        indexed_rules * 3 < linear_rules,
        "index examined {indexed_rules} rules, linear {linear_rules}"
    );
}

/// A kube-proxy table of 10,000 Services: a packet to a VIP examines a
/// handful of rules, not the whole `KUBE-SERVICES` chain.
#[test]
fn ten_thousand_services_are_evaluated_through_the_index() {
    let mut services = Vec::new();
    let mut eps = EndpointsMap::new();
    for i in 0..10_000u32 {
        let name = format!("svc-{i}");
        services.push(ClusterService {
            namespace: "load".to_string(),
            name: name.clone(),
            cluster_ip: IpAddr::V4(std::net::Ipv4Addr::from(0x0a60_0000 + i)),
            ports: vec![ServicePort {
                name: "http".to_string(),
                protocol: Proto::Tcp,
                port: 80,
                node_port: None,
            }],
        });
        eps.insert(
            ServicePortName::new("load", &name, "http"),
            (0..2u32)
                .map(|k| Endpoint {
                    ip: IpAddr::V4(std::net::Ipv4Addr::from(0x0a0a_0000 + i * 2 + k)),
                    port: 8080,
                    node: format!("node-{k}"),
                })
                .collect(),
        );
    }
    let config = KubeProxyConfig {
        cluster_cidr: Some("10.10.0.0/16".parse().expect("net")),
        ..KubeProxyConfig::default()
    };
    let rules = kube_proxy::sync(&config, &services, &eps).expect("sync");
    assert!(rules.large_cluster_mode);
    assert!(rules.chains.rule_count() > 80_000);
    let mut nf = Netfilter::new();
    rules.install(&mut nf).expect("install");
    let addrs = node_addrs();
    let vip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a60_0000 + 7_777));
    let outcomes = explore(8, |br| {
        let mut pkt = Packet::tcp(ip("10.10.1.5"), 40000, vip, 80);
        tests_support::take_rule_count();
        walk(
            &nf,
            &addrs,
            &mut pkt,
            "cbr0",
            &mut Conntrack::new(),
            br,
            &mut Vec::new(),
        );
        (pkt.dst, tests_support::take_rule_count())
    })
    .expect("explore");
    let dsts: Vec<IpAddr> = outcomes.iter().map(|o| o.value.0).collect();
    assert_eq!(dsts, [ip("10.10.60.194"), ip("10.10.60.195")]);
    for o in &outcomes {
        assert!(o.value.1 < 40, "{} rules examined", o.value.1);
    }
}
