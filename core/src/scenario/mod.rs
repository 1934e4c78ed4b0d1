//! Scenarios: YAML in, a validated and allocated [`Scenario`] out.
//!
//! Loading goes in stages, as STYLE.md asks: the YAML is read leniently into a
//! positioned tree (`tree`), decoded field by field into the raw spec (`raw`),
//! then `validate` resolves it into the model. Every stage collects every
//! problem it can, with its YAML path and position, before anything is planned.

pub mod fault;
pub mod generate;
pub mod model;
pub mod raw;
pub mod tree;
mod validate;
pub mod version;

pub use fault::Fault;
pub use model::*;
pub use version::{Features, KubeVersion};

use crate::diag::{Code, Diagnostic, Diagnostics, Reporter, Severity, SourceMap};
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
///
/// Three stages, each reporting everything it finds: the text becomes a
/// positioned tree (`tree`, within [`tree::Limits`]), the tree becomes the raw
/// spec field by field (`raw`), the raw spec becomes the model (`validate`).
pub fn load(file: &str, text: &str, lock: Option<&IpamLock>) -> Result<Loaded, Diagnostics> {
    // A UTF-8 byte order mark is invisible in editors; YAML allows it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let root = match tree::read(text, tree::Limits::default()) {
        Ok(Some(root)) => root,
        Ok(None) => {
            return Err(Diagnostics(vec![Diagnostic {
                severity: Severity::Error,
                code: Code::Empty,
                file: file.to_string(),
                path: String::new(),
                line: Some(1),
                column: Some(1),
                message: "the scenario is empty".into(),
                hint: "start from scenarios/quickstart.yaml".into(),
            }]))
        }
        Err(e) => {
            return Err(Diagnostics(vec![Diagnostic {
                severity: Severity::Error,
                code: e.code,
                file: file.to_string(),
                path: String::new(),
                line: Some(e.pos.map_or(1, |p| p.line)),
                column: Some(e.pos.map_or(1, |p| p.column)),
                message: e.message,
                hint: e.hint,
            }]))
        }
    };
    let map = SourceMap::from_tree(&root);
    let mut rep = Reporter::new(file, &map);
    let raw = raw::decode(&root, &mut rep);
    validate::validate(&raw, lock, rep)
}
