//! The simulator follows the files the plan wrote, not the scenario: a
//! file changed on its way to a node (as a renderer bug would change it)
//! changes what the simulated component does, and so the verdict.

use crate::backend::{write_file, SimBackend};
use crate::{simulate_wrapped, CheckOptions, Simulated};
use async_trait::async_trait;
use kscratch_core::exec::{Backend, Probe, StepCx, StepError};
use kscratch_core::net::iptables::Table;
use kscratch_core::plan::Action;
use kscratch_core::render::Redacted;
use std::sync::Arc;

/// Writes `path` with `from` replaced by `to` in its rendered bytes; every
/// other step goes to the simulator unchanged.
struct Tamper<'a> {
    sim: &'a SimBackend,
    path: &'static str,
    from: &'static str,
    to: &'static str,
}

impl Tamper<'_> {
    fn target<'c>(&self, cx: &'c StepCx<'_>) -> Option<(&'c str, u32)> {
        match &cx.step.action {
            Action::WriteFile { path, mode, .. } if *path == self.path => Some((path, *mode)),
            _ => None,
        }
    }

    fn bytes(&self, cx: &StepCx<'_>) -> Arc<[u8]> {
        let text = String::from_utf8(cx.file_bytes(&Redacted).unwrap().unwrap()).unwrap();
        assert!(
            text.contains(self.from),
            "{}: no `{}` in\n{text}",
            self.path,
            self.from
        );
        Arc::from(text.replace(self.from, self.to).into_bytes())
    }
}

#[async_trait]
impl Backend for Tamper<'_> {
    async fn check(&self, cx: &StepCx<'_>) -> Result<Probe, StepError> {
        let Some((path, mode)) = self.target(cx) else {
            return self.sim.check(cx).await;
        };
        let want = self.bytes(cx);
        let st = self.sim.state.lock().unwrap();
        let node = &st.world.nodes[cx.node().unwrap()];
        let same = node
            .fs
            .files
            .get(path)
            .is_some_and(|f| f.mode == mode && f.content == want);
        Ok(if same {
            Probe::Satisfied
        } else {
            Probe::Needed
        })
    }

    async fn apply(&self, cx: &StepCx<'_>) -> Result<(), StepError> {
        let Some((path, mode)) = self.target(cx) else {
            return self.sim.apply(cx).await;
        };
        let bytes = self.bytes(cx);
        let mut st = self.sim.state.lock().unwrap();
        // Changed bytes are no longer the asset's rendering.
        write_file(
            &mut st.world.nodes[cx.node().unwrap()],
            path,
            mode,
            bytes,
            None,
        );
        Ok(())
    }
}

const QUICKSTART: &str = include_str!("../../scenarios/quickstart.yaml");

fn simulate_tampered(path: &'static str, from: &'static str, to: &'static str) -> Simulated {
    let s = kscratch_core::load("quickstart.yaml", QUICKSTART, None)
        .expect("valid")
        .scenario;
    let plan = kscratch_core::plan::plan(&s);
    simulate_wrapped(&s, &plan, &CheckOptions::default(), &|sim| {
        Box::new(Tamper {
            sim,
            path,
            from,
            to,
        })
    })
    .expect("simulates")
}

fn untouched() -> Simulated {
    let s = kscratch_core::load("quickstart.yaml", QUICKSTART, None)
        .expect("valid")
        .scenario;
    let plan = kscratch_core::plan::plan(&s);
    crate::simulate(&s, &plan, &CheckOptions::default()).expect("simulates")
}

fn failed_steps(sim: &Simulated) -> Vec<String> {
    sim.apply
        .outcomes
        .iter()
        .filter_map(|o| match o {
            kscratch_core::exec::Outcome::Failed { error } => Some(error.message.clone()),
            _ => None,
        })
        .collect()
}

/// The `! -s CIDR` of kube-proxy's masquerade rules in a node's `KUBE-SVC-*` chains.
fn masquerade_sources(sim: &Simulated) -> Vec<String> {
    let nf = &sim.world.nodes[0].netfilter;
    let mut v: Vec<String> = nf
        .chain_names(Table::Nat)
        .into_iter()
        .filter(|c| c.starts_with("KUBE-SVC-"))
        .flat_map(|c| nf.rules(Table::Nat, &c).unwrap_or(&[]).to_vec())
        .map(|r| r.to_string())
        .filter(|r| r.contains("KUBE-MARK-MASQ"))
        .filter_map(|r| {
            r.split_whitespace()
                .skip_while(|w| *w != "-s")
                .nth(1)
                .map(String::from)
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn kube_proxy_takes_its_cluster_cidr_from_its_config_file() {
    let before = untouched();
    assert_eq!(masquerade_sources(&before), ["10.10.0.0/16"]);
    let after = simulate_tampered(
        "/var/lib/kube-proxy/config.yaml",
        "clusterCIDR: 10.10.0.0/16",
        "clusterCIDR: 10.99.0.0/16",
    );
    assert!(
        failed_steps(&after).is_empty(),
        "{:?}",
        failed_steps(&after)
    );
    assert_eq!(
        after.world.nodes[0]
            .kube_proxy
            .as_ref()
            .and_then(|k| k.config.cluster_cidr)
            .map(|c| c.to_string())
            .as_deref(),
        Some("10.99.0.0/16")
    );
    assert_eq!(masquerade_sources(&after), ["10.99.0.0/16"]);
}

#[test]
fn the_apiserver_listens_where_its_manifest_says() {
    let before = untouched();
    assert!(failed_steps(&before).is_empty());
    let kubernetes = |sim: &Simulated| {
        sim.prepared
            .services
            .iter()
            .find(|s| s.name == "kubernetes")
            .map(|s| s.endpoints.clone())
    };
    let ip = before.world.nodes[0].ip;
    assert_eq!(kubernetes(&before), Some(vec![(ip, 443)]));

    let after = simulate_tampered(
        "/etc/kubernetes/manifests/kube-apiserver.yaml",
        "--secure-port=443",
        "--secure-port=7443",
    );
    // The plan waits for https://127.0.0.1:443/healthz: nothing answers there now.
    let failed = failed_steps(&after);
    assert!(
        failed
            .iter()
            .any(|e| e.contains("wait/kube-apiserver") && e.contains("127.0.0.1:443")),
        "{failed:?}"
    );
    let l = &after.world.nodes[0].listeners;
    assert!(l
        .get(&(crate::packet::Proto::Tcp, 7443))
        .is_some_and(|l| l.process == "kube-apiserver"));
    assert!(!l.contains_key(&(crate::packet::Proto::Tcp, 443)));
    // The apiserver registers the port it serves on.
    assert_eq!(kubernetes(&after), Some(vec![(ip, 7443)]));
}

#[test]
fn the_kubelet_runs_the_static_pods_of_the_directory_its_config_names() {
    let before = untouched();
    assert!(before.world.nodes[0]
        .static_pods
        .contains_key("kube-apiserver"));
    let after = simulate_tampered(
        "/var/lib/kubelet/config.yaml",
        "staticPodPath: /etc/kubernetes/manifests",
        "staticPodPath: /etc/kubernetes/elsewhere",
    );
    let node = &after.world.nodes[0];
    assert!(node.running("kubelet"));
    assert!(
        node.static_pods.is_empty(),
        "{:?}",
        node.static_pods.keys().collect::<Vec<_>>()
    );
    // The first static pod the plan waits for is etcd's; what depends on it is skipped.
    assert_eq!(
        failed_steps(&after),
        ["solo/wait/etcd: etcd is not healthy: no etcd is running on solo (its static pod or service was not started)"]
    );
}

#[test]
fn a_kube_proxy_config_it_cannot_read_keeps_it_from_starting() {
    let after = simulate_tampered(
        "/var/lib/kube-proxy/config.yaml",
        "clusterCIDR: 10.10.0.0/16",
        "clusterCIDR: not-a-cidr",
    );
    let failed = failed_steps(&after);
    assert!(
        failed
            .iter()
            .any(|e| e.contains("service/kube-proxy")
                && e.contains("invalid clusterCIDR `not-a-cidr`")),
        "{failed:?}"
    );
    assert!(!after.world.nodes[0].running("kube-proxy"));
}
