//! Validation: the equivalent of validate-cluster.sh, after everything else.

use super::builder::Builder;
use super::context::Cluster;
use super::*;

/// The last step: every node Ready and every component healthy. `deps` are
/// the steps it waits for, in any order.
pub(super) fn cluster(b: &mut Builder<'_>, cx: &Cluster<'_>, t0: Target, mut deps: Vec<StepRef>) {
    let s = cx.s;
    let mut components = vec![
        "kube-controller-manager".to_string(),
        "kube-scheduler".into(),
    ];
    components.extend((0..s.etcd.members.len()).map(|k| format!("etcd-{k}")));
    deps.sort_unstable();
    deps.dedup();
    b.push(
        t0,
        "validate/cluster",
        Phase::Validate,
        Action::ValidateCluster {
            nodes: s.nodes.iter().map(|n| n.name.clone()).collect(),
            components,
        },
        &deps,
    );
}
