//! etcd: each member's certificates, its static pod or service, and the
//! health wait that gates the control plane.

use super::builder::Builder;
use super::context::{Agents, Binaries, Cluster, EtcdMember, NodeCx};
use super::*;
use crate::scenario::EtcdRunAs;
use std::net::IpAddr;

/// The member on node `n` (an etcd member), started; waited on in [`wait_healthy`].
pub(super) fn member(
    b: &mut Builder<'_>,
    cx: &Cluster<'_>,
    n: &NodeCx<'_>,
    pre: StepRef,
    bins: &Binaries,
    agents: &Agents,
) -> EtcdMember {
    let t = n.t;
    let pki = &cx.pki;
    let mut deps = vec![bins.etcd.expect("etcd member has its binary step")];
    if cx.https {
        let ca = pki.ca(Ca::Etcd);
        let server = b.issue(Cert::EtcdServer, Some(n.i), ca);
        let peer = b.issue(Cert::EtcdPeer, Some(n.i), ca);
        deps.push(b.dist(t, Asset::CaCert(Ca::Etcd), pki.ca_step(Ca::Etcd)));
        for (asset, src) in [
            (Asset::Cert(Cert::EtcdServer), server),
            (Asset::Key(Cert::EtcdServer), server),
            (Asset::Cert(Cert::EtcdPeer), peer),
            (Asset::Key(Cert::EtcdPeer), peer),
        ] {
            deps.push(b.dist(t, asset, Some(src)));
        }
    }
    let started = match cx.s.etcd.run_as {
        EtcdRunAs::StaticPod => {
            deps.push(agents.kubelet);
            b.write(t, Phase::Etcd, Asset::StaticPod(Component::Etcd), &deps)
        }
        EtcdRunAs::Service => {
            deps.push(b.write(t, Phase::Etcd, Asset::Unit(Service::Etcd), &[pre]));
            b.start(t, Phase::Etcd, Service::Etcd, &deps)
        }
    };
    let scheme = if cx.https { "https" } else { "http" };
    EtcdMember {
        t,
        started,
        health_url: format!("{scheme}://{}:2379/health", url_host(n.node.ip)),
    }
}

/// One health wait per member; all of them gate every control-plane pod.
pub(super) fn wait_healthy(b: &mut Builder<'_>, members: Vec<EtcdMember>) -> Vec<StepRef> {
    members
        .into_iter()
        .map(|m| {
            b.wait_healthy(
                m.t,
                Phase::Etcd,
                Component::Etcd,
                m.health_url,
                &[m.started],
            )
        })
        .collect()
}

fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v) => v.to_string(),
        IpAddr::V6(v) => format!("[{v}]"),
    }
}
