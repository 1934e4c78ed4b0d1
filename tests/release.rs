//! Every release's real binaries accept what kscratch renders, as far as the
//! upstream tables in `core/data/` say (`kscratch_core::release`).
//!
//! Every bundled scenario, and a generated 2-node scenario for every
//! supported minor (1.6-1.35) with every runtime and security model that
//! release supports, is planned and every file the plan writes is rendered.
//! Then:
//! - each component's argv (static pod commands, kubelet and kube-proxy
//!   units) has only flags the table marks present for that minor; a
//!   deprecated one fails unless `allowed.tsv` gives the reason it is needed;
//! - each field of the kubelet and kube-proxy config files and of the static
//!   pods exists in that minor;
//! - hyperkube commands use the form the release's image understands;
//! - every image the plan pulls or a manifest names was published for the release.
//!
//! The matrix test then runs each generated scenario through `check` on the
//! simulator. What this proves is agreement with upstream's data, not with
//! the binaries themselves: the testbed runs no Kubernetes binary (only etcd).

use crate::support::{load, valid_scenarios};
use kscratch_core::plan::{self, Action, Asset, Component, Plan, Service, Target};
use kscratch_core::release::{self, HyperkubeForm, State, Verdict};
use kscratch_core::render::{self as r, container_command, unit_exec_start, Redacted};
use kscratch_core::Scenario;
use std::collections::BTreeSet;

/// A generated 2-node scenario: a control-plane node that is also etcd and a
/// worker, and one worker.
fn two_nodes(version: &str, runtime: &str, model: &str) -> String {
    format!(
        "cluster:\n  name: matrix\n  kubernetesVersion: \"{version}\"\nnodes:\n  - name: cp\n    ip: 10.20.0.2\n    roles: [control-plane, etcd, worker]\n  - name: w1\n    ip: 10.20.0.3\nnetwork:\n  nodeCIDR: 10.20.0.0/24\n  gateway: 10.20.0.1\n  clusterCIDR: 10.244.0.0/16\n  nodePrefix: 24\n  serviceCIDR: 10.96.0.0/16\n  podTraffic: routed\nsecurity:\n  model: {model}\nruntime:\n  kind: {runtime}\n"
    )
}

/// Every (version, runtime, model) the matrix covers: each minor at .0, plus
/// a patch released after k8s.gcr.io was frozen (1.24.17).
fn matrix() -> Vec<(String, &'static str, &'static str)> {
    let mut out = Vec::new();
    let mut versions: Vec<String> = (release::FIRST_MINOR..=release::LAST_MINOR)
        .map(|m| format!("1.{m}.0"))
        .collect();
    versions.push("1.24.17".into());
    for v in versions {
        let fx = kscratch_core::scenario::KubeVersion::parse(&v)
            .unwrap()
            .features();
        let mut runtimes = vec![];
        if fx.dockershim {
            runtimes.push("docker");
        }
        if fx.containerd_cri {
            runtimes.push("containerd");
        }
        for rt in runtimes {
            out.push((v.clone(), rt, "https"));
            if fx.insecure_serving {
                out.push((v.clone(), rt, "http-firewall"));
            }
        }
    }
    out
}

fn generated(version: &str, runtime: &str, model: &str) -> Scenario {
    let name = format!("matrix-{version}-{runtime}-{model}.yaml");
    match kscratch_core::load(&name, &two_nodes(version, runtime, model), None) {
        Ok(l) => l.scenario,
        Err(d) => panic!("{name} must be valid:\n{d}"),
    }
}

/// The files a plan writes on nodes, rendered once each.
fn written(s: &Scenario, p: &Plan) -> Vec<(usize, Asset, String)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for st in &p.steps {
        if let (Target::Node(i), Action::WriteFile { asset, .. }) = (st.target, &st.action) {
            let i = i as usize;
            if !seen.insert((i, format!("{asset:?}"))) {
                continue;
            }
            let bytes = r::render(s, Some(i), *asset, &Redacted)
                .unwrap_or_else(|e| panic!("{}: render {asset:?}: {e}", s.name));
            out.push((i, *asset, String::from_utf8(bytes).expect("utf-8")));
        }
    }
    out
}

/// Every problem a real release would have with what `s` renders.
fn problems(label: &str, s: &Scenario) -> Vec<String> {
    let p = plan::plan(s);
    let minor = s.version.minor;
    let mut out = Vec::new();
    let flags = |component: &str, argv: &[String], out: &mut Vec<String>| {
        for f in release::check_flags(component, minor, argv) {
            match f.verdict {
                Verdict::DeprecatedAllowed { .. } => {}
                Verdict::Refused | Verdict::Deprecated => out.push(format!(
                    "{label} ({}): {f}{}",
                    s.version,
                    match f.state {
                        State::Unknown => " [not in core/data/flags.tsv]",
                        _ => "",
                    }
                )),
            }
        }
    };
    for (node, asset, text) in written(s, &p) {
        let at = format!(
            "{label} ({}) {} on {}",
            s.version,
            asset.path(),
            s.nodes[node].name
        );
        match asset {
            Asset::StaticPod(c) => {
                fields("pod", minor, &text, &at, &mut out);
                if c == Component::Etcd {
                    continue;
                }
                let argv = container_command(&text).unwrap_or_else(|e| panic!("{at}: {e}"));
                let rest = hyperkube(&argv, c, minor, &at, &mut out);
                flags(c.name(), rest, &mut out);
            }
            Asset::Unit(Service::Kubelet) => {
                let argv = unit_exec_start(&text).unwrap_or_else(|e| panic!("{at}: {e}"));
                flags("kubelet", &argv, &mut out);
            }
            Asset::Unit(Service::KubeProxy) => {
                let argv = unit_exec_start(&text).unwrap_or_else(|e| panic!("{at}: {e}"));
                flags("kube-proxy", &argv, &mut out);
            }
            Asset::KubeletConfig => fields("kubelet-config", minor, &text, &at, &mut out),
            Asset::KubeProxyConfig => fields("kube-proxy-config", minor, &text, &at, &mut out),
            _ => {}
        }
        for image in images_in(&text) {
            if !release::image_exists(s.version, &image) {
                out.push(format!(
                    "{at}: image {image} was not published for {}",
                    s.version
                ));
            }
        }
    }
    for st in &p.steps {
        if let Action::PullImage { image } = &st.action {
            if !release::image_exists(s.version, image) {
                out.push(format!(
                    "{label} ({}): the plan pulls {image}, which was not published for that release",
                    s.version
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Checks a hyperkube command's form and returns the component's own flags.
fn hyperkube<'a>(
    argv: &'a [String],
    c: Component,
    minor: u16,
    at: &str,
    out: &mut Vec<String>,
) -> &'a [String] {
    if argv.first().map(String::as_str) != Some("/hyperkube") {
        return argv;
    }
    let sub = argv.get(1).map(String::as_str).unwrap_or("");
    let form = release::release_images(minor).hyperkube;
    let short = c.name().trim_start_matches("kube-");
    let ok = match form {
        HyperkubeForm::Short => sub == short || sub == c.name(),
        HyperkubeForm::KubeNames => sub == c.name(),
        HyperkubeForm::None => false,
    };
    if !ok {
        out.push(format!(
            "{at}: `/hyperkube {sub}`: the 1.{minor} hyperkube image prints \"command not supported\" (form {form:?})"
        ));
    }
    argv.get(2..).unwrap_or(&[])
}

/// Image references in a rendered file: YAML `image:` and containerd's `sandbox_image`.
fn images_in(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let t = l.trim().trim_start_matches("- ");
            t.strip_prefix("image: ")
                .or_else(|| t.strip_prefix("sandbox_image = "))
                .map(|v| v.trim().trim_matches('"').to_string())
        })
        .collect()
}

/// Checks every field of a YAML document against the field table of `file`.
fn fields(file: &str, minor: u16, text: &str, at: &str, out: &mut Vec<String>) {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{at}: not YAML: {e}"));
    walk(file, minor, &doc, String::new(), at, out);
}

fn walk(
    file: &str,
    minor: u16,
    v: &serde_yaml::Value,
    path: String,
    at: &str,
    out: &mut Vec<String>,
) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, child) in m {
                let key = k.as_str().unwrap_or("?");
                let p = if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                };
                match release::field_fact(file, &p) {
                    Some(_) => {
                        let st = release::field_state(file, minor, &p);
                        if st != State::Present {
                            let src =
                                release::field_fact(file, &p).map_or("", |f| f.source.as_str());
                            out.push(format!(
                                "{at}: field {p} is {st:?} in 1.{minor} (source: {src})"
                            ));
                        }
                    }
                    None if child.is_mapping() || child.is_sequence() => {
                        walk(file, minor, child, p, at, out)
                    }
                    None => out.push(format!(
                        "{at}: field {p} is not in core/data/fields.tsv ({file})"
                    )),
                }
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for i in items {
                walk(file, minor, i, path.clone(), at, out);
            }
        }
        _ => out.push(format!(
            "{at}: field {path} is not in core/data/fields.tsv ({file})"
        )),
    }
}

#[test]
fn every_bundled_scenario_renders_only_what_its_release_has() {
    let mut all = Vec::new();
    for rel in valid_scenarios() {
        let l = load(&rel).unwrap_or_else(|d| panic!("{rel}:\n{d}"));
        all.extend(problems(&rel, &l.scenario));
    }
    assert!(
        all.is_empty(),
        "{} problems:\n{}",
        all.len(),
        all.join("\n")
    );
}

#[test]
fn every_supported_minor_renders_only_what_its_release_has() {
    let mut all = Vec::new();
    for (v, rt, model) in matrix() {
        let s = generated(&v, rt, model);
        all.extend(problems(&format!("{rt}/{model}"), &s));
    }
    assert!(
        all.is_empty(),
        "{} problems:\n{}",
        all.len(),
        all.join("\n")
    );
}

#[test]
fn every_supported_minor_plans_and_passes_check_on_the_simulator() {
    let mut failed = Vec::new();
    let cases = matrix();
    for (v, rt, model) in &cases {
        let s = generated(v, rt, model);
        let p = plan::plan(&s);
        match kscratch_sim::check(&s, &p, &kscratch_sim::CheckOptions::default()) {
            Ok(r) if r.passed => {}
            Ok(r) => failed.push(format!("{v} {rt} {model}:\n{r}")),
            Err(e) => failed.push(format!("{v} {rt} {model}: {e}")),
        }
    }
    // Every minor is covered, with both runtimes where the release has both.
    let minors: BTreeSet<&str> = cases.iter().map(|(v, _, _)| v.as_str()).collect();
    assert_eq!(minors.len(), 31);
    assert!(cases
        .iter()
        .any(|(v, rt, _)| v == "1.23.0" && *rt == "docker"));
    assert!(cases
        .iter()
        .any(|(v, rt, _)| v == "1.23.0" && *rt == "containerd"));
    assert!(
        failed.is_empty(),
        "{} of {} failed:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

#[test]
fn every_allowance_is_still_needed() {
    // An allowance no rendered argv uses is stale: drop it from allowed.tsv.
    let mut used = BTreeSet::new();
    for (v, rt, model) in matrix() {
        let s = generated(&v, rt, model);
        let p = plan::plan(&s);
        for (_, asset, text) in written(&s, &p) {
            let (component, argv) = match asset {
                Asset::StaticPod(c) if c != Component::Etcd => {
                    (c.name(), container_command(&text).unwrap())
                }
                Asset::Unit(Service::Kubelet) => ("kubelet", unit_exec_start(&text).unwrap()),
                Asset::Unit(Service::KubeProxy) => ("kube-proxy", unit_exec_start(&text).unwrap()),
                _ => continue,
            };
            for f in release::check_flags(component, s.version.minor, &argv) {
                if matches!(f.verdict, Verdict::DeprecatedAllowed { .. }) {
                    used.insert((component.to_string(), f.flag));
                }
            }
        }
    }
    for a in release::allowances_all() {
        assert!(
            used.contains(&(a.component.clone(), a.name.clone())),
            "allowed.tsv: {} --{} is never rendered",
            a.component,
            a.name
        );
    }
}
