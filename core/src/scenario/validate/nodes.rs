//! The `nodes` section: names, addresses, roles and SSH settings.

use super::parse::{self, is_dns1123_subdomain};
use crate::diag::{Code, Reporter};
use crate::scenario::model::{Node, Roles, Ssh};
use crate::scenario::raw::{RawRole, RawScenario};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The nodes, in scenario order, and which of their fields can be trusted.
pub(super) struct Nodes {
    pub list: Vec<Node>,
    /// `ip_ok[i]`: node i's IP parsed (it is 0.0.0.0 in `list` otherwise).
    pub ip_ok: Vec<bool>,
    /// Every node has a valid, unique name (IPAM's lock is keyed by name).
    pub names_ok: bool,
}

pub(super) fn nodes(raw: &RawScenario, r: &mut Reporter<'_>) -> Nodes {
    if raw.nodes.is_empty() && !r.is_invalid("nodes") {
        r.invalid(
            Code::Roles,
            "nodes",
            "a cluster needs at least one node",
            "add one: `nodes: [{name: node-1, ip: 192.168.1.10}]`",
        );
    }
    let single = raw.nodes.len() == 1;
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ips: BTreeMap<IpAddr, usize> = BTreeMap::new();
    let mut out = Nodes {
        list: Vec::with_capacity(raw.nodes.len()),
        ip_ok: Vec::with_capacity(raw.nodes.len()),
        names_ok: !r.is_invalid("nodes"),
    };
    for (i, n) in raw.nodes.iter().enumerate() {
        let p = format!("nodes[{i}]");
        match n.name.as_deref() {
            None => out.names_ok = false,
            Some(name) => {
                if !is_dns1123_subdomain(name) {
                    out.names_ok = false;
                    r.invalid(
                        Code::Name,
                        format!("{p}.name"),
                        format!("`{name}` is not a valid node name"),
                        "node names are DNS-1123 subdomains: lowercase letters, digits, '-' and '.'",
                    );
                }
                if let Some(first) = names.insert(name, i) {
                    out.names_ok = false;
                    r.error(
                        Code::Duplicate,
                        format!("{p}.name"),
                        format!("duplicate node name `{name}` (also nodes[{first}])"),
                        "every node needs its own name: its certificates and pod CIDR are keyed by it",
                    );
                    names.insert(name, first);
                }
            }
        }
        let ip =
            n.ip.as_deref()
                .and_then(|t| parse::ip(r, &format!("{p}.ip"), t));
        if let Some(ip) = ip {
            if let Some(first) = ips.insert(ip, i) {
                r.error(
                    Code::Duplicate,
                    format!("{p}.ip"),
                    format!("duplicate node IP {ip} (also nodes[{first}].ip)"),
                    "every node needs its own underlay address",
                );
                ips.insert(ip, first);
            }
        }
        let roles = match &n.roles {
            Some(list) => {
                if list.is_empty() && !r.is_invalid(&format!("{p}.roles")) {
                    r.error(
                        Code::Roles,
                        format!("{p}.roles"),
                        "a node needs at least one role",
                        "give it one or more of: control-plane, etcd, worker",
                    );
                }
                Roles {
                    control_plane: list.contains(&RawRole::ControlPlane),
                    etcd: list.contains(&RawRole::Etcd),
                    worker: list.contains(&RawRole::Worker),
                }
            }
            None if single => Roles {
                control_plane: true,
                etcd: true,
                worker: true,
            },
            None => Roles {
                worker: true,
                ..Roles::default()
            },
        };
        let user = n.ssh.user.clone().unwrap_or_else(|| "root".into());
        out.ip_ok.push(ip.is_some());
        out.list.push(Node {
            name: n.name.clone().unwrap_or_default(),
            ip: ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            roles,
            ssh: Ssh {
                sudo: n.ssh.sudo.unwrap_or(user != "root"),
                user,
                port: n.ssh.port.unwrap_or(22),
                key: n.ssh.key.clone(),
            },
        });
    }
    out
}
