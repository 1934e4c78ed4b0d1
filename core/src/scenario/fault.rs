//! What-if faults: damage applied to a converged cluster before re-checking it.
//!
//! The text form is `KIND[:NODE][:ARG]`, the same on the command line
//! (`--fault route-missing:node-2`) and in a scenario's `faults:` list.

use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// The node is powered off: it answers nothing and forwards nothing.
    NodeDown { node: String },
    /// One pod route is missing on `node` (the route to `to`'s pod CIDR, or all of them).
    RouteMissing { node: String, to: Option<String> },
    /// `net.ipv4.ip_forward=0` on the node.
    IpForwardOff { node: String },
    /// docker's default `docker0` (172.17.0.0/16) and its nat rules were left on the node.
    Docker0Leftover { node: String },
    /// docker started with `--ip-masq=true` on the node: docker masquerades everything leaving the bridge.
    DockerIpMasq { node: String },
    /// The cluster masquerade rule is missing on the node.
    MasqueradeMissing { node: String },
    /// The pod MTU is raised to `mtu` on every node (too large for the overlay).
    OverlayMtu { mtu: u32 },
    /// The apiserver port is dropped by a firewall rule on the master.
    ApiserverFirewalled,
}

/// Fault kinds with their argument shape, for `--help` and hints.
pub const FAULT_KINDS: &[(&str, &str)] = &[
    ("node-down", "node-down:NODE"),
    ("route-missing", "route-missing:NODE[:TO_NODE]"),
    ("ip-forward-off", "ip-forward-off:NODE"),
    ("docker0-leftover", "docker0-leftover:NODE"),
    ("docker-ip-masq", "docker-ip-masq:NODE"),
    ("masquerade-missing", "masquerade-missing:NODE"),
    ("overlay-mtu", "overlay-mtu:BYTES"),
    ("apiserver-firewalled", "apiserver-firewalled"),
];

impl Fault {
    /// Parses the text form. Node names are checked against the scenario by validation.
    pub fn parse(s: &str) -> Result<Fault, String> {
        let mut parts = s.split(':');
        let kind = parts.next().unwrap_or("");
        let args: Vec<&str> = parts.collect();
        let usage = FAULT_KINDS
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, u)| *u);
        let Some(usage) = usage else {
            let known: Vec<&str> = FAULT_KINDS.iter().map(|(k, _)| *k).collect();
            let hint = crate::diag::did_you_mean(kind, known.iter().copied())
                .map(|m| format!(" (did you mean `{m}`?)"))
                .unwrap_or_default();
            return Err(format!(
                "unknown fault kind `{kind}`{hint}; known: {}",
                known.join(", ")
            ));
        };
        let bad = || format!("`{s}` does not match `{usage}`");
        let node = |i: usize| -> Result<String, String> {
            match args.get(i) {
                Some(n) if !n.is_empty() => Ok(n.to_string()),
                _ => Err(bad()),
            }
        };
        let arity = |max: usize| if args.len() > max { Err(bad()) } else { Ok(()) };
        Ok(match kind {
            "node-down" => {
                arity(1)?;
                Fault::NodeDown { node: node(0)? }
            }
            "route-missing" => {
                arity(2)?;
                Fault::RouteMissing {
                    node: node(0)?,
                    to: args.get(1).map(|s| s.to_string()),
                }
            }
            "ip-forward-off" => {
                arity(1)?;
                Fault::IpForwardOff { node: node(0)? }
            }
            "docker0-leftover" => {
                arity(1)?;
                Fault::Docker0Leftover { node: node(0)? }
            }
            "docker-ip-masq" => {
                arity(1)?;
                Fault::DockerIpMasq { node: node(0)? }
            }
            "masquerade-missing" => {
                arity(1)?;
                Fault::MasqueradeMissing { node: node(0)? }
            }
            "overlay-mtu" => {
                arity(1)?;
                let mtu = node(0)?.parse::<u32>().map_err(|_| bad())?;
                Fault::OverlayMtu { mtu }
            }
            _ => {
                arity(0)?;
                Fault::ApiserverFirewalled
            }
        })
    }

    /// The nodes this fault names, for validation against the scenario.
    pub fn nodes(&self) -> Vec<&str> {
        match self {
            Fault::NodeDown { node }
            | Fault::IpForwardOff { node }
            | Fault::Docker0Leftover { node }
            | Fault::DockerIpMasq { node }
            | Fault::MasqueradeMissing { node } => vec![node],
            Fault::RouteMissing { node, to } => std::iter::once(node.as_str())
                .chain(to.as_deref())
                .collect(),
            Fault::OverlayMtu { .. } | Fault::ApiserverFirewalled => vec![],
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::NodeDown { node } => write!(f, "node-down:{node}"),
            Fault::RouteMissing { node, to: None } => write!(f, "route-missing:{node}"),
            Fault::RouteMissing { node, to: Some(t) } => write!(f, "route-missing:{node}:{t}"),
            Fault::IpForwardOff { node } => write!(f, "ip-forward-off:{node}"),
            Fault::Docker0Leftover { node } => write!(f, "docker0-leftover:{node}"),
            Fault::DockerIpMasq { node } => write!(f, "docker-ip-masq:{node}"),
            Fault::MasqueradeMissing { node } => write!(f, "masquerade-missing:{node}"),
            Fault::OverlayMtu { mtu } => write!(f, "overlay-mtu:{mtu}"),
            Fault::ApiserverFirewalled => write!(f, "apiserver-firewalled"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        for s in [
            "node-down:a",
            "route-missing:a",
            "route-missing:a:b",
            "ip-forward-off:n1",
            "docker0-leftover:n",
            "docker-ip-masq:n",
            "masquerade-missing:n",
            "overlay-mtu:1500",
            "apiserver-firewalled",
        ] {
            assert_eq!(Fault::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_forms_are_refused_with_usage() {
        assert!(Fault::parse("node-down")
            .unwrap_err()
            .contains("node-down:NODE"));
        assert!(Fault::parse("overlay-mtu:big").is_err());
        assert!(Fault::parse("apiserver-firewalled:x").is_err());
        assert!(Fault::parse("route-mising:a")
            .unwrap_err()
            .contains("did you mean `route-missing`"));
    }
}
