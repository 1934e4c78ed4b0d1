//! Addons, applied on the first control-plane node once its apiserver is
//! healthy: cluster DNS, and the cluster-admins binding from 1.29.

use super::builder::Builder;
use super::context::Cluster;
use super::*;

/// The applied addons; validation waits for each.
pub(super) fn cluster(
    b: &mut Builder<'_>,
    cx: &Cluster<'_>,
    t0: Target,
    apiserver_ok: &[StepRef],
) -> Vec<StepRef> {
    let mut addons = Vec::new();
    // Cluster DNS with the scenario's DNS IP.
    if cx.s.addons.dns {
        addons.push(("addon/dns", Asset::DnsAddon, KubeconfigUser::Admin));
    }
    // From 1.29 admin.conf's group has no rights until it is bound; kubeadm
    // binds it with the super-admin credential, and so does the plan.
    if cx.https && cx.fx.admin_cluster_admins_group {
        addons.push((
            "addon/cluster-admins",
            Asset::ClusterAdminsBinding,
            KubeconfigUser::SuperAdmin,
        ));
    }
    addons
        .into_iter()
        .map(|(key, asset, kubeconfig)| {
            let f = b.write(t0, Phase::Addons, asset, apiserver_ok);
            let mut deps = apiserver_ok.to_vec();
            deps.push(f);
            b.push(
                t0,
                key,
                Phase::Addons,
                Action::ApplyManifest { asset, kubeconfig },
                &deps,
            )
        })
        .collect()
}
