//! The control plane: which nodes run it, `cluster.masterIP` and
//! `cluster.controlPlaneEndpoint`.

use super::network::Net;
use super::parse;
use crate::diag::{Code, Reporter};
use crate::ports::{self, Daemon};
use crate::scenario::model::{ControlPlaneEndpoint, EndpointHost, Node, SecurityModel};
use crate::scenario::raw::RawScenario;
use std::net::IpAddr;

/// Indices of the control-plane nodes; an error when there is none.
pub(super) fn nodes(nodes: &[Node], r: &mut Reporter<'_>) -> Vec<usize> {
    let cps: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.roles.control_plane)
        .map(|(i, _)| i)
        .collect();
    if cps.is_empty() && !nodes.is_empty() {
        r.error(
            Code::ControlPlane,
            "nodes",
            "no node has the control-plane role",
            "add `roles: [control-plane, etcd]` to the master node",
        );
    }
    cps
}

/// `MASTER_IP`: the given one, which must be a control-plane node's, or the first control-plane node's.
pub(super) fn master_ip(
    raw: &RawScenario,
    nodes: &[Node],
    cps: &[usize],
    r: &mut Reporter<'_>,
) -> Option<IpAddr> {
    const PATH: &str = "cluster.masterIP";
    match raw.cluster.master_ip.as_deref() {
        _ if r.is_invalid(PATH) => None,
        Some(t) => parse::ip(r, PATH, t).inspect(|ip| {
            if !cps.is_empty() && !cps.iter().any(|&i| nodes[i].ip == *ip) {
                let list: Vec<String> = cps
                    .iter()
                    .map(|&i| format!("{} ({})", nodes[i].ip, nodes[i].name))
                    .collect();
                r.error(
                    Code::ControlPlane,
                    PATH,
                    format!("{ip} is not the IP of a control-plane node"),
                    format!("control-plane nodes: {}", list.join(", ")),
                );
            }
        }),
        None => cps.first().map(|&i| nodes[i].ip),
    }
}

/// `cluster.controlPlaneEndpoint`: `HOST[:PORT]`, an IPv4 address or a DNS
/// name. Without a port, a loopback address (the local proxy) listens on
/// 6443 and anything else is reached on the apiserver's port. Refused: an
/// address in the pod or Service range (something else answers there), a
/// node that is not a control-plane node (no apiserver and no proxy there),
/// the unspecified address, and a local proxy on a port a node's own daemons
/// hold (the apiserver binds every address of a control-plane node).
pub(super) fn endpoint(
    raw: &RawScenario,
    nodes: &[Node],
    cps: &[usize],
    net: &Net,
    model: SecurityModel,
    r: &mut Reporter<'_>,
) -> Option<ControlPlaneEndpoint> {
    const PATH: &str = "cluster.controlPlaneEndpoint";
    const HINT: &str = "name a load balancer or VIP on the node network (e.g. 10.1.0.100 or api.example.internal:443), or 127.0.0.1:6443 for a local proxy on every node";
    let text = raw.cluster.control_plane_endpoint.as_deref()?;
    if r.is_invalid(PATH) {
        return None;
    }
    let t = text.trim();
    let (host, port) = match t.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(port) if port > 0 => (h, Some(port)),
            _ => {
                r.invalid(
                    Code::Endpoint,
                    PATH,
                    format!("`{p}` in `{t}` is not a port"),
                    "write HOST or HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:6443",
                );
                return None;
            }
        },
        None => (t, None),
    };
    let looks_like_ip = !host.is_empty() && host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let host = if looks_like_ip {
        EndpointHost::Ip(parse::ip(r, PATH, host)?)
    } else if host.contains('.') && host.split('.').all(parse::is_dns1123_label)
        || parse::is_dns1123_label(host)
    {
        EndpointHost::Name(host.to_string())
    } else {
        r.invalid(
            Code::Endpoint,
            PATH,
            format!("`{t}` is neither an IP address nor a DNS name with an optional port"),
            HINT,
        );
        return None;
    };
    let loopback = matches!(host, EndpointHost::Ip(ip) if ip.is_loopback());
    let port = port.unwrap_or(if loopback {
        ports::APISERVER_SECURE_DEFAULT
    } else {
        model.apiserver_port()
    });
    let e = ControlPlaneEndpoint { host, port };
    let EndpointHost::Ip(ip) = e.host else {
        return Some(e);
    };
    fn refuse(r: &mut Reporter<'_>, message: String, hint: &str) {
        r.invalid(Code::Endpoint, PATH, message, hint);
    }
    if ip.is_unspecified() {
        refuse(r, format!("{ip} is no address a client can dial"), HINT);
        return None;
    }
    if loopback {
        let apiserver = model.apiserver_port();
        if port == apiserver || ports::owner(port).is_some_and(|d| d != Daemon::KubeApiserver) {
            let holder = if port == apiserver {
                "the apiserver, which listens on every address of a control-plane node".to_string()
            } else {
                ports::owner(port).map_or("", Daemon::name).to_string()
            };
            refuse(
                r,
                format!("the local apiserver proxy cannot listen on {e}: port {port} belongs to {holder}"),
                "use another port, e.g. 127.0.0.1:6443",
            );
            return None;
        }
        return Some(e);
    }
    if let Some(pods) = net.cluster_cidr.filter(|c| c.contains(&ip)) {
        refuse(
                r,
            format!("{ip} is a pod address (network.clusterCIDR is {pods}): a pod, not the apiserver, answers there"),
            HINT,
        );
        return None;
    }
    if let Some(svc) = net.service_cidr.filter(|c| c.contains(&ip)) {
        refuse(
                r,
            format!("{ip} is a Service address (network.serviceCIDR is {svc}): kube-proxy rules, which need the apiserver, would answer there"),
            HINT,
        );
        return None;
    }
    if let Some((i, n)) = nodes.iter().enumerate().find(|(_, n)| n.ip == ip) {
        if cps.contains(&i) {
            r.warn(
                Code::Advice,
                PATH,
                format!("{ip} is control-plane node {}'s own address: the cluster loses its apiserver with that node", n.name),
                HINT,
            );
        } else {
            refuse(
                r,
                format!(
                    "{ip} is node {}'s address, and {} runs no apiserver",
                    n.name, n.name
                ),
                HINT,
            );
            return None;
        }
    }
    Some(e)
}
