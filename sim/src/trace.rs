//! `kscratch trace`: one packet, hop by hop, between named endpoints.
//!
//! Endpoints: `NODE`, `NODE:PORT`, `NODE/POD` (`probe-a`, `probe-b`,
//! `coredns`), `svc:NAMESPACE/NAME[:PORT]`, `IP:PORT`, and `outside`.
//! A Service destination is explored over every `statistic` branch. Each
//! path is a whole connection: the request, then the reply of whoever
//! received it, both printed hop by hop.

use crate::netfilter::{explore, ExploreError};
use crate::packet::{Packet, Proto};
use crate::prepare::POD_PORT;
use crate::walk::{connect, source_address, Conn, Hop, Place, Walker};
use crate::Simulated;
use serde::Serialize;
use std::net::IpAddr;

/// One path a connection can take, with its probability.
#[derive(Debug, Clone, Serialize)]
pub struct TracePath {
    pub probability: f64,
    pub conn: Conn,
    /// Both legs, each hop marked with its leg.
    pub hops: Vec<Hop>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub from: String,
    pub to: String,
    pub packet: Packet,
    pub paths: Vec<TracePath>,
}

impl Trace {
    /// True when every path connects (`kscratch trace` exits 0).
    pub fn connected(&self) -> bool {
        self.paths.iter().all(|p| p.conn.established().is_some())
    }
}

/// Where a trace starts.
pub fn source(sim: &Simulated, text: &str) -> Result<(Place, IpAddr), TraceError> {
    if text == "outside" {
        no_outside(sim)?;
        return Ok((Place::Outside, sim.world.underlay.outside_ip));
    }
    match text.split_once('/') {
        Some((node, pod)) => {
            let p = find_pod(sim, node, pod)?;
            Ok((Place::Pod(p), sim.world.pods[p].ip))
        }
        None => Ok((
            Place::Node(find_node(sim, text)?),
            IpAddr::from([0, 0, 0, 0]),
        )),
    }
}

fn find_node(sim: &Simulated, name: &str) -> Result<usize, TraceError> {
    sim.world
        .nodes
        .iter()
        .position(|x| x.name == name)
        .ok_or_else(|| unknown_node(sim, name))
}

fn find_pod(sim: &Simulated, node: &str, pod: &str) -> Result<usize, TraceError> {
    let n = find_node(sim, node)?;
    let w = &sim.world;
    w.nodes[n]
        .pods
        .iter()
        .copied()
        .find(|&p| w.pods[p].name == pod)
        .ok_or_else(|| TraceError::UnknownPod {
            pod: pod.into(),
            node: node.into(),
            known: pods_on(sim, n),
        })
}

/// Where a trace goes: an address, a port and a protocol.
pub fn destination(
    sim: &Simulated,
    text: &str,
    proto: Proto,
) -> Result<(IpAddr, u16, Proto), TraceError> {
    let w = &sim.world;
    if text == "outside" {
        no_outside(sim)?;
        return Ok((w.underlay.outside_ip, 80, proto));
    }
    if let Some(svc) = text.strip_prefix("svc:") {
        let (name, port) = match svc.rsplit_once(':') {
            Some((n, p)) => (
                n,
                Some(
                    p.parse::<u16>()
                        .map_err(|_| TraceError::NotAPort(p.into()))?,
                ),
            ),
            None => (svc, None),
        };
        let found = sim.prepared.services.iter().find(|s| {
            format!("{}/{}", s.namespace, s.name) == name
                && port.is_none_or(|p| p == s.port)
                && (s.proto == proto || port.is_none())
        });
        let s = found.ok_or_else(|| {
            let known: Vec<String> = sim
                .prepared
                .services
                .iter()
                .take(8)
                .map(|s| s.key())
                .collect();
            TraceError::UnknownService {
                svc: svc.into(),
                known: known.join(", "),
            }
        })?;
        return Ok((s.cluster_ip, s.port, s.proto));
    }
    if let Some((host, port)) = text.rsplit_once(':') {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok((
                ip,
                port.parse()
                    .map_err(|_| TraceError::NotAPort(port.into()))?,
                proto,
            ));
        }
        let n = find_node(sim, host)?;
        return Ok((
            w.nodes[n].ip,
            port.parse()
                .map_err(|_| TraceError::NotAPort(port.into()))?,
            proto,
        ));
    }
    if let Some((node, pod)) = text.split_once('/') {
        let p = find_pod(sim, node, pod)?;
        return Ok((w.pods[p].ip, POD_PORT, proto));
    }
    let n = find_node(sim, text)?;
    // The kubelet's port: something always listens there on a working node.
    Ok((w.nodes[n].ip, 10250, proto))
}

fn no_outside(sim: &Simulated) -> Result<(), TraceError> {
    match sim.world.underlay.router_ip {
        Some(_) => Ok(()),
        None => Err(TraceError::NoOutside),
    }
}

fn unknown_node(sim: &Simulated, name: &str) -> TraceError {
    let names: Vec<&str> = sim.world.nodes.iter().map(|n| n.name.as_str()).collect();
    let hint = match kscratch_core::diag::did_you_mean(name, names.iter().copied()) {
        Some(m) => format!(" (did you mean `{m}`?)"),
        None => format!(
            "; nodes: {}",
            names.iter().take(8).copied().collect::<Vec<_>>().join(", ")
        ),
    };
    TraceError::UnknownNode {
        name: name.into(),
        hint,
    }
}

/// Why a trace cannot start: its endpoints do not name anything in the
/// simulated cluster, or its paths are too many to explore.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    #[error("there is no `outside`: the scenario declares no network.gateway, so nothing lies beyond the underlay")]
    NoOutside,
    /// `hint` is a did-you-mean or the list of nodes, with its separator.
    #[error("no node `{name}`{hint}")]
    UnknownNode { name: String, hint: String },
    #[error("no pod `{pod}` on {node}; pods there: {known}")]
    UnknownPod {
        pod: String,
        node: String,
        known: String,
    },
    #[error("no Service `{svc}`; known: {known}")]
    UnknownService { svc: String, known: String },
    #[error("`{0}` is not a port")]
    NotAPort(String),
    #[error("{0}")]
    Explore(#[from] ExploreError),
}

fn pods_on(sim: &Simulated, n: usize) -> String {
    let v: Vec<&str> = sim
        .world
        .pods
        .iter()
        .filter(|p| p.node == n)
        .map(|p| p.name.as_str())
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Traces one packet from `from` to `to`, over every branch.
pub fn trace(sim: &Simulated, from: &str, to: &str, proto: Proto) -> Result<Trace, TraceError> {
    let (place, src) = source(sim, from)?;
    let (dst, dport, proto) = destination(sim, to, proto)?;
    let mut pkt = Packet::tcp(src, 45000, dst, dport);
    pkt.proto = proto;
    if let Place::Node(n) = place {
        // Shown as the kernel sends it: the source the route picks.
        if let Ok(src) = source_address(&sim.world, n, dst) {
            pkt.src = src;
        }
    }
    let paths = explore(crate::checks::MAX_PATHS, |br| {
        let mut w = Walker::new(&sim.world);
        let conn = connect(&mut w, place, pkt.clone(), br);
        (conn, w.hops)
    })?
    .into_iter()
    .map(|o| TracePath {
        probability: o.probability,
        conn: o.value.0,
        hops: o.value.1,
    })
    .collect();
    Ok(Trace {
        from: from.into(),
        to: to.into(),
        packet: pkt,
        paths,
    })
}

impl std::fmt::Display for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "trace {} → {}: {}", self.from, self.to, self.packet)?;
        let many = self.paths.len() > 1;
        for (i, p) in self.paths.iter().enumerate() {
            if many {
                writeln!(f, "\npath {} (probability {:.4}):", i + 1, p.probability)?;
            }
            crate::report::write_trace(f, &p.hops, "")?;
            writeln!(f, "  => {}", p.conn)?;
        }
        Ok(())
    }
}
