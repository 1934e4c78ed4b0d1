//! Reading rendered files back: the parse half of each emit above.
//!
//! This is the one parser set for the files a node's daemons read. The
//! simulator's fake components read their node's files only through these,
//! so that they see what the real daemons would: the apiserver's flags from
//! its manifest ([`static_pod_command`], [`Argv`]), the kubelet's from its
//! unit ([`parse_unit`]), docker's from its drop-in and `/etc/default/docker`
//! ([`UnitService::argv`]), the KubeletConfiguration, KubeProxyConfiguration,
//! CNI conflist and kubeconfigs as the typed structs the renderer writes.
//! None of them panics; each error names the offending line or token.

use super::cni::CniConfList;
use super::kubeconfig::Kubeconfig;
use super::kubelet::{KubeProxyConfiguration, KubeletConfiguration};
use super::ParseError;
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

/// A command line as a Kubernetes component's flag parser (pflag, or Go's
/// `flag` for etcd) reads it: the program, its flags in order, and the words
/// that are not flags.
///
/// `--name=value` and `-name=value` carry a value; a bare `--name` is a
/// boolean set to true. The separated form `--name value` is read as a bare
/// flag followed by a positional word: which flags take a value is a property
/// of each release's flag table, not of the syntax (the renderer always
/// writes `--name=value`). Words after `--` are positional.
///
/// This is the entry point for checks on a component's flags (unknown or
/// removed flags per release): [`Argv::flags`] lists every flag as given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Argv {
    /// `argv[0]` as written (`kube-apiserver`, `/usr/local/bin/kubelet`).
    pub program: String,
    /// Every flag in command-line order, repeats included.
    pub flags: Vec<ArgFlag>,
    /// Words that are not flags, in order.
    pub positional: Vec<String>,
}

/// One flag of an [`Argv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgFlag {
    /// The name without dashes: `secure-port`.
    pub name: String,
    /// `Some(v)` for `--name=v`, `None` for a bare `--name`.
    pub value: Option<String>,
}

impl Argv {
    /// Parses a command line. Fails on an empty one and on a flag without a
    /// name (`--=x`).
    pub fn parse<S: AsRef<str>>(words: &[S]) -> Result<Argv, ParseError> {
        let err = |m: String| ParseError {
            what: "command line",
            message: m,
        };
        let (program, rest) = words
            .split_first()
            .ok_or_else(|| err("the command line is empty".into()))?;
        let mut argv = Argv {
            program: program.as_ref().to_string(),
            ..Argv::default()
        };
        let mut only_positional = false;
        for w in rest {
            let w = w.as_ref();
            if only_positional {
                argv.positional.push(w.to_string());
                continue;
            }
            if w == "--" {
                only_positional = true;
                continue;
            }
            match split_flag(w) {
                Some(("", _)) => return Err(err(format!("`{w}` is a flag without a name"))),
                Some((name, value)) => argv.flags.push(ArgFlag {
                    name: name.to_string(),
                    value: value.map(String::from),
                }),
                None => argv.positional.push(w.to_string()),
            }
        }
        Ok(argv)
    }

    /// The program's file name: `kubelet` for `/usr/local/bin/kubelet`.
    pub fn program_name(&self) -> &str {
        self.program.rsplit('/').next().unwrap_or(&self.program)
    }

    /// The value of `--name`, the last occurrence winning; `"true"` for a bare flag.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|f| f.name == name)
            .map(|f| f.value.as_deref().unwrap_or("true"))
    }

    /// `--name` parsed as `T`, or `None` when absent; a value that does not
    /// parse is an error naming the flag, as the component would report it.
    pub fn parsed<T>(&self, name: &str) -> Result<Option<T>, ParseError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|e| ParseError {
                what: "command line",
                message: format!("invalid argument \"{v}\" for \"--{name}\" flag: {e}"),
            }),
        }
    }

    /// A boolean flag as pflag reads it (`1`, `t`, `true`, `0`, `f`, `false`, any case
    /// of the words), or `default` when absent.
    pub fn bool(&self, name: &str, default: bool) -> Result<bool, ParseError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => match v {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
                _ => Err(ParseError {
                    what: "command line",
                    message: format!(
                        "invalid argument \"{v}\" for \"--{name}\" flag: strconv.ParseBool: parsing \"{v}\": invalid syntax"
                    ),
                }),
            },
        }
    }
}

/// `--name=value` → (`name`, `Some(value)`), `--name` → (`name`, `None`);
/// one leading dash works too (Go's `flag`). Anything else is not a flag.
fn split_flag(w: &str) -> Option<(&str, Option<&str>)> {
    let rest = w.strip_prefix("--").or_else(|| w.strip_prefix('-'))?;
    if rest.is_empty() || rest.starts_with('-') {
        return None;
    }
    Some(match rest.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (rest, None),
    })
}

/// A static pod manifest (YAML or JSON) as a `Pod`.
pub fn parse_pod(manifest: &str) -> Result<Pod, ParseError> {
    serde_yaml::from_str(manifest).map_err(|e| ParseError {
        what: "static pod manifest",
        message: e.to_string(),
    })
}

/// What a static pod runs: its name, its first container's image, and that
/// container's `command` followed by its `args`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticPodCommand {
    /// `metadata.name`: `kube-apiserver`.
    pub name: String,
    /// The first container's image, if it names one.
    pub image: Option<String>,
    /// `["kube-apiserver", "--etcd-servers=...", ...]`.
    pub argv: Vec<String>,
}

/// The name, image and argv of a static pod manifest's first container.
pub fn static_pod_command(manifest: &str) -> Result<StaticPodCommand, ParseError> {
    let pod = parse_pod(manifest)?;
    let (image, argv) = first_container(&pod)?;
    let name = pod.metadata.name.clone().ok_or_else(|| ParseError {
        what: "static pod manifest",
        message: "the pod has no metadata.name".into(),
    })?;
    Ok(StaticPodCommand { name, image, argv })
}

/// The first container's `command` followed by its `args`: the argv the
/// container runs, e.g. `["kube-apiserver", "--etcd-servers=...", ...]`.
pub fn container_command(manifest: &str) -> Result<Vec<String>, ParseError> {
    first_container(&parse_pod(manifest)?).map(|(_, argv)| argv)
}

fn first_container(pod: &Pod) -> Result<(Option<String>, Vec<String>), ParseError> {
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
    Ok((c.image.clone(), argv))
}

/// The value of `--name` in an argv: `--name=value`, or `true` for a bare
/// `--name`. The last occurrence wins, as with the Kubernetes flag parser.
/// The same reading as [`Argv::get`], without building an `Argv`.
pub fn flag_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .rev()
        .filter_map(|a| split_flag(a))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.unwrap_or("true"))
}

/// The argv of a systemd unit's effective `ExecStart=` in `[Service]`:
/// continuation lines joined, an empty `ExecStart=` resetting earlier ones
/// (as drop-ins do), words split as systemd does (double and single quotes).
/// `$VAR` references are kept as written.
pub fn unit_exec_start(unit: &str) -> Result<Vec<String>, ParseError> {
    parse_unit(unit)?.exec_start.ok_or_else(|| ParseError {
        what: "systemd unit",
        message: "no ExecStart= in [Service]".into(),
    })
}

/// The `[Service]` settings of a unit (or drop-in) that decide what runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitService {
    /// The effective `ExecStart=` as words, `$VAR` references as written;
    /// `None` when there is none (or a drop-in only reset it).
    pub exec_start: Option<Vec<String>>,
    /// `EnvironmentFile=` paths in order, with whether a missing file is
    /// fine (the `-` prefix).
    pub environment_files: Vec<(String, bool)>,
}

impl UnitService {
    /// The command systemd runs, with `$VAR` and `${VAR}` replaced from `env`:
    /// a word that is exactly `$VAR` becomes the value split at whitespace
    /// (no words when unset or empty), `${VAR}` inside a word is replaced as
    /// is, `$$` is a dollar (systemd.service(5), "Command lines").
    pub fn argv(&self, env: &BTreeMap<String, String>) -> Option<Vec<String>> {
        let words = self.exec_start.as_ref()?;
        let mut out = Vec::new();
        for w in words {
            if let Some(name) = w.strip_prefix('$').filter(|n| is_var_name(n)) {
                if let Some(v) = env.get(name) {
                    out.extend(v.split_whitespace().map(String::from));
                }
                continue;
            }
            out.push(expand_braced(w, env));
        }
        Some(out)
    }
}

fn is_var_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !n.starts_with(|c: char| c.is_ascii_digit())
}

fn expand_braced(w: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = w;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some((name, tail)) = after
            .strip_prefix('{')
            .and_then(|a| a.split_once('}'))
            .filter(|(n, _)| is_var_name(n))
        {
            out.push_str(env.get(name).map(String::as_str).unwrap_or(""));
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The `[Service]` section of a systemd unit: `ExecStart=` (continuations
/// joined, an empty assignment resetting earlier ones) and
/// `EnvironmentFile=`. Other settings are skipped.
pub fn parse_unit(unit: &str) -> Result<UnitService, ParseError> {
    let err = |m: String| ParseError {
        what: "systemd unit",
        message: m,
    };
    let mut section = String::new();
    let mut out = UnitService::default();
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
            out.exec_start = if v.is_empty() {
                None
            } else {
                Some(split_words(v).map_err(|m| err(format!("line {}: {m}", n + 1)))?)
            };
        } else if let Some(v) = line.strip_prefix("EnvironmentFile=") {
            let v = v.trim();
            if v.is_empty() {
                out.environment_files.clear();
            } else {
                let (path, optional) = match v.strip_prefix('-') {
                    Some(p) => (p, true),
                    None => (v, false),
                };
                out.environment_files.push((path.to_string(), optional));
            }
        }
    }
    Ok(out)
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

/// docker's options from `/etc/default/docker` (`DOCKER_OPTS`), as words
/// (split at whitespace, as systemd splits an unquoted `$DOCKER_OPTS`).
pub fn docker_opts(text: &str) -> Result<Vec<String>, ParseError> {
    let env = parse_env_file(text)?;
    let opts = env.get("DOCKER_OPTS").ok_or_else(|| ParseError {
        what: "docker defaults",
        message: "no DOCKER_OPTS".into(),
    })?;
    Ok(opts.split_whitespace().map(String::from).collect())
}

/// A `KubeletConfiguration` file as the kubelet reads it.
pub fn parse_kubelet_config(text: &str) -> Result<KubeletConfiguration, ParseError> {
    serde_yaml::from_str(text).map_err(|e| ParseError {
        what: "KubeletConfiguration",
        message: e.to_string(),
    })
}

/// A `KubeProxyConfiguration` file as kube-proxy reads it.
pub fn parse_kube_proxy_config(text: &str) -> Result<KubeProxyConfiguration, ParseError> {
    serde_yaml::from_str(text).map_err(|e| ParseError {
        what: "KubeProxyConfiguration",
        message: e.to_string(),
    })
}

/// A CNI network configuration list as libcni reads it.
pub fn parse_cni_conflist(text: &str) -> Result<CniConfList, ParseError> {
    serde_json::from_str(text).map_err(|e| ParseError {
        what: "CNI conflist",
        message: e.to_string(),
    })
}

/// A kubeconfig file as client-go reads it.
pub fn parse_kubeconfig(text: &str) -> Result<Kubeconfig, ParseError> {
    serde_yaml::from_str(text).map_err(|e| ParseError {
        what: "kubeconfig",
        message: e.to_string(),
    })
}

impl Kubeconfig {
    /// The server of the current context's cluster (client-go's choice).
    pub fn current_server(&self) -> Option<&str> {
        let ctx = self
            .contexts
            .iter()
            .find(|c| c.name == self.current_context)?;
        self.clusters
            .iter()
            .find(|c| c.name == ctx.context.cluster)
            .map(|c| c.cluster.server.as_str())
    }
}

/// The address and port of a URL: `https://10.0.0.1:2379` → (10.0.0.1, 2379),
/// `https://[fd00::1]` → (fd00::1, 443). Host names are not resolved: `None`.
pub fn url_host_port(url: &str) -> Option<(IpAddr, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let hostport = rest.split('/').next()?;
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, Some(p.parse().ok()?)),
        _ => (hostport, None),
    };
    let port = match (port, scheme) {
        (Some(p), _) => p,
        (None, "https") => 443,
        (None, "http") => 80,
        _ => return None,
    };
    Some((host.trim_matches(['[', ']']).parse().ok()?, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn argv_reads_flags_as_pflag_does() {
        let a = Argv::parse(&words(&[
            "/usr/local/bin/kube-apiserver",
            "--a=1",
            "--b",
            "2",
            "-v=3",
            "--d=x=y",
            "--a=4",
            "--",
            "--e",
        ]))
        .unwrap();
        assert_eq!(a.program_name(), "kube-apiserver");
        assert_eq!(a.get("a"), Some("4"));
        assert_eq!(a.get("b"), Some("true"));
        assert_eq!(a.get("v"), Some("3"));
        assert_eq!(a.get("d"), Some("x=y"));
        assert_eq!(a.get("e"), None);
        assert_eq!(a.positional, ["2", "--e"]);
        let names: Vec<&str> = a.flags.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "v", "d", "a"]);
        assert_eq!(a.parsed::<u16>("a").unwrap(), Some(4));
        assert!(a
            .parsed::<u16>("d")
            .unwrap_err()
            .message
            .contains("invalid argument \"x=y\" for \"--d\" flag"));
        assert!(a.bool("b", false).unwrap());
        assert!(!a.bool("missing", false).unwrap());
        assert!(a.bool("d", false).is_err());
        assert!(Argv::parse(&words(&["x", "--=1"])).is_err());
        assert!(Argv::parse::<String>(&[]).is_err());
    }

    #[test]
    fn units_expand_their_environment_files_as_systemd_does() {
        let u = "[Unit]\nExecStart=/not/this\n[Service]\nEnvironmentFile=-/etc/default/docker\nExecStart=\nExecStart=/usr/bin/env dockerd $DOCKER_OPTS --x=${X}y $$HOME \\\n  $UNSET\n";
        let unit = parse_unit(u).unwrap();
        assert_eq!(
            unit.environment_files,
            [("/etc/default/docker".to_string(), true)]
        );
        let env: BTreeMap<String, String> = [
            (
                "DOCKER_OPTS".to_string(),
                "--bridge=cbr0  --mtu=1450".to_string(),
            ),
            ("X".to_string(), "1".to_string()),
        ]
        .into();
        assert_eq!(
            unit.argv(&env).unwrap(),
            [
                "/usr/bin/env",
                "dockerd",
                "--bridge=cbr0",
                "--mtu=1450",
                "--x=1y",
                "$HOME"
            ]
        );
        assert_eq!(
            parse_unit("[Service]\nExecStart=\n").unwrap().exec_start,
            None
        );
    }

    #[test]
    fn urls_give_address_and_port() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(url_host_port("https://10.0.0.1:2379"), Some((v4, 2379)));
        assert_eq!(url_host_port("https://10.0.0.1"), Some((v4, 443)));
        assert_eq!(url_host_port("http://10.0.0.1/healthz"), Some((v4, 80)));
        assert_eq!(url_host_port("https://[fd00::1]:6443/x"), Some((v6, 6443)));
        assert_eq!(url_host_port("https://[fd00::1]"), Some((v6, 443)));
        assert_eq!(url_host_port("https://master:6443"), None);
        assert_eq!(url_host_port("10.0.0.1:6443"), None);
    }

    #[test]
    fn configs_parse_back_with_positions() {
        let e = parse_kube_proxy_config("apiVersion: v1\nkind: [\n").unwrap_err();
        assert_eq!(e.what, "KubeProxyConfiguration");
        assert!(e.message.contains("line"), "{e}");
        assert!(parse_cni_conflist("{").is_err());
        assert!(parse_kubelet_config("kind: KubeletConfiguration\n").is_err());
        let pod = static_pod_command(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: etcd}\nspec:\n  containers:\n  - name: etcd\n    image: registry.k8s.io/etcd:3.5.16-0\n    command: [etcd, --name=a]\n",
        )
        .unwrap();
        assert_eq!(pod.name, "etcd");
        assert_eq!(pod.image.as_deref(), Some("registry.k8s.io/etcd:3.5.16-0"));
        assert_eq!(pod.argv, ["etcd", "--name=a"]);
    }
}
