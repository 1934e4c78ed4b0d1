//! Binaries and images: the node agents' binaries on every node, the
//! control-plane images on control-plane nodes, etcd's image or binary on
//! its members.

use super::builder::{image_key, Builder};
use super::context::{Binaries, Cluster, NodeCx};
use super::*;
use crate::scenario::EtcdRunAs;

pub(super) fn node(
    b: &mut Builder<'_>,
    cx: &Cluster<'_>,
    n: &NodeCx<'_>,
    pre: StepRef,
) -> Binaries {
    let s = cx.s;
    let t = n.t;
    let kubelet = b.push(
        t,
        "bin/kubelet",
        Phase::Binaries,
        Action::InstallBinary {
            name: "kubelet",
            dest: "/usr/local/bin/kubelet",
        },
        &[pre],
    );
    let kube_proxy = b.push(
        t,
        "bin/kube-proxy",
        Phase::Binaries,
        Action::InstallBinary {
            name: "kube-proxy",
            dest: "/usr/local/bin/kube-proxy",
        },
        &[pre],
    );
    let mut images = Vec::new();
    if n.control_plane {
        match &s.images.hyperkube_image {
            Some(h) => images.push(b.push(
                t,
                "image/hyperkube",
                Phase::Binaries,
                Action::PullImage { image: h.clone() },
                &[pre],
            )),
            None => {
                for c in [
                    Component::KubeApiserver,
                    Component::KubeControllerManager,
                    Component::KubeScheduler,
                ] {
                    let image = format!("{}/{}:v{}", s.images.registry, c.name(), s.version);
                    images.push(b.push(
                        t,
                        image_key(c),
                        Phase::Binaries,
                        Action::PullImage { image },
                        &[pre],
                    ));
                }
            }
        }
    }
    let etcd = n.etcd.then(|| match s.etcd.run_as {
        EtcdRunAs::StaticPod => b.push(
            t,
            image_key(Component::Etcd),
            Phase::Binaries,
            Action::PullImage {
                image: s.etcd.image.clone(),
            },
            &[pre],
        ),
        EtcdRunAs::Service => b.push(
            t,
            "bin/etcd",
            Phase::Binaries,
            Action::InstallBinary {
                name: "etcd",
                dest: "/usr/local/bin/etcd",
            },
            &[pre],
        ),
    });
    Binaries {
        kubelet,
        kube_proxy,
        images,
        etcd,
    }
}
