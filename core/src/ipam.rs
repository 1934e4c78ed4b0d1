//! IPAM: per-node pod CIDRs, Service addresses and bridge addresses.
//!
//! Stability is the point. The guide: you can grow a range, you cannot move it
//! without disrupting the pods that use it. So a node keeps its slice for life:
//!
//! 1. an explicit `podCIDR` pin in the scenario wins;
//! 2. otherwise the slice recorded for that node name in the IPAM lock
//!    (`<scenario>.ipam.lock`, written next to the scenario, meant to be
//!    committed) is kept;
//! 3. otherwise the node gets the lowest free slice, in scenario order.
//!
//! Adding a node takes a free slice; removing one releases its slice and
//! moves nobody. The lock is plain data passed in and out: this module does no IO.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IPAM lock: which slice each node name holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpamLock {
    #[serde(
        rename = "clusterCIDR",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_cidr: Option<IpNet>,
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: BTreeMap<String, IpNet>,
}

impl IpamLock {
    pub fn parse(text: &str) -> Result<IpamLock, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }
    pub fn emit(&self) -> String {
        let body = serde_yaml::to_string(self).unwrap_or_default();
        format!("# kscratch IPAM lock: the pod CIDR each node holds. Commit it; kscratch keeps these stable.\n{body}")
    }
}

/// What changed in the lock during one allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum LockChange {
    Allocated {
        node: String,
        cidr: IpNet,
    },
    Released {
        node: String,
        cidr: IpNet,
    },
    Moved {
        node: String,
        from: IpNet,
        to: IpNet,
    },
}

impl std::fmt::Display for LockChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockChange::Allocated { node, cidr } => write!(f, "allocated {cidr} to {node}"),
            LockChange::Released { node, cidr } => {
                write!(f, "released {cidr} (node {node} is gone)")
            }
            LockChange::Moved { node, from, to } => {
                write!(f, "moved {node} from {from} to {to} (explicit pin)")
            }
        }
    }
}

pub struct PodCidrRequest<'a> {
    pub name: &'a str,
    pub pin: Option<IpNet>,
}

pub struct Allocated {
    pub pod_cidrs: Vec<IpNet>,
    /// Pins that moved a node away from its locked slice: (request, old slice).
    pub moved: Vec<(usize, IpNet)>,
    pub warnings: Vec<IpamProblem>,
}

#[derive(Debug, Clone)]
pub struct IpamProblem {
    /// Index of the node in the request list.
    pub node: usize,
    pub message: String,
    pub hint: Option<String>,
}

/// Number of `/prefix` slices in `cluster`.
pub fn slot_count(cluster: IpNet, prefix: u8) -> u128 {
    let bits = prefix.saturating_sub(cluster.prefix_len()) as u32;
    1u128.checked_shl(bits).unwrap_or(u128::MAX)
}

/// Pods one `/prefix` slice holds: all addresses minus network, broadcast and the bridge.
pub fn pods_per_slice(max_prefix: u8, prefix: u8) -> u128 {
    let bits = max_prefix.saturating_sub(prefix) as u32;
    1u128
        .checked_shl(bits)
        .unwrap_or(u128::MAX)
        .saturating_sub(3)
}

/// The `n`-th address of `net` (0 is the network address).
pub fn nth_host(net: IpNet, n: u128) -> IpAddr {
    match net {
        IpNet::V4(v) => IpAddr::V4(Ipv4Addr::from(
            u32::from(v.network()).wrapping_add(n as u32),
        )),
        IpNet::V6(v) => IpAddr::V6(Ipv6Addr::from(u128::from(v.network()).wrapping_add(n))),
    }
}

/// Slice number `index` of `/prefix` inside `cluster`.
pub fn slice(cluster: IpNet, prefix: u8, index: u128) -> IpNet {
    match cluster {
        IpNet::V4(c) => {
            let base = u32::from(c.network()) as u64 + ((index as u64) << (32 - prefix as u32));
            IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from(base as u32), prefix)
                    .expect("prefix checked by validation"),
            )
        }
        IpNet::V6(c) => {
            let shift = 128 - prefix as u32;
            let base = u128::from(c.network()).wrapping_add(index.checked_shl(shift).unwrap_or(0));
            IpNet::V6(
                Ipv6Net::new(Ipv6Addr::from(base), prefix).expect("prefix checked by validation"),
            )
        }
    }
}

/// Index of `net` among the `/prefix` slices of `cluster`, if it is exactly one of them.
pub fn slice_index(cluster: IpNet, prefix: u8, net: IpNet) -> Option<u128> {
    if net.prefix_len() != prefix || !cluster.contains(&net) {
        return None;
    }
    let off = match (cluster, net) {
        (IpNet::V4(c), IpNet::V4(n)) => (u32::from(n.network()) - u32::from(c.network())) as u128,
        (IpNet::V6(c), IpNet::V6(n)) => u128::from(n.network()) - u128::from(c.network()),
        _ => return None,
    };
    Some(off >> (cluster.max_prefix_len() - prefix) as u32)
}

/// Allocates one slice per request. Errors name the request index.
pub fn allocate(
    cluster: IpNet,
    prefix: u8,
    requests: &[PodCidrRequest<'_>],
    lock: Option<&IpamLock>,
) -> Result<Allocated, Vec<IpamProblem>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut moved = Vec::new();
    let slots = slot_count(cluster, prefix);
    // Per node: the fixed slice index, if pinned or locked.
    // Only pins and lock entries need a per-node slot: a fresh scenario skips it.
    let any_fixed =
        lock.is_some_and(|l| !l.pod_cidrs.is_empty()) || requests.iter().any(|r| r.pin.is_some());
    let mut fixed: Vec<Option<u128>> = if any_fixed {
        vec![None; requests.len()]
    } else {
        Vec::new()
    };
    let mut owner: BTreeMap<u128, usize> = BTreeMap::new();
    let lock_cidrs = lock.map(|l| &l.pod_cidrs);
    if let (Some(l), Some(lc)) = (lock, lock.and_then(|l| l.cluster_cidr)) {
        if lc != cluster && !l.pod_cidrs.is_empty() {
            // Growing keeps every slice inside; moving does not and is caught per node below.
            if !cluster.contains(&lc) {
                warnings.push(IpamProblem {
                    node: 0,
                    message: format!(
                        "the IPAM lock was written for cluster CIDR {lc}, now {cluster}"
                    ),
                    hint: None,
                });
            }
        }
    }
    for (i, req) in requests.iter().enumerate().filter(|_| any_fixed) {
        let locked = lock_cidrs.and_then(|m| m.get(req.name)).copied();
        let chosen = match (req.pin, locked) {
            (Some(pin), Some(old)) if pin != old => {
                warnings.push(IpamProblem {
                    node: i,
                    message: format!("pin {pin} moves node `{}` away from {old}, recorded in the IPAM lock; its pods will be disrupted", req.name),
                    hint: None,
                });
                moved.push((i, old));
                Some((pin, true))
            }
            (Some(pin), _) => Some((pin, true)),
            (None, Some(old)) => Some((old, false)),
            (None, None) => None,
        };
        let Some((net, pinned)) = chosen else {
            continue;
        };
        match slice_index(cluster, prefix, net) {
            Some(idx) => {
                if let Some(&other) = owner.get(&idx) {
                    errors.push(IpamProblem {
                        node: i,
                        message: format!("pod CIDR {net} of `{}` is already held by `{}`", req.name, requests[other].name),
                        hint: Some("give each node its own slice".into()),
                    });
                } else {
                    owner.insert(idx, i);
                    fixed[i] = Some(idx);
                }
            }
            None if pinned => errors.push(IpamProblem {
                node: i,
                message: if net.prefix_len() != prefix {
                    format!("pod CIDR {net} is not a /{prefix} (network.nodePrefix)")
                } else {
                    format!("pod CIDR {net} is outside the cluster CIDR {cluster}")
                },
                hint: Some(format!("pick a /{prefix} inside {cluster}")),
            }),
            None => errors.push(IpamProblem {
                node: i,
                message: format!("the IPAM lock gives `{}` the pod CIDR {net}, which is not a /{prefix} inside the cluster CIDR {cluster}", req.name),
                hint: Some("a node's range cannot move without disrupting its pods; restore the old clusterCIDR/nodePrefix, or delete the lock entry to re-allocate this node".into()),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Lowest free slice for everyone else, in scenario order.
    let used: Vec<u128> = owner.keys().copied().collect();
    let mut cursor: u128 = 0;
    let mut ui = 0;
    let mut out = Vec::with_capacity(requests.len());
    // IPv4 slices by shifting, without building a network per candidate.
    let v4 = match cluster {
        IpNet::V4(c) => Some((u32::from(c.network()), 32 - prefix as u32)),
        IpNet::V6(_) => None,
    };
    for (i, req) in requests.iter().enumerate() {
        let idx = match fixed.get(i).copied().flatten() {
            Some(idx) => idx,
            None => {
                while ui < used.len() && used[ui] <= cursor {
                    if used[ui] == cursor {
                        cursor += 1;
                    }
                    ui += 1;
                }
                if cursor >= slots {
                    errors.push(IpamProblem {
                        node: i,
                        message: format!("no free /{prefix} left in {cluster} for `{}`", req.name),
                        hint: Some(
                            "widen network.clusterCIDR (grow it at the end: existing slices stay)"
                                .into(),
                        ),
                    });
                    continue;
                }
                let c = cursor;
                cursor += 1;
                c
            }
        };
        out.push(match v4 {
            Some((base, shift)) => IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from(base + ((idx as u32) << shift)), prefix)
                    .expect("prefix checked by validation"),
            ),
            None => slice(cluster, prefix, idx),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Allocated {
        pod_cidrs: out,
        moved,
        warnings,
    })
}

/// The lock after an allocation, and what changed against the old one.
pub fn update_lock(
    cluster: IpNet,
    requests: &[PodCidrRequest<'_>],
    alloc: &Allocated,
    old: Option<&IpamLock>,
) -> (IpamLock, Vec<LockChange>) {
    let mut lock = IpamLock {
        cluster_cidr: Some(cluster),
        pod_cidrs: BTreeMap::new(),
    };
    for (req, net) in requests.iter().zip(&alloc.pod_cidrs) {
        lock.pod_cidrs.insert(req.name.to_string(), *net);
    }
    let mut changes: Vec<LockChange> = alloc
        .moved
        .iter()
        .map(|&(i, from)| LockChange::Moved {
            node: requests[i].name.to_string(),
            from,
            to: alloc.pod_cidrs[i],
        })
        .collect();
    // Fresh: neither pinned nor in the old lock (derived here, not tracked on the hot path).
    let old_has = |name: &str| old.is_some_and(|l| l.pod_cidrs.contains_key(name));
    changes.extend(
        requests
            .iter()
            .zip(&alloc.pod_cidrs)
            .filter(|(r, _)| r.pin.is_none() && !old_has(r.name))
            .map(|(r, net)| LockChange::Allocated {
                node: r.name.to_string(),
                cidr: *net,
            }),
    );
    if let Some(l) = old {
        for (name, cidr) in &l.pod_cidrs {
            if !lock.pod_cidrs.contains_key(name) {
                changes.push(LockChange::Released {
                    node: name.clone(),
                    cidr: *cidr,
                });
            }
        }
    }
    (lock, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    struct Run {
        pod_cidrs: Vec<IpNet>,
        lock: IpamLock,
        changes: Vec<LockChange>,
    }

    fn alloc(names: &[&str], lock: Option<&IpamLock>) -> Run {
        let reqs: Vec<_> = names
            .iter()
            .map(|n| PodCidrRequest { name: n, pin: None })
            .collect();
        let a = allocate(net("10.10.0.0/16"), 24, &reqs, lock).ok().unwrap();
        let (lock, changes) = update_lock(net("10.10.0.0/16"), &reqs, &a, lock);
        Run {
            pod_cidrs: a.pod_cidrs,
            lock,
            changes,
        }
    }

    #[test]
    fn fresh_allocation_follows_scenario_order() {
        let a = alloc(&["a", "b", "c"], None);
        assert_eq!(
            a.pod_cidrs,
            vec![
                net("10.10.0.0/24"),
                net("10.10.1.0/24"),
                net("10.10.2.0/24")
            ]
        );
        assert_eq!(a.changes.len(), 3);
    }

    #[test]
    fn adding_a_node_moves_nobody() {
        let first = alloc(&["a", "b", "c"], None);
        let again = alloc(&["new", "a", "b", "c"], Some(&first.lock));
        assert_eq!(again.pod_cidrs[1..], first.pod_cidrs[..]);
        assert_eq!(again.pod_cidrs[0], net("10.10.3.0/24"));
        assert_eq!(
            again.changes,
            vec![LockChange::Allocated {
                node: "new".into(),
                cidr: net("10.10.3.0/24")
            }]
        );
    }

    #[test]
    fn removing_a_node_moves_nobody_and_frees_its_slice() {
        let first = alloc(&["a", "b", "c"], None);
        let shrunk = alloc(&["a", "c"], Some(&first.lock));
        assert_eq!(
            shrunk.pod_cidrs,
            vec![net("10.10.0.0/24"), net("10.10.2.0/24")]
        );
        let regrown = alloc(&["a", "c", "d"], Some(&shrunk.lock));
        assert_eq!(
            regrown.pod_cidrs[2],
            net("10.10.1.0/24"),
            "the freed slice is reused"
        );
    }

    #[test]
    fn pins_are_skipped_by_the_free_list() {
        let reqs = [
            PodCidrRequest {
                name: "a",
                pin: None,
            },
            PodCidrRequest {
                name: "b",
                pin: Some(net("10.10.0.0/24")),
            },
            PodCidrRequest {
                name: "c",
                pin: None,
            },
        ];
        let a = allocate(net("10.10.0.0/16"), 24, &reqs, None).ok().unwrap();
        assert_eq!(
            a.pod_cidrs,
            vec![
                net("10.10.1.0/24"),
                net("10.10.0.0/24"),
                net("10.10.2.0/24")
            ]
        );
    }

    #[test]
    fn full_range_is_an_error_naming_the_node() {
        let reqs: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|n| PodCidrRequest { name: n, pin: None })
            .collect();
        let e = allocate(net("10.10.0.0/23"), 24, &reqs, None)
            .err()
            .unwrap();
        assert_eq!(e[0].node, 2);
        assert!(e[0].message.contains("no free /24"));
    }

    #[test]
    fn lock_round_trips_as_text() {
        let a = alloc(&["a", "b"], None);
        assert_eq!(IpamLock::parse(&a.lock.emit()).unwrap(), a.lock);
    }

    #[test]
    fn slice_and_index_agree() {
        let c = net("10.128.0.0/9");
        for i in [0u128, 1, 77, 32767] {
            assert_eq!(slice_index(c, 24, slice(c, 24, i)), Some(i));
        }
        assert_eq!(
            nth_host(net("10.10.3.0/24"), 1),
            "10.10.3.1".parse::<IpAddr>().unwrap()
        );
    }
}
