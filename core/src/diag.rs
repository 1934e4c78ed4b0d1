//! Diagnostics: what is wrong with a scenario, where, and what to do about it.
//!
//! Every problem names the file, the YAML path (`nodes[2].ip`), the line and
//! column when the YAML has that node, a message and, where one helps, a hint.
//! Validation collects all of them before anything is planned.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// How bad a diagnostic is: errors stop planning, warnings are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    /// YAML path such as `network.clusterCIDR` or `nodes[2].ip`; empty for the document.
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}", self.file)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
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

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let n = self.errors().count();
        if n > 0 {
            writeln!(f, "{n} error{}", if n == 1 { "" } else { "s" })?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Line and column (both 1-based) of a YAML node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Indexes every node of `text`. Text that does not parse gives an empty
    /// map: serde_yaml reports the syntax error with its own location.
    pub fn build(text: &str) -> SourceMap {
        use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
        use yaml_rust2::scanner::Marker;

        enum Frame {
            Map { key: Option<String> },
            Seq { index: usize },
        }
        struct Recv {
            map: SourceMap,
            stack: Vec<(String, Frame)>,
        }
        impl Recv {
            /// The path of the node that starts now, or None when the event is a mapping key.
            fn slot(&mut self) -> Option<String> {
                match self.stack.last_mut() {
                    None => Some(String::new()),
                    Some((p, Frame::Seq { index })) => {
                        let s = format!("{p}[{index}]");
                        *index += 1;
                        Some(s)
                    }
                    Some((p, Frame::Map { key })) => key.take().map(|k| join(p, &k)),
                }
            }
        }
        fn join(p: &str, k: &str) -> String {
            if p.is_empty() {
                k.to_string()
            } else {
                format!("{p}.{k}")
            }
        }
        impl MarkedEventReceiver for Recv {
            fn on_event(&mut self, ev: Event, mark: Marker) {
                let pos = Pos {
                    line: mark.line(),
                    column: mark.col() + 1,
                };
                match ev {
                    Event::Scalar(v, ..) => match self.slot() {
                        Some(path) => {
                            self.map.values.insert(path, pos);
                        }
                        None => {
                            if let Some((p, Frame::Map { key })) = self.stack.last_mut() {
                                self.map.keys.insert(join(p, &v), pos);
                                *key = Some(v);
                            }
                        }
                    },
                    Event::MappingStart(..) | Event::SequenceStart(..) => {
                        // A complex mapping key has no path; index it as "?".
                        let path = self.slot().unwrap_or_else(|| "?".into());
                        self.map.values.insert(path.clone(), pos);
                        let frame = if matches!(ev, Event::MappingStart(..)) {
                            Frame::Map { key: None }
                        } else {
                            Frame::Seq { index: 0 }
                        };
                        self.stack.push((path, frame));
                    }
                    Event::MappingEnd | Event::SequenceEnd => {
                        self.stack.pop();
                    }
                    Event::Alias(_) => {
                        if let Some(path) = self.slot() {
                            self.map.values.insert(path, pos);
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut recv = Recv {
            map: SourceMap::default(),
            stack: Vec::new(),
        };
        let mut parser = Parser::new_from_str(text);
        // Errors are ignored on purpose: see the doc comment.
        let _ = parser.load(&mut recv, false);
        recv.map
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
}

fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// Collects diagnostics for one file, attaching positions from its source map.
pub struct Reporter<'a> {
    pub file: &'a str,
    pub map: &'a SourceMap,
    pub diags: Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    pub fn new(file: &'a str, map: &'a SourceMap) -> Self {
        Reporter {
            file,
            map,
            diags: Vec::new(),
        }
    }

    pub fn error(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push(Severity::Error, path.into(), message.into(), hint, false);
    }

    pub fn warn(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push(Severity::Warning, path.into(), message.into(), hint, false);
    }

    /// An error about a key itself (unknown key): points at the key, not the value.
    pub fn key_error(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push(Severity::Error, path.into(), message.into(), hint, true);
    }

    fn push(
        &mut self,
        severity: Severity,
        path: String,
        message: String,
        hint: Option<String>,
        key: bool,
    ) {
        let pos = if key {
            self.map.key(&path)
        } else {
            self.map.value(&path)
        };
        self.diags.push(Diagnostic {
            severity,
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
            .sort_by_key(|d| (d.line.is_none(), d.line, d.column));
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
        let m = SourceMap::build(text);
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
