//! Generated scenarios at Kubernetes scale, for benchmarks and tests.

use std::fmt::Write as _;

/// A cluster of `nodes` nodes (the first is control plane and etcd, the rest
/// workers) on a 10.0.0.0/8 underlay; pods come from 100.64.0.0/10 (room for
/// 16,384 /24 slices) and Services from 172.16.0.0/12.
pub fn routed_yaml(nodes: usize, pod_traffic: &str) -> String {
    let mut y = String::with_capacity(nodes * 64 + 512);
    let _ = write!(
        y,
        "cluster:\n  name: scale\n  kubernetesVersion: \"1.30.4\"\nnetwork:\n  nodeCIDR: 10.0.0.0/8\n  gateway: 10.255.255.254\n  clusterCIDR: 100.64.0.0/10\n  nodePrefix: 24\n  serviceCIDR: 172.16.0.0/12\n  podTraffic: {pod_traffic}\nnodes:\n"
    );
    for i in 0..nodes {
        let ip = 0x0a00_0001u32 + i as u32;
        let o = ip.to_be_bytes();
        let roles = if i == 0 {
            "[control-plane, etcd, worker]"
        } else {
            "[worker]"
        };
        let _ = write!(
            y,
            "  - name: node-{i}\n    ip: {}.{}.{}.{}\n    roles: {roles}\n",
            o[0], o[1], o[2], o[3]
        );
    }
    y
}
