//! The TCP ports the cluster's daemons listen on, and which daemon holds
//! each: one table for the planner (preflight checks), the simulator (its
//! daemons' listeners) and the shell renderer (whose preflight lets a port
//! be held by the very daemon a previous apply started).

/// The kubelet's API (`--port`, `KubeletConfiguration.port`).
pub const KUBELET: u16 = 10250;
/// kube-proxy's health endpoint (`--healthz-bind-address`'s default port).
pub const KUBE_PROXY_HEALTHZ: u16 = 10256;
/// etcd's client URL.
pub const ETCD_CLIENT: u16 = 2379;
/// etcd's peer URL.
pub const ETCD_PEER: u16 = 2380;
/// The guide's HTTPS apiserver port at `MASTER_IP`.
pub const APISERVER_HTTPS: u16 = 443;
/// The apiserver's `--secure-port` default.
pub const APISERVER_SECURE_DEFAULT: u16 = 6443;
/// The insecure port of the guide's era (`http://127.0.0.1:8080`).
pub const APISERVER_INSECURE: u16 = 8080;

/// A daemon that listens on one of the ports above, by its process name
/// (what `ss -p` shows and what the simulator records per listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Daemon {
    Kubelet,
    KubeProxy,
    Etcd,
    KubeApiserver,
    /// The local apiserver proxy (`cluster.controlPlaneEndpoint` on
    /// loopback), on the port the scenario gives it.
    ApiserverProxy,
}

impl Daemon {
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Kubelet => "kubelet",
            Daemon::KubeProxy => "kube-proxy",
            Daemon::Etcd => "etcd",
            Daemon::KubeApiserver => "kube-apiserver",
            Daemon::ApiserverProxy => "haproxy",
        }
    }
}

/// The daemon that may hold `port` when a preflight wants it free: on a
/// re-apply the port is held by the daemon kscratch started.
pub fn owner(port: u16) -> Option<Daemon> {
    match port {
        KUBELET => Some(Daemon::Kubelet),
        KUBE_PROXY_HEALTHZ => Some(Daemon::KubeProxy),
        ETCD_CLIENT | ETCD_PEER => Some(Daemon::Etcd),
        APISERVER_HTTPS | APISERVER_SECURE_DEFAULT | APISERVER_INSECURE => {
            Some(Daemon::KubeApiserver)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        assert_eq!(owner(KUBELET), Some(Daemon::Kubelet));
        assert_eq!(owner(ETCD_PEER).map(Daemon::name), Some("etcd"));
        assert_eq!(owner(APISERVER_HTTPS), Some(Daemon::KubeApiserver));
        assert_eq!(owner(APISERVER_INSECURE), Some(Daemon::KubeApiserver));
        assert_eq!(owner(22), None);
    }
}
