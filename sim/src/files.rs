//! Reading what the plan wrote, as a component on the node would.
//!
//! A file's bytes are the ones its write step stored; nothing here renders
//! or consults the scenario. The formats are read through the one parser set
//! in `kscratch_core::render` (flags, units, manifests, configs).

use crate::world::Node;

/// The text of `path` on the node, or the error a daemon opening it would report.
pub fn read<'a>(node: &'a Node, path: &str) -> Result<&'a str, String> {
    let f = node
        .fs
        .files
        .get(path)
        .ok_or_else(|| format!("open {path}: no such file or directory"))?;
    std::str::from_utf8(&f.content).map_err(|e| format!("{path}: not UTF-8 text: {e}"))
}

pub fn exists(node: &Node, path: &str) -> bool {
    node.fs.files.contains_key(path)
}

/// Every file directly in `dir` (not in subdirectories), in path order.
pub fn list_dir(node: &Node, dir: &str) -> Vec<String> {
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    node.fs
        .files
        .range(prefix.clone()..)
        .take_while(|(p, _)| p.starts_with(&prefix))
        .filter(|(p, _)| !p[prefix.len()..].contains('/'))
        .map(|(p, _)| p.clone())
        .collect()
}
