//! The smaller sections: cloud provider, images, admission plugins,
//! binaries and what-if faults.

use super::etcd::default_registry;
use super::Ver;
use crate::diag::{did_you_mean, Code, Reporter};
use crate::scenario::fault::Fault;
use crate::scenario::model::{CloudProvider, Images, Node, Runtime};
use crate::scenario::raw::RawScenario;
use crate::scenario::version;

pub(super) struct Extras {
    pub cloud: Option<CloudProvider>,
    pub images: Images,
    pub admission_plugins: Vec<String>,
    pub binaries_dir: String,
    pub faults: Vec<Fault>,
}

pub(super) fn extras(
    raw: &RawScenario,
    ver: &Ver,
    runtime: &Runtime,
    nodes: &[Node],
    r: &mut Reporter<'_>,
) -> Extras {
    let v = ver.v;
    let cloud = raw.cloud_provider.as_ref().and_then(|c| {
        let name = c.name.as_deref()?;
        match version::CLOUD_PROVIDERS.iter().find(|(n, _)| *n == name) {
            None => {
                let hint = did_you_mean(name, version::CLOUD_PROVIDERS.iter().map(|(n, _)| *n))
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| "omit cloudProvider for bare metal".into());
                r.error(Code::CloudProvider, "cloudProvider.name", format!("unknown cloud provider `{name}`"), hint);
            }
            Some((name, Some(removed))) if ver.known.is_some() && v >= *removed => {
                r.error(
                    Code::Removed,
                    "cloudProvider.name",
                    format!("the in-tree `{name}` cloud provider was removed in Kubernetes {}.{}; this scenario is {v}", removed.major, removed.minor),
                    "use `external` with the provider's cloud-controller-manager",
                );
            }
            Some((name, _)) => {
                if c.config.is_none() && ["aws", "gce", "openstack", "ovirt"].contains(name) {
                    r.warn(
                        Code::Advice,
                        "cloudProvider",
                        format!("`{name}` usually needs a config file (--cloud-config)"),
                        "set cloudProvider.config",
                    );
                }
            }
        }
        Some(CloudProvider {
            name: name.to_string(),
            config: c.config.clone(),
        })
    });

    let hyperkube = raw
        .images
        .hyperkube
        .unwrap_or(ver.feat.hyperkube && matches!(runtime, Runtime::Docker(_)));
    if hyperkube && ver.known.is_some() && !ver.feat.hyperkube {
        r.error(
            Code::Removed,
            "images.hyperkube",
            format!(
                "hyperkube images were last published for Kubernetes 1.18; this scenario is {v}"
            ),
            "remove images.hyperkube: the per-component images are used",
        );
    }
    let registry = raw
        .images
        .registry
        .clone()
        .unwrap_or_else(|| default_registry(v).into());
    let images = Images {
        hyperkube_image: hyperkube.then(|| format!("{registry}/hyperkube:v{v}")),
        registry,
        hyperkube,
    };

    let admission_plugins = raw.admission_plugins.clone().unwrap_or_else(|| {
        version::recommended_admission_plugins(v)
            .into_iter()
            .map(String::from)
            .collect()
    });

    let mut faults = Vec::new();
    for (i, f) in raw.faults.iter().enumerate() {
        match Fault::parse(f) {
            Ok(fault) => {
                for n in fault.nodes() {
                    if !nodes.iter().any(|x| x.name == n) {
                        let hint = did_you_mean(n, nodes.iter().map(|x| x.name.as_str()))
                            .map(|s| format!("did you mean `{s}`?"))
                            .unwrap_or_else(|| "a fault names nodes from `nodes`".into());
                        r.error(
                            Code::Fault,
                            format!("faults[{i}]"),
                            format!("fault names node `{n}`, which is not in the scenario"),
                            hint,
                        );
                    }
                }
                faults.push(fault);
            }
            Err(e) => r.error(
                Code::Fault,
                format!("faults[{i}]"),
                e,
                "see `kscratch check --help` for the fault forms",
            ),
        }
    }

    Extras {
        cloud,
        images,
        admission_plugins,
        binaries_dir: raw
            .binaries
            .dir
            .clone()
            .unwrap_or_else(|| "kubernetes/server/bin".into()),
        faults,
    }
}
