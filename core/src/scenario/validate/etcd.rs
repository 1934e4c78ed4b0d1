//! The `etcd` section: who the members are and how many there are.

use super::Ver;
use crate::diag::{did_you_mean, Code, Reporter};
use crate::scenario::model::{Etcd, EtcdRunAs, Node};
use crate::scenario::raw::{RawEtcdRunAs, RawScenario};
use crate::scenario::version::KubeVersion;

pub(super) fn etcd(
    raw: &RawScenario,
    ver: &Ver,
    nodes: &mut [Node],
    cps: &[usize],
    r: &mut Reporter<'_>,
) -> Etcd {
    let e = &raw.etcd;
    let members: Vec<usize> = match &e.members {
        Some(list) => {
            let mut out = Vec::new();
            for (i, m) in list.iter().enumerate() {
                match nodes.iter().position(|n| &n.name == m) {
                    Some(idx) if out.contains(&idx) => r.error(
                        Code::Duplicate,
                        format!("etcd.members[{i}]"),
                        format!("`{m}` is listed twice"),
                        "list each member once",
                    ),
                    Some(idx) => out.push(idx),
                    None => {
                        let hint = did_you_mean(m, nodes.iter().map(|n| n.name.as_str()))
                            .map(|s| format!("did you mean `{s}`?"))
                            .unwrap_or_else(|| "members are node names from `nodes`".into());
                        r.error(
                            Code::Etcd,
                            format!("etcd.members[{i}]"),
                            format!("etcd member `{m}` is not a node of this scenario"),
                            hint,
                        );
                    }
                }
            }
            for (i, n) in nodes.iter().enumerate() {
                if n.roles.etcd && !out.contains(&i) {
                    r.error(
                        Code::Etcd,
                        format!("nodes[{i}].roles"),
                        format!(
                            "node `{}` has the etcd role but is not in etcd.members",
                            n.name
                        ),
                        "add it to etcd.members or drop the role",
                    );
                }
            }
            out
        }
        None => {
            let with_role: Vec<usize> = nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.roles.etcd)
                .map(|(i, _)| i)
                .collect();
            if with_role.is_empty() {
                cps.first().copied().into_iter().collect()
            } else {
                with_role
            }
        }
    };
    for &m in &members {
        nodes[m].roles.etcd = true;
    }
    // Count what the user listed: a typo'd member is still a member they meant.
    let count = e.members.as_ref().map_or(members.len(), Vec::len);
    let here = super::at(r, "etcd.members", "nodes");
    if count == 2 {
        // Legal for etcd, and the step between 3 members and 1 (a member
        // removed with its node, `etcdctl member remove`), but no state to stay in.
        r.warn(
            Code::Etcd,
            here,
            "2 etcd members: an even count tolerates no more failures than 1 (a majority of 2 is 2): fine on the way from 3 members to 1, one removal at a time, not to stay",
            "add a third member, or go on to 1",
        );
    } else if count > 0 && count.is_multiple_of(2) {
        r.error(
            Code::Etcd,
            here,
            format!("{count} etcd members: an even count tolerates no more failures than {} and makes a split vote possible", count - 1),
            format!("use {} or {} members", count - 1, count + 1),
        );
    } else if count > 5 {
        r.error(
            Code::Etcd,
            here,
            format!("{count} etcd members is too many: every write waits for a majority"),
            "the guide recommends 3 or 5",
        );
    }
    let durable = e.durable.unwrap_or(true);
    if !durable && count == 1 {
        r.warn(
            Code::Advice,
            "etcd.durable",
            "a single etcd member on non-durable storage loses the cluster state with the machine",
            "the guide: run 3 or 5 members when storage is not durable",
        );
    }
    let data_dir = e.data_dir.clone().unwrap_or_else(|| "/var/lib/etcd".into());
    if !data_dir.starts_with('/') {
        r.error(
            Code::Path,
            "etcd.dataDir",
            format!("`{data_dir}` is not an absolute path"),
            "write it from the root, e.g. /var/lib/etcd",
        );
    }
    Etcd {
        members,
        data_dir,
        durable,
        image: raw
            .images
            .etcd
            .clone()
            .unwrap_or_else(|| default_etcd_image(ver.v)),
        run_as: match e.run_as {
            Some(RawEtcdRunAs::Service) => EtcdRunAs::Service,
            _ => EtcdRunAs::StaticPod,
        },
    }
}

pub(super) fn default_registry(v: KubeVersion) -> &'static str {
    crate::release::default_registry(v)
}

fn default_etcd_image(v: KubeVersion) -> String {
    // The etcd kubeadm shipped with the release (core/data/images.tsv).
    let tag = &crate::release::release_images(v.minor).etcd;
    format!("{}/etcd:{tag}", default_registry(v))
}
