//! The node network after a reboot: `kscratch-network.service`.
//!
//! Links, addresses, routes, FDB and neighbour entries and iptables rules
//! live in the kernel and are gone after a reboot; only sysctls and modules
//! were persisted under /etc. The plan therefore writes one description of
//! the cluster's pod network, [`NetworkDescription`]
//! (`/etc/kscratch/network.conf`, the same bytes on every node: the node
//! whose address is local is "this node", as with the plan's pod network
//! table), and a fixed POSIX sh re-applier, [`NETWORK_UP`]
//! (`/etc/kscratch/network-up`), which a oneshot unit runs at boot before
//! the container runtime and the agents (on a node without systemd, the
//! supervisor runs the unit's command once). Every command it runs is the
//! converging form `apply` itself uses (`ip addr replace`, `ip route
//! replace`, `bridge fdb replace`, `ip neigh replace`, `iptables -C || -A`),
//! so running it on a converged node changes nothing and a later apply
//! shows 0 changed.
//!
//! Why one description and a re-applier rather than systemd-networkd files
//! and an iptables-restore unit: the description holds exactly what the
//! plan's node-base steps install (one source: [`NetworkDescription::actions`]
//! gives those very typed actions, which the simulator runs), it works on
//! nodes without systemd-networkd or without systemd at all, and it never
//! replaces other people's network configuration or nat rules the way a
//! whole-table restore would.

use super::ParseError;
use crate::net::iptables::{Rule, Table};
use crate::net::route::MacAddr;
use crate::plan::{bridge_mac, Action, PodNetworkEntry, PodRouteVia, VxlanDevice};
use crate::scenario::{PodTraffic, Scenario};
use ipnet::IpNet;
use std::net::IpAddr;

/// How pod traffic leaves a node, as far as the node itself is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeTraffic {
    /// A route per peer's pod CIDR via its node IP.
    Routed,
    /// The underlay router routes (fabric) or someone else does (external):
    /// nothing on the node beyond its bridge.
    None,
    /// The VXLAN device, and a route, neighbour and FDB entry per peer.
    Vxlan { dev: String, vni: u32, port: u16 },
}

/// The cluster's pod network as every node re-applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDescription {
    /// The underlay interface (`network.interface`).
    pub interface: String,
    pub bridge: String,
    /// The pod MTU: the bridge's, and the VXLAN device's.
    pub mtu: u32,
    pub traffic: NodeTraffic,
    /// Kernel modules to load, in order.
    pub modules: Vec<String>,
    /// sysctls to set, in order (after the modules that provide them).
    pub sysctls: Vec<(String, String)>,
    /// The masquerade rule (nat POSTROUTING), when masquerading.
    pub masquerade: Option<Rule>,
    /// Every node: name, address, pod CIDR, bridge address, VTEP MAC.
    pub nodes: Vec<PodNetworkEntry>,
}

/// Where the plan writes the re-applier's input and the re-applier.
pub const NETWORK_CONF: &str = "/etc/kscratch/network.conf";
pub const NETWORK_UP_PATH: &str = "/etc/kscratch/network-up";

impl NetworkDescription {
    /// The description of `s`'s pod network, from the same data the planner uses.
    pub fn of(s: &Scenario) -> NetworkDescription {
        NetworkDescription {
            interface: s.network.interface.clone(),
            bridge: s.network.bridge.clone(),
            mtu: s.network.pod_mtu,
            traffic: match &s.network.pod_traffic {
                PodTraffic::Routed => NodeTraffic::Routed,
                PodTraffic::Fabric | PodTraffic::External => NodeTraffic::None,
                PodTraffic::Vxlan(v) => NodeTraffic::Vxlan {
                    dev: v.device.clone(),
                    vni: v.vni,
                    port: v.port,
                },
            },
            modules: vec!["br_netfilter".into()],
            sysctls: vec![
                ("net.ipv4.ip_forward".into(), "1".into()),
                ("net.bridge.bridge-nf-call-iptables".into(), "1".into()),
            ],
            masquerade: crate::plan::masquerade_rule(s),
            nodes: crate::plan::pod_network_entries(s),
        }
    }

    /// The file, one setting or node per line.
    pub fn emit(&self) -> String {
        let mut out = String::from(
            "# Written by kscratch: this cluster's pod network, re-applied at boot by\n\
             # kscratch-network.service (/etc/kscratch/network-up). Every node gets\n\
             # the same file; the node whose address is on `interface` is this node.\n",
        );
        out.push_str(&format!("interface {}\n", self.interface));
        out.push_str(&format!("bridge {} mtu {}\n", self.bridge, self.mtu));
        match &self.traffic {
            NodeTraffic::Routed => out.push_str("pod-traffic routed\n"),
            NodeTraffic::None => out.push_str("pod-traffic none\n"),
            NodeTraffic::Vxlan { dev, vni, port } => out.push_str(&format!(
                "pod-traffic vxlan {dev} id {vni} dstport {port}\n"
            )),
        }
        for m in &self.modules {
            out.push_str(&format!("module {m}\n"));
        }
        for (k, v) in &self.sysctls {
            out.push_str(&format!("sysctl {k} {v}\n"));
        }
        if let Some(r) = &self.masquerade {
            out.push_str(&format!("masquerade {}\n", r.emit()));
        }
        for e in &self.nodes {
            out.push_str(&format!(
                "node {} {} {} {}",
                e.node, e.node_ip, e.pod_cidr, e.bridge_addr
            ));
            if let Some(mac) = e.vtep_mac {
                out.push_str(&format!(" {mac}"));
            }
            out.push('\n');
        }
        // Derived from each bridge address, written out so that the
        // re-applier needs no arithmetic (see `plan::bridge_mac`).
        for e in &self.nodes {
            out.push_str(&format!(
                "bridge-mac {} {}\n",
                e.node,
                bridge_mac(e.bridge_addr.addr())
            ));
        }
        out
    }

    /// Reads what [`emit`](Self::emit) writes; an unknown line is an error naming it.
    pub fn parse(text: &str) -> Result<NetworkDescription, ParseError> {
        let err = |i: usize, m: String| ParseError {
            what: "network description",
            message: format!("line {}: {m}", i + 1),
        };
        let mut d = NetworkDescription {
            interface: String::new(),
            bridge: String::new(),
            mtu: 0,
            traffic: NodeTraffic::None,
            modules: vec![],
            sysctls: vec![],
            masquerade: None,
            nodes: vec![],
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
            let w: Vec<&str> = rest.split_whitespace().collect();
            let num = |s: &str| -> Result<u32, ParseError> {
                s.parse()
                    .map_err(|_| err(i, format!("`{s}` is not a number")))
            };
            let net = |s: &str| -> Result<IpNet, ParseError> {
                s.parse()
                    .map_err(|_| err(i, format!("`{s}` is not an address with a prefix")))
            };
            match (key, w.as_slice()) {
                ("interface", [dev]) => d.interface = dev.to_string(),
                ("bridge", [name, "mtu", mtu]) => {
                    d.bridge = name.to_string();
                    d.mtu = num(mtu)?;
                }
                ("pod-traffic", ["routed"]) => d.traffic = NodeTraffic::Routed,
                ("pod-traffic", ["none"]) => d.traffic = NodeTraffic::None,
                ("pod-traffic", ["vxlan", dev, "id", vni, "dstport", port]) => {
                    d.traffic = NodeTraffic::Vxlan {
                        dev: dev.to_string(),
                        vni: num(vni)?,
                        port: u16::try_from(num(port)?)
                            .map_err(|_| err(i, format!("`{port}` is not a port")))?,
                    }
                }
                ("module", [m]) => d.modules.push(m.to_string()),
                ("sysctl", [k, v]) => d.sysctls.push((k.to_string(), v.to_string())),
                ("masquerade", _) => {
                    d.masquerade =
                        Some(Rule::parse(rest).map_err(|e| err(i, format!("masquerade: {e}")))?)
                }
                ("node", [name, ip, cidr, bridge, mac @ ..]) if mac.len() <= 1 => {
                    d.nodes.push(PodNetworkEntry {
                        node: name.to_string(),
                        node_ip: ip
                            .parse::<IpAddr>()
                            .map_err(|_| err(i, format!("`{ip}` is not an IP address")))?,
                        pod_cidr: net(cidr)?,
                        bridge_addr: net(bridge)?,
                        vtep_mac: match mac.first() {
                            Some(m) => Some(MacAddr::parse(m).map_err(|e| err(i, format!("{e}")))?),
                            None => None,
                        },
                    })
                }
                ("bridge-mac", [name, mac]) => {
                    let mac = MacAddr::parse(mac).map_err(|e| err(i, format!("{e}")))?;
                    let Some(e) = d.nodes.iter().find(|e| e.node == *name) else {
                        return Err(err(
                            i,
                            format!("bridge-mac names `{name}`, which no earlier node line has"),
                        ));
                    };
                    let want = bridge_mac(e.bridge_addr.addr());
                    if mac != want {
                        return Err(err(
                            i,
                            format!("bridge-mac of {name} is {mac}, but its bridge address {} gives {want}", e.bridge_addr),
                        ));
                    }
                }
                _ => return Err(err(i, format!("`{line}` is not understood"))),
            }
        }
        if d.interface.is_empty() || d.bridge.is_empty() {
            return Err(ParseError {
                what: "network description",
                message: "it names no interface or no bridge".into(),
            });
        }
        Ok(d)
    }

    /// The node among [`nodes`](Self::nodes) whose address `is_local` says is ours.
    pub fn me(&self, is_local: impl Fn(IpAddr) -> bool) -> Option<usize> {
        self.nodes.iter().position(|e| is_local(e.node_ip))
    }

    /// What re-applying means on node `me`, as the typed actions the plan's
    /// node-base steps run, in the order the re-applier runs them. The pod
    /// routes come from the plan's pod network table (`InstallPodRoutes`),
    /// which holds [`nodes`](Self::nodes).
    pub fn actions(&self, me: usize) -> Vec<Action> {
        let e = &self.nodes[me];
        let mut v: Vec<Action> = Vec::new();
        for m in &self.modules {
            if let Some(name) = known_module(m) {
                v.push(Action::LoadKernelModule { name });
            }
        }
        for (k, val) in &self.sysctls {
            if let Some((key, value)) = known_sysctl(k, val) {
                v.push(Action::SetSysctl { key, value });
            }
        }
        v.push(Action::CreateBridge {
            name: self.bridge.clone(),
            addr: e.bridge_addr,
            mtu: self.mtu,
        });
        match &self.traffic {
            NodeTraffic::None => {}
            NodeTraffic::Routed => v.push(Action::InstallPodRoutes {
                artifact: crate::plan::ArtifactId::PodNetwork,
                via: PodRouteVia::Underlay {
                    dev: self.interface.clone(),
                },
            }),
            NodeTraffic::Vxlan { dev, vni, port } => {
                v.push(Action::CreateVxlan(Box::new(VxlanDevice {
                    name: dev.clone(),
                    vni: *vni,
                    port: *port,
                    local: e.node_ip,
                    dev: self.interface.clone(),
                    mtu: self.mtu,
                    mac: e.vtep_mac.unwrap_or(crate::plan::vtep_mac(e.node_ip)),
                    addr: IpNet::new(e.pod_cidr.network(), e.pod_cidr.max_prefix_len())
                        .expect("host prefix"),
                })));
                v.push(Action::InstallPodRoutes {
                    artifact: crate::plan::ArtifactId::PodNetwork,
                    via: PodRouteVia::Overlay { dev: dev.clone() },
                });
            }
        }
        if let Some(rule) = &self.masquerade {
            v.push(Action::EnsureIptablesRule {
                table: Table::Nat,
                rule: rule.clone(),
            });
        }
        v
    }
}

/// The modules a description may name (actions carry `&'static str`).
fn known_module(m: &str) -> Option<&'static str> {
    ["br_netfilter", "vxlan", "overlay"]
        .into_iter()
        .find(|k| *k == m)
}

fn known_sysctl(k: &str, v: &str) -> Option<(&'static str, &'static str)> {
    let key = ["net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"]
        .into_iter()
        .find(|x| *x == k)?;
    let value = ["0", "1"].into_iter().find(|x| *x == v)?;
    Some((key, value))
}

/// The re-applier: reads [`NETWORK_CONF`] (or its first argument) and
/// converges this node's pod network with the commands `apply` uses.
pub const NETWORK_UP: &str = r#"#!/bin/sh
# Written by kscratch: re-applies this node's pod network from the
# description the plan wrote (kscratch-network.service runs it at boot,
# before the container runtime). Every command converges: on a node that
# `kscratch apply` left as it is, nothing changes. The description is read
# with the shell's own `read`, and the links, addresses, routes and
# neighbours go to one `ip -batch`: a process per line and per node made
# this script start 30-odd programs on every node.
set -eu
set -f
conf=${1:-/etc/kscratch/network.conf}
iface= bridge= mtu= traffic= vxlan= vni= port= rule= modules= sysctls=
while read -r key rest; do
  set -- $rest
  case "$key" in
    interface) iface=$1 ;;
    bridge) bridge=$1 mtu=$3 ;;
    pod-traffic) traffic=$1 vxlan=${2:-} vni=${4:-} port=${6:-} ;;
    module) modules="$modules $1" ;;
    sysctl) sysctls="$sysctls $1=$2" ;;
    masquerade) rule=$rest ;;
  esac
done < "$conf"
# This node: the one whose address is on the interface (" ADDR/" in `ip -o addr`).
addrs=$(ip -o addr show dev "$iface" 2>/dev/null) || addrs=
me=""
while read -r kind name ip cidr braddr mac; do
  [ "$kind" = node ] || continue
  case "$addrs" in
    *" $ip/"*) me=$name my_ip=$ip my_cidr=$cidr my_br=$braddr my_mac=${mac:-} ;;
  esac
done < "$conf"
if [ -z "$me" ]; then
  echo "kscratch-network: no node of $conf has its address on $iface" >&2
  exit 1
fi
# Loaded, built in (br_netfilter's sysctls exist), or loaded now.
loaded() {
  [ -d "/sys/module/$1" ] && return 0
  [ "$1" = br_netfilter ] && [ -d /proc/sys/net/bridge ] && return 0
  grep -qs "/$1.ko" "/lib/modules/$(uname -r)/modules.builtin"
}
for m in $modules; do loaded "$m" || modprobe "$m"; done
[ -z "$sysctls" ] || sysctl -qw $sysctls
if [ -e "/sys/class/net/$bridge" ] && [ ! -d "/sys/class/net/$bridge/bridge" ]; then
  echo "kscratch-network: $bridge exists and is not a bridge" >&2
  exit 1
fi
# A set MAC stays; an unset one follows the bridge's ports (plan::bridge_mac).
my_brmac=
while read -r key name mac; do
  if [ "$key" = bridge-mac ] && [ "$name" = "$me" ]; then my_brmac=$mac; fi
done < "$conf"
[ -d "/sys/class/net/$bridge/bridge" ] || ip link add "$bridge" type bridge
links="link set dev $bridge mtu $mtu
"
[ -z "$my_brmac" ] || links="${links}link set dev $bridge address $my_brmac
"
links="${links}addr replace $my_br dev $bridge
link set dev $bridge up
"
if [ "$traffic" = vxlan ]; then
  [ -e "/sys/class/net/$vxlan" ] ||
    ip link add "$vxlan" type vxlan id "$vni" local "$my_ip" dev "$iface" dstport "$port" nolearning
  links="${links}link set dev $vxlan address $my_mac mtu $mtu
addr replace ${my_cidr%/*}/32 dev $vxlan
link set dev $vxlan up
"
fi
ip -batch - <<EOF
$links
EOF
routes= fdb=
while read -r kind name ip cidr braddr mac; do
  [ "$kind" = node ] && [ "$name" != "$me" ] || continue
  case "$traffic" in
    routed) routes="${routes}route replace $cidr via $ip dev $iface
" ;;
    vxlan)
      vtep=${cidr%/*}
      routes="${routes}route replace $cidr via $vtep dev $vxlan onlink
neigh replace $vtep lladdr $mac dev $vxlan nud permanent
"
      fdb="${fdb}fdb replace $mac dev $vxlan dst $ip self permanent
"
      ;;
  esac
done < "$conf"
# FDB entries first: a route through the VTEP is useless until its MAC is known.
if [ -n "$fdb" ]; then
  bridge -batch - <<EOF
$fdb
EOF
fi
if [ -n "$routes" ]; then
  ip -batch - <<EOF
$routes
EOF
fi
if [ -n "$rule" ]; then
  set -- $rule
  shift 2
  iptables -w -t nat -C POSTROUTING "$@" 2>/dev/null || iptables -w -t nat -A POSTROUTING "$@"
fi
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Scenario {
        crate::load("t.yaml", text, None).expect("valid").scenario
    }

    const ROUTED: &str = "cluster: {name: t, kubernetesVersion: \"1.30.4\"}\n\
        nodes:\n  - {name: a, ip: 198.51.100.1, roles: [control-plane, etcd, worker]}\n  - {name: b, ip: 198.51.100.2}\n\
        network: {nodeCIDR: 198.51.100.0/24, clusterCIDR: 10.10.0.0/16, nodePrefix: 24, podTraffic: routed, masquerade: true}\n";

    #[test]
    fn emit_then_parse_round_trips_for_every_mode() {
        for text in [
            ROUTED.to_string(),
            ROUTED.replace(
                "podTraffic: routed",
                "podTraffic: fabric, gateway: 198.51.100.254",
            ),
            ROUTED.replace(
                "podTraffic: routed",
                "podTraffic: vxlan, vxlan: {vni: 42, port: 4789, device: vxlan0}",
            ),
        ] {
            let d = NetworkDescription::of(&load(&text));
            let back = NetworkDescription::parse(&d.emit()).expect("parses");
            assert_eq!(back, d);
        }
    }

    #[test]
    fn the_actions_are_the_plans_node_base_actions() {
        for text in [
            ROUTED.to_string(),
            ROUTED.replace(
                "podTraffic: routed",
                "podTraffic: vxlan, vxlan: {vni: 42, port: 4789, device: vxlan0}",
            ),
        ] {
            let s = load(&text);
            let p = crate::plan::plan(&s);
            let d = NetworkDescription::of(&s);
            for i in 0..s.nodes.len() {
                let mut planned: Vec<&Action> = p
                    .steps
                    .iter()
                    .filter(|st| st.target == crate::plan::Target::Node(i as u32))
                    .map(|st| &st.action)
                    .filter(|a| {
                        matches!(
                            a,
                            Action::LoadKernelModule { .. }
                                | Action::SetSysctl { .. }
                                | Action::CreateBridge { .. }
                                | Action::CreateVxlan(_)
                                | Action::InstallPodRoutes { .. }
                                | Action::EnsureIptablesRule { .. }
                        )
                    })
                    .collect();
                let mut described = d.actions(i);
                let key = |a: &Action| format!("{a:?}");
                planned.sort_by_key(|a| key(a));
                described.sort_by_key(key);
                assert_eq!(
                    planned.into_iter().cloned().collect::<Vec<_>>(),
                    described,
                    "node {i}"
                );
            }
        }
    }

    #[test]
    fn every_node_has_its_bridge_mac_and_an_edited_one_is_refused() {
        let d = NetworkDescription::of(&load(ROUTED));
        let text = d.emit();
        // node a's cbr0 is 10.10.0.1/24: 0a:58 (locally administered,
        // unicast) and the address.
        assert!(text.contains("bridge-mac a 0a:58:0a:0a:00:01\n"), "{text}");
        assert!(text.contains("bridge-mac b 0a:58:0a:0a:01:01\n"), "{text}");
        let edited = text.replace(
            "bridge-mac b 0a:58:0a:0a:01:01",
            "bridge-mac b 0a:58:0a:0a:01:02",
        );
        let e = NetworkDescription::parse(&edited).expect_err("a MAC its address does not give");
        assert!(e.to_string().contains("bridge-mac of b is 0a:58:0a:0a:01:02, but its bridge address 10.10.1.1/24 gives 0a:58:0a:0a:01:01"), "{e}");
        let e = NetworkDescription::parse(&text.replace("bridge-mac b", "bridge-mac c"))
            .expect_err("an unknown node");
        assert!(e.to_string().contains("names `c`"), "{e}");
    }

    #[test]
    fn parse_names_the_line_it_does_not_understand() {
        let e = NetworkDescription::parse("interface eth0\nbridge cbr0 mtu 1500\nroute x\n")
            .expect_err("unknown line");
        assert!(e.to_string().contains("line 3: `route x`"), "{e}");
        let e = NetworkDescription::parse("bridge cbr0 mtu x\n").expect_err("bad mtu");
        assert!(e.to_string().contains("`x` is not a number"), "{e}");
    }
}
