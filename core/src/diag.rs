//! Diagnostics: what is wrong with a scenario, where, and what to do about it.
//!
//! Every problem names the file, the YAML path (`nodes[2].ip`), the line and
//! column when the YAML has that node, a message and, where one helps, a hint.
//! Validation collects all of them before anything is planned.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// How bad a diagnostic is: errors stop planning, warnings are printed, notes
/// say what was not checked and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Note,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        }
    }
}

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $title:literal;)*) => {
        /// A stable code for every kind of diagnostic, so pipelines can match
        /// and allowlist them. Codes are never reused; `docs/codes.md` lists them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code {
            $($(#[$doc])* $name,)*
        }

        impl Code {
            /// Every code, in the order of `docs/codes.md`.
            pub const ALL: &'static [Code] = &[$(Code::$name,)*];

            /// `KS1001` and so on.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$name => $code,)*
                }
            }

            /// What the code means, in a few words.
            pub fn title(self) -> &'static str {
                match self {
                    $(Code::$name => $title,)*
                }
            }
        }
    };
}

codes! {
    // KS10xx: the text itself.
    Syntax = "KS1001", "the file is not valid YAML";
    Tab = "KS1002", "a tab in the indentation";
    TooLarge = "KS1003", "the file is larger than a scenario may be";
    TooDeep = "KS1004", "the document nests deeper than a scenario may";
    TooManyNodes = "KS1005", "aliases expand to more values than a scenario may have";
    Empty = "KS1006", "the file holds no scenario";
    DuplicateKey = "KS1007", "a key is given twice in one mapping";
    // KS11xx: the shape of the scenario.
    UnknownKey = "KS1101", "a key the scenario schema does not have";
    WrongType = "KS1102", "a value of the wrong kind (text, number, list...)";
    UnknownValue = "KS1103", "a value that is not one of the allowed words";
    MissingKey = "KS1104", "a required key is missing";
    OutOfRange = "KS1105", "a number outside its allowed range";
    VersionAsNumber = "KS1106", "an unquoted version read as a number";
    // KS20xx: what the values mean together.
    Version = "KS2001", "an invalid or unsupported Kubernetes version";
    Name = "KS2002", "an invalid cluster, node or DNS name";
    Duplicate = "KS2003", "a node name, node IP or etcd member given twice";
    Address = "KS2004", "not an IPv4 address or CIDR";
    HostBits = "KS2005", "a CIDR with host bits set";
    Overlap = "KS2006", "pod, Service and node ranges overlap";
    OutsideRange = "KS2007", "an address outside (or inside) the range it must be in (or out of)";
    Capacity = "KS2008", "a range too small for the nodes or pods it must hold";
    ServiceRange = "KS2009", "a Service range or a Service address the apiserver rejects";
    Mtu = "KS2010", "an MTU out of range or larger than the underlay carries";
    Vxlan = "KS2011", "invalid VXLAN settings";
    Interface = "KS2012", "an invalid Linux interface name";
    ControlPlane = "KS2013", "no control-plane node, or a master IP that is not one";
    Removed = "KS2014", "an option the scenario's Kubernetes version no longer has";
    Conflict = "KS2015", "an option that belongs to another mode or runtime";
    Etcd = "KS2016", "an etcd membership problem";
    Path = "KS2017", "a path that must be absolute";
    CloudProvider = "KS2018", "an unknown or removed cloud provider";
    Fault = "KS2019", "a what-if fault that cannot be applied";
    PodCidr = "KS2020", "a pinned or locked pod CIDR that cannot be used";
    Roles = "KS2021", "a node without roles";
    Port = "KS2022", "an invalid port";
    San = "KS2023", "an extra SAN that is neither an IP address nor a DNS name";
    Advice = "KS2024", "a setting that works but is risky (warning)";
    Gateway = "KS2025", "an underlay gateway that is missing or not on the underlay";
    Endpoint = "KS2026", "a control-plane endpoint that cannot reach the apiserver";
    // KS29xx: what validation did not do.
    NotChecked = "KS2901", "a check that was skipped because a field it needs is invalid (note)";
    // KS30xx: the IPAM lock.
    LockInvalid = "KS3001", "the IPAM lock file is not valid";
    LockWouldChange = "KS3002", "the IPAM lock would change under --locked";
    NoLock = "KS3003", "no IPAM lock yet: allocations follow scenario order (warning)";
    LockStale = "KS3004", "the IPAM lock is out of date; a read-only command did not update it (warning)";
    // KS40xx: `kscratch check` failures, one per check (the JUnit failure type).
    CheckPodToPod = "KS4001", "check failed: pod-to-pod without NAT";
    CheckNodeToPod = "KS4002", "check failed: node to its own pods";
    CheckServices = "KS4003", "check failed: Service VIPs reach their endpoints";
    CheckEgress = "KS4004", "check failed: egress masqueraded to the node IP";
    CheckApiserver = "KS4005", "check failed: nodes reach the apiserver; control plane healthy";
    CheckMtu = "KS4006", "check failed: pod-MTU packets cross between nodes";
    ApplyStepFailed = "KS4007", "a plan step failed on the simulator";
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Code,
    pub file: String,
    /// YAML path such as `network.clusterCIDR` or `nodes[2].ip`; empty for the document.
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    /// What to do about it, in the user's words. Every diagnostic has one.
    pub hint: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}[{}]: {}",
            self.severity.as_str(),
            self.code,
            self.file
        )?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)?;
        write!(f, "\n  hint: {}", self.hint)
    }
}

/// All the problems found in one scenario, in the order of the document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Warning)
    }
}

/// `1 error`, `2 errors`: a count with its noun in the right number.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let n = self.errors().count();
        if n > 0 {
            let notes = self
                .0
                .iter()
                .filter(|d| d.severity == Severity::Note)
                .count();
            if notes > 0 {
                writeln!(
                    f,
                    "{}; {} until the fields {} need are valid",
                    plural(n, "error", "errors"),
                    plural(notes, "check skipped", "checks skipped"),
                    if notes == 1 { "it" } else { "they" }
                )?;
            } else {
                writeln!(f, "{}", plural(n, "error", "errors"))?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Line and column (both 1-based) of a YAML node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// Where each YAML path sits in the source text: the key and the value.
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    values: BTreeMap<String, Pos>,
    keys: BTreeMap<String, Pos>,
}

impl SourceMap {
    /// Indexes every node of a document tree by its YAML path.
    pub fn from_tree(root: &crate::scenario::tree::Node) -> SourceMap {
        use crate::scenario::tree::Kind;
        fn walk(m: &mut SourceMap, path: String, n: &crate::scenario::tree::Node) {
            match &n.kind {
                Kind::Scalar { .. } => {}
                Kind::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        walk(m, format!("{path}[{i}]"), item);
                    }
                }
                Kind::Map(entries) => {
                    for e in entries {
                        let p = join(&path, &e.key);
                        m.keys.entry(p.clone()).or_insert(e.key_pos);
                        walk(m, p, &e.value);
                    }
                }
            }
            m.values.entry(path).or_insert(n.pos);
        }
        let mut m = SourceMap::default();
        walk(&mut m, String::new(), root);
        m
    }

    /// Position of the value at `path`, falling back to the nearest ancestor.
    pub fn value(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p) {
                return Some(*pos);
            }
            p = parent(p)?;
        }
    }

    /// Position of the key that ends `path` (for unknown-key errors).
    pub fn key(&self, path: &str) -> Option<Pos> {
        self.keys.get(path).copied().or_else(|| self.value(path))
    }

    /// Whether the document gives `path` itself (not a default).
    pub fn has(&self, path: &str) -> bool {
        self.values.contains_key(path)
    }
}

fn join(p: &str, k: &str) -> String {
    if p.is_empty() {
        k.to_string()
    } else {
        format!("{p}.{k}")
    }
}

fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// Collects diagnostics for one file, attaching positions from its source map,
/// and remembers which fields were invalid so that checks depending on them
/// can be skipped (and say so) instead of reporting follow-on errors.
pub struct Reporter<'a> {
    pub file: &'a str,
    pub map: &'a SourceMap,
    pub diags: Vec<Diagnostic>,
    invalid: BTreeSet<String>,
}

impl<'a> Reporter<'a> {
    pub fn new(file: &'a str, map: &'a SourceMap) -> Self {
        Reporter {
            file,
            map,
            diags: Vec::new(),
            invalid: BTreeSet::new(),
        }
    }

    pub fn error(
        &mut self,
        code: Code,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(
            Severity::Error,
            code,
            path.into(),
            message.into(),
            hint.into(),
            false,
        );
    }

    pub fn warn(
        &mut self,
        code: Code,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(
            Severity::Warning,
            code,
            path.into(),
            message.into(),
            hint.into(),
            false,
        );
    }

    /// An error about a key itself (unknown key): points at the key, not the value.
    pub fn key_error(
        &mut self,
        code: Code,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(
            Severity::Error,
            code,
            path.into(),
            message.into(),
            hint.into(),
            true,
        );
    }

    /// An error about `path` whose value cannot be used: checks that need it are skipped.
    pub fn invalid(
        &mut self,
        code: Code,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let path = path.into();
        self.invalid.insert(path.clone());
        self.push(
            Severity::Error,
            code,
            path,
            message.into(),
            hint.into(),
            false,
        );
    }

    /// Marks `path` as unusable without a message of its own.
    pub fn mark_invalid(&mut self, path: impl Into<String>) {
        self.invalid.insert(path.into());
    }

    /// Whether `path`, or a field it lies under, was invalid.
    pub fn is_invalid(&self, path: &str) -> bool {
        let mut p = path;
        loop {
            if self.invalid.contains(p) {
                return true;
            }
            match parent(p) {
                Some(q) => p = q,
                None => return false,
            }
        }
    }

    /// The first of `paths` that is invalid, if any.
    pub fn first_invalid<'p>(&self, paths: &[&'p str]) -> Option<&'p str> {
        paths.iter().copied().find(|p| self.is_invalid(p))
    }

    /// Says that `what` was not checked because `because` is invalid; the note
    /// sits at `at`, the field the skipped check is about.
    pub fn not_checked(&mut self, at: &str, what: &str, because: &str) {
        self.push(
            Severity::Note,
            Code::NotChecked,
            at.to_string(),
            format!("{what} not checked: {because} is invalid"),
            format!("fix {because} and validate again"),
            false,
        );
    }

    fn push(
        &mut self,
        severity: Severity,
        code: Code,
        path: String,
        message: String,
        hint: String,
        key: bool,
    ) {
        let pos = if key {
            self.map.key(&path)
        } else {
            self.map.value(&path)
        };
        self.diags.push(Diagnostic {
            severity,
            code,
            file: self.file.to_string(),
            path,
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            message,
            hint,
        });
    }

    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(|d| d.severity == Severity::Error)
    }

    /// The diagnostics in document order; those without a position last.
    pub fn finish(mut self) -> Diagnostics {
        self.diags
            .sort_by_key(|d| (d.line.is_none(), d.line, d.column, d.severity));
        Diagnostics(self.diags)
    }
}

/// The closest candidate to `word`, if any is close enough to be a likely typo.
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_map_finds_nested_paths() {
        let text = "cluster:\n  name: x\nnodes:\n  - name: a\n    ip: 1.2.3.4\n  - name: b\n";
        let tree = crate::scenario::tree::read(text, Default::default())
            .unwrap()
            .unwrap();
        let m = SourceMap::from_tree(&tree);
        assert_eq!(m.value("cluster.name"), Some(Pos { line: 2, column: 9 }));
        assert_eq!(m.value("nodes[0].ip"), Some(Pos { line: 5, column: 9 }));
        assert_eq!(m.key("nodes[0].ip"), Some(Pos { line: 5, column: 5 }));
        assert_eq!(
            m.value("nodes[1].name"),
            Some(Pos {
                line: 6,
                column: 11
            })
        );
        // Unknown paths fall back to the closest ancestor.
        assert_eq!(m.value("nodes[1].ssh.port"), m.value("nodes[1]"));
    }

    #[test]
    fn did_you_mean_suggests_close_names_only() {
        assert_eq!(
            did_you_mean("clusterCidr", ["clusterCIDR", "serviceCIDR"]),
            Some("clusterCIDR")
        );
        assert_eq!(did_you_mean("zzz", ["clusterCIDR", "serviceCIDR"]), None);
    }
}
