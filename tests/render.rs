//! Rendered assets checked with the real tools that will read them:
//! `openssl` verifies every certificate against its CA and shows its names,
//! `kubectl` reads every kubeconfig, Debian's `etcd` serves with the
//! generated certificates and refuses a foreign client. Golden files pin
//! every non-secret asset, and no secret may appear in a plan, a report or a
//! golden file.
//!
//! The tools are on the CI image (`.ci/run` installs them): under `CI=true` a
//! missing tool fails the test; elsewhere the test says so and skips. Every process a test starts is killed by its handle when the test
//! ends, and every wait is bounded.

use crate::support::{check, load, root, stem, valid_scenarios};
use kscratch_backends::pki;
use kscratch_backends::render::{
    load_material, render_tree, render_tree_at, RenderReport, Why, PKI_STORE,
};
use kscratch_core::plan::{self, Action, Asset, Ca, Cert, Component, KubeconfigUser, Plan, Target};
use kscratch_core::render::{
    self as r, cert_spec, container_command, flag_value, issued_certs, CertSpec, ExtKeyUsage,
    Redacted,
};
use kscratch_core::Scenario;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn scenario(rel: &str) -> Scenario {
    match load(rel) {
        Ok(l) => l.scenario,
        Err(d) => panic!("{rel} is invalid:\n{d}"),
    }
}

/// A scratch directory removed when the test ends, pass or fail.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("kscratch-render-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tool's path. Missing, it fails the test under `CI=true` (CI installs
/// it); elsewhere it is None with the reason printed, and the test skips.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if crate::support::in_ci() {
            panic!("`{name}` is not installed, and under CI=true this test must run (.ci/run installs it)");
        }
        eprintln!("SKIP: `{name}` is not installed; this test needs it (CI installs it)");
    }
    found
}

/// Runs a command to completion, killing it after `limit`. Its output is
/// drained by threads while it runs, so a chatty child never blocks on a full pipe.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let status = child.wait().expect("reap a killed child");
                eprintln!("killed {cmd:?} after {limit:?}");
                break status;
            }
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn rendered(s: &Scenario, out: &Path) -> (Plan, RenderReport) {
    let p = plan::plan(s);
    let report = render_tree(s, &p, out).unwrap_or_else(|e| panic!("render {}: {e}", s.name));
    (p, report)
}

/// The store's file for a certificate (`local/pki/...`).
fn store_cert(out: &Path, cert: Cert, node: Option<&str>) -> PathBuf {
    let base = match node {
        Some(n) => out.join(PKI_STORE).join("nodes").join(n).join(cert.name()),
        None => out.join(PKI_STORE).join(cert.name()),
    };
    base.with_extension("crt")
}

fn store_ca(out: &Path, ca: Ca) -> PathBuf {
    out.join(PKI_STORE).join(format!("{}.crt", ca.name()))
}

/// What `openssl x509 -text` says about a certificate.
#[derive(Debug, Default)]
struct X509Text {
    cn: String,
    orgs: Vec<String>,
    dns: Vec<String>,
    ips: Vec<String>,
    eku: Vec<String>,
    key_usage: Vec<String>,
    is_ca: bool,
}

fn x509_text(openssl: &Path, cert: &Path) -> X509Text {
    let out = run_bounded(
        Command::new(openssl)
            .args(["x509", "-text", "-noout", "-in"])
            .arg(cert),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "openssl x509 {}: {}",
        cert.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let next_after = |header: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(header))
            .and_then(|i| lines.get(i + 1))
            .copied()
            .unwrap_or("")
    };
    let mut x = X509Text::default();
    let subject = lines
        .iter()
        .find_map(|l| l.strip_prefix("Subject:"))
        .unwrap_or_else(|| panic!("no subject in\n{text}"));
    for part in subject.split(", ") {
        match part.trim().split_once(" = ") {
            Some(("CN", v)) => x.cn = v.to_string(),
            Some(("O", v)) => x.orgs.push(v.to_string()),
            _ => {}
        }
    }
    for san in next_after("X509v3 Subject Alternative Name")
        .split(", ")
        .filter(|s| !s.is_empty())
    {
        if let Some(d) = san.strip_prefix("DNS:") {
            x.dns.push(d.to_string());
        } else if let Some(ip) = san.strip_prefix("IP Address:") {
            x.ips.push(ip.to_string());
        }
    }
    x.eku = next_after("X509v3 Extended Key Usage")
        .split(", ")
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    x.key_usage = next_after("X509v3 Key Usage")
        .split(", ")
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    x.is_ca = next_after("X509v3 Basic Constraints").contains("CA:TRUE");
    x
}

fn openssl_verify(openssl: &Path, ca: &Path, leaf: &Path) -> (bool, String) {
    let out = run_bounded(
        Command::new(openssl)
            .arg("verify")
            .arg("-CAfile")
            .arg(ca)
            .arg(leaf),
        Duration::from_secs(20),
    );
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn eku_names(spec: &CertSpec) -> Vec<String> {
    spec.extended_key_usages
        .iter()
        .map(|e| match e {
            ExtKeyUsage::ServerAuth => "TLS Web Server Authentication".to_string(),
            ExtKeyUsage::ClientAuth => "TLS Web Client Authentication".to_string(),
        })
        .collect()
}

#[test]
fn render_openssl_verifies_every_leaf_and_shows_the_specs_names() {
    let Some(openssl) = tool("openssl") else {
        return;
    };
    for rel in [
        "scenarios/guide-routed.yaml",
        "scenarios/https-ha.yaml",
        "scenarios/ha-local-proxy.yaml",
    ] {
        let s = scenario(rel);
        let dir = TempDir::new(&format!("openssl-{}", stem(rel)));
        rendered(&s, dir.path());
        for ca in r::cas(&s) {
            let x = x509_text(&openssl, &store_ca(dir.path(), ca));
            assert!(x.is_ca, "{} is a CA", ca.name());
            assert_eq!(x.cn, r::ca_spec(&s, ca).common_name);
            assert!(
                x.key_usage.contains(&"Certificate Sign".to_string()),
                "{}: {:?}",
                ca.name(),
                x.key_usage
            );
        }
        for (cert, node) in issued_certs(&s) {
            let node_name = node.map(|i| s.nodes[i].name.as_str());
            let leaf = store_cert(dir.path(), cert, node_name);
            let (ok, msg) = openssl_verify(&openssl, &store_ca(dir.path(), cert.ca()), &leaf);
            assert!(
                ok,
                "{rel}: {} for {node_name:?} does not verify against {}: {msg}",
                cert.name(),
                cert.ca().name()
            );
            // Signed by its own CA only: the cluster CA does not vouch for etcd's certificates.
            if cert.ca() != Ca::Cluster {
                assert!(
                    !openssl_verify(&openssl, &store_ca(dir.path(), Ca::Cluster), &leaf).0,
                    "{} verifies against the cluster CA",
                    cert.name()
                );
            }
            let spec = cert_spec(&s, cert, node).expect("spec");
            let x = x509_text(&openssl, &leaf);
            assert_eq!(x.cn, spec.common_name, "{}", cert.name());
            assert_eq!(x.orgs, spec.organizations, "{}", cert.name());
            assert_eq!(x.dns, spec.dns_names, "{}", cert.name());
            assert_eq!(
                x.ips,
                spec.ip_addresses
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>(),
                "{}",
                cert.name()
            );
            assert_eq!(x.eku, eku_names(&spec), "{}", cert.name());
            assert!(!x.is_ca, "{} is not a CA", cert.name());
        }
        // The names issue 3 lists, read back from the real certificates.
        let api = x509_text(&openssl, &store_cert(dir.path(), Cert::Apiserver, None));
        assert_eq!(api.cn, "kube-apiserver");
        assert!(
            api.ips.contains(&s.master_ip.to_string())
                && api
                    .ips
                    .contains(&s.network.kubernetes_service_ip.to_string()),
            "{api:?}"
        );
        for (_, n) in s.control_plane_nodes() {
            assert!(
                api.ips.contains(&n.ip.to_string()) && api.dns.contains(&n.name),
                "{api:?}"
            );
        }
        // The control-plane endpoint, which clients dial (TLS passes the local proxy).
        if let Some(e) = &s.control_plane_endpoint {
            assert!(api.ips.contains(&e.host_text()), "{api:?}");
        }
        for name in [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ] {
            assert!(api.dns.contains(&name.to_string()), "{name} in {api:?}");
        }
        for san in &s.security.extra_sans {
            assert!(
                api.dns.contains(san) || api.ips.contains(san),
                "{san} in {api:?}"
            );
        }
        assert_eq!(api.eku, ["TLS Web Server Authentication"]);
        let admin = x509_text(&openssl, &store_cert(dir.path(), Cert::Admin, None));
        assert_eq!(admin.cn, "kubernetes-admin");
        assert_eq!(admin.orgs, ["kubeadm:cluster-admins"]);
        let sup = x509_text(&openssl, &store_cert(dir.path(), Cert::SuperAdmin, None));
        assert_eq!(sup.orgs, ["system:masters"]);
        let n0 = &s.nodes[0].name;
        let kc = x509_text(
            &openssl,
            &store_cert(dir.path(), Cert::KubeletClient, Some(n0)),
        );
        assert_eq!(
            (kc.cn.as_str(), kc.orgs.as_slice()),
            (
                format!("system:node:{n0}").as_str(),
                &["system:nodes".to_string()][..]
            )
        );
        assert_eq!(kc.eku, ["TLS Web Client Authentication"]);
        let ks = x509_text(
            &openssl,
            &store_cert(dir.path(), Cert::KubeletServing, Some(n0)),
        );
        assert_eq!(
            (ks.dns.clone(), ks.ips.clone()),
            (vec![n0.clone()], vec![s.nodes[0].ip.to_string()])
        );
        assert_eq!(
            x509_text(
                &openssl,
                &store_cert(dir.path(), Cert::ApiserverKubeletClient, None)
            )
            .orgs,
            ["system:masters"]
        );
        assert_eq!(
            x509_text(&openssl, &store_cert(dir.path(), Cert::KubeProxy, None)).cn,
            "system:kube-proxy"
        );
        assert_eq!(
            x509_text(
                &openssl,
                &store_cert(dir.path(), Cert::ControllerManager, None)
            )
            .cn,
            "system:kube-controller-manager"
        );
        assert_eq!(
            x509_text(&openssl, &store_cert(dir.path(), Cert::Scheduler, None)).cn,
            "system:kube-scheduler"
        );
        let m = &s.nodes[s.etcd.members[0]];
        let peer = x509_text(
            &openssl,
            &store_cert(dir.path(), Cert::EtcdPeer, Some(&m.name)),
        );
        assert_eq!(peer.dns, [m.name.clone(), "localhost".into()]);
        assert_eq!(peer.ips, [m.ip.to_string(), "127.0.0.1".into()]);
        assert_eq!(
            peer.eku,
            [
                "TLS Web Server Authentication",
                "TLS Web Client Authentication"
            ]
        );

        // The copies on the nodes are the store's, and verify the same way.
        for (i, n) in s.nodes.iter().enumerate() {
            let on_node = dir
                .path()
                .join(&n.name)
                .join("var/lib/kubelet/pki/kubelet.crt");
            let (ok, msg) = openssl_verify(
                &openssl,
                &dir.path().join(&n.name).join("srv/kubernetes/ca.crt"),
                &on_node,
            );
            assert!(ok, "{}: {msg}", on_node.display());
            assert_eq!(
                std::fs::read(&on_node).ok(),
                std::fs::read(store_cert(dir.path(), Cert::KubeletServing, Some(&n.name))).ok(),
                "node {i}"
            );
        }
    }
}

#[test]
fn render_files_have_the_plans_modes() {
    for rel in ["scenarios/guide-routed.yaml", "scenarios/seed-era.yaml"] {
        let s = scenario(rel);
        let dir = TempDir::new(&format!("modes-{}", stem(rel)));
        let (p, _) = rendered(&s, dir.path());
        let mut seen = 0;
        for st in &p.steps {
            if let (Target::Node(i), Action::WriteFile { path, mode, asset }) =
                (st.target, &st.action)
            {
                let f = dir
                    .path()
                    .join(&p.nodes[i as usize])
                    .join(path.trim_start_matches('/'));
                let actual = std::fs::metadata(&f)
                    .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
                    .permissions()
                    .mode()
                    & 0o777;
                assert_eq!(actual, *mode, "{}", f.display());
                assert_eq!(
                    *mode,
                    if asset.is_secret() { 0o600 } else { 0o644 },
                    "{asset:?}"
                );
                seen += 1;
            }
        }
        assert!(seen > 10, "{rel}: {seen} files");
        // The store: keys 0600, certificates 0644, the folder the owner's only.
        for entry in walk(&dir.path().join(PKI_STORE)) {
            let mode = std::fs::metadata(&entry)
                .expect("stat")
                .permissions()
                .mode()
                & 0o777;
            let name = entry.to_string_lossy();
            if name.ends_with(".key") || name.ends_with(".csv") {
                assert_eq!(mode, 0o600, "{name}");
            } else if name.ends_with(".crt") || name.ends_with(".pub") || name.ends_with(".json") {
                assert_eq!(mode, 0o644, "{name}");
            }
        }
        assert_eq!(
            std::fs::metadata(dir.path().join("local"))
                .expect("local")
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("local/admin.conf"))
                .expect("admin.conf")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn render_kubectl_reads_every_kubeconfig() {
    let Some(kubectl) = tool("kubectl") else {
        return;
    };
    let openssl = tool("openssl");
    for rel in valid_scenarios() {
        let s = scenario(&rel);
        let dir = TempDir::new(&format!("kubectl-{}", stem(&rel)));
        let (p, _) = rendered(&s, dir.path());
        let mut files: Vec<(PathBuf, Option<usize>, KubeconfigUser)> = Vec::new();
        for st in &p.steps {
            if let (
                Target::Node(i),
                Action::WriteFile {
                    path,
                    asset: Asset::Kubeconfig(u),
                    ..
                },
            ) = (st.target, &st.action)
            {
                files.push((
                    dir.path()
                        .join(&p.nodes[i as usize])
                        .join(path.trim_start_matches('/')),
                    Some(i as usize),
                    *u,
                ));
            }
        }
        files.push((
            dir.path().join("local/admin.conf"),
            None,
            KubeconfigUser::Admin,
        ));
        assert!(files.len() > s.nodes.len(), "{rel}");
        for (f, node, user) in files {
            let out = run_bounded(
                Command::new(&kubectl)
                    .args(["config", "view", "-o", "json", "--kubeconfig"])
                    .arg(&f),
                Duration::from_secs(30),
            );
            assert!(
                out.status.success(),
                "kubectl rejects {}: {}",
                f.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("kubectl prints JSON");
            let id = r::kubeconfig_identity(&s, node, user);
            assert_eq!(v["clusters"][0]["name"], s.name.as_str(), "{}", f.display());
            assert_eq!(
                v["clusters"][0]["cluster"]["server"],
                id.server.as_str(),
                "{}",
                f.display()
            );
            assert_eq!(v["users"][0]["name"], id.user.as_str(), "{}", f.display());
            assert_eq!(
                v["current-context"],
                format!("{}@{}", id.user, s.name),
                "{}",
                f.display()
            );
            assert_eq!(v["contexts"][0]["context"]["cluster"], s.name.as_str());
            if s.security.model == kscratch_core::scenario::SecurityModel::Https {
                assert_eq!(
                    v["users"][0]["user"]["client-certificate-data"],
                    "DATA+OMITTED",
                    "{}",
                    f.display()
                );
                assert_eq!(
                    v["clusters"][0]["cluster"]["certificate-authority-data"],
                    "DATA+OMITTED"
                );
                // The embedded client certificate verifies against the embedded CA.
                if let Some(openssl) = &openssl {
                    let raw = run_bounded(
                        Command::new(&kubectl)
                            .args(["config", "view", "--raw", "-o", "json", "--kubeconfig"])
                            .arg(&f),
                        Duration::from_secs(30),
                    );
                    let v: serde_json::Value = serde_json::from_slice(&raw.stdout).expect("json");
                    let decode = |x: &serde_json::Value| base64_decode(x.as_str().expect("data"));
                    let scratch = TempDir::new(&format!(
                        "kc-{}-{}",
                        stem(&rel),
                        f.file_name().unwrap().to_string_lossy()
                    ));
                    std::fs::write(
                        scratch.path().join("ca.crt"),
                        decode(&v["clusters"][0]["cluster"]["certificate-authority-data"]),
                    )
                    .expect("write");
                    std::fs::write(
                        scratch.path().join("client.crt"),
                        decode(&v["users"][0]["user"]["client-certificate-data"]),
                    )
                    .expect("write");
                    let (ok, msg) = openssl_verify(
                        openssl,
                        &scratch.path().join("ca.crt"),
                        &scratch.path().join("client.crt"),
                    );
                    assert!(ok, "{}: {msg}", f.display());
                    let x = x509_text(openssl, &scratch.path().join("client.crt"));
                    assert_eq!(x.cn, id.user, "{}", f.display());
                }
            }
        }
    }
}

/// A free loopback TCP port (bound and released: good enough for a test on one machine).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// An etcd process started by this test, killed by its handle on drop.
struct Etcd {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Member `node`'s rendered etcd command, moved onto loopback: every member
/// URL `https://<ip>:2379|2380` becomes `https://127.0.0.1:<port>`, paths
/// point into the node's rendered tree, and the data dir into `data`.
fn etcd_argv(
    s: &Scenario,
    dir: &Path,
    node: usize,
    ports: &BTreeMap<(usize, u16), u16>,
    data: &Path,
) -> Vec<String> {
    let manifest = String::from_utf8(
        r::render(s, Some(node), Asset::StaticPod(Component::Etcd), &Redacted)
            .expect("etcd manifest"),
    )
    .expect("utf-8");
    let argv = container_command(&manifest).expect("etcd manifest parses");
    assert_eq!(argv[0], "etcd");
    let tree = dir.join(&s.nodes[node].name);
    let remap = |v: &str| -> String {
        let mut out = Vec::new();
        for part in v.split(',') {
            let mut p = part.to_string();
            for (&(m, port), &local) in ports {
                p = p.replace(
                    &format!("://{}:{port}", s.nodes[m].ip),
                    &format!("://127.0.0.1:{local}"),
                );
            }
            // `https://127.0.0.1:2379` duplicates the node URL once both are on loopback.
            if p.ends_with("://127.0.0.1:2379") {
                continue;
            }
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out.join(",")
    };
    let mut args = Vec::new();
    for a in &argv[1..] {
        let (name, value) = a
            .trim_start_matches("--")
            .split_once('=')
            .expect("--flag=value");
        let value = match name {
            "data-dir" => data.display().to_string(),
            // The metrics listener gets a port of its own.
            "listen-metrics-urls" => format!("http://127.0.0.1:{}", ports[&(node, 2381)]),
            _ if value.starts_with("/srv/kubernetes/") => tree
                .join(value.trim_start_matches('/'))
                .display()
                .to_string(),
            _ => remap(value),
        };
        args.push(format!("--{name}={value}"));
    }
    args
}

fn start_etcd_cluster(
    etcd: &Path,
    s: &Scenario,
    dir: &Path,
) -> (Vec<Etcd>, BTreeMap<(usize, u16), u16>) {
    let mut ports = BTreeMap::new();
    for &m in &s.etcd.members {
        for p in [2379u16, 2380, 2381] {
            ports.insert((m, p), free_port());
        }
    }
    let mut procs = Vec::new();
    for &m in &s.etcd.members {
        let data = dir.join("etcd-data").join(&s.nodes[m].name);
        std::fs::create_dir_all(&data).expect("data dir");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
            .expect("chmod data dir");
        let args = etcd_argv(s, dir, m, &ports, &data);
        for required in [
            "client-cert-auth",
            "peer-client-cert-auth",
            "trusted-ca-file",
            "cert-file",
            "peer-cert-file",
            "initial-cluster",
        ] {
            assert!(
                flag_value(&args, required).is_some(),
                "rendered etcd flags lack --{required}: {args:?}"
            );
        }
        let log = dir.join(format!("etcd-{}.log", s.nodes[m].name));
        let logf = std::fs::File::create(&log).expect("log file");
        let child = Command::new(etcd)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log"))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("start etcd: {e}"));
        procs.push(Etcd {
            child,
            name: s.nodes[m].name.clone(),
            log,
        });
    }
    (procs, ports)
}

fn etcdctl(
    etcdctl: &Path,
    endpoints: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
    args: &[&str],
) -> Output {
    run_bounded(
        Command::new(etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg(format!("--cacert={}", ca.display()))
            .arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()))
            .args(["--dial-timeout=3s", "--command-timeout=5s"])
            .args(args),
        Duration::from_secs(20),
    )
}

/// Polls `endpoint health` until it succeeds or 60 s pass; returns the last output.
fn wait_healthy(
    tool: &Path,
    endpoints: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
    procs: &mut [Etcd],
) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = etcdctl(tool, endpoints, ca, cert, key, &["endpoint", "health"]);
        if out.status.success() || Instant::now() > deadline {
            return out;
        }
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!(
                    "etcd {} exited ({status}):\n{}",
                    p.name,
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A client certificate from a CA the cluster does not know.
fn foreign_client(dir: &Path) -> (PathBuf, PathBuf) {
    let now = pki::OffsetDateTime::now_utc();
    let s = scenario("scenarios/guide-routed.yaml");
    let ca_spec = r::ca_spec(&s, Ca::Etcd);
    let ca = pki::generate_ca(&ca_spec, now).expect("foreign CA");
    let spec = cert_spec(&s, Cert::EtcdHealthcheckClient, None).expect("spec");
    let leaf = pki::issue(&spec, &ca_spec, &ca, now).expect("foreign client");
    let (c, k) = (dir.join("foreign.crt"), dir.join("foreign.key"));
    std::fs::write(&c, leaf.cert_pem).expect("write");
    std::fs::write(&k, leaf.key_pem).expect("write");
    (c, k)
}

fn etcd_test(rel: &str) {
    let (Some(etcd), Some(ctl)) = (tool("etcd"), tool("etcdctl")) else {
        return;
    };
    let s = scenario(rel);
    let dir = TempDir::new(&format!("etcd-{}", stem(rel)));
    rendered(&s, dir.path());
    let (mut procs, ports) = start_etcd_cluster(&etcd, &s, dir.path());
    let endpoints: Vec<String> = s
        .etcd
        .members
        .iter()
        .map(|m| format!("https://127.0.0.1:{}", ports[&(*m, 2379)]))
        .collect();
    let all = endpoints.join(",");
    let ca = store_ca(dir.path(), Ca::Etcd);
    let hc = store_cert(dir.path(), Cert::EtcdHealthcheckClient, None);
    let hk = hc.with_extension("key");

    let out = wait_healthy(&ctl, &all, &ca, &hc, &hk, &mut procs);
    assert!(
        out.status.success(),
        "etcdctl endpoint health failed:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        procs
            .iter()
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Every member answers, and they are one cluster of all members.
    let list = etcdctl(&ctl, &all, &ca, &hc, &hk, &["member", "list", "-w", "json"]);
    assert!(
        list.status.success(),
        "member list: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).expect("member list JSON");
    let mut names: Vec<String> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["name"].as_str().map(String::from))
        .collect();
    names.sort();
    let mut want: Vec<String> = s
        .etcd
        .members
        .iter()
        .map(|&m| s.nodes[m].name.clone())
        .collect();
    want.sort();
    assert_eq!(names, want);
    // The apiserver's etcd client certificate works too, through the rendered node copy.
    let cp = s
        .control_plane_nodes()
        .next()
        .expect("control plane")
        .1
        .name
        .clone();
    let node_pki = dir.path().join(&cp).join("srv/kubernetes");
    let put = etcdctl(
        &ctl,
        &endpoints[0],
        &node_pki.join("etcd/ca.crt"),
        &node_pki.join("apiserver-etcd-client.crt"),
        &node_pki.join("apiserver-etcd-client.key"),
        &["put", "/registry/kscratch", "ok"],
    );
    assert!(
        put.status.success(),
        "put with apiserver-etcd-client: {}",
        String::from_utf8_lossy(&put.stderr)
    );
    let get = etcdctl(
        &ctl,
        endpoints.last().expect("endpoint"),
        &ca,
        &hc,
        &hk,
        &["get", "/registry/kscratch", "--print-value-only"],
    );
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "ok",
        "replicated to every member"
    );

    // A client certificate from another CA is refused (--client-cert-auth).
    let (fc, fk) = foreign_client(dir.path());
    let refused = etcdctl(&ctl, &endpoints[0], &ca, &fc, &fk, &["endpoint", "health"]);
    assert!(
        !refused.status.success(),
        "etcd accepted a client certificate from a foreign CA"
    );
    // So is a client without any certificate.
    let anon = run_bounded(
        Command::new(&ctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints[0]))
            .arg(format!("--cacert={}", ca.display()))
            .args([
                "--dial-timeout=3s",
                "--command-timeout=5s",
                "endpoint",
                "health",
            ]),
        Duration::from_secs(20),
    );
    assert!(
        !anon.status.success(),
        "etcd accepted a client without a certificate"
    );
    drop(procs);
}

#[test]
fn render_etcd_serves_with_the_generated_certs_and_refuses_foreign_clients() {
    etcd_test("scenarios/guide-routed.yaml");
}

#[test]
fn render_etcd_three_members_form_a_cluster_on_loopback() {
    etcd_test("scenarios/https-ha.yaml");
}

/// Goldens: every asset of every valid bundled scenario, rendered with
/// `Redacted`, except the PEM files themselves (only placeholders).
#[test]
fn render_goldens_for_every_bundled_scenario() {
    for rel in valid_scenarios() {
        let s = scenario(&rel);
        let p = plan::plan(&s);
        let mut count = 0;
        for st in &p.steps {
            let (Target::Node(i), Action::WriteFile { path, asset, .. }) = (st.target, &st.action)
            else {
                continue;
            };
            if matches!(
                asset,
                Asset::CaCert(_)
                    | Asset::CaKey(_)
                    | Asset::Cert(_)
                    | Asset::Key(_)
                    | Asset::ServiceAccountKey
                    | Asset::ServiceAccountPub
            ) {
                continue;
            }
            let bytes = r::render(&s, Some(i as usize), *asset, &Redacted)
                .unwrap_or_else(|e| panic!("{rel}: {}: {e}", p.step_id(st)));
            let text = String::from_utf8(bytes).expect("utf-8");
            check(
                &format!("render/{}/{}{}", stem(&rel), p.nodes[i as usize], path),
                &text,
            );
            count += 1;
        }
        assert!(count >= 5 * s.nodes.len(), "{rel}: only {count} goldens");
    }
}

/// Every secret of a real render, as the strings a leak would contain: whole
/// values and each base64 line of every PEM key.
fn secret_needles(out: &Path, s: &Scenario) -> Vec<String> {
    let m = load_material(s, &out.join(PKI_STORE)).expect("load material");
    let mut needles = Vec::new();
    for secret in m.secrets() {
        if secret.contains("-----BEGIN") {
            needles.extend(
                secret
                    .lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                    .map(String::from),
            );
            // As embedded in a kubeconfig.
            needles.push(base64_encode(secret.as_bytes()));
        } else {
            needles.push(secret);
        }
    }
    assert!(needles.len() > 10, "the material holds keys and tokens");
    needles
}

#[test]
fn render_no_secret_appears_in_plan_report_or_goldens() {
    let exe = env!("CARGO_BIN_EXE_kscratch");
    for rel in ["scenarios/guide-routed.yaml", "scenarios/https-ha.yaml"] {
        let s = scenario(rel);
        let dir = TempDir::new(&format!("leak-{}", stem(rel)));
        // The CLI's own output, first run (everything generated) and second.
        let mut printed = String::new();
        for _ in 0..2 {
            let out = run_bounded(
                Command::new(exe)
                    .arg("render")
                    .arg(root().join(rel))
                    .arg("--locked")
                    .arg("--out")
                    .arg(dir.path()),
                Duration::from_secs(120),
            );
            assert!(
                out.status.success(),
                "kscratch render: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            printed.push_str(&String::from_utf8_lossy(&out.stdout));
            printed.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        assert!(printed.contains("generated    apiserver"), "{printed}");
        let p = plan::plan(&s);
        let plan_json = plan::to_json(&p);
        let plan_out = run_bounded(
            Command::new(exe)
                .arg("plan")
                .arg(root().join(rel))
                .arg("--locked")
                .args(["--format", "json"]),
            Duration::from_secs(60),
        );
        assert!(
            plan_out.status.success(),
            "kscratch plan: {}",
            String::from_utf8_lossy(&plan_out.stderr)
        );
        let plan_cli = String::from_utf8_lossy(&plan_out.stdout).into_owned();
        let doc: serde_json::Value = serde_json::from_str(&plan_cli).expect("plan JSON");
        assert_eq!(
            doc["steps"],
            serde_json::from_str::<serde_json::Value>(&plan_json).unwrap()["steps"],
            "the CLI prints the plan the library makes"
        );
        let report = render_tree(&s, &p, dir.path())
            .expect("re-render")
            .to_string();
        // The golden files on disk, and what they are rendered from (in case
        // this test runs before the golden test first writes them).
        let mut goldens: String = walk(&root().join("tests/golden/render"))
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .collect();
        for st in &p.steps {
            if let (Target::Node(i), Action::WriteFile { asset, .. }) = (st.target, &st.action) {
                goldens.push_str(&String::from_utf8_lossy(
                    &r::render(&s, Some(i as usize), *asset, &Redacted).expect("redacted render"),
                ));
            }
        }
        let needles = secret_needles(dir.path(), &s);
        for n in &needles {
            for (what, hay) in [
                ("plan JSON", &plan_json),
                ("kscratch plan output", &plan_cli),
                ("render report", &report),
                ("kscratch render output", &printed),
                ("golden files", &goldens),
            ] {
                assert!(!hay.contains(n.as_str()), "a secret leaked into the {what}");
            }
        }
        // The secrets are where they belong: tokens in known_tokens.csv on the control plane.
        let cp = &s.nodes[s.control_plane_nodes().next().expect("cp").0].name;
        let tokens =
            std::fs::read_to_string(dir.path().join(cp).join("srv/kubernetes/known_tokens.csv"))
                .expect("tokens");
        let lines = r::parse_credentials_csv(&tokens).expect("parses");
        assert_eq!(lines.len(), 3);
        for l in &lines {
            assert_eq!(l.secret.len(), 32);
            assert!(
                l.secret.bytes().all(|b| b.is_ascii_alphanumeric()),
                "token alphabet"
            );
        }
    }
}

#[test]
fn render_rerender_is_idempotent_and_explains_regeneration() {
    let s = scenario("scenarios/https-ha.yaml");
    let dir = TempDir::new("idempotent");
    let (p, first) = rendered(&s, dir.path());
    assert!(first.generated.iter().all(|e| e.why == Why::New));
    let before: BTreeMap<PathBuf, Vec<u8>> = walk(dir.path())
        .into_iter()
        .map(|f| (f.clone(), std::fs::read(&f).expect("read")))
        .collect();

    // Second run: nothing generated, nothing written, every byte the same.
    let second = render_tree_at(
        &s,
        &p,
        dir.path(),
        pki::OffsetDateTime::now_utc() + Duration::from_secs(86_400),
    )
    .expect("re-render");
    assert!(second.generated.is_empty(), "{second}");
    assert!(second.written.is_empty(), "{second}");
    let after: BTreeMap<PathBuf, Vec<u8>> = walk(dir.path())
        .into_iter()
        .map(|f| (f.clone(), std::fs::read(&f).expect("read")))
        .collect();
    assert_eq!(before, after);

    // A new SAN: exactly the apiserver certificate is re-issued, with the reason.
    let mut s2 = s.clone();
    s2.security.extra_sans.push("10.1.0.200".into());
    let p2 = plan::plan(&s2);
    let third = render_tree(&s2, &p2, dir.path()).expect("render with a new SAN");
    assert_eq!(third.regenerated(), ["apiserver"], "{third}");
    assert_eq!(third.generated.len(), 1);
    assert_eq!(
        third.generated[0].why,
        Why::Regenerated(vec!["SANs changed: +10.1.0.200".into()])
    );
    assert!(
        third
            .to_string()
            .contains("regenerated  apiserver: SANs changed: +10.1.0.200"),
        "{third}"
    );
    // Only the control-plane copies of the apiserver cert and key change.
    assert_eq!(third.written.len(), 6, "{third}");
    assert!(
        third
            .written
            .iter()
            .all(|w| w.ends_with("srv/kubernetes/apiserver.crt")
                || w.ends_with("srv/kubernetes/apiserver.key")),
        "{third}"
    );

    // A lost CA key: the etcd CA and everything it signed are made again; the cluster CA's leaves stay.
    std::fs::remove_file(dir.path().join(PKI_STORE).join("etcd-ca.key"))
        .expect("remove etcd CA key");
    let fourth = render_tree(&s2, &p2, dir.path()).expect("render after losing a CA key");
    let mut regen = fourth.regenerated();
    regen.sort();
    assert_eq!(
        regen,
        [
            "apiserver-etcd-client",
            "etcd-ca",
            "etcd-healthcheck-client",
            "etcd-peer/cp-1",
            "etcd-peer/cp-2",
            "etcd-peer/cp-3",
            "etcd-server/cp-1",
            "etcd-server/cp-2",
            "etcd-server/cp-3"
        ],
        "{fourth}"
    );
    let ca_event = fourth
        .generated
        .iter()
        .find(|e| e.name == "etcd-ca")
        .expect("etcd-ca");
    assert_eq!(
        ca_event.why,
        Why::Regenerated(vec!["certificate or key missing".into()])
    );
    let peer = fourth
        .generated
        .iter()
        .find(|e| e.name == "etcd-peer/cp-2")
        .expect("peer");
    assert_eq!(
        peer.why,
        Why::Regenerated(vec!["its CA (etcd-ca) was regenerated".into()])
    );
    if let Some(openssl) = tool("openssl") {
        let (ok, msg) = openssl_verify(
            &openssl,
            &dir.path().join("cp-2/srv/kubernetes/etcd/ca.crt"),
            &dir.path().join("cp-2/srv/kubernetes/etcd/peer.crt"),
        );
        assert!(ok, "{msg}");
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (the encoding of kubeconfig `*-data` fields).
fn base64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
    {
        let v = B64
            .iter()
            .position(|&x| x == c)
            .unwrap_or_else(|| panic!("`{}` is not base64", c as char)) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn render_test_base64_round_trips() {
    for s in [
        "",
        "a",
        "ab",
        "abc",
        "abcd",
        "-----BEGIN PRIVATE KEY-----\n",
    ] {
        assert_eq!(base64_decode(&base64_encode(s.as_bytes())), s.as_bytes());
    }
    assert_eq!(base64_encode(b"ab"), "YWI=");
}
