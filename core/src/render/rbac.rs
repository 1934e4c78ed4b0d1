//! RBAC the control plane needs and nobody else creates in a cluster built
//! from scratch.

use super::{serialize_error, RenderError};
use crate::plan::Asset;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The group the admin certificate carries from 1.29 (kubeadm's layout).
pub const CLUSTER_ADMINS_GROUP: &str = "kubeadm:cluster-admins";

/// From 1.29 the admin kubeconfig's certificate is in `kubeadm:cluster-admins`
/// instead of `system:masters`; kubeadm binds that group to `cluster-admin`
/// with the super-admin credential. Without this binding admin.conf has no
/// rights at all.
pub fn cluster_admins_binding() -> Result<String, RenderError> {
    let b = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(CLUSTER_ADMINS_GROUP.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "cluster-admin".into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Group".into(),
            name: CLUSTER_ADMINS_GROUP.into(),
            namespace: None,
        }]),
    };
    serde_yaml::to_string(&b).map_err(|e| serialize_error(Asset::ClusterAdminsBinding.path(), e))
}
