//! Machine-readable outputs of the CLI: JSON documents with a `schemaVersion`
//! (schemas in `docs/schema/`), SARIF 2.1.0 for `validate`. Pure functions
//! from results to text; printing is the caller's.

use kscratch_core::diag::{Code, Diagnostic, Diagnostics, Severity};
use serde::Serialize;

/// The version of every JSON document kscratch prints. It changes only when
/// a field is removed or changes meaning; new fields may appear without it.
pub const SCHEMA_VERSION: u32 = 1;

/// `{"schemaVersion": 1, "kind": KIND, ...body's fields}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a, T: Serialize> {
    schema_version: u32,
    kind: &'a str,
    #[serde(flatten)]
    body: &'a T,
}

/// A JSON document of `kind` whose fields are `body`'s, pretty, with a final newline.
pub fn json<T: Serialize>(kind: &str, body: &T) -> String {
    let mut s = serde_json::to_string_pretty(&Envelope {
        schema_version: SCHEMA_VERSION,
        kind,
        body,
    })
    .expect("outputs serialize");
    s.push('\n');
    s
}

/// What `plan --format json` prints: the fingerprint, every file's digest
/// (secrets by their spec, never their keys) and the canonical step graph.
pub fn plan_json(
    s: &kscratch_core::scenario::Scenario,
    plan: &kscratch_core::plan::Plan,
) -> String {
    #[derive(Serialize)]
    struct PlanDoc<'a> {
        fingerprint: String,
        files: &'a [kscratch_core::plan::FileDigest],
        #[serde(flatten)]
        plan: serde_json::Value,
    }
    let graph = kscratch_core::plan::to_json(plan);
    let files = kscratch_core::plan::file_digests(s, plan);
    json(
        "plan",
        &PlanDoc {
            fingerprint: kscratch_core::plan::digest::fingerprint_of(&graph, &files),
            files: &files,
            plan: serde_json::from_str(&graph).expect("the canonical plan is JSON"),
        },
    )
}

/// What `validate --format json` prints, and what every command prints
/// under `--format json` when its scenario is invalid.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Validation<'a> {
    pub file: &'a str,
    pub valid: bool,
    pub errors: usize,
    pub warnings: usize,
    /// Present when valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    pub diagnostics: &'a [Diagnostic],
}

pub fn validation_json(file: &str, diags: &Diagnostics, valid: Option<(usize, String)>) -> String {
    json(
        "validation",
        &Validation {
            file,
            valid: valid.is_some(),
            errors: diags.errors().count(),
            warnings: diags.warnings().count(),
            nodes: valid.as_ref().map(|v| v.0),
            kubernetes_version: valid.map(|v| v.1),
            diagnostics: &diags.0,
        },
    )
}

/// SARIF 2.1.0: one run of the `kscratch` tool, a rule per diagnostic code
/// (all of them, so rule indices are stable), a result per diagnostic
/// located at its file, line and column.
pub fn sarif(diags: &Diagnostics) -> String {
    let rules: Vec<serde_json::Value> = Code::ALL
        .iter()
        .map(|c| {
            serde_json::json!({
                "id": c.as_str(),
                "name": format!("{c:?}"),
                "shortDescription": { "text": c.title() },
            })
        })
        .collect();
    let results: Vec<serde_json::Value> = diags
        .0
        .iter()
        .map(|d| {
            let mut region = serde_json::Map::new();
            if let Some(l) = d.line {
                region.insert("startLine".into(), l.into());
            }
            if let Some(c) = d.column {
                region.insert("startColumn".into(), c.into());
            }
            let mut physical = serde_json::json!({
                "artifactLocation": { "uri": d.file },
            });
            if !region.is_empty() {
                physical["region"] = serde_json::Value::Object(region);
            }
            let mut location = serde_json::json!({ "physicalLocation": physical });
            if !d.path.is_empty() {
                location["logicalLocations"] =
                    serde_json::json!([{ "fullyQualifiedName": d.path, "kind": "member" }]);
            }
            serde_json::json!({
                "ruleId": d.code.as_str(),
                "ruleIndex": Code::ALL.iter().position(|c| *c == d.code).unwrap_or(0),
                "level": match d.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                    Severity::Note => "note",
                },
                "message": { "text": format!("{}\nhint: {}", d.message, d.hint) },
                "locations": [location],
            })
        })
        .collect();
    let doc = serde_json::json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "kscratch",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    });
    let mut s = serde_json::to_string_pretty(&doc).expect("SARIF serializes");
    s.push('\n');
    s
}
