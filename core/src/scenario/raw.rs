//! The raw scenario: the document's values, field by field, before their
//! meaning is checked.
//!
//! [`decode`] walks the positioned tree ([`super::tree`]) and fills these
//! structs, reporting every unknown key, wrong type, bad enum value, number
//! out of range and missing key it meets, and carrying on. A field that is
//! wrong is left `None` and marked invalid in the [`Reporter`], so that
//! validation skips the checks that need it (and says so) while every other
//! check still runs. Addresses stay text here: validation parses them, with
//! a hint.

use super::tree::{plain_kind, Entry, Kind, Node, Plain};
use crate::diag::{did_you_mean, Code, Reporter};

#[derive(Debug, Clone, Default)]
pub struct RawScenario {
    pub cluster: RawCluster,
    pub nodes: Vec<RawNode>,
    pub network: RawNetwork,
    pub security: RawSecurity,
    pub runtime: RawRuntime,
    pub etcd: RawEtcd,
    pub cloud_provider: Option<RawCloudProvider>,
    pub addons: RawAddons,
    pub admission_plugins: Option<Vec<String>>,
    pub images: RawImages,
    pub binaries: RawBinaries,
    pub kubelet: RawKubelet,
    /// What-if faults applied by `kscratch check` after the plan has run.
    pub faults: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RawCluster {
    pub name: Option<String>,
    pub kubernetes_version: Option<String>,
    pub master_ip: Option<String>,
    pub control_plane_endpoint: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RawNode {
    pub name: Option<String>,
    pub ip: Option<String>,
    pub roles: Option<Vec<RawRole>>,
    pub ssh: RawSsh,
    pub pod_cidr: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawRole {
    ControlPlane,
    Etcd,
    Worker,
}

#[derive(Debug, Clone, Default)]
pub struct RawSsh {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub key: Option<String>,
    pub sudo: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct RawNetwork {
    pub node_cidr: Option<String>,
    pub cluster_cidr: Option<String>,
    pub node_prefix: Option<u8>,
    pub max_pods: Option<u32>,
    pub service_cidr: Option<String>,
    pub dns: RawDns,
    pub pod_traffic: Option<RawPodTraffic>,
    pub vxlan: Option<RawVxlan>,
    pub masquerade: Option<bool>,
    pub underlay_mtu: Option<u32>,
    pub bridge: Option<String>,
    pub interface: Option<String>,
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RawDns {
    pub ip: Option<String>,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawPodTraffic {
    Routed,
    Fabric,
    Vxlan,
    External,
}

#[derive(Debug, Clone, Default)]
pub struct RawVxlan {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub mtu: Option<u32>,
    pub device: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RawSecurity {
    pub model: Option<RawSecurityModel>,
    pub extra_sans: Vec<String>,
    pub basic_auth: Option<bool>,
    pub insecure_port: Option<bool>,
    pub allow_privileged: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawSecurityModel {
    HttpFirewall,
    Https,
}

#[derive(Debug, Clone, Default)]
pub struct RawRuntime {
    pub kind: Option<RawRuntimeKind>,
    pub mtu: Option<u32>,
    /// docker only: `--ip-masq` (the guide says false when pod IPs are routable).
    pub ip_masq: Option<bool>,
    /// docker only: `--iptables`.
    pub iptables: Option<bool>,
    pub nofile: Option<u64>,
    pub insecure_registry: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawRuntimeKind {
    Docker,
    Containerd,
}

#[derive(Debug, Clone, Default)]
pub struct RawEtcd {
    pub members: Option<Vec<String>>,
    pub data_dir: Option<String>,
    pub durable: Option<bool>,
    pub version: Option<String>,
    pub run_as: Option<RawEtcdRunAs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEtcdRunAs {
    StaticPod,
    Service,
}

#[derive(Debug, Clone)]
pub struct RawCloudProvider {
    pub name: Option<String>,
    pub config: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RawAddons {
    pub dns: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct RawImages {
    pub registry: Option<String>,
    pub hyperkube: Option<bool>,
    pub etcd: Option<String>,
}

/// Kubelet settings a scenario may state explicitly.
#[derive(Debug, Clone, Default)]
pub struct RawKubelet {
    /// KubeletConfiguration `failCgroupV1` (1.31+): `false` lets a 1.35+
    /// kubelet start on a cgroup v1 host.
    pub fail_cgroup_v1: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct RawBinaries {
    /// The guide's `kubernetes/server/bin`, on the machine running kscratch.
    pub dir: Option<String>,
}

const ROLES: &[(&str, RawRole)] = &[
    ("control-plane", RawRole::ControlPlane),
    ("etcd", RawRole::Etcd),
    ("worker", RawRole::Worker),
];
const POD_TRAFFIC: &[(&str, RawPodTraffic)] = &[
    ("routed", RawPodTraffic::Routed),
    ("fabric", RawPodTraffic::Fabric),
    ("vxlan", RawPodTraffic::Vxlan),
    ("external", RawPodTraffic::External),
];
const SECURITY_MODELS: &[(&str, RawSecurityModel)] = &[
    ("http-firewall", RawSecurityModel::HttpFirewall),
    ("https", RawSecurityModel::Https),
];
const RUNTIMES: &[(&str, RawRuntimeKind)] = &[
    ("docker", RawRuntimeKind::Docker),
    ("containerd", RawRuntimeKind::Containerd),
];
const ETCD_RUN_AS: &[(&str, RawEtcdRunAs)] = &[
    ("static-pod", RawEtcdRunAs::StaticPod),
    ("service", RawEtcdRunAs::Service),
];

/// Reads the whole document into the raw spec, reporting every problem of
/// shape (keys, kinds, words, ranges) and going on after each.
pub fn decode(root: &Node, r: &mut Reporter<'_>) -> RawScenario {
    let mut d = Decoder { r };
    let mut s = RawScenario::default();
    let Some(top) = d.map(
        root,
        "",
        &[
            "cluster",
            "nodes",
            "network",
            "security",
            "runtime",
            "etcd",
            "cloudProvider",
            "addons",
            "admissionPlugins",
            "images",
            "binaries",
            "kubelet",
            "faults",
        ],
    ) else {
        return s;
    };
    match top.get("cluster") {
        None => d.missing(
            "",
            "cluster",
            "cluster:\n  name: my-cluster\n  kubernetesVersion: \"1.30.4\"",
        ),
        Some(n) => {
            if let Some(c) = d.map(
                n,
                "cluster",
                &[
                    "name",
                    "kubernetesVersion",
                    "masterIP",
                    "controlPlaneEndpoint",
                ],
            ) {
                s.cluster.name = d.required_text(&c, "cluster", "name", "name: my-cluster");
                s.cluster.kubernetes_version = match c.get("kubernetesVersion") {
                    None => {
                        d.missing(
                            "cluster",
                            "kubernetesVersion",
                            "kubernetesVersion: \"1.30.4\"",
                        );
                        None
                    }
                    Some(v) => d.version(v, "cluster.kubernetesVersion"),
                };
                s.cluster.master_ip = d.text(c.get("masterIP"), "cluster.masterIP", "masterIP");
                s.cluster.control_plane_endpoint = d.text(
                    c.get("controlPlaneEndpoint"),
                    "cluster.controlPlaneEndpoint",
                    "controlPlaneEndpoint",
                );
            }
        }
    }
    match top.get("nodes") {
        None => d.missing(
            "",
            "nodes",
            "nodes:\n  - name: node-1\n    ip: 192.168.1.10",
        ),
        Some(n) => {
            if let Some(items) = d.list(n, "nodes", "nodes") {
                s.nodes = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| d.node(item, &format!("nodes[{i}]")))
                    .collect();
            }
        }
    }
    if let Some(n) = top.get("network") {
        s.network = d.network(n);
    }
    if let Some(n) = top.get("security") {
        if let Some(m) = d.map(
            n,
            "security",
            &[
                "model",
                "extraSANs",
                "basicAuth",
                "insecurePort",
                "allowPrivileged",
            ],
        ) {
            s.security = RawSecurity {
                model: d.one_of(m.get("model"), "security.model", "model", SECURITY_MODELS),
                extra_sans: d
                    .text_list(m.get("extraSANs"), "security.extraSANs", "extraSANs")
                    .unwrap_or_default(),
                basic_auth: d.bool(m.get("basicAuth"), "security.basicAuth", "basicAuth"),
                insecure_port: d.bool(
                    m.get("insecurePort"),
                    "security.insecurePort",
                    "insecurePort",
                ),
                allow_privileged: d.bool(
                    m.get("allowPrivileged"),
                    "security.allowPrivileged",
                    "allowPrivileged",
                ),
            };
        }
    }
    if let Some(n) = top.get("runtime") {
        if let Some(m) = d.map(
            n,
            "runtime",
            &[
                "kind",
                "mtu",
                "ipMasq",
                "iptables",
                "nofile",
                "insecureRegistry",
            ],
        ) {
            s.runtime = RawRuntime {
                kind: d.one_of(m.get("kind"), "runtime.kind", "kind", RUNTIMES),
                mtu: d
                    .uint(m.get("mtu"), "runtime.mtu", "mtu", 576, 9216, "1500")
                    .map(|v| v as u32),
                ip_masq: d.bool(m.get("ipMasq"), "runtime.ipMasq", "ipMasq"),
                iptables: d.bool(m.get("iptables"), "runtime.iptables", "iptables"),
                nofile: d.uint(
                    m.get("nofile"),
                    "runtime.nofile",
                    "nofile",
                    1024,
                    1 << 30,
                    "1000000",
                ),
                insecure_registry: d.text(
                    m.get("insecureRegistry"),
                    "runtime.insecureRegistry",
                    "insecureRegistry",
                ),
            };
        }
    }
    if let Some(n) = top.get("etcd") {
        if let Some(m) = d.map(
            n,
            "etcd",
            &["members", "dataDir", "durable", "version", "runAs"],
        ) {
            s.etcd = RawEtcd {
                members: d.text_list(m.get("members"), "etcd.members", "members"),
                data_dir: d.text(m.get("dataDir"), "etcd.dataDir", "dataDir"),
                durable: d.bool(m.get("durable"), "etcd.durable", "durable"),
                version: d.text(m.get("version"), "etcd.version", "version"),
                run_as: d.one_of(m.get("runAs"), "etcd.runAs", "runAs", ETCD_RUN_AS),
            };
        }
    }
    if let Some(n) = top.get("cloudProvider").filter(|n| !n.is_null()) {
        if let Some(m) = d.map(n, "cloudProvider", &["name", "config"]) {
            s.cloud_provider = Some(RawCloudProvider {
                name: d.required_text(&m, "cloudProvider", "name", "name: external"),
                config: d.text(m.get("config"), "cloudProvider.config", "config"),
            });
        }
    }
    if let Some(n) = top.get("addons") {
        if let Some(m) = d.map(n, "addons", &["dns"]) {
            s.addons.dns = d.bool(m.get("dns"), "addons.dns", "dns");
        }
    }
    s.admission_plugins = d.text_list(
        top.get("admissionPlugins"),
        "admissionPlugins",
        "admissionPlugins",
    );
    if let Some(n) = top.get("images") {
        if let Some(m) = d.map(n, "images", &["registry", "hyperkube", "etcd"]) {
            s.images = RawImages {
                registry: d.text(m.get("registry"), "images.registry", "registry"),
                hyperkube: d.bool(m.get("hyperkube"), "images.hyperkube", "hyperkube"),
                etcd: d.text(m.get("etcd"), "images.etcd", "etcd"),
            };
        }
    }
    if let Some(n) = top.get("binaries") {
        if let Some(m) = d.map(n, "binaries", &["dir"]) {
            s.binaries.dir = d.text(m.get("dir"), "binaries.dir", "dir");
        }
    }
    if let Some(n) = top.get("kubelet") {
        if let Some(m) = d.map(n, "kubelet", &["failCgroupV1"]) {
            s.kubelet.fail_cgroup_v1 = d.bool(
                m.get("failCgroupV1"),
                "kubelet.failCgroupV1",
                "failCgroupV1",
            );
        }
    }
    s.faults = d
        .text_list(top.get("faults"), "faults", "faults")
        .unwrap_or_default();
    s
}

/// The entries of one mapping, looked up by key (the first of duplicates wins;
/// the duplicate itself is reported).
struct Fields<'n> {
    entries: Vec<&'n Entry>,
}

impl<'n> Fields<'n> {
    /// The value of `key`; an explicit null is the same as leaving the key out.
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
            .filter(|n| !n.is_null())
    }
}

struct Decoder<'r, 'a> {
    r: &'r mut Reporter<'a>,
}

fn join(p: &str, k: &str) -> String {
    if p.is_empty() {
        k.to_string()
    } else {
        format!("{p}.{k}")
    }
}

impl Decoder<'_, '_> {
    /// A mapping with these `keys`; unknown and repeated keys are reported.
    fn map<'n>(&mut self, n: &'n Node, path: &str, keys: &[&str]) -> Option<Fields<'n>> {
        let Kind::Map(entries) = &n.kind else {
            let what = if path.is_empty() {
                "the scenario"
            } else {
                path
            };
            self.r.invalid(
                Code::WrongType,
                path,
                format!(
                    "{what} must be a mapping of keys to values, not {}",
                    n.describe()
                ),
                format!(
                    "indent its keys below it, e.g. `{}`",
                    keys.first()
                        .map_or("key: value".to_string(), |k| format!("{k}: ..."))
                ),
            );
            return None;
        };
        let mut kept: Vec<&Entry> = Vec::with_capacity(entries.len());
        for e in entries {
            let full = join(path, &e.key);
            if let Some(first) = kept.iter().find(|k| k.key == e.key) {
                self.r.diags.push(crate::Diagnostic {
                    severity: crate::diag::Severity::Error,
                    code: Code::DuplicateKey,
                    file: self.r.file.to_string(),
                    path: full,
                    line: Some(e.key_pos.line),
                    column: Some(e.key_pos.column),
                    message: format!(
                        "`{}` is given twice in this mapping (first on line {})",
                        e.key, first.key_pos.line
                    ),
                    hint: "keep one of them: YAML would silently use only one".into(),
                });
                continue;
            }
            if !keys.contains(&e.key.as_str()) {
                let hint = did_you_mean(&e.key, keys.iter().copied())
                    .map(|m| format!("did you mean `{m}`?"))
                    .unwrap_or_else(|| format!("known keys here: {}", keys.join(", ")));
                self.r.key_error(
                    Code::UnknownKey,
                    full,
                    format!("unknown key `{}`", e.key),
                    hint,
                );
                continue;
            }
            kept.push(e);
        }
        Some(Fields { entries: kept })
    }

    fn missing(&mut self, parent: &str, key: &str, example: &str) {
        let full = join(parent, key);
        let where_ = if parent.is_empty() {
            "the scenario".to_string()
        } else {
            format!("`{parent}`")
        };
        self.r.mark_invalid(full);
        self.r.error(
            Code::MissingKey,
            parent,
            format!("{where_} needs the key `{key}`, which is missing"),
            format!("add {example}"),
        );
    }

    fn required_text(
        &mut self,
        m: &Fields<'_>,
        parent: &str,
        key: &str,
        example: &str,
    ) -> Option<String> {
        let path = join(parent, key);
        match m.get(key) {
            None => {
                self.missing(parent, key, example);
                None
            }
            Some(n) => self.text(Some(n), &path, key),
        }
    }

    /// Text; a plain number is accepted as its text, a boolean or a collection is not.
    fn text(&mut self, n: Option<&Node>, path: &str, key: &str) -> Option<String> {
        let n = n?;
        match &n.kind {
            Kind::Scalar { text, plain } => {
                if *plain {
                    if let Plain::Bool(_) = plain_kind(text) {
                        self.r.invalid(
                            Code::WrongType,
                            path,
                            format!("{key} must be text, not {}", n.describe()),
                            format!("quote it if you mean the word: {key}: \"{text}\""),
                        );
                        return None;
                    }
                }
                Some(text.clone())
            }
            _ => {
                self.r.invalid(
                    Code::WrongType,
                    path,
                    format!("{key} must be text, not {}", n.describe()),
                    format!("write one value on the same line: {key}: VALUE"),
                );
                None
            }
        }
    }

    /// A Kubernetes version: text such as "1.30.4". An unquoted `1.30` is the
    /// number 1.3 to YAML, so it is refused with the fix.
    fn version(&mut self, n: &Node, path: &str) -> Option<String> {
        if let Kind::Scalar { text, plain: true } = &n.kind {
            match plain_kind(text) {
                Plain::Float(f) => {
                    self.r.invalid(
                        Code::VersionAsNumber,
                        path,
                        format!(
                            "the version {text} was read as a number ({f}): quote it, \"{text}\""
                        ),
                        format!("write kubernetesVersion: \"{text}\""),
                    );
                    return None;
                }
                Plain::Int(i) => {
                    self.r.invalid(
                        Code::VersionAsNumber,
                        path,
                        format!("the version {text} was read as a number ({i}): quote it, \"{text}\""),
                        "a version has a major and a minor number, e.g. kubernetesVersion: \"1.30.4\""
                            .to_string(),
                    );
                    return None;
                }
                _ => {}
            }
        }
        self.text(Some(n), path, "kubernetesVersion")
    }

    fn bool(&mut self, n: Option<&Node>, path: &str, key: &str) -> Option<bool> {
        let n = n?;
        if let Kind::Scalar { text, plain: true } = &n.kind {
            if let Plain::Bool(b) = plain_kind(text) {
                return Some(b);
            }
        }
        let hint = match &n.kind {
            Kind::Scalar { text, .. }
                if ["yes", "on", "y"].contains(&text.to_ascii_lowercase().as_str()) =>
            {
                format!("YAML 1.2 reads `{text}` as text: write {key}: true")
            }
            Kind::Scalar { text, .. }
                if ["no", "off", "n"].contains(&text.to_ascii_lowercase().as_str()) =>
            {
                format!("YAML 1.2 reads `{text}` as text: write {key}: false")
            }
            Kind::Scalar { plain: false, .. } => {
                format!("remove the quotes: {key}: true or {key}: false")
            }
            _ => format!("write {key}: true or {key}: false"),
        };
        self.r.invalid(
            Code::WrongType,
            path,
            format!("{key} must be true or false, not {}", n.describe()),
            hint,
        );
        None
    }

    /// A whole number from `lo` to `hi`.
    fn uint(
        &mut self,
        n: Option<&Node>,
        path: &str,
        key: &str,
        lo: u64,
        hi: u64,
        example: &str,
    ) -> Option<u64> {
        let n = n?;
        let rule = format!("{key} must be a whole number from {lo} to {hi}");
        if let Kind::Scalar { text, plain: true } = &n.kind {
            if let Plain::Int(i) = plain_kind(text) {
                if i >= lo as i128 && i <= hi as i128 {
                    return Some(i as u64);
                }
                self.r.invalid(
                    Code::OutOfRange,
                    path,
                    format!("{rule}; {text} is outside that range"),
                    format!("e.g. {key}: {example}"),
                );
                return None;
            }
        }
        let hint = match &n.kind {
            Kind::Scalar { text, plain: false } if text.trim().parse::<u64>().is_ok() => {
                format!("remove the quotes: {key}: {}", text.trim())
            }
            _ => format!("write a number without quotes or units, e.g. {key}: {example}"),
        };
        self.r.invalid(
            Code::WrongType,
            path,
            format!("{rule}, not {}", n.describe()),
            hint,
        );
        None
    }

    /// One of a fixed set of words.
    fn one_of<T: Copy>(
        &mut self,
        n: Option<&Node>,
        path: &str,
        key: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let n = n?;
        let names: Vec<&str> = choices.iter().map(|(s, _)| *s).collect();
        match &n.kind {
            Kind::Scalar { text, .. } => {
                if let Some((_, v)) = choices.iter().find(|(s, _)| s == text) {
                    return Some(*v);
                }
                let hint = did_you_mean(text, names.iter().copied())
                    .map(|m| format!("did you mean `{m}`?"))
                    .unwrap_or_else(|| format!("one of: {}", names.join(", ")));
                self.r.invalid(
                    Code::UnknownValue,
                    path,
                    format!("`{text}` is not a known value"),
                    hint,
                );
            }
            _ => self.r.invalid(
                Code::WrongType,
                path,
                format!(
                    "{key} must be one of {}, not {}",
                    names.join(", "),
                    n.describe()
                ),
                format!("write one word, e.g. {key}: {}", names[0]),
            ),
        }
        None
    }

    fn list<'n>(&mut self, n: &'n Node, path: &str, key: &str) -> Option<&'n [Node]> {
        match &n.kind {
            Kind::Seq(items) => Some(items),
            _ => {
                self.r.invalid(
                    Code::WrongType,
                    path,
                    format!("{key} must be a list, not {}", n.describe()),
                    format!("write it as `{key}: [a, b]` or one `- item` per line"),
                );
                None
            }
        }
    }

    fn text_list(&mut self, n: Option<&Node>, path: &str, key: &str) -> Option<Vec<String>> {
        let items = self.list(n?, path, key)?;
        Some(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    self.text(Some(item), &format!("{path}[{i}]"), &format!("{key}[{i}]"))
                })
                .collect(),
        )
    }

    fn node(&mut self, n: &Node, p: &str) -> RawNode {
        let mut out = RawNode::default();
        let Some(m) = self.map(n, p, &["name", "ip", "roles", "ssh", "podCIDR"]) else {
            return out;
        };
        out.name = self.required_text(&m, p, "name", "name: node-1");
        out.ip = self.required_text(&m, p, "ip", "ip: 192.168.1.10");
        if let Some(rn) = m.get("roles") {
            let path = format!("{p}.roles");
            if let Some(items) = self.list(rn, &path, "roles") {
                out.roles = Some(
                    items
                        .iter()
                        .enumerate()
                        .filter_map(|(i, it)| {
                            self.one_of(Some(it), &format!("{path}[{i}]"), "a role", ROLES)
                        })
                        .collect(),
                );
            }
        }
        if let Some(sn) = m.get("ssh") {
            let path = format!("{p}.ssh");
            if let Some(s) = self.map(sn, &path, &["user", "port", "key", "sudo"]) {
                out.ssh = RawSsh {
                    user: self.text(s.get("user"), &format!("{path}.user"), "user"),
                    port: self
                        .uint(
                            s.get("port"),
                            &format!("{path}.port"),
                            "port",
                            1,
                            65535,
                            "22",
                        )
                        .map(|v| v as u16),
                    key: self.text(s.get("key"), &format!("{path}.key"), "key"),
                    sudo: self.bool(s.get("sudo"), &format!("{path}.sudo"), "sudo"),
                };
            }
        }
        out.pod_cidr = self.text(m.get("podCIDR"), &format!("{p}.podCIDR"), "podCIDR");
        out
    }

    fn network(&mut self, n: &Node) -> RawNetwork {
        let mut out = RawNetwork::default();
        let Some(m) = self.map(
            n,
            "network",
            &[
                "nodeCIDR",
                "clusterCIDR",
                "nodePrefix",
                "maxPods",
                "serviceCIDR",
                "dns",
                "podTraffic",
                "vxlan",
                "masquerade",
                "underlayMTU",
                "bridge",
                "interface",
                "gateway",
            ],
        ) else {
            return out;
        };
        out.node_cidr = self.text(m.get("nodeCIDR"), "network.nodeCIDR", "nodeCIDR");
        out.cluster_cidr = self.text(m.get("clusterCIDR"), "network.clusterCIDR", "clusterCIDR");
        out.node_prefix = self
            .uint(
                m.get("nodePrefix"),
                "network.nodePrefix",
                "nodePrefix",
                1,
                32,
                "24",
            )
            .map(|v| v as u8);
        out.max_pods = self
            .uint(
                m.get("maxPods"),
                "network.maxPods",
                "maxPods",
                1,
                65535,
                "110",
            )
            .map(|v| v as u32);
        out.service_cidr = self.text(m.get("serviceCIDR"), "network.serviceCIDR", "serviceCIDR");
        if let Some(dn) = m.get("dns") {
            if let Some(dm) = self.map(dn, "network.dns", &["ip", "domain"]) {
                out.dns = RawDns {
                    ip: self.text(dm.get("ip"), "network.dns.ip", "ip"),
                    domain: self.text(dm.get("domain"), "network.dns.domain", "domain"),
                };
            }
        }
        out.pod_traffic = self.one_of(
            m.get("podTraffic"),
            "network.podTraffic",
            "podTraffic",
            POD_TRAFFIC,
        );
        if let Some(vn) = m.get("vxlan") {
            if let Some(vm) = self.map(vn, "network.vxlan", &["vni", "port", "mtu", "device"]) {
                out.vxlan = Some(RawVxlan {
                    vni: self
                        .uint(
                            vm.get("vni"),
                            "network.vxlan.vni",
                            "vni",
                            1,
                            (1 << 24) - 1,
                            "1",
                        )
                        .map(|v| v as u32),
                    port: self
                        .uint(
                            vm.get("port"),
                            "network.vxlan.port",
                            "port",
                            1,
                            65535,
                            "4789",
                        )
                        .map(|v| v as u16),
                    mtu: self
                        .uint(vm.get("mtu"), "network.vxlan.mtu", "mtu", 576, 9216, "1450")
                        .map(|v| v as u32),
                    device: self.text(vm.get("device"), "network.vxlan.device", "device"),
                });
            } else {
                out.vxlan = Some(RawVxlan::default());
            }
        }
        out.masquerade = self.bool(m.get("masquerade"), "network.masquerade", "masquerade");
        out.underlay_mtu = self
            .uint(
                m.get("underlayMTU"),
                "network.underlayMTU",
                "underlayMTU",
                576,
                9216,
                "1500",
            )
            .map(|v| v as u32);
        out.bridge = self.text(m.get("bridge"), "network.bridge", "bridge");
        out.interface = self.text(m.get("interface"), "network.interface", "interface");
        out.gateway = self.text(m.get("gateway"), "network.gateway", "gateway");
        out
    }
}
