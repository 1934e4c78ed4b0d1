//! Reading rendered files back: the parse half of each emit above.
//!
//! The simulator reads a node's files through these, so that it sees what the
//! real daemons would: the apiserver's flags from its manifest, the kubelet's
//! from its unit, docker's from `/etc/default/docker`. None of them panics;
//! each error names the offending line or token.

use super::ParseError;
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;

/// A static pod manifest (YAML or JSON) as a `Pod`.
pub fn parse_pod(manifest: &str) -> Result<Pod, ParseError> {
    serde_yaml::from_str(manifest).map_err(|e| ParseError {
        what: "static pod manifest",
        message: e.to_string(),
    })
}

/// The first container's `command` followed by its `args`: the argv the
/// container runs, e.g. `["kube-apiserver", "--etcd-servers=...", ...]`.
pub fn container_command(manifest: &str) -> Result<Vec<String>, ParseError> {
    let pod = parse_pod(manifest)?;
    let c = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .ok_or_else(|| ParseError {
            what: "static pod manifest",
            message: "the pod has no containers".into(),
        })?;
    let mut argv = c.command.clone().unwrap_or_default();
    argv.extend(c.args.clone().unwrap_or_default());
    if argv.is_empty() {
        return Err(ParseError {
            what: "static pod manifest",
            message: format!("container `{}` has neither command nor args", c.name),
        });
    }
    Ok(argv)
}

/// The value of `--name` in an argv: `--name=value`, or `true` for a bare
/// `--name`. The last occurrence wins, as with the Kubernetes flag parser.
pub fn flag_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let mut found = None;
    for a in args {
        if let Some(rest) = a.strip_prefix("--").and_then(|r| r.strip_prefix(name)) {
            if let Some(v) = rest.strip_prefix('=') {
                found = Some(v);
            } else if rest.is_empty() {
                found = Some("true");
            }
        }
    }
    found
}

/// The argv of a systemd unit's effective `ExecStart=` in `[Service]`:
/// continuation lines joined, an empty `ExecStart=` resetting earlier ones
/// (as drop-ins do), words split as systemd does (double and single quotes).
/// `$VAR` references are kept as written.
pub fn unit_exec_start(unit: &str) -> Result<Vec<String>, ParseError> {
    let err = |m: String| ParseError {
        what: "systemd unit",
        message: m,
    };
    let mut section = String::new();
    let mut exec: Option<String> = None;
    let mut lines = unit.lines().enumerate();
    while let Some((n, raw)) = lines.next() {
        let mut line = raw.trim().to_string();
        // Continuations: a trailing backslash joins the next line.
        while line.ends_with('\\') {
            line.pop();
            match lines.next() {
                Some((_, next)) => {
                    line.push(' ');
                    line.push_str(next.trim());
                }
                None => {
                    return Err(err(format!(
                        "line {}: the file ends inside a continued line",
                        n + 1
                    )))
                }
            }
        }
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_string();
            continue;
        }
        if section != "Service" {
            continue;
        }
        if let Some(v) = line.strip_prefix("ExecStart=") {
            let v = v.trim();
            exec = if v.is_empty() {
                None
            } else {
                Some(v.to_string())
            };
        }
    }
    let cmd = exec.ok_or_else(|| err("no ExecStart= in [Service]".into()))?;
    split_words(&cmd).map_err(err)
}

/// Splits a command line into words: whitespace separates, quotes group.
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                in_word = true;
                let mut closed = false;
                for q in chars.by_ref() {
                    if q == c {
                        closed = true;
                        break;
                    }
                    cur.push(q);
                }
                if !closed {
                    return Err(format!("unterminated {c} quote in `{s}`"));
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// A shell-style environment file (`/etc/default/docker`): `KEY=value`,
/// `KEY="value"`, `KEY='value'`, optional `export`, `#` comments.
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, ParseError> {
    let mut out = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let err = |m: String| ParseError {
            what: "environment file",
            message: format!("line {}: {m}", n + 1),
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err(format!("expected KEY=value, found `{line}`")))?;
        if key.is_empty()
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || key.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(err(format!("`{key}` is not a variable name")));
        }
        let value = match value.chars().next() {
            Some(q @ ('"' | '\'')) => value
                .strip_prefix(q)
                .and_then(|v| v.strip_suffix(q))
                .ok_or_else(|| err(format!("unterminated {q} quote in `{value}`")))?
                .to_string(),
            _ => value.to_string(),
        };
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

/// docker's options from `/etc/default/docker` (`DOCKER_OPTS`), as words.
pub fn docker_opts(text: &str) -> Result<Vec<String>, ParseError> {
    let env = parse_env_file(text)?;
    let opts = env.get("DOCKER_OPTS").ok_or_else(|| ParseError {
        what: "docker defaults",
        message: "no DOCKER_OPTS".into(),
    })?;
    Ok(opts.split_whitespace().map(String::from).collect())
}
