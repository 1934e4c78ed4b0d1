//! Reading what the plan wrote, as a component on the node would, and the
//! small parsers for the formats components read (flags, CNI JSON, YAML).

use crate::world::{Content, Node};
use kscratch_core::scenario::Scenario;
use std::collections::BTreeMap;

/// The text of `path` on the node, rendered from its asset (with redacted
/// key material: the simulator checks that files exist, never their keys).
pub fn read(node: &Node, s: &Scenario, node_index: usize, path: &str) -> Option<String> {
    let f = node.fs.files.get(path)?;
    match &f.content {
        Content::Text(t) => Some(t.clone()),
        Content::Asset(a) => {
            kscratch_core::render::render(s, Some(node_index), *a, &kscratch_core::render::Redacted)
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        }
    }
}

pub fn exists(node: &Node, path: &str) -> bool {
    node.fs.files.contains_key(path)
}

/// `--name=value` and `--name value` flags from an argv, last one wins (as with pflag).
pub fn flags<S: AsRef<str>>(argv: &[S]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut i = 0;
    while i < argv.len() {
        let a = argv[i].as_ref();
        if let Some(rest) = a.strip_prefix("--") {
            match rest.split_once('=') {
                Some((k, v)) => {
                    m.insert(k.to_string(), v.to_string());
                }
                None => {
                    let next = argv.get(i + 1).map(|s| s.as_ref());
                    match next {
                        Some(v) if !v.starts_with("--") => {
                            m.insert(rest.to_string(), v.to_string());
                            i += 1;
                        }
                        _ => {
                            m.insert(rest.to_string(), "true".to_string());
                        }
                    }
                }
            }
        }
        i += 1;
    }
    m
}

/// Splits a shell-like option string (`--a=b --c "d e"`) into words.
pub fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, '\\') => {}
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The `ExecStart=` command of a systemd unit, joined over continuation lines, as words.
pub fn unit_exec_start(unit: &str) -> Option<Vec<String>> {
    let mut joined = String::new();
    let mut in_exec = false;
    for line in unit.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("ExecStart=") {
            if rest.is_empty() {
                continue; // `ExecStart=` alone resets the list in drop-ins.
            }
            in_exec = true;
            joined.clear();
            joined.push_str(rest.trim_end_matches('\\'));
        } else if in_exec {
            joined.push(' ');
            joined.push_str(t.trim_end_matches('\\'));
        }
        if in_exec && !t.ends_with('\\') {
            in_exec = false;
        }
    }
    (!joined.is_empty()).then(|| words(&joined))
}

/// A `KEY="value"` assignment from an environment file (`/etc/default/docker`).
pub fn env_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
}

/// The container command (command + args) of a static pod manifest (YAML or JSON).
pub fn manifest_command(text: &str) -> Option<(String, Vec<String>)> {
    let v: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    let name = v.get("metadata")?.get("name")?.as_str()?.to_string();
    let c = v.get("spec")?.get("containers")?.as_sequence()?.first()?;
    let mut argv: Vec<String> = Vec::new();
    for key in ["command", "args"] {
        if let Some(seq) = c.get(key).and_then(|x| x.as_sequence()) {
            argv.extend(seq.iter().filter_map(|x| x.as_str().map(String::from)));
        }
    }
    Some((name, argv))
}

/// `clusters[0].cluster.server` of a kubeconfig.
pub fn kubeconfig_server(text: &str) -> Option<String> {
    let v: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    v.get("clusters")?
        .as_sequence()?
        .first()?
        .get("cluster")?
        .get("server")?
        .as_str()
        .map(String::from)
}

/// A top-level string field of a YAML document (`staticPodPath` of a KubeletConfiguration).
pub fn yaml_field(text: &str, key: &str) -> Option<String> {
    let v: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    v.get(key)?.as_str().map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_pflag_forms() {
        let f = flags(&["kube-apiserver", "--a=1", "--b", "2", "--c", "--d=x=y"]);
        assert_eq!(f["a"], "1");
        assert_eq!(f["b"], "2");
        assert_eq!(f["c"], "true");
        assert_eq!(f["d"], "x=y");
    }

    #[test]
    fn unit_exec_start_joins_continuations() {
        let u = "[Service]\nExecStart=/usr/local/bin/kubelet \\\n  --kubeconfig=/var/lib/kubelet/kubeconfig \\\n  --config=/var/lib/kubelet/config.yaml\nRestart=always\n";
        assert_eq!(
            unit_exec_start(u).unwrap(),
            vec![
                "/usr/local/bin/kubelet",
                "--kubeconfig=/var/lib/kubelet/kubeconfig",
                "--config=/var/lib/kubelet/config.yaml"
            ]
        );
    }

    #[test]
    fn env_files_and_words() {
        let t = "# comment\nDOCKER_OPTS=\"--bridge=cbr0 --iptables=false --ip-masq=false --mtu=1450\"\n";
        let w = words(&env_value(t, "DOCKER_OPTS").unwrap());
        assert_eq!(
            w,
            vec![
                "--bridge=cbr0",
                "--iptables=false",
                "--ip-masq=false",
                "--mtu=1450"
            ]
        );
    }
}
