//! The CNI network config for containerd nodes: the reference `bridge`
//! plugin on the guide's bridge (`cbr0`), addresses from the node's pod CIDR
//! by `host-local`, and `portmap` for hostPorts.
//!
//! `ipMasq` stays false: kscratch installs the guide's masquerade rule for
//! traffic leaving the cluster itself, and the bridge plugin's own rule would
//! also hide pod addresses from other nodes' pods.

use super::{serialize_error, RenderError};
use crate::plan::Asset;
use crate::scenario::Scenario;
use serde::{Deserialize, Serialize};

/// A CNI network configuration list (`.conflist`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniConfList {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    pub plugins: Vec<CniPlugin>,
}

/// The plugins kscratch chains, tagged by their `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CniPlugin {
    Bridge(BridgePlugin),
    Portmap(PortmapPlugin),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgePlugin {
    /// The Linux bridge: the guide's `cbr0`.
    pub bridge: String,
    /// The bridge holds the gateway address (`NODE_X_BRIDGE_ADDR`).
    pub is_gateway: bool,
    pub ip_masq: bool,
    /// Pods reach themselves through a Service VIP.
    pub hairpin_mode: bool,
    pub mtu: u32,
    pub ipam: HostLocalIpam,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLocalIpam {
    /// Always `host-local`.
    #[serde(rename = "type")]
    pub kind: String,
    pub ranges: Vec<Vec<IpamRange>>,
    pub routes: Vec<IpamRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamRange {
    pub subnet: String,
    pub gateway: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamRoute {
    pub dst: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortmapPlugin {
    pub capabilities: PortmapCapabilities,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortmapCapabilities {
    pub port_mappings: bool,
}

/// The conflist of `node`. CNI spec 0.4.0: read by every libcni and plugin
/// release of the supported Kubernetes range.
pub fn cni_conflist(s: &Scenario, node: usize) -> Result<CniConfList, RenderError> {
    if node >= s.nodes.len() {
        return Err(RenderError::NoSuchNode {
            index: node,
            count: s.nodes.len(),
        });
    }
    let cidr = s.pod_cidr(node);
    let default_route = if cidr.addr().is_ipv4() {
        "0.0.0.0/0"
    } else {
        "::/0"
    };
    Ok(CniConfList {
        cni_version: "0.4.0".into(),
        name: "kscratch".into(),
        plugins: vec![
            CniPlugin::Bridge(BridgePlugin {
                bridge: s.network.bridge.clone(),
                is_gateway: true,
                ip_masq: false,
                hairpin_mode: true,
                mtu: s.network.pod_mtu,
                ipam: HostLocalIpam {
                    kind: "host-local".into(),
                    ranges: vec![vec![IpamRange {
                        subnet: cidr.to_string(),
                        gateway: s.bridge_addr(node).to_string(),
                    }]],
                    routes: vec![IpamRoute {
                        dst: default_route.into(),
                    }],
                },
            }),
            CniPlugin::Portmap(PortmapPlugin {
                capabilities: PortmapCapabilities {
                    port_mappings: true,
                },
            }),
        ],
    })
}

pub(super) fn render(s: &Scenario, node: usize) -> Result<String, RenderError> {
    let mut text = serde_json::to_string_pretty(&cni_conflist(s, node)?)
        .map_err(|e| serialize_error(Asset::CniConfig.path(), e))?;
    text.push('\n');
    Ok(text)
}
