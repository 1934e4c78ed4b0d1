//! Scenarios: YAML in, a validated and allocated [`Scenario`] out.
//!
//! Parsing goes in two stages, as STYLE.md asks: serde reads the YAML into the
//! raw spec (`raw`), then `validate` resolves it into the model, collecting
//! every problem with its YAML path and position before anything is planned.

pub mod fault;
pub mod generate;
pub mod model;
pub mod raw;
mod validate;
pub mod version;

pub use fault::Fault;
pub use model::*;
pub use version::{Features, KubeVersion};

use crate::diag::{did_you_mean, Diagnostics, Reporter, SourceMap};
use crate::ipam::{IpamLock, LockChange};

/// A scenario that validated, with what validation wants the user to know.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub scenario: Scenario,
    pub warnings: Diagnostics,
    /// The IPAM lock after this load: write it back when `lock_changes` is not empty.
    pub lock: IpamLock,
    pub lock_changes: Vec<LockChange>,
}

/// Parses and validates scenario `text` (named `file` in messages) against the
/// IPAM `lock` kept next to it, if any.
pub fn load(file: &str, text: &str, lock: Option<&IpamLock>) -> Result<Loaded, Diagnostics> {
    let map = SourceMap::build(text);
    let mut rep = Reporter::new(file, &map);
    let raw = parse_raw(text, &mut rep);
    match raw {
        Some(raw) if !rep.has_errors() => validate::validate(&raw, lock, rep),
        _ => Err(rep.finish()),
    }
}

/// How many unknown keys one load reports before giving up on the document.
const MAX_STRUCTURAL_ERRORS: usize = 64;

/// Reads the raw spec. Unknown keys are all reported (each is removed and the
/// document read again); the first error of another kind stops the read.
fn parse_raw(text: &str, rep: &mut Reporter<'_>) -> Option<raw::RawScenario> {
    let mut value: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(serde_yaml::Value::Null) => {
            rep.error(
                "",
                "the scenario is empty",
                Some("start from scenarios/quickstart.yaml".into()),
            );
            return None;
        }
        Ok(v) => v,
        Err(e) => {
            let (line, column) = e
                .location()
                .map(|l| (Some(l.line()), Some(l.column())))
                .unwrap_or((None, None));
            let message = strip_location(&e.to_string());
            rep.diags.push(crate::Diagnostic {
                severity: crate::diag::Severity::Error,
                file: rep.file.to_string(),
                path: String::new(),
                line,
                column,
                message: format!("not valid YAML: {message}"),
                hint: None,
            });
            return None;
        }
    };
    for _ in 0..MAX_STRUCTURAL_ERRORS {
        match serde_path_to_error::deserialize::<_, raw::RawScenario>(value.clone()) {
            Ok(r) => return Some(r),
            Err(e) => {
                let path = clean_path(&e.path().to_string());
                let inner = e.into_inner().to_string();
                if let Some((field, expected)) = unknown_field(&inner) {
                    // The path may already end in the unknown key.
                    let path = match path.strip_suffix(&field) {
                        Some(p) => p.trim_end_matches('.').to_string(),
                        None => path,
                    };
                    let full = join(&path, &field);
                    let hint = did_you_mean(&field, expected.iter().map(|s| s.as_str()))
                        .map(|m| format!("did you mean `{m}`?"))
                        .or_else(|| Some(format!("known keys here: {}", expected.join(", "))));
                    rep.key_error(full, format!("unknown key `{field}`"), hint);
                    if !remove_key(&mut value, &path, &field) {
                        return None;
                    }
                    continue;
                }
                let (message, hint) = explain(&inner);
                rep.error(path, message, hint);
                return None;
            }
        }
    }
    None
}

/// serde_path_to_error writes `.` for the document root and `?` for unknown positions.
fn clean_path(p: &str) -> String {
    if p == "." {
        String::new()
    } else {
        p.to_string()
    }
}

fn join(p: &str, k: &str) -> String {
    if p.is_empty() {
        k.to_string()
    } else {
        format!("{p}.{k}")
    }
}

fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Picks `field` and the expected names out of serde's "unknown field `x`, expected one of `a`, `b`".
fn unknown_field(msg: &str) -> Option<(String, Vec<String>)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    let field = rest[..end].to_string();
    let expected = rest[end + 1..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.to_string())
        .collect();
    Some((field, expected))
}

/// Turns serde's wording into a message and a hint a user can act on.
fn explain(msg: &str) -> (String, Option<String>) {
    let msg = strip_location(msg);
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        if let Some(end) = rest.find('`') {
            let word = &rest[..end];
            let expected: Vec<&str> = rest[end + 1..].split('`').skip(1).step_by(2).collect();
            let hint = did_you_mean(word, expected.iter().copied())
                .map(|m| format!("did you mean `{m}`?"))
                .unwrap_or_else(|| format!("one of: {}", expected.join(", ")));
            return (format!("`{word}` is not a known value"), Some(hint));
        }
    }
    if let Some(field) = msg.strip_prefix("missing field `") {
        let field = field.trim_end_matches('`');
        return (format!("the required key `{field}` is missing"), None);
    }
    (msg, None)
}

fn remove_key(value: &mut serde_yaml::Value, path: &str, field: &str) -> bool {
    let Some(target) = walk(value, path) else {
        return false;
    };
    match target.as_mapping_mut() {
        Some(m) => m.remove(field).is_some(),
        None => false,
    }
}

/// Follows a `a.b[2].c` path into a YAML value.
fn walk<'v>(mut v: &'v mut serde_yaml::Value, path: &str) -> Option<&'v mut serde_yaml::Value> {
    if path.is_empty() {
        return Some(v);
    }
    for seg in path.split('.') {
        let (key, idx) = match seg.find('[') {
            Some(i) => (&seg[..i], Some(&seg[i..])),
            None => (seg, None),
        };
        if !key.is_empty() {
            v = v.as_mapping_mut()?.get_mut(key)?;
        }
        if let Some(mut idx) = idx {
            while let Some(rest) = idx.strip_prefix('[') {
                let end = rest.find(']')?;
                let n: usize = rest[..end].parse().ok()?;
                v = v.as_sequence_mut()?.get_mut(n)?;
                idx = &rest[end + 1..];
            }
        }
    }
    Some(v)
}
