//! What each Kubernetes release's real binaries accept, from upstream data.
//!
//! The tables live in `core/data/` as plain text, one fact a row, each with
//! its upstream source (the kubernetes/website command-line references, the
//! CHANGELOGs, kubeadm's `constants.go`):
//!
//! - `flags.tsv`: command-line flags of kube-apiserver, kube-controller-manager,
//!   kube-scheduler, kubelet and kube-proxy: the minor that added each, the
//!   minor that deprecated it, the minor that removed it.
//! - `fields.tsv`: the same for the fields of the files kscratch writes
//!   (KubeletConfiguration, KubeProxyConfiguration, static pods).
//! - `allowed.tsv`: deprecated flags kscratch still renders, with the reason.
//! - `images.tsv`: per minor, the etcd, DNS and pause versions kubeadm shipped,
//!   the hyperkube command form, and what k8s.gcr.io holds.
//! - `host.tsv`: what each release's kubelet requires of its host.
//!
//! The tables are compiled in (`include_str!`) and parsed once; core still
//! does no IO. A row that does not parse is a bug in the shipped data, caught
//! by this module's tests, so the accessors do not return errors.
//!
//! Facts carry over: a row says when a flag arrived and when it left, and
//! every minor in between has it. A flag the table does not list is unknown
//! to every release, which is what a real binary says of a flag it does not
//! define: `unknown flag: --name`.

use crate::scenario::KubeVersion;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

const FLAGS: &str = include_str!("../data/flags.tsv");
const FIELDS: &str = include_str!("../data/fields.tsv");
const ALLOWED: &str = include_str!("../data/allowed.tsv");
const IMAGES: &str = include_str!("../data/images.tsv");
const HOST: &str = include_str!("../data/host.tsv");

/// The components whose flags the table covers.
pub const COMPONENTS: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];

/// The oldest and newest minors the tables cover (kscratch's supported range).
pub const FIRST_MINOR: u16 = 6;
pub const LAST_MINOR: u16 = 35;

/// One row of `flags.tsv` or `fields.tsv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub component: String,
    pub name: String,
    pub since: u16,
    pub deprecated: Option<u16>,
    pub removed: Option<u16>,
    pub source: String,
}

/// A deprecated flag kscratch renders on purpose (`allowed.tsv`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    pub component: String,
    pub name: String,
    pub from: u16,
    pub to: u16,
    pub reason: String,
}

/// What a release says of a flag or field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Present,
    /// Accepted with a warning, since `since`.
    Deprecated {
        since: u16,
    },
    /// Not there yet: it arrives in `since`.
    NotYet {
        since: u16,
    },
    /// Removed in `removed`.
    Removed {
        removed: u16,
    },
    /// No release defines it.
    Unknown,
}

impl State {
    /// True when the binary starts with it (possibly warning).
    pub fn accepted(self) -> bool {
        matches!(self, State::Present | State::Deprecated { .. })
    }
}

/// How a check judged one flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The binary refuses to start: unknown, not yet added, or removed.
    Refused,
    /// Deprecated, and not in `allowed.tsv` for this minor.
    Deprecated,
    /// Deprecated, rendered on purpose; the reason is in `allowed.tsv`.
    DeprecatedAllowed { reason: String },
}

/// One finding about one flag of an argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagFinding {
    pub component: String,
    pub flag: String,
    pub state: State,
    pub verdict: Verdict,
    /// What the real binary prints: `unknown flag: --insecure-port`, or
    /// `Flag --register-node has been deprecated, ...`.
    pub message: String,
    /// The upstream source of the fact, when the table has a row.
    pub source: Option<String>,
}

impl fmt::Display for FlagFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.component, self.message)?;
        if let Some(s) = &self.source {
            write!(f, " (source: {s})")?;
        }
        Ok(())
    }
}

/// The DNS addon of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsAddon {
    KubeDns,
    Coredns,
}

/// How a release's hyperkube image names the control-plane commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HyperkubeForm {
    /// `/hyperkube apiserver` (up to 1.14).
    Short,
    /// `/hyperkube kube-apiserver` (1.15-1.18).
    KubeNames,
    /// No hyperkube image for this release (1.19+).
    None,
}

/// Which patch releases of a minor are on k8s.gcr.io.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcrPatches {
    All,
    UpTo(u16),
    None,
}

/// One row of `images.tsv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseImages {
    pub minor: u16,
    pub etcd: String,
    pub dns: DnsAddon,
    pub dns_tag: String,
    pub pause: String,
    pub hyperkube: HyperkubeForm,
    pub gcr: GcrPatches,
    pub source: String,
}

/// One row of `host.tsv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRequirement {
    pub name: String,
    pub since: u16,
    pub until: Option<u16>,
    pub source: String,
}

struct Tables {
    flags: BTreeMap<(String, String), Fact>,
    fields: BTreeMap<(String, String), Fact>,
    allowed: Vec<Allowance>,
    images: Vec<ReleaseImages>,
    host: Vec<HostRequirement>,
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| match parse_all() {
        Ok(t) => t,
        // The data is compiled in and parsed by this module's tests: a bad row
        // cannot reach a release build that passed them.
        Err(e) => panic!("core/data is malformed: {e}"),
    })
}

fn parse_all() -> Result<Tables, String> {
    Ok(Tables {
        flags: facts("flags.tsv", FLAGS)?,
        fields: facts("fields.tsv", FIELDS)?,
        allowed: allowances(ALLOWED)?,
        images: images(IMAGES)?,
        host: host(HOST)?,
    })
}

/// The data rows of a table: comments and blank lines dropped; each row as
/// (line number, the first `n` whitespace-separated fields, the rest).
fn rows(text: &str, n: usize) -> impl Iterator<Item = (usize, Result<(Vec<&str>, &str), String>)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(move |(i, l)| (i + 1, split_fields(l, n)))
}

fn split_fields(line: &str, n: usize) -> Result<(Vec<&str>, &str), String> {
    let mut out = Vec::with_capacity(n);
    let mut rest = line.trim_start();
    for _ in 0..n {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        if end == 0 {
            return Err(format!(
                "expected {n} fields and a source, found {}",
                out.len()
            ));
        }
        out.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    if rest.is_empty() {
        return Err("the source is missing".into());
    }
    Ok((out, rest.trim_end()))
}

/// `1.23` → 23; `-` → None.
fn minor(s: &str) -> Result<Option<u16>, String> {
    if s == "-" {
        return Ok(None);
    }
    let m = s
        .strip_prefix("1.")
        .and_then(|m| m.parse::<u16>().ok())
        .ok_or_else(|| format!("`{s}` is not a minor release like 1.23"))?;
    Ok(Some(m))
}

fn need(s: &str) -> Result<u16, String> {
    minor(s)?.ok_or_else(|| format!("`{s}`: a minor release is required here"))
}

fn facts(file: &str, text: &str) -> Result<BTreeMap<(String, String), Fact>, String> {
    let mut out = BTreeMap::new();
    for (line, r) in rows(text, 5) {
        let at = |e: String| format!("{file}:{line}: {e}");
        let (f, source) = r.map_err(at)?;
        let fact = Fact {
            component: f[0].into(),
            name: f[1].into(),
            since: need(f[2]).map_err(at)?,
            deprecated: minor(f[3]).map_err(at)?,
            removed: minor(f[4]).map_err(at)?,
            source: source.into(),
        };
        if let Some(r) = fact.removed {
            if r <= fact.since {
                return Err(at(format!("`{}` is removed before it arrives", fact.name)));
            }
        }
        let key = (fact.component.clone(), fact.name.clone());
        if out.insert(key, fact).is_some() {
            return Err(at(format!("`{} {}` is listed twice", f[0], f[1])));
        }
    }
    Ok(out)
}

fn allowances(text: &str) -> Result<Vec<Allowance>, String> {
    let mut out = Vec::new();
    for (line, r) in rows(text, 4) {
        let at = |e: String| format!("allowed.tsv:{line}: {e}");
        let (f, reason) = r.map_err(at)?;
        out.push(Allowance {
            component: f[0].into(),
            name: f[1].into(),
            from: need(f[2]).map_err(at)?,
            to: need(f[3]).map_err(at)?,
            reason: reason.into(),
        });
    }
    Ok(out)
}

fn images(text: &str) -> Result<Vec<ReleaseImages>, String> {
    let mut out: Vec<ReleaseImages> = Vec::new();
    for (line, r) in rows(text, 7) {
        let at = |e: String| format!("images.tsv:{line}: {e}");
        let (f, source) = r.map_err(at)?;
        let m = need(f[0]).map_err(at)?;
        let expected = out.last().map_or(FIRST_MINOR, |p| p.minor + 1);
        if m != expected {
            return Err(at(format!("expected 1.{expected}, found 1.{m}")));
        }
        out.push(ReleaseImages {
            minor: m,
            etcd: f[1].into(),
            dns: match f[2] {
                "kube-dns" => DnsAddon::KubeDns,
                "coredns" => DnsAddon::Coredns,
                o => return Err(at(format!("unknown DNS addon `{o}`"))),
            },
            dns_tag: f[3].into(),
            pause: f[4].into(),
            hyperkube: match f[5] {
                "short" => HyperkubeForm::Short,
                "kube" => HyperkubeForm::KubeNames,
                "-" => HyperkubeForm::None,
                o => return Err(at(format!("unknown hyperkube form `{o}`"))),
            },
            gcr: match f[6] {
                "all" => GcrPatches::All,
                "-" => GcrPatches::None,
                v => {
                    let p = KubeVersion::parse(v).map_err(at)?;
                    if p.minor != m {
                        return Err(at(format!("`{v}` is not a 1.{m} release")));
                    }
                    GcrPatches::UpTo(p.patch)
                }
            },
            source: source.into(),
        });
    }
    if out.last().map(|r| r.minor) != Some(LAST_MINOR) {
        return Err(format!(
            "images.tsv must cover 1.{FIRST_MINOR}-1.{LAST_MINOR}"
        ));
    }
    Ok(out)
}

fn host(text: &str) -> Result<Vec<HostRequirement>, String> {
    let mut out = Vec::new();
    for (line, r) in rows(text, 3) {
        let at = |e: String| format!("host.tsv:{line}: {e}");
        let (f, source) = r.map_err(at)?;
        out.push(HostRequirement {
            name: f[0].into(),
            since: need(f[1]).map_err(at)?,
            until: minor(f[2]).map_err(at)?,
            source: source.into(),
        });
    }
    Ok(out)
}

fn state_of(fact: Option<&Fact>, minor: u16) -> State {
    match fact {
        None => State::Unknown,
        Some(f) if minor < f.since => State::NotYet { since: f.since },
        Some(f) if f.removed.is_some_and(|r| minor >= r) => State::Removed {
            removed: f.removed.unwrap_or(minor),
        },
        Some(f) if f.deprecated.is_some_and(|d| minor >= d) => State::Deprecated {
            since: f.deprecated.unwrap_or(minor),
        },
        Some(_) => State::Present,
    }
}

/// What release `1.minor` of `component` says of the flag `--name`.
pub fn flag_state(component: &str, minor: u16, name: &str) -> State {
    let t = tables();
    state_of(
        t.flags.get(&(component.to_string(), name.to_string())),
        minor,
    )
}

/// The table row of a flag, with its source.
pub fn flag_fact(component: &str, name: &str) -> Option<&'static Fact> {
    tables()
        .flags
        .get(&(component.to_string(), name.to_string()))
}

/// True when release `1.minor` of `component` starts with `--name` (perhaps warning).
pub fn has_flag(component: &str, minor: u16, name: &str) -> bool {
    flag_state(component, minor, name).accepted()
}

/// What release `1.minor` says of a field of a file (`kubelet-config`,
/// `kube-proxy-config`, `pod`), by dotted path.
pub fn field_state(file: &str, minor: u16, path: &str) -> State {
    let t = tables();
    state_of(t.fields.get(&(file.to_string(), path.to_string())), minor)
}

/// The table row of a field, with its source.
pub fn field_fact(file: &str, path: &str) -> Option<&'static Fact> {
    tables().fields.get(&(file.to_string(), path.to_string()))
}

/// Why kscratch renders a deprecated flag on `1.minor`, if it does so on purpose.
pub fn allowance(component: &str, minor: u16, name: &str) -> Option<&'static Allowance> {
    tables()
        .allowed
        .iter()
        .find(|a| a.component == component && a.name == name && (a.from..=a.to).contains(&minor))
}

/// Every allowance, for the test that each one is still needed.
pub fn allowances_all() -> &'static [Allowance] {
    &tables().allowed
}

/// The flag name of one argument: `--name=value` or `--name` → `name`.
/// Anything else (the program, a hyperkube subcommand, a value) is `None`.
pub fn flag_name(arg: &str) -> Option<&str> {
    let rest = arg.strip_prefix("--")?;
    let name = rest.split_once('=').map_or(rest, |(n, _)| n);
    (!name.is_empty()).then_some(name)
}

/// Checks the flags of an argv against release `1.minor` of `component`:
/// one finding per flag that the real binary refuses or warns about. An empty
/// result means the binary starts without a word about its flags.
///
/// The messages are the binaries' own: pflag's `unknown flag: --name` (the
/// kubelet from 1.10 prefixes `failed to parse kubelet flag: `), and
/// `Flag --name has been deprecated, ...` for a deprecated one.
pub fn check_flags(component: &str, minor: u16, argv: &[String]) -> Vec<FlagFinding> {
    let mut out = Vec::new();
    for name in argv.iter().filter_map(|a| flag_name(a)) {
        let state = flag_state(component, minor, name);
        let source = flag_fact(component, name).map(|f| f.source.clone());
        let (verdict, message) = match state {
            State::Present => continue,
            State::Deprecated { since } => match allowance(component, minor, name) {
                Some(a) => (
                    Verdict::DeprecatedAllowed {
                        reason: a.reason.clone(),
                    },
                    format!("Flag --{name} has been deprecated (since 1.{since}); kscratch renders it because {}", a.reason),
                ),
                None => (
                    Verdict::Deprecated,
                    format!("Flag --{name} has been deprecated (since 1.{since})"),
                ),
            },
            State::Unknown | State::NotYet { .. } | State::Removed { .. } => {
                (Verdict::Refused, unknown_flag_message(component, minor, name))
            }
        };
        out.push(FlagFinding {
            component: component.into(),
            flag: name.into(),
            state,
            verdict,
            message,
            source,
        });
    }
    out
}

/// What the binary prints before it exits on a flag it does not define.
pub fn unknown_flag_message(component: &str, minor: u16, name: &str) -> String {
    if component == "kubelet" && minor >= 10 {
        format!("failed to parse kubelet flag: unknown flag: --{name}")
    } else {
        format!("unknown flag: --{name}")
    }
}

/// The image row of `1.minor`, clamped to the covered range.
pub fn release_images(minor: u16) -> &'static ReleaseImages {
    let t = &tables().images;
    let i = minor.clamp(FIRST_MINOR, LAST_MINOR) - FIRST_MINOR;
    &t[usize::from(i)]
}

/// The registry kscratch pulls a release's images from by default.
///
/// registry.k8s.io serves every release from 1.19 (it took over k8s.gcr.io,
/// which was frozen on 2023-04-03, so later patch releases are only there).
/// Up to 1.18 the images were published to gcr.io/google-containers, the
/// guide's registry, which is kept for those releases.
pub fn default_registry(v: KubeVersion) -> &'static str {
    if v.minor >= 19 {
        "registry.k8s.io"
    } else {
        "gcr.io/google-containers"
    }
}

/// Whether the image `image` was published for Kubernetes `v`, as far as the
/// tables know. Images on registries the tables do not describe (a mirror, a
/// private registry) are assumed present: only the registry can say.
///
/// Known refusals: anything on k8s.gcr.io newer than its freeze; release
/// images (control plane, hyperkube) on gcr.io/google-containers after 1.18;
/// hyperkube from 1.19, where it stopped being published.
pub fn image_exists(v: KubeVersion, image: &str) -> bool {
    let (registry, name) = match image.rsplit_once('/') {
        Some((r, n)) => (r, n),
        None => return true,
    };
    let repo = name.split(':').next().unwrap_or(name);
    let known = matches!(
        registry,
        "registry.k8s.io" | "k8s.gcr.io" | "gcr.io/google-containers" | "gcr.io/google_containers"
    );
    if !known && !registry.ends_with("/coredns") {
        return true;
    }
    let row = release_images(v.minor);
    if repo == "hyperkube" || repo == "hyperkube-amd64" {
        return row.hyperkube != HyperkubeForm::None;
    }
    match registry.trim_end_matches("/coredns") {
        "k8s.gcr.io" => match row.gcr {
            GcrPatches::All => true,
            GcrPatches::UpTo(p) => !is_release_image(repo) || v.patch <= p,
            GcrPatches::None => false,
        },
        "gcr.io/google-containers" | "gcr.io/google_containers" => {
            !is_release_image(repo) || v.minor <= 18
        }
        _ => true,
    }
}

/// Images tagged with the Kubernetes version itself (`kube-apiserver:v1.24.17`).
fn is_release_image(repo: &str) -> bool {
    matches!(
        repo,
        "kube-apiserver"
            | "kube-controller-manager"
            | "kube-scheduler"
            | "kube-proxy"
            | "hyperkube"
            | "hyperkube-amd64"
    ) || repo.starts_with("etcd")
}

/// The host requirements of `1.minor`'s kubelet.
pub fn host_requirements(minor: u16) -> Vec<&'static HostRequirement> {
    tables()
        .host
        .iter()
        .filter(|h| minor >= h.since && h.until.is_none_or(|u| minor < u))
        .collect()
}

/// The apiserver rule that stops a cluster without a service-account key: the
/// ServiceAccount admission plugin (named in `--admission-control` or
/// `--enable-admission-plugins`, or on by default from 1.10) rejects every pod
/// that is not static until the token controller has minted its token, and
/// the token controller runs only with a signing key
/// (`--service-account-private-key-file`). Returns the apiserver's error for a
/// pod when the rule bites, `None` when pods are admitted.
///
/// `apiserver_argv` and `controller_manager_argv` are the two commands as
/// rendered; `minor` is the release.
pub fn service_account_admission_problem(
    minor: u16,
    apiserver_argv: &[String],
    controller_manager_argv: &[String],
) -> Option<String> {
    let value = |argv: &[String], name: &str| -> Option<String> {
        argv.iter().find_map(|a| {
            let rest = a.strip_prefix("--")?;
            let (n, v) = rest.split_once('=')?;
            (n == name).then(|| v.to_string())
        })
    };
    let listed = |name: &str| {
        value(apiserver_argv, name)
            .is_some_and(|v| v.split(',').any(|p| p.trim() == "ServiceAccount"))
    };
    let disabled = value(apiserver_argv, "disable-admission-plugins")
        .is_some_and(|v| v.split(',').any(|p| p.trim() == "ServiceAccount"));
    // From 1.10 the recommended plugins, ServiceAccount among them, are on by default.
    let on = listed("admission-control")
        || listed("enable-admission-plugins")
        || (minor >= 10 && !disabled);
    if !on {
        return None;
    }
    if value(controller_manager_argv, "service-account-private-key-file").is_some() {
        return None;
    }
    Some(
        "pods are forbidden: No API token found for service account \"default\" \
         (ServiceAccount admission, and no --service-account-private-key-file for the \
         token controller), retry after the token is automatically created and added \
         to the service account"
            .into(),
    )
}

/// The size of the flag table: (minors, components, distinct flags).
pub fn flag_table_size() -> (usize, usize, usize) {
    let t = tables();
    let comps: std::collections::BTreeSet<&str> = t.flags.keys().map(|(c, _)| c.as_str()).collect();
    (
        usize::from(LAST_MINOR - FIRST_MINOR + 1),
        comps.len(),
        t.flags.len(),
    )
}

/// The number of (minor, component, flag) triples where the flag is accepted.
pub fn flag_table_cells() -> usize {
    let t = tables();
    (FIRST_MINOR..=LAST_MINOR)
        .map(|m| {
            t.flags
                .values()
                .filter(|f| state_of(Some(f), m).accepted())
                .count()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_parses() {
        parse_all().unwrap();
        assert_eq!(release_images(6).minor, 6);
        assert_eq!(release_images(35).minor, 35);
    }

    #[test]
    fn every_flag_belongs_to_a_known_component() {
        for (c, _) in tables().flags.keys() {
            assert!(COMPONENTS.contains(&c.as_str()), "{c}");
        }
        for a in allowances_all() {
            let f = flag_fact(&a.component, &a.name).unwrap_or_else(|| {
                panic!(
                    "allowed.tsv names {} {}, which flags.tsv lacks",
                    a.component, a.name
                )
            });
            assert!(
                f.deprecated.is_some_and(|d| d <= a.from),
                "{} {} is allowed from 1.{} but not deprecated then",
                a.component,
                a.name,
                a.from
            );
            assert!(
                f.removed.is_none_or(|r| a.to < r),
                "{} is allowed after its removal",
                a.name
            );
        }
    }

    #[test]
    fn removed_flags_are_refused_with_the_binarys_words() {
        let argv = vec![
            "kube-apiserver".to_string(),
            "--insecure-port=0".into(),
            "--secure-port=6443".into(),
        ];
        assert!(check_flags("kube-apiserver", 23, &argv)
            .iter()
            .all(|f| f.verdict != Verdict::Refused));
        let f = check_flags("kube-apiserver", 24, &argv);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].verdict, Verdict::Refused);
        assert_eq!(f[0].message, "unknown flag: --insecure-port");
        assert!(f[0]
            .source
            .as_deref()
            .unwrap()
            .contains("kubernetes#106859"));
        // A flag no release defines.
        let f = check_flags("kube-proxy", 30, &["--no-such-flag=1".to_string()]);
        assert_eq!(f[0].state, State::Unknown);
        // Not yet there.
        let f = check_flags(
            "kube-apiserver",
            9,
            &["--enable-admission-plugins=X".into()],
        );
        assert_eq!(f[0].state, State::NotYet { since: 10 });
        let f = check_flags("kubelet", 27, &["--container-runtime=remote".into()]);
        assert_eq!(
            f[0].message,
            "failed to parse kubelet flag: unknown flag: --container-runtime"
        );
    }

    #[test]
    fn deprecated_flags_warn_and_allowances_carry_their_reason() {
        let f = check_flags("kubelet", 25, &["--container-runtime=remote".to_string()]);
        assert_eq!(f[0].verdict, Verdict::Deprecated);
        assert_eq!(f[0].state, State::Deprecated { since: 24 });
        let f = check_flags("kube-apiserver", 15, &["--insecure-port=0".to_string()]);
        assert!(matches!(f[0].verdict, Verdict::DeprecatedAllowed { .. }));
        assert!(check_flags("kubelet", 22, &["--register-node=true".into()]).is_empty());
        assert_eq!(
            check_flags("kubelet", 23, &["--register-node=true".into()])[0].verdict,
            Verdict::Deprecated
        );
    }

    #[test]
    fn images_follow_the_registry_history() {
        let v = |s| KubeVersion::parse(s).unwrap();
        assert!(image_exists(
            v("1.24.12"),
            "k8s.gcr.io/kube-apiserver:v1.24.12"
        ));
        assert!(!image_exists(
            v("1.24.17"),
            "k8s.gcr.io/kube-apiserver:v1.24.17"
        ));
        assert!(image_exists(
            v("1.24.17"),
            "registry.k8s.io/kube-apiserver:v1.24.17"
        ));
        assert!(!image_exists(v("1.27.1"), "k8s.gcr.io/kube-proxy:v1.27.1"));
        assert!(image_exists(
            v("1.18.2"),
            "gcr.io/google-containers/hyperkube:v1.18.2"
        ));
        assert!(!image_exists(
            v("1.19.0"),
            "registry.k8s.io/hyperkube:v1.19.0"
        ));
        assert!(!image_exists(
            v("1.20.0"),
            "gcr.io/google-containers/kube-apiserver:v1.20.0"
        ));
        assert!(image_exists(
            v("1.30.0"),
            "localhost:5000/kube-apiserver:v1.30.0"
        ));
        assert_eq!(default_registry(v("1.24.17")), "registry.k8s.io");
        assert_eq!(default_registry(v("1.18.0")), "gcr.io/google-containers");
    }

    #[test]
    fn images_are_the_ones_kubeadm_tested() {
        assert_eq!(release_images(18).etcd, "3.4.3-0");
        assert_eq!(release_images(34).etcd, "3.6.4-0");
        assert_eq!(release_images(34).dns_tag, "v1.12.1");
        assert_eq!(release_images(10).dns, DnsAddon::KubeDns);
        assert_eq!(release_images(11).dns, DnsAddon::Coredns);
        assert_eq!(release_images(14).hyperkube, HyperkubeForm::Short);
        assert_eq!(release_images(15).hyperkube, HyperkubeForm::KubeNames);
        assert_eq!(release_images(19).hyperkube, HyperkubeForm::None);
    }

    #[test]
    fn service_account_admission_needs_a_signing_key() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let api = s(&["--admission-control=NamespaceLifecycle,ServiceAccount"]);
        assert!(service_account_admission_problem(6, &api, &s(&["--master=x"])).is_some());
        assert!(service_account_admission_problem(
            6,
            &api,
            &s(&["--service-account-private-key-file=/srv/kubernetes/sa.key"])
        )
        .is_none());
        // Not listed before 1.10: not on.
        assert!(
            service_account_admission_problem(6, &s(&["--admission-control=X"]), &[]).is_none()
        );
        // On by default from 1.10.
        assert!(service_account_admission_problem(10, &[], &[]).is_some());
    }

    #[test]
    fn the_table_has_a_size() {
        let (m, c, f) = flag_table_size();
        assert_eq!((m, c), (30, 5));
        assert!(f > 80);
        assert!(flag_table_cells() > m * 60);
    }
}

#[cfg(test)]
mod agreement {
    //! `scenario::version::Features` decides rendering; where a feature is
    //! "this flag exists", it must agree with the upstream table.
    use super::*;

    #[test]
    fn features_agree_with_the_flag_table() {
        for m in FIRST_MINOR..=LAST_MINOR {
            let fx = KubeVersion::new(1, m, 0).features();
            let api = |f| has_flag("kube-apiserver", m, f);
            let kubelet = |f| has_flag("kubelet", m, f);
            assert_eq!(
                fx.basic_auth,
                api("basic-auth-file"),
                "1.{m} basic-auth-file"
            );
            assert_eq!(
                fx.insecure_flags,
                api("insecure-port"),
                "1.{m} insecure-port"
            );
            assert_eq!(
                fx.enable_admission_plugins,
                api("enable-admission-plugins"),
                "1.{m} enable-admission-plugins"
            );
            assert_eq!(
                fx.kubelet_allow_privileged_flag,
                kubelet("allow-privileged"),
                "1.{m} kubelet allow-privileged"
            );
            assert_eq!(
                fx.kubelet_container_runtime_flag,
                kubelet("container-runtime"),
                "1.{m} container-runtime"
            );
            assert_eq!(
                fx.kubelet_network_plugin_flag,
                kubelet("network-plugin"),
                "1.{m} network-plugin"
            );
            // Rendered only while needed (before 1.8), accepted until 1.10.
            assert!(!fx.kubelet_require_kubeconfig || kubelet("require-kubeconfig"));
            assert_eq!(
                fx.controller_manager_secure_health,
                !has_flag("kube-controller-manager", m, "address") || release_images(m).minor >= 22,
                "1.{m} controller-manager health"
            );
            assert_eq!(
                fx.hyperkube,
                release_images(m).hyperkube != HyperkubeForm::None
            );
            assert_eq!(fx.coredns, release_images(m).dns == DnsAddon::Coredns);
        }
    }
}
