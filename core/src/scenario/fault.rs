//! What-if faults: damage done to a converged cluster before re-checking it.
//!
//! This is the one fault grammar. The text form is `KIND[:NODE][:ARG]`, the
//! same on the command line (`--fault route-missing:node-2`) and in a
//! scenario's `faults:` list. What a fault *does* is not here: each compiles
//! to a damage plan of ordinary typed actions ([`crate::plan::damage`]),
//! which the simulator and real machines run through the same executor.

use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// The node is powered off: it answers nothing and forwards nothing.
    NodeDown { node: String },
    /// The node runs, but its underlay NIC is down (`ip link set eth0 down`).
    NicDown { node: String },
    /// One pod route is missing on `node` (the route to `to`'s pod CIDR, or all of them).
    RouteMissing { node: String, to: Option<String> },
    /// `net.ipv4.ip_forward=0` on the node.
    IpForwardOff { node: String },
    /// A `FORWARD` DROP rule at the top of the node's filter table.
    ForwardDrop { node: String },
    /// Strict reverse-path filtering (`net.ipv4.conf.all.rp_filter=1`) on the node.
    RpFilterStrict { node: String },
    /// br_netfilter is not loaded on the node: bridged traffic bypasses iptables.
    BrNetfilterOff { node: String },
    /// The node's underlay interface has a smaller MTU than the other nodes'.
    UnderlayMtu { node: String, mtu: u32 },
    /// The VXLAN FDB entry for `to`'s VTEP MAC is missing on `node`.
    FdbMissing { node: String, to: String },
    /// The VXLAN neighbour entry for `to`'s VTEP address is missing on `node`.
    NeighMissing { node: String, to: String },
    /// kube-proxy is not running on the node when the Services are created.
    KubeProxyDown { node: String },
    /// The cluster DNS Deployment is scaled to zero: no DNS pod runs.
    DnsPodDown,
    /// docker started with its defaults on the node (the kscratch drop-in is
    /// gone): `docker0` (172.17.0.0/16) with its nat rules, and pods on it.
    Docker0Leftover { node: String },
    /// docker started with `--ip-masq=true` on the node: docker masquerades everything leaving the bridge.
    DockerIpMasq { node: String },
    /// The cluster masquerade rule is missing on the node.
    MasqueradeMissing { node: String },
    /// The pod MTU in the runtime's network config is raised to `mtu` on every
    /// node, while the overlay device keeps its own (too large for the overlay).
    OverlayMtu { mtu: u32 },
    /// The apiserver port is dropped by a firewall rule on the master.
    ApiserverFirewalled,
}

/// Fault kinds with their argument shape and a one-line meaning, for `--help` and hints.
pub const FAULT_KINDS: &[(&str, &str, &str)] = &[
    ("node-down", "node-down:NODE", "the machine is off"),
    (
        "nic-down",
        "nic-down:NODE",
        "the node runs, its underlay NIC is down",
    ),
    (
        "route-missing",
        "route-missing:NODE[:TO_NODE]",
        "pod routes deleted on NODE",
    ),
    (
        "ip-forward-off",
        "ip-forward-off:NODE",
        "net.ipv4.ip_forward=0",
    ),
    (
        "forward-drop",
        "forward-drop:NODE",
        "iptables -I FORWARD -j DROP",
    ),
    (
        "rp-filter-strict",
        "rp-filter-strict:NODE",
        "net.ipv4.conf.all.rp_filter=1",
    ),
    (
        "br-netfilter-off",
        "br-netfilter-off:NODE",
        "br_netfilter not loaded",
    ),
    (
        "underlay-mtu",
        "underlay-mtu:NODE:BYTES",
        "a smaller MTU on NODE's underlay NIC",
    ),
    (
        "fdb-missing",
        "fdb-missing:NODE:TO_NODE",
        "VXLAN FDB entry for TO_NODE deleted on NODE",
    ),
    (
        "neigh-missing",
        "neigh-missing:NODE:TO_NODE",
        "VXLAN neighbour entry for TO_NODE deleted on NODE",
    ),
    (
        "kube-proxy-down",
        "kube-proxy-down:NODE",
        "kube-proxy stopped before the Services exist",
    ),
    (
        "dns-pod-down",
        "dns-pod-down",
        "the DNS Deployment scaled to 0",
    ),
    (
        "docker0-leftover",
        "docker0-leftover:NODE",
        "docker started with its defaults",
    ),
    (
        "docker-ip-masq",
        "docker-ip-masq:NODE",
        "docker started with --ip-masq=true",
    ),
    (
        "masquerade-missing",
        "masquerade-missing:NODE",
        "the cluster masquerade rule deleted",
    ),
    (
        "overlay-mtu",
        "overlay-mtu:BYTES",
        "the pod MTU raised on every node",
    ),
    (
        "apiserver-firewalled",
        "apiserver-firewalled",
        "the apiserver port dropped on the master",
    ),
];

/// The usage forms, comma-separated: for help texts and hints.
pub fn usage_forms() -> String {
    FAULT_KINDS
        .iter()
        .map(|(_, u, _)| *u)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Fault {
    /// Parses the text form. Whether the fault applies to a scenario (its
    /// nodes exist, the cluster has what it damages) is decided when its
    /// damage plan is compiled.
    pub fn parse(s: &str) -> Result<Fault, String> {
        let mut parts = s.split(':');
        let kind = parts.next().unwrap_or("");
        let args: Vec<&str> = parts.collect();
        let usage = FAULT_KINDS
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map(|(_, u, _)| *u);
        let Some(usage) = usage else {
            let known: Vec<&str> = FAULT_KINDS.iter().map(|(k, _, _)| *k).collect();
            let hint = crate::diag::did_you_mean(kind, known.iter().copied())
                .map(|m| format!(" (did you mean `{m}`?)"))
                .unwrap_or_default();
            return Err(format!(
                "unknown fault kind `{kind}`{hint}; known: {}",
                known.join(", ")
            ));
        };
        let bad = || format!("`{s}` does not match `{usage}`");
        let word = |i: usize| -> Result<String, String> {
            match args.get(i) {
                Some(n) if !n.is_empty() => Ok(n.to_string()),
                _ => Err(bad()),
            }
        };
        let bytes = |i: usize| -> Result<u32, String> {
            word(i)?
                .parse::<u32>()
                .map_err(|_| format!("{}: `{}` is not a number of bytes", bad(), args[i]))
        };
        let arity = |max: usize| if args.len() > max { Err(bad()) } else { Ok(()) };
        let one = |f: fn(String) -> Fault| -> Result<Fault, String> {
            arity(1)?;
            Ok(f(word(0)?))
        };
        match kind {
            "node-down" => one(|node| Fault::NodeDown { node }),
            "nic-down" => one(|node| Fault::NicDown { node }),
            "route-missing" => {
                arity(2)?;
                Ok(Fault::RouteMissing {
                    node: word(0)?,
                    to: match args.get(1) {
                        Some(_) => Some(word(1)?),
                        None => None,
                    },
                })
            }
            "ip-forward-off" => one(|node| Fault::IpForwardOff { node }),
            "forward-drop" => one(|node| Fault::ForwardDrop { node }),
            "rp-filter-strict" => one(|node| Fault::RpFilterStrict { node }),
            "br-netfilter-off" => one(|node| Fault::BrNetfilterOff { node }),
            "underlay-mtu" => {
                arity(2)?;
                Ok(Fault::UnderlayMtu {
                    node: word(0)?,
                    mtu: bytes(1)?,
                })
            }
            "fdb-missing" => {
                arity(2)?;
                Ok(Fault::FdbMissing {
                    node: word(0)?,
                    to: word(1)?,
                })
            }
            "neigh-missing" => {
                arity(2)?;
                Ok(Fault::NeighMissing {
                    node: word(0)?,
                    to: word(1)?,
                })
            }
            "kube-proxy-down" => one(|node| Fault::KubeProxyDown { node }),
            "docker0-leftover" => one(|node| Fault::Docker0Leftover { node }),
            "docker-ip-masq" => one(|node| Fault::DockerIpMasq { node }),
            "masquerade-missing" => one(|node| Fault::MasqueradeMissing { node }),
            "overlay-mtu" => {
                arity(1)?;
                Ok(Fault::OverlayMtu { mtu: bytes(0)? })
            }
            "dns-pod-down" => {
                arity(0)?;
                Ok(Fault::DnsPodDown)
            }
            _ => {
                arity(0)?;
                Ok(Fault::ApiserverFirewalled)
            }
        }
    }

    /// The kind, as in the text form.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::NodeDown { .. } => "node-down",
            Fault::NicDown { .. } => "nic-down",
            Fault::RouteMissing { .. } => "route-missing",
            Fault::IpForwardOff { .. } => "ip-forward-off",
            Fault::ForwardDrop { .. } => "forward-drop",
            Fault::RpFilterStrict { .. } => "rp-filter-strict",
            Fault::BrNetfilterOff { .. } => "br-netfilter-off",
            Fault::UnderlayMtu { .. } => "underlay-mtu",
            Fault::FdbMissing { .. } => "fdb-missing",
            Fault::NeighMissing { .. } => "neigh-missing",
            Fault::KubeProxyDown { .. } => "kube-proxy-down",
            Fault::DnsPodDown => "dns-pod-down",
            Fault::Docker0Leftover { .. } => "docker0-leftover",
            Fault::DockerIpMasq { .. } => "docker-ip-masq",
            Fault::MasqueradeMissing { .. } => "masquerade-missing",
            Fault::OverlayMtu { .. } => "overlay-mtu",
            Fault::ApiserverFirewalled => "apiserver-firewalled",
        }
    }

    /// The nodes this fault names, for validation against the scenario.
    pub fn nodes(&self) -> Vec<&str> {
        match self {
            Fault::NodeDown { node }
            | Fault::NicDown { node }
            | Fault::IpForwardOff { node }
            | Fault::ForwardDrop { node }
            | Fault::RpFilterStrict { node }
            | Fault::BrNetfilterOff { node }
            | Fault::UnderlayMtu { node, .. }
            | Fault::KubeProxyDown { node }
            | Fault::Docker0Leftover { node }
            | Fault::DockerIpMasq { node }
            | Fault::MasqueradeMissing { node } => vec![node],
            Fault::RouteMissing { node, to } => std::iter::once(node.as_str())
                .chain(to.as_deref())
                .collect(),
            Fault::FdbMissing { node, to } | Fault::NeighMissing { node, to } => {
                vec![node, to]
            }
            Fault::OverlayMtu { .. } | Fault::ApiserverFirewalled | Fault::DnsPodDown => vec![],
        }
    }

    /// True when the damage is to a daemon's configuration: the simulator
    /// applies it before the test pods and Services exist, as on a node
    /// whose daemon was (re)started that way before the workload came.
    pub fn before_workload(&self) -> bool {
        matches!(
            self,
            Fault::Docker0Leftover { .. }
                | Fault::DockerIpMasq { .. }
                | Fault::OverlayMtu { .. }
                | Fault::KubeProxyDown { .. }
        )
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.kind();
        match self {
            Fault::RouteMissing { node, to: None } => write!(f, "{k}:{node}"),
            Fault::RouteMissing { node, to: Some(t) }
            | Fault::FdbMissing { node, to: t }
            | Fault::NeighMissing { node, to: t } => write!(f, "{k}:{node}:{t}"),
            Fault::UnderlayMtu { node, mtu } => write!(f, "{k}:{node}:{mtu}"),
            Fault::OverlayMtu { mtu } => write!(f, "{k}:{mtu}"),
            Fault::ApiserverFirewalled | Fault::DnsPodDown => f.write_str(k),
            Fault::NodeDown { node }
            | Fault::NicDown { node }
            | Fault::IpForwardOff { node }
            | Fault::ForwardDrop { node }
            | Fault::RpFilterStrict { node }
            | Fault::BrNetfilterOff { node }
            | Fault::KubeProxyDown { node }
            | Fault::Docker0Leftover { node }
            | Fault::DockerIpMasq { node }
            | Fault::MasqueradeMissing { node } => write!(f, "{k}:{node}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One example of every kind, in `FAULT_KINDS` order.
    pub const EXAMPLES: &[&str] = &[
        "node-down:a",
        "nic-down:a",
        "route-missing:a",
        "route-missing:a:b",
        "ip-forward-off:n1",
        "forward-drop:n1",
        "rp-filter-strict:n1",
        "br-netfilter-off:n1",
        "underlay-mtu:n1:1400",
        "fdb-missing:a:b",
        "neigh-missing:a:b",
        "kube-proxy-down:n",
        "dns-pod-down",
        "docker0-leftover:n",
        "docker-ip-masq:n",
        "masquerade-missing:n",
        "overlay-mtu:1500",
        "apiserver-firewalled",
    ];

    #[test]
    fn text_form_round_trips() {
        for s in EXAMPLES {
            let f = Fault::parse(s).unwrap();
            assert_eq!(f.to_string(), *s);
            assert!(s.starts_with(f.kind()));
        }
    }

    #[test]
    fn every_kind_has_an_example() {
        for (k, usage, _) in FAULT_KINDS {
            assert!(usage.starts_with(k));
            assert!(
                EXAMPLES
                    .iter()
                    .any(|e| Fault::parse(e).unwrap().kind() == *k),
                "{k} has no example"
            );
        }
    }

    #[test]
    fn bad_forms_are_refused_with_usage() {
        assert!(Fault::parse("node-down")
            .unwrap_err()
            .contains("node-down:NODE"));
        assert!(Fault::parse("overlay-mtu:big")
            .unwrap_err()
            .contains("not a number of bytes"));
        assert!(Fault::parse("apiserver-firewalled:x").is_err());
        assert!(Fault::parse("dns-pod-down:x").is_err());
        assert!(Fault::parse("fdb-missing:a").is_err());
        assert!(Fault::parse("route-missing:a:").is_err());
        assert!(Fault::parse("underlay-mtu:a").is_err());
        assert!(Fault::parse("route-mising:a")
            .unwrap_err()
            .contains("did you mean `route-missing`"));
    }
}
