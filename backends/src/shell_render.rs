//! Rendering typed actions to the POSIX `sh` a node runs: a pure function.
//!
//! Every remote step has two scripts. The **check** changes nothing and
//! answers with its exit status: [`EXIT_SATISFIED`] (the desired state
//! holds), [`EXIT_NEEDED`] (apply would change something) or
//! [`EXIT_NOT_APPLICABLE`] (the node cannot run this step, e.g. a daemon
//! that is not installed; the reason is the last line of its stdout). Any
//! other status is an error. The **apply** makes the state hold; it runs with
//! `set -e` and is idempotent, so running it twice is harmless.
//!
//! Values from the scenario are always quoted with [`crate::shell::quote`].
//! File contents and binaries travel on the script's stdin ([`Stdin`]),
//! never in argv, so secrets do not show in `ps` or in logs. Uploads are
//! atomic: a temporary file in the destination directory, mode and owner
//! set, then `mv` over the destination.
//!
//! What the action alone does not say is passed in [`Inputs`]: the bytes of a
//! rendered file and the path and SHA-256 of a release binary, which the
//! operator's machine knows. Nothing here reads a file or a clock.

use crate::shell::{self, QuoteError};
use ipnet::IpNet;
use kscratch_core::net::route::{FdbEntry, Neighbor, Route};
use kscratch_core::plan::Plan;
use kscratch_core::plan::{
    bridge_mac, Action, Asset, Component, PodRouteVia, PreflightCheck, Service, VxlanDevice,
    PKI_DIR,
};
use kscratch_core::ports;
use kscratch_core::render as krender;
use kscratch_core::scenario::{Runtime, Scenario};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Check exit status: the desired state holds.
pub const EXIT_SATISFIED: u32 = 0;
/// Check exit status: apply is needed.
pub const EXIT_NEEDED: u32 = 1;
/// Check exit status: the step cannot run on this node; the last line of
/// stdout says why.
pub const EXIT_NOT_APPLICABLE: u32 = 100;
/// Where the init-system–free supervisor keeps pid files, run scripts and logs.
pub const RUN_DIR: &str = "/var/lib/kscratch/run";
/// The `PATH` every script starts with: `sudo` and non-login shells may lack the sbin dirs.
pub const SCRIPT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The bytes a script reads on stdin.
#[derive(Clone, PartialEq, Eq)]
pub enum Stdin {
    Empty,
    /// In memory; `secret` bytes are never displayed.
    Bytes {
        bytes: Vec<u8>,
        secret: bool,
    },
    /// A local file, streamed (release binaries).
    File(PathBuf),
    /// One after another: the files of a batch of uploads ([`uploads`]).
    Parts(Vec<Stdin>),
}

impl Stdin {
    /// Whether any part is secret.
    pub fn is_secret(&self) -> bool {
        match self {
            Stdin::Bytes { secret, .. } => *secret,
            Stdin::Parts(parts) => parts.iter().any(Stdin::is_secret),
            Stdin::Empty | Stdin::File(_) => false,
        }
    }
}

impl fmt::Debug for Stdin {
    /// Sizes and hashes only: file contents may be keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stdin::Empty => f.write_str("Empty"),
            Stdin::Bytes { bytes, secret } => write!(
                f,
                "Bytes({} bytes{})",
                bytes.len(),
                if *secret { ", secret" } else { "" }
            ),
            Stdin::File(p) => write!(f, "File({})", p.display()),
            Stdin::Parts(parts) => f.debug_list().entries(parts).finish(),
        }
    }
}

/// One remote command: a POSIX sh script and its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub text: String,
    pub stdin: Stdin,
}

impl Script {
    fn new(text: String) -> Script {
        Script {
            text,
            stdin: Stdin::Empty,
        }
    }
    fn with_stdin(text: String, stdin: Stdin) -> Script {
        Script { text, stdin }
    }
    /// The command line sent over SSH: the script under `sh -c`, after
    /// `sudo -n` for a non-root user (never prompting: a password prompt
    /// would hang the step).
    pub fn command_line(&self, sudo: bool) -> String {
        let body = format!("PATH={SCRIPT_PATH}; export PATH\n{}", self.text);
        let quoted = shell::quote(&body)
            .map(|q| q.into_owned())
            .unwrap_or_else(|_| "false".into());
        if sudo {
            format!("sudo -n sh -c {quoted}")
        } else {
            format!("sh -c {quoted}")
        }
    }
    /// A one-line summary of the stdin, for dry runs and logs.
    pub fn stdin_summary(&self) -> Option<String> {
        match &self.stdin {
            Stdin::Empty => None,
            Stdin::Bytes {
                bytes,
                secret: true,
            } => Some(format!("stdin: {} bytes (secret, not shown)", bytes.len())),
            Stdin::Bytes {
                bytes,
                secret: false,
            } => Some(format!(
                "stdin: {} bytes, sha256 {}",
                bytes.len(),
                sha256_hex(bytes)
            )),
            Stdin::File(p) => Some(format!("stdin: the local file {}", p.display())),
            Stdin::Parts(parts) => Some(format!(
                "stdin: {} files one after another{}",
                parts.len(),
                if self.stdin.is_secret() {
                    " (secrets among them, not shown)"
                } else {
                    ""
                }
            )),
        }
    }
}

/// A remote step: how to check it and how to apply it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepScripts {
    pub check: Script,
    pub apply: Script,
    /// The check right after a successful apply, when it can be cheaper
    /// than `check` because the apply proved part of it (an upload hashed
    /// the file it placed); `None`: `check`.
    pub verify: Option<Script>,
}

/// What rendering decided for an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    /// Runs on the node over SSH.
    Remote(StepScripts),
    /// Runs on the operator's machine (PKI); the text says what it does.
    Local(String),
    /// Cannot run over SSH here, with the reason (e.g. the fabric router).
    NotApplicable(String),
}

/// Facts the operator's machine supplies.
#[derive(Debug, Clone, Default)]
pub struct Inputs<'a> {
    /// `WriteFile`: the rendered bytes.
    pub file: Option<&'a [u8]>,
    /// `InstallBinary`: the release binary.
    pub binary: Option<Binary>,
}

/// A release binary on the operator's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    pub path: PathBuf,
    /// Lowercase hex.
    pub sha256: String,
    /// Bytes, checked on the node before the upload replaces anything.
    pub size: u64,
}

/// What the renderer needs to know about the step.
pub struct RenderCx<'a> {
    pub scenario: &'a Scenario,
    pub plan: &'a Plan,
    /// The node the step runs on (`Target::Node`), if any.
    pub node: Option<usize>,
    pub inputs: Inputs<'a>,
}

/// Why an action cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellRenderError {
    #[error("{0}")]
    Quote(#[from] QuoteError),
    #[error("{what} needs {missing}")]
    MissingInput { what: String, missing: &'static str },
    #[error("{0}")]
    Render(#[from] krender::RenderError),
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

type R<T> = Result<T, ShellRenderError>;

/// Renders `action` for the step described by `cx`.
pub fn render(cx: &RenderCx<'_>, action: &Action) -> R<Rendered> {
    Ok(match action {
        Action::Preflight { checks } => Rendered::Remote(preflight(checks)?),
        Action::InstallBinary { name, dest } => {
            let bin = cx.inputs.binary.as_ref().ok_or_else(|| {
                missing(
                    format!("installing {name}"),
                    "the release binary's path and SHA-256",
                )
            })?;
            Rendered::Remote(install_binary(dest, bin)?)
        }
        Action::PullImage { image } => Rendered::Remote(pull_image(&cx.scenario.runtime, image)?),
        Action::GenerateCa { ca } => Rendered::Local(format!(
            "generate the {} CA (key and self-signed certificate)",
            ca.name()
        )),
        Action::IssueCert { cert, node } => Rendered::Local(match node {
            Some(n) => format!("issue the {} certificate for {n}", cert.name()),
            None => format!("issue the {} certificate", cert.name()),
        }),
        Action::GenerateServiceAccountKey => {
            Rendered::Local("generate the service-account key pair".into())
        }
        Action::GenerateTokens { users } => {
            Rendered::Local(format!("generate bearer tokens for {}", users.join(", ")))
        }
        Action::WriteFile { path, mode, asset } => {
            let bytes = cx
                .inputs
                .file
                .ok_or_else(|| missing(format!("writing {path}"), "the rendered file"))?;
            Rendered::Remote(write_file(path, *mode, bytes, asset.is_secret())?)
        }
        Action::SetSysctl { key, value } => Rendered::Remote(set_sysctl(key, value)?),
        Action::LoadKernelModule { name } => Rendered::Remote(load_module(name)?),
        Action::DeleteLink { name } => Rendered::Remote(delete_link(name)?),
        Action::DeleteIptablesRules {
            table,
            rules,
            chains,
        } => Rendered::Remote(delete_iptables(table.name(), rules, chains)?),
        Action::CreateBridge { name, addr, mtu } => {
            Rendered::Remote(create_bridge(name, addr, *mtu)?)
        }
        Action::CreateVxlan(dev) => Rendered::Remote(create_vxlan(dev)?),
        Action::InstallPodRoutes { via, .. } => {
            let node = cx
                .node
                .ok_or_else(|| missing("pod routes".into(), "a node"))?;
            Rendered::Remote(pod_routes(cx.plan, node, via)?)
        }
        Action::InstallFabricRoutes { .. } => {
            let routes: Vec<String> = cx
                .plan
                .pod_network()
                .iter()
                .map(|e| format!("{} via {}", e.pod_cidr, e.node_ip))
                .collect();
            Rendered::NotApplicable(format!(
                "the underlay router is not managed over SSH: install these routes on it (or in the cloud route table): {}",
                routes.join(", ")
            ))
        }
        Action::EnsureIptablesRule { table, rule } => {
            let mut argv = vec![
                "iptables".to_string(),
                "-w".into(),
                "-t".into(),
                table.name().into(),
                "-C".into(),
                rule.chain.clone(),
            ];
            argv.extend(rule.to_args());
            let check_cmd = shell::join(&argv)?;
            argv[4] = "-A".into();
            let append = shell::join(&argv)?;
            Rendered::Remote(StepScripts {
                check: Script::new(format!(
                    "if {check_cmd} 2>/dev/null; then exit 0; fi\nexit 1\n"
                )),
                apply: Script::new(format!("set -e\n{check_cmd} 2>/dev/null || {append}\n")),
                verify: None,
            })
        }
        Action::StartService { name } => {
            let node = cx
                .node
                .ok_or_else(|| missing(format!("starting {name}"), "a node"))?;
            Rendered::Remote(start_service(cx.scenario, node, *name)?)
        }
        Action::WaitHealthy {
            component,
            url,
            timeout_secs,
        } => Rendered::Remote(wait_healthy(*component, url, *timeout_secs)?),
        Action::ApplyManifest { asset, kubeconfig } => {
            Rendered::Remote(apply_manifest(*asset, *kubeconfig)?)
        }
        Action::ValidateCluster { nodes, components } => {
            Rendered::Remote(validate_cluster(nodes, components)?)
        }
        Action::DeleteRoutes { routes } => match cx.node {
            Some(_) => Rendered::Remote(delete_routes(routes)?),
            None => Rendered::NotApplicable(format!(
                "the underlay router is not managed over SSH: delete these routes on it (or in the cloud route table): {}",
                routes.iter().map(|r| r.emit()).collect::<Vec<_>>().join(", ")
            )),
        },
        Action::InsertIptablesRule { table, rule } => {
            Rendered::Remote(insert_iptables(table.name(), rule)?)
        }
        Action::SetLinkDown { name } => Rendered::Remote(set_link_down(name)?),
        Action::SetLinkMtu { name, mtu } => Rendered::Remote(set_link_mtu(name, *mtu)?),
        Action::DeleteFdbEntries { entries } => Rendered::Remote(delete_fdb(entries)?),
        Action::DeleteNeighbors { entries } => Rendered::Remote(delete_neighbors(entries)?),
        Action::StopService { name } => Rendered::Remote(stop_service(name.name())?),
        Action::DeleteFile { path } => Rendered::Remote(delete_file(path)?),
        Action::UnloadKernelModule { name } => Rendered::Remote(unload_module(name)?),
        Action::WriteText { path, mode, text } => {
            Rendered::Remote(write_file(path, *mode, text.as_bytes(), false)?)
        }
        Action::ScaleDeployment {
            namespace,
            name,
            replicas,
            kubeconfig,
        } => Rendered::Remote(scale_deployment(namespace, name, *replicas, *kubeconfig)?),
        Action::PowerOff => Rendered::Remote(power_off()?),
        Action::DisableService { name } => Rendered::Remote(disable_service(name.name())?),
        Action::ClearDirectory { path } => Rendered::Remote(clear_directory(path)?),
        Action::DeleteIptablesChains { table, chains } => {
            Rendered::Remote(delete_iptables_chains(table.name(), chains)?)
        }
        Action::RemoveEtcdMember { name, endpoint } => {
            Rendered::Remote(remove_etcd_member(name, endpoint)?)
        }
        Action::DeleteNode { name } => Rendered::Remote(delete_node(name)?),
    })
}

/// `etcdctl member remove` by name, through `endpoint`; the check is the
/// member's absence from `member list` (`ID, status, name, peers, clients,
/// learner`). Without etcdctl, or without an answer, the step fails: a
/// member left behind still counts toward the quorum.
fn remove_etcd_member(name: &str, endpoint: &str) -> R<StepScripts> {
    let tls = if endpoint.starts_with("https://") {
        format!(" {}", tls_options(Component::Etcd))
    } else {
        String::new()
    };
    let missing = q(&format!(
        "etcdctl is not installed on this node: install it (Debian: etcd-client), or run `etcdctl member remove` for {name} by hand, then apply again"
    ))?;
    let unanswered = q(&format!("etcdctl member list through {endpoint} failed"))?;
    let prologue = format!(
        "command -v etcdctl >/dev/null 2>&1 || {{ echo {missing} >&2; exit 2; }}\n\
         e() {{ ETCDCTL_API=3 etcdctl --endpoints={ep}{tls} --dial-timeout=5s --command-timeout=15s \"$@\"; }}\n\
         list=$(e member list -w simple) || {{ echo {unanswered} >&2; exit 2; }}\n\
         id=$(printf '%s\\n' \"$list\" | awk -F', ' -v n={n} '$3 == n {{print $1}}')\n",
        ep = q(endpoint)?,
        n = q(name)?
    );
    Ok(StepScripts {
        verify: None,
        check: Script::new(format!("{prologue}[ -z \"$id\" ] && exit 0\nexit 1\n")),
        // etcd's strict reconfiguration check refuses a removal ("unhealthy
        // cluster") until the members have been connected for 5 s, as just
        // after a member restarted in the same rollout: retried for 60 s.
        apply: Script::new(format!(
            "set -e\n{prologue}[ -n \"$id\" ] || exit 0\n\
             i=0\n\
             until out=$(e member remove \"$id\" 2>&1); do\n\
             \x20 i=$((i+1)); [ $i -lt 30 ] || {{ echo \"$out\" >&2; exit 1; }}\n\
             \x20 sleep 2\n\
             done\n\
             echo \"$out\"\n"
        )),
    })
}

/// `kubectl delete node NAME` with the admin kubeconfig. An apiserver that
/// does not answer makes the step not applicable (exit
/// [`EXIT_NOT_APPLICABLE`] with the reason): the removal goes on and says
/// the object stays.
fn delete_node(name: &str) -> R<StepScripts> {
    let k = admin_kubeconfig()?;
    let n = q(name)?;
    let stays = q(&format!(
        "the apiserver does not answer: the Node object {name} stays; delete it later with `kubectl delete node {name}`"
    ))?;
    Ok(StepScripts {
        verify: None,
        check: Script::new(format!(
            "{}if ! out=$(kubectl --kubeconfig {k} --request-timeout=20s get node {n} --ignore-not-found -o name 2>/dev/null); then echo {stays}; exit {EXIT_NOT_APPLICABLE}; fi\n[ -z \"$out\" ] && exit 0\nexit 1\n",
            kubectl_guard()
        )),
        apply: Script::new(format!(
            "set -e\nkubectl --kubeconfig {k} --request-timeout=20s delete node {n} --ignore-not-found\n"
        )),
    })
}

/// The line an [`apply_then_check`] script ends with: the check's status.
pub const VERIFY_MARKER: &str = "kscratch-verify=";

/// One command that applies and then checks again, so that the executor's
/// verification costs no extra round trip. The apply runs in a subshell with
/// the stdin; if it fails, its status is the script's. Otherwise the check
/// runs (stdin closed) and the script prints [`VERIFY_MARKER`] and the
/// check's status as its last line, and exits 0.
///
/// A step with its own `verify` (an upload) runs its apply in the script's
/// shell instead (it exits on failure itself), and `verify` as the check,
/// which may read the apply's variables.
pub fn apply_then_check(s: &StepScripts) -> Script {
    let text = match &s.verify {
        None => format!(
            "(\n{apply})\nstatus=$?\n[ \"$status\" = 0 ] || exit \"$status\"\n(\n{check}) </dev/null\necho \"{VERIFY_MARKER}$?\"\n",
            apply = s.apply.text,
            check = s.check.text
        ),
        Some(verify) => format!(
            "{apply}(\n{verify}) </dev/null\necho \"{VERIFY_MARKER}$?\"\n",
            apply = s.apply.text,
            verify = verify.text
        ),
    };
    Script {
        text,
        stdin: s.apply.stdin.clone(),
    }
}

/// The check status and the check's own output (without the marker line) of
/// an [`apply_then_check`] run; `None` when the marker is missing.
pub fn parse_verify(stdout: &str) -> Option<(u32, String)> {
    let trimmed = stdout.trim_end_matches('\n');
    let (before, last) = match trimmed.rfind('\n') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => ("", trimmed),
    };
    let status = last.strip_prefix(VERIFY_MARKER)?.trim().parse().ok()?;
    Some((status, before.to_string()))
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The daemon binary a service's unit starts, for messages: `/usr/local/bin/etcd`, `containerd`.
pub fn service_program(s: &Scenario, node: usize, service: Service) -> R<String> {
    let argv = service_argv(s, node, service)?.0;
    Ok(program_of(&argv).to_string())
}

fn missing(what: String, missing: &'static str) -> ShellRenderError {
    ShellRenderError::MissingInput { what, missing }
}

fn q(s: &str) -> R<String> {
    Ok(shell::quote(s)?.into_owned())
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => ".",
    }
}

/// A file an upload step (`WriteFile`, `WriteText`, `InstallBinary`) places:
/// what its check compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileWant {
    /// Absolute path on the node.
    pub path: String,
    /// A regular file owned by root with this mode...
    pub mode: u32,
    /// ...this many bytes...
    pub size: u64,
    /// ...and this SHA-256 (lowercase hex).
    pub sha256: String,
}

impl FileWant {
    /// Whether [`files_check`] can take this file: `stat` and `sha256sum`
    /// print a path with a newline or a backslash differently, so such a
    /// path keeps its own check.
    pub fn batchable(&self) -> bool {
        self.path.starts_with('/') && !self.path.contains(['\n', '\\'])
    }
}

/// The file `action` places, for an upload step rendered with `cx`'s inputs;
/// `None` for other actions.
pub fn file_want(cx: &RenderCx<'_>, action: &Action) -> R<Option<FileWant>> {
    Ok(match action {
        Action::InstallBinary { name, dest } => {
            let bin = cx.inputs.binary.as_ref().ok_or_else(|| {
                missing(
                    format!("installing {name}"),
                    "the release binary's path and SHA-256",
                )
            })?;
            Some(binary_want(dest, bin))
        }
        Action::WriteFile { path, mode, .. } => {
            let bytes = cx
                .inputs
                .file
                .ok_or_else(|| missing(format!("writing {path}"), "the rendered file"))?;
            Some(bytes_want(path, *mode, bytes))
        }
        Action::WriteText { path, mode, text } => Some(bytes_want(path, *mode, text.as_bytes())),
        _ => None,
    })
}

fn bytes_want(path: &str, mode: u32, bytes: &[u8]) -> FileWant {
    FileWant {
        path: path.to_string(),
        mode,
        size: bytes.len() as u64,
        sha256: sha256_hex(bytes),
    }
}

fn binary_want(dest: &str, bin: &Binary) -> FileWant {
    FileWant {
        path: dest.to_string(),
        mode: 0o755,
        size: bin.size,
        sha256: bin.sha256.clone(),
    }
}

/// A check and an apply that place `stdin` at `want.path` with its mode,
/// owned by root.
///
/// The received bytes are checked, size and SHA-256, in the temporary file
/// and **before** the rename: a transfer cut short (the operator's process
/// killed, the connection lost) leaves the previous file in place.
fn upload(want: &FileWant, stdin: Stdin) -> R<StepScripts> {
    upload_owned(want, stdin, "0:0")
}

fn upload_owned(want: &FileWant, stdin: Stdin, owner: &str) -> R<StepScripts> {
    let FileWant {
        path: dest,
        mode,
        size,
        sha256,
    } = want;
    let (mode, size) = (*mode, *size);
    let d = q(dest)?;
    let mode_text = format!("{mode:o}");
    let sum_line = q(&format!("{sha256}  {dest}"))?;
    let meta = q(&format!("{mode_text} {owner}"))?;
    let check = format!(
        "[ -f {d} ] || exit 1\n\
         [ \"$(stat -c '%a %u:%g' {d})\" = {meta} ] || exit 1\n\
         printf '%s\\n' {sum_line} | sha256sum -c --status || exit 1\n\
         exit 0\n"
    );
    let dir = q(parent(dest))?;
    let (short, corrupt) = refusals(want)?;
    // No `set -e` and no subshell: [`apply_then_check`] runs this in the
    // script's own shell, so that the check after it can read `$hashed`.
    let apply = format!(
        "[ -d {dir} ] || mkdir -p {dir} || exit 1\n\
         tmp=$(mktemp {dir}/.kscratch.XXXXXX) || exit 1\n\
         trap 'rm -f \"$tmp\"' EXIT\n\
         cat > \"$tmp\" || exit 1\n\
         chmod {mode:04o} \"$tmp\" && chown {owner} \"$tmp\" || exit 1\n\
         # The file's identity as hashed: the rename changes only its ctime.\n\
         hashed=$(stat -c '%d:%i:%.9Y' \"$tmp\") || exit 1\n\
         # The SHA-256 covers the size; the size only tells a cut transfer from corrupt bytes.\n\
         if ! sha256sum -c --status <<KSCRATCH_EOF\n\
         {sha256}  $tmp\n\
         KSCRATCH_EOF\n\
         then\n\
         \x20 got=$(wc -c < \"$tmp\")\n\
         \x20 if [ \"$got\" -ne {size} ]; then echo {short} \"$got\" >&2; else echo {corrupt} >&2; fi\n\
         \x20 exit 1\n\
         fi\n\
         mv -f \"$tmp\" {d} || exit 1\n\
         trap - EXIT\n"
    );
    // Right after the apply: the placed file is the one hashed (same
    // device, inode and mtime) and has its type, size, mode and owner.
    // Not hashed again (a 21 MB etcd took a second on the loaded testbed).
    let placed = q(&format!("{:x} {size} {mode_text} 0:0 ", 0o100000 | mode))?;
    let verify = format!(
        "[ \"$(stat -c '%f %s %a %u:%g %d:%i:%.9Y' -- {d} 2>/dev/null)\" = {placed}\"$hashed\" ] || exit 1\n\
         exit 0\n"
    );
    Ok(StepScripts {
        check: Script::new(check),
        apply: Script::with_stdin(apply, stdin),
        verify: Some(Script::new(verify)),
    })
}

/// Why a received file is refused, quoted for `echo`: cut short (the
/// received size follows as the next word), or other bytes than `want`'s.
fn refusals(want: &FileWant) -> R<(String, String)> {
    let FileWant {
        path, size, sha256, ..
    } = want;
    Ok((
        q(&format!(
            "upload of {path} cut short, the previous file is kept: expected {size} bytes, received"
        ))?,
        q(&format!(
            "upload of {path} does not match its SHA-256 {sha256}, the previous file is kept"
        ))?,
    ))
}

fn write_file(path: &str, mode: u32, bytes: &[u8], secret: bool) -> R<StepScripts> {
    upload(
        &bytes_want(path, mode, bytes),
        Stdin::Bytes {
            bytes: bytes.to_vec(),
            secret,
        },
    )
}

fn install_binary(dest: &str, bin: &Binary) -> R<StepScripts> {
    upload(&binary_want(dest, bin), Stdin::File(bin.path.clone()))
}

/// The line of an [`uploads`] answer for file `K` (0-based): `ok`, or why
/// it was not placed.
const UPLOADED_MARKER: &str = "kscratch-upload";
/// The line of an [`uploads`] answer with the check after placing file `K`:
/// its status.
const PLACED_MARKER: &str = "kscratch-placed";

/// One script that places several files of a node (a batch of upload
/// steps), as [`upload`] places one, with a few commands for all of them
/// instead of a dozen for each:
/// - every file is received under its own name into a temporary directory
///   next to its destination (`.kscratch.<token>`, one per directory, all
///   made by one `mkdir`): release binaries and files of
///   [`STREAM_HASH_MIN`] or more first, each by `head` and hashed as it
///   arrives ([`PICK_SHA256`]); then all the other files by one `tar`,
///   from one archive at the end of stdin ([`Stdin::Parts`]). A node
///   without `tar` receives the archive's files with two `head`s each
///   instead;
/// - the archive's headers carry each file's mode and owner, which `tar`
///   run by root restores; one `chmod` per mode and one `chown` set those
///   of the streamed files, and of any other that does not show them (cut
///   out without `tar`, not root) after one `stat` of all. That `stat`
///   notes their identities, types, sizes, modes and owners, and one
///   `sha256sum` hashes those not hashed yet;
/// - those whose size, SHA-256 and metadata match are moved into place by
///   one `mv` per directory (a rename each); the others are removed with
///   their temporary directory, so a transfer cut short or corrupt never
///   replaces a file;
/// - last, one `stat` of the placed files checks that each is the file
///   hashed (same device, inode and mtime).
///
/// Every rename happens after every file was received, so the answer
/// follows the first rename within a few commands. Read it with
/// [`parse_uploads`]; the script itself exits 0.
pub fn uploads(files: &[(FileWant, Stdin)]) -> R<Script> {
    uploads_owned(files, "0:0", STREAM_HASH_MIN, &temp_token())
}

/// From this size on, a file is hashed as it arrives (`tee` into
/// `sha256sum`) instead of read back once every file is in: the hash of a
/// 21 MB etcd then takes no time of its own after the transfer, which is
/// the critical path of a first apply (0.06 s idle, 0.15 s on a loaded
/// node). Smaller files go in the archive and share one `sha256sum`.
const STREAM_HASH_MIN: u64 = 1 << 20;

/// A name for this run's temporary directories that no other run uses
/// (one that was killed leaves its directory behind under its own name).
fn temp_token() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        b = (now.as_nanos() as u64 ^ u64::from(std::process::id()) << 32).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether `tar -C /` extracts the file under its own path: GNU tar
/// refuses a member with a `..` component, and an empty or `.` one would
/// not be the path checked.
fn archivable(path: &str) -> bool {
    path.strip_prefix('/')
        .is_some_and(|p| p.split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
}

fn uploads_owned<'a>(
    files: &'a [(FileWant, Stdin)],
    owner: &str,
    stream_min: u64,
    token: &str,
) -> R<Script> {
    let invalid = |what: &str, message: &str| ShellRenderError::Invalid {
        what: what.to_string(),
        message: message.to_string(),
    };
    // In the archive's headers, for `tar` to restore.
    let (uid, gid) = owner
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse::<u64>().ok()?, g.parse::<u64>().ok()?)))
        .ok_or_else(|| invalid(owner, "an owner is numeric, UID:GID"))?;
    // Destination directories, each with its temporary directory `$uG`.
    let mut dirs: Vec<&str> = Vec::new();
    let mut group = Vec::with_capacity(files.len());
    let mut seen = std::collections::BTreeSet::new();
    for (want, _) in files {
        if !want.batchable() {
            return Err(invalid(
                &want.path,
                "a path with a newline or a backslash is uploaded on its own",
            ));
        }
        if !seen.insert(want.path.as_str()) {
            return Err(invalid(&want.path, "placed twice in one batch"));
        }
        let dir = parent(&want.path);
        let g = match dirs.iter().position(|d| *d == dir) {
            Some(g) => g,
            None => {
                dirs.push(dir);
                dirs.len() - 1
            }
        };
        group.push(g);
    }
    let mut text = String::new();
    for (g, dir) in dirs.iter().enumerate() {
        text.push_str(&format!("u{g}={}/.kscratch.{token}\n", q(dir)?));
    }
    let temp_dirs: Vec<String> = (0..dirs.len()).map(|g| format!("\"$u{g}\"")).collect();
    let quoted_dirs = dirs.iter().map(|d| q(d)).collect::<R<Vec<_>>>()?;
    // Whatever happens, no temporary file stays (a renamed one is gone already).
    text.push_str(&format!(
        "trap 'rm -rf {t} 2>/dev/null' EXIT\n\
         mkdir -p -- {d} {t} 2>/dev/null\n",
        t = temp_dirs.join(" "),
        d = quoted_dirs.join(" ")
    ));
    // Streamed (hashed as they arrive) first, in their order on stdin; the
    // archive of the in-memory others last.
    let mut stdin_parts = Vec::new();
    let mut archive = tar::Builder::new(Vec::new());
    let mut archived: Vec<(usize, u64, u64)> = Vec::new(); // (k, data offset, length)
    let mut secret = false;
    // Streamed files by mode; archived ones by mode (their indices).
    let mut streamed_modes: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut archived_modes: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    let mut all_temps = Vec::new();
    let mut stat_arms = String::new();
    let mut sum_arms = String::new();
    let mut hashed_after = Vec::new();
    let mut decide = String::new();
    let mut placed_arms = String::new();
    let mut dests = Vec::new();
    let archived_bytes = |want: &FileWant, stdin: &'a Stdin| match stdin {
        Stdin::Bytes { bytes, secret } if want.size < stream_min && archivable(&want.path) => {
            Some((bytes, *secret))
        }
        _ => None,
    };
    if files.iter().any(|(w, i)| archived_bytes(w, i).is_none()) {
        text.push_str(PICK_SHA256);
    }
    for (k, (want, stdin)) in files.iter().enumerate() {
        let g = group[k];
        let base = want.path.rsplit('/').next().unwrap_or_default();
        text.push_str(&format!("t{k}=\"$u{g}\"/{}\n", q(base)?));
        let size = want.size;
        if let Some((bytes, s)) = archived_bytes(want, stdin) {
            secret |= s;
            let member = format!(
                "{}/.kscratch.{token}/{base}",
                dirs[g].trim_start_matches('/')
            );
            let member = member.trim_start_matches('/');
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(bytes.len() as u64);
            h.set_mode(want.mode);
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_mtime(0);
            archive
                .append_data(&mut h, member, bytes.as_slice())
                .map_err(|e| invalid(&want.path, &format!("cannot archive it: {e}")))?;
            let len = bytes.len() as u64;
            let end = archive.get_ref().len() as u64;
            archived.push((k, end - len.div_ceil(512) * 512, len));
            hashed_after.push(format!("\"$t{k}\""));
            sum_arms.push_str(&format!(
                "    \"$t{k}\") [ \"$h\" = {sha} ] && h{k}=1 ;;\n",
                sha = want.sha256
            ));
            archived_modes.entry(want.mode).or_default().push(k);
        } else {
            // tee goes on reading when it cannot write the file, so the
            // next file's bytes stay where they are; a short write shows
            // in the file's size.
            text.push_str(&format!(
                "s{k}=$(head -c {size} | tee \"$t{k}\" 2>/dev/null | $H)\n\
                 [ -f \"$t{k}\" ] || e{k}='cannot write a temporary file next to it'\n\
                 [ \"${{s{k}%% *}}\" != {sha} ] || h{k}=1\n",
                sha = want.sha256
            ));
            stdin_parts.push(stdin.clone());
            streamed_modes
                .entry(want.mode)
                .or_default()
                .push(format!("\"$t{k}\""));
        }
        all_temps.push(format!("\"$t{k}\""));
        let meta = format!("{:x} {size} {:o} {owner}", 0o100000 | want.mode, want.mode);
        stat_arms.push_str(&format!(
            "    \"$t{k}\") z{k}=$s; [ \"$t $s $m $o\" = {meta} ] && i{k}=$k ;;\n",
            meta = q(&meta)?
        ));
        let (short, corrupt) = refusals(want)?;
        let wrong = q(&format!(
            "the received copy of {} is not a regular file with mode {:o} owned by {owner}, the previous file is kept",
            want.path, want.mode
        ))?;
        decide.push_str(&format!(
            "if [ -n \"$e{k}\" ]; then echo \"{UPLOADED_MARKER} {k} $e{k}\"\n\
             elif [ \"$z{k}\" != {size} ]; then echo \"{UPLOADED_MARKER} {k}\" {short} \"${{z{k}:-0}}\"\n\
             elif [ -z \"$h{k}\" ]; then echo \"{UPLOADED_MARKER} {k}\" {corrupt}\n\
             elif [ -z \"$i{k}\" ]; then echo \"{UPLOADED_MARKER} {k}\" {wrong}\n\
             else g{k}=1; fi\n"
        ));
        let d = q(&want.path)?;
        placed_arms.push_str(&format!(
            "    {d}) [ -n \"$p{k}\" ] && [ \"$t $s $m $o $k\" = {meta}\" $i{k}\" ] && echo \"{PLACED_MARKER} {k} 0\" && ok{k}=1 ;;\n",
            meta = q(&meta)?
        ));
        dests.push(d);
    }
    if !archived.is_empty() {
        // One `tar` for every in-memory file (the node's own TAR_OPTIONS
        // cleared, which could send them elsewhere); without it, each
        // file's bytes are cut out of the same archive by offset.
        let mut by_hand = String::new();
        let mut at = 0u64;
        for &(k, offset, len) in &archived {
            by_hand.push_str(&format!(
                "\x20 head -c {skip} > /dev/null\n\
                 \x20 head -c {len} > \"$t{k}\" 2>/dev/null || head -c {len} > /dev/null\n",
                skip = offset - at
            ));
            at = offset + len;
        }
        text.push_str(&format!(
            "if command -v tar > /dev/null 2>&1; then\n\
             \x20 TAR_OPTIONS= tar -x -m -f - -C / 2>/dev/null\n\
             else\n\
             {by_hand}\
             fi\n"
        ));
        for &(k, _, _) in &archived {
            text.push_str(&format!(
                "[ -d \"$u{g}\" ] || e{k}='cannot write a temporary file next to it'\n",
                g = group[k]
            ));
        }
        let bytes = archive
            .into_inner()
            .map_err(|e| invalid("the batch of uploads", &format!("cannot archive it: {e}")))?;
        stdin_parts.push(Stdin::Bytes { bytes, secret });
    }
    let temps = all_temps.join(" ");
    // The streamed files were made by `tee`, under the agent's umask.
    for (mode, ts) in &streamed_modes {
        text.push_str(&format!("chmod {mode:04o} {} 2>/dev/null\n", ts.join(" ")));
    }
    if !streamed_modes.is_empty() {
        let streamed: Vec<&str> = streamed_modes
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        text.push_str(&format!(
            "chown {owner} {} 2>/dev/null\n",
            streamed.join(" ")
        ));
    }
    // The archive's files carry their mode and owner, which `tar` run by
    // root restores: no `chmod` or `chown` for them. Any that does not
    // show them (cut out without `tar`, another `tar`, not root) gets
    // both, and every file is looked at again.
    let stat_temps = stat_each(&temps, "    *) temp_found ;;\n");
    text.push_str(&format!(
        "temp_found() {{\n\
         \x20 case \"$n\" in\n\
         {stat_arms}\
         \x20 esac\n\
         }}\n\
         {stat_temps}"
    ));
    if !archived_modes.is_empty() {
        text.push_str("r=\n");
        for (mode, ks) in &archived_modes {
            text.push_str("set --\n");
            for k in ks {
                text.push_str(&format!("[ -n \"$i{k}\" ] || set -- \"$@\" \"$t{k}\"\n"));
            }
            text.push_str(&format!(
                "[ $# -eq 0 ] || {{ chmod {mode:04o} -- \"$@\"; chown {owner} -- \"$@\"; r=1; }} 2>/dev/null\n"
            ));
        }
        text.push_str(&format!("if [ -n \"$r\" ]; then\n{stat_temps}fi\n"));
    }
    text.push_str(&format!(
        "{hash_after}\
         {decide}",
        // Never a `sha256sum` without files: it would hash the rest of stdin.
        hash_after = if hashed_after.is_empty() {
            String::new()
        } else {
            each_line(
                &format!("sha256sum -- {}", hashed_after.join(" ")),
                "h n",
                &sum_arms,
            )
        },
    ));
    // One `mv` per directory, of the files that passed; one that is still
    // in the temporary directory afterwards was not renamed.
    for (g, d) in quoted_dirs.iter().enumerate() {
        text.push_str("set --\n");
        for k in (0..files.len()).filter(|&k| group[k] == g) {
            text.push_str(&format!("[ -z \"$g{k}\" ] || set -- \"$@\" \"$t{k}\"\n"));
        }
        text.push_str(&format!(
            "[ $# -eq 0 ] || mv -f -- \"$@\" {d}/ 2>/dev/null\n"
        ));
    }
    for k in 0..files.len() {
        text.push_str(&format!(
            "if [ -z \"$g{k}\" ]; then :\n\
             elif [ -e \"$t{k}\" ]; then echo \"{UPLOADED_MARKER} {k} cannot rename it into place\"\n\
             else echo \"{UPLOADED_MARKER} {k} ok\"; p{k}=1; fi\n"
        ));
    }
    text.push_str(&stat_each(&dests.join(" "), &placed_arms));
    for (k, _) in files.iter().enumerate() {
        text.push_str(&format!(
            "[ -z \"$p{k}\" ] || [ -n \"$ok{k}\" ] || echo \"{PLACED_MARKER} {k} 1\"\n"
        ));
    }
    text.push_str("exit 0\n");
    Ok(Script {
        text,
        stdin: Stdin::Parts(stdin_parts),
    })
}

/// One `stat` of `paths` (shell words), each line read into `t s m o k n`
/// (type, size, mode, owner, identity, name) and matched by name against
/// `arms` (`case` arms).
fn stat_each(paths: &str, arms: &str) -> String {
    each_line(
        &format!("stat -c '%f %s %a %u:%g %d:%i:%.9Y %n' -- {paths}"),
        "t s m o k n",
        arms,
    )
}

/// Runs `command` (its errors discarded), reads each line of its output
/// into `fields` (the last one `n`, a file name) and matches `n` against
/// `arms` (`case` arms), in the script's own shell, so that the arms can
/// set variables.
fn each_line(command: &str, fields: &str, arms: &str) -> String {
    format!(
        "out=$({command} 2>/dev/null)\n\
         while read -r {fields}; do\n\
         \x20 case \"$n\" in\n\
         {arms}\
         \x20 esac\n\
         done <<KSCRATCH_EOF\n\
         $out\n\
         KSCRATCH_EOF\n"
    )
}

/// What [`uploads`] did with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// `Ok(check status)`: placed, and the check after it answered that
    /// status; `Err(why)`: not placed.
    pub result: Result<u32, String>,
}

/// Reads the answer of [`uploads`] for `n` files; `None` when a file is not
/// answered for.
pub fn parse_uploads(n: usize, stdout: &str) -> Option<Vec<Uploaded>> {
    let mut placed: Vec<Option<Result<(), String>>> = vec![None; n];
    let mut checked: Vec<Option<u32>> = vec![None; n];
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix(UPLOADED_MARKER) {
            let (k, what) = rest.trim_start().split_once(' ')?;
            let k: usize = k.parse().ok()?;
            *placed.get_mut(k)? = Some(if what == "ok" {
                Ok(())
            } else {
                Err(what.to_string())
            });
        } else if let Some(rest) = line.strip_prefix(PLACED_MARKER) {
            let (k, status) = rest.trim_start().split_once(' ')?;
            let k: usize = k.parse().ok()?;
            *checked.get_mut(k)? = Some(status.trim().parse().ok()?);
        }
    }
    placed
        .into_iter()
        .zip(checked)
        .map(|(p, c)| {
            Some(Uploaded {
                result: match p? {
                    Ok(()) => Ok(c?),
                    Err(why) => Err(why),
                },
            })
        })
        .collect()
}

/// How old (node clock, seconds) a file's last change must be before its
/// identity may be recorded as "hashed, and it matched": a change in the
/// same clock tick as the hash would otherwise keep the identity (git's
/// "racily clean" files). Two seconds also cover filesystems that keep
/// whole seconds.
pub const RECORD_MARGIN_SECS: u64 = 2;

/// The line between the `stat` and the `sha256sum` output of [`files_check`].
const HASHES_MARKER: &str = "kscratch-sha256";

/// Sets `H` to the node's fastest SHA-256 command, for the big files:
/// `openssl dgst` uses the CPU's SHA instructions where coreutils'
/// `sha256sum` (9.1) does not (a 21 MB etcd: 0.02 s against 0.06 s).
/// Both print the hash first, then the name (`openssl -r`: `*NAME`,
/// `sha256sum`'s binary form); `H` stays unquoted, to split into words.
const PICK_SHA256: &str = "H=sha256sum\n\
                           if command -v openssl >/dev/null 2>&1; then H='openssl dgst -sha256 -r'; fi\n";

/// One check for many upload steps' files of a node: one `stat` over all of
/// them, then one `sha256sum` over those whose type, size, mode and owner
/// already match (a file of the wrong size is never hashed).
///
/// `recorded[i]`, when set, is an identity `dev:ino:mtime:ctime` (times to
/// the nanosecond) under which file `i` was hashed earlier and held
/// `sha256`: while the file still shows that identity it is not hashed
/// again. Any write, `chmod`, `chown`, `touch` or rename updates the ctime
/// (to the kernel's clock, which nobody can set it from), and a replaced
/// file is a new inode with a new ctime, so a changed file never keeps its
/// identity; [`parse_files_check`] only offers identities older than
/// [`RECORD_MARGIN_SECS`] for recording.
///
/// Read its answer with [`parse_files_check`]; the script itself exits 0
/// unless the node's tools are missing or broken.
pub fn files_check(files: &[FileWant], recorded: &[Option<String>]) -> R<Script> {
    files_check_owned(files, recorded, "0:0")
}

fn files_check_owned(files: &[FileWant], recorded: &[Option<String>], owner: &str) -> R<Script> {
    let mut paths = Vec::with_capacity(files.len());
    let mut arms = String::new();
    for (i, f) in files.iter().enumerate() {
        if !f.batchable() {
            return Err(ShellRenderError::Invalid {
                what: f.path.clone(),
                message: "a path with a newline or a backslash is checked on its own".into(),
            });
        }
        let p = q(&f.path)?;
        let meta = q(&format!("{} {:o} {owner}", f.size, f.mode))?;
        let skip = match recorded.get(i).and_then(Option::as_ref) {
            Some(k) => format!(" [ \"$k\" = {} ] && continue;", q(k)?),
            None => String::new(),
        };
        arms.push_str(&format!(
            "    {p}) [ \"$s $m $o\" = {meta} ] || continue;{skip} ;;\n"
        ));
        paths.push(p);
    }
    let text = format!(
        "now=$(date +%s)\n\
         st=$(stat -c '%f %s %a %u:%g %d:%i:%.9Y:%.9Z %n' -- {paths} 2>/dev/null)\n\
         echo \"now $now\"\n\
         [ -z \"$st\" ] || printf '%s\\n' \"$st\"\n\
         echo {HASHES_MARKER}\n\
         set --\n\
         while read -r t s m o k n; do\n\
         \x20 [ -n \"$n\" ] || continue\n\
         \x20 [ $((0x$t & 61440)) -eq 32768 ] || continue\n\
         \x20 case \"$n\" in\n\
         {arms}\
         \x20   *) continue ;;\n\
         \x20 esac\n\
         \x20 set -- \"$@\" \"$n\"\n\
         done <<EOF\n\
         $st\n\
         EOF\n\
         [ $# -eq 0 ] || {{ {PICK_SHA256}$H -- \"$@\" 2>/dev/null; }}\n\
         exit 0\n",
        paths = paths.join(" ")
    );
    Ok(Script::new(text))
}

/// What [`files_check`] found for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFound {
    /// The desired state holds: a regular file owned by root with the
    /// mode, size and SHA-256 wanted.
    pub holds: bool,
    /// Whether the file was hashed (not vouched for by its recorded identity).
    pub hashed: bool,
    /// The identity to record: set when the file was hashed, held, and its
    /// last change is older than [`RECORD_MARGIN_SECS`].
    pub record: Option<String>,
}

/// Reads the answer of [`files_check`] for `files` (and the same
/// `recorded`); `None` when the output is not that script's.
pub fn parse_files_check(
    files: &[FileWant],
    recorded: &[Option<String>],
    stdout: &str,
) -> Option<Vec<FileFound>> {
    parse_files_check_owned(files, recorded, stdout, "0:0")
}

fn parse_files_check_owned(
    files: &[FileWant],
    recorded: &[Option<String>],
    stdout: &str,
    owner: &str,
) -> Option<Vec<FileFound>> {
    let mut lines = stdout.lines();
    let now: u64 = lines.next()?.strip_prefix("now ")?.trim().parse().ok()?;
    // path → (raw mode, size, mode, owner, identity)
    let mut stats: BTreeMap<&str, [&str; 5]> = BTreeMap::new();
    let mut marker = false;
    for line in lines.by_ref() {
        if line == HASHES_MARKER {
            marker = true;
            break;
        }
        let mut f = line.splitn(6, ' ');
        let fields = [f.next()?, f.next()?, f.next()?, f.next()?, f.next()?];
        stats.insert(f.next()?, fields);
    }
    if !marker {
        return None;
    }
    let mut sums: BTreeMap<&str, &str> = BTreeMap::new();
    for line in lines {
        let (sum, name) = line.split_once("  ").or_else(|| line.split_once(" *"))?;
        sums.insert(name, sum);
    }
    let found = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let absent = FileFound {
                holds: false,
                hashed: false,
                record: None,
            };
            let Some([raw, size, mode, own, id]) = stats.get(f.path.as_str()).copied() else {
                return absent;
            };
            let regular = u32::from_str_radix(raw, 16).is_ok_and(|m| m & 0o170000 == 0o100000);
            if !regular
                || size != f.size.to_string()
                || mode != format!("{:o}", f.mode)
                || own != owner
            {
                return absent;
            }
            if recorded.get(i).and_then(Option::as_deref) == Some(id) {
                return FileFound {
                    holds: true,
                    hashed: false,
                    record: None,
                };
            }
            let holds = sums.get(f.path.as_str()) == Some(&f.sha256.as_str());
            let changed_secs = id
                .rsplit(':')
                .next()
                .and_then(|c| c.split('.').next())
                .and_then(|c| c.parse::<u64>().ok());
            let settled = changed_secs.is_some_and(|c| c + RECORD_MARGIN_SECS < now);
            FileFound {
                holds,
                hashed: true,
                record: (holds && settled).then(|| id.to_string()),
            }
        })
        .collect();
    Some(found)
}

/// Daemons the plan itself starts: their absence is reported by the step
/// that starts them (skipped, with the reason), not as a preflight failure.
const SOFT_COMMANDS: &[&str] = &["containerd", "dockerd"];

fn preflight(checks: &[PreflightCheck]) -> R<StepScripts> {
    let mut s = String::from("failed=0\nfail() { echo \"preflight: $*\" >&2; failed=1; }\n");
    let mut listed = false;
    for c in checks {
        match c {
            PreflightCheck::Platform { os, arch } => {
                let kernel = match *os {
                    "linux" => "Linux",
                    other => other,
                };
                s.push_str(&format!(
                    "[ \"$(uname -sm)\" = {ka} ] || fail {msg}\n",
                    ka = q(&format!("{kernel} {arch}"))?,
                    msg = q(&format!("this node is not {os}/{arch}"))?,
                ));
            }
            PreflightCheck::Command { name } if SOFT_COMMANDS.contains(name) => {
                s.push_str(&format!(
                    "command -v {n} >/dev/null 2>&1 || echo {msg}\n",
                    n = q(name)?,
                    msg = q(&format!("preflight: note: {name} is not installed; the step that starts it will be skipped"))?
                ));
            }
            PreflightCheck::Command { name } => {
                s.push_str(&format!(
                    "command -v {n} >/dev/null 2>&1 || fail {msg}\n",
                    n = q(name)?,
                    msg = q(&format!("the command {name} is not installed"))?
                ));
            }
            PreflightCheck::KernelModule { name } => {
                s.push_str(&format!(
                    "{loaded} || modprobe -n -q {n} 2>/dev/null || fail {msg}\n",
                    loaded = module_loaded(name)?,
                    n = q(name)?,
                    msg = q(&format!("the kernel module {name} is not available"))?
                ));
            }
            PreflightCheck::CgroupV2 { source } => {
                s.push_str(&format!(
                    "[ \"$(stat -fc %T /sys/fs/cgroup 2>/dev/null)\" = cgroup2fs ] || fail {msg}\n",
                    msg = q(&format!("this node does not use cgroup v2 (/sys/fs/cgroup is not cgroup2fs): {source}"))?
                ));
            }
            PreflightCheck::SwapOff { source } => {
                s.push_str(&format!(
                    "[ \"$(awk 'NR>1' /proc/swaps 2>/dev/null)\" = \"\" ] || fail {msg}\n",
                    msg = q(&format!("swap is on (see /proc/swaps): {source}"))?
                ));
            }
            PreflightCheck::PortFree { port, held_by } => {
                // One `ss` without `-p` for every port (`-p` reads every
                // process's file descriptors: 0.1 s on a loaded node); the
                // owner is asked only of a port that something holds.
                if !listed {
                    s.push_str("listening=$(ss -Htln 2>/dev/null)\n");
                    listed = true;
                }
                s.push_str(&format!("case \"$listening\" in *:{port}' '*)\n"));
                let listeners = format!("$(ss -Htlnp 'sport = :{port}' 2>/dev/null)");
                match held_by.or_else(|| ports::owner(*port)).map(ports::Daemon::name) {
                    Some(owner) => s.push_str(&format!(
                        "  l=\"{listeners}\"; [ -z \"$l\" ] || case \"$l\" in *'\"{owner}\"'*) ;; *) fail {msg} ;; esac\n",
                        msg = q(&format!("TCP port {port} is in use by another program than {owner}"))?
                    )),
                    None => s.push_str(&format!("  [ -z \"{listeners}\" ] || fail {msg}\n", msg = q(&format!("TCP port {port} is in use"))?)),
                }
                s.push_str(";;\nesac\n");
            }
            PreflightCheck::NodeAddress { ip, interface } => {
                s.push_str(&format!(
                    "[ -n \"$(ip -o addr show dev {i} to {a} 2>/dev/null)\" ] || fail {msg}\n",
                    i = q(interface)?,
                    a = q(&ip.to_string())?,
                    msg = q(&format!("{ip} is not configured on {interface}"))?
                ));
            }
        }
    }
    // A failed preflight is an error (status 2), never "needed": nothing may be applied.
    s.push_str("[ \"$failed\" = 0 ] || exit 2\nexit 0\n");
    Ok(StepScripts {
        check: Script::new(s),
        apply: Script::new("true\n".into()),
        verify: None,
    })
}

fn pull_image(runtime: &Runtime, image: &str) -> R<StepScripts> {
    let i = q(image)?;
    let (tool, present, pull) = match runtime {
        Runtime::Docker(_) => (
            "docker",
            format!("docker image inspect {i} >/dev/null 2>&1"),
            format!("docker pull {i}"),
        ),
        Runtime::Containerd => (
            "ctr",
            format!("ctr -n k8s.io images ls -q | grep -qxF {i}"),
            format!("ctr -n k8s.io images pull {i}"),
        ),
    };
    let reason = q(&format!("{tool} is not installed: cannot pull {image}"))?;
    Ok(StepScripts {
        check: Script::new(format!("command -v {tool} >/dev/null 2>&1 || {{ echo {reason}; exit {EXIT_NOT_APPLICABLE}; }}\nif {present}; then exit 0; fi\nexit 1\n")),
        apply: Script::new(format!("set -e\n{pull}\n")),
        verify: None,
    })
}

/// One file per key, so that steps running in parallel never write the same file.
fn sysctl_file(key: &str) -> String {
    kscratch_core::plan::sysctl_dropin(key)
}

fn set_sysctl(key: &str, value: &str) -> R<StepScripts> {
    let file = sysctl_file(key);
    let f = q(&file)?;
    let text = format!("{key} = {value}");
    let line = q(&text)?;
    // The shell writes the value to its /proc/sys file (no program); a key
    // written with `/` separators (an interface name with a `.`) goes
    // through `sysctl`, which knows that form.
    let write = if key.contains('/') {
        format!("sysctl -q -w {}", q(&format!("{key}={value}"))?)
    } else {
        format!(
            "printf '%s\\n' {} > {}",
            q(value)?,
            q(&format!("/proc/sys/{}", key.replace('.', "/")))?
        )
    };
    Ok(StepScripts {
        check: Script::new(format!(
            // `sysctl -n`, not the shell's `read` of /proc/sys: the kernel's
            // integer handlers answer only a read from offset 0, and `read`
            // takes one byte at a time (it would get "3" of "32768").
            "[ \"$(sysctl -n {k} 2>/dev/null)\" = {v} ] || exit 1\n{persisted} || exit 1\nexit 0\n",
            k = q(key)?,
            v = q(value)?,
            persisted = file_is_line(&file, &text)?,
        )),
        apply: Script::new(format!(
            "set -e\n{write}\n[ -d /etc/sysctl.d ] || mkdir -p /etc/sysctl.d\nprintf '%s\\n' {line} > {f}.tmp\nmv -f {f}.tmp {f}\n"
        )),
        verify: None,
    })
}

/// A test (no process) that file `path` holds exactly one line, `line`.
fn file_is_line(path: &str, line: &str) -> R<String> {
    Ok(format!(
        "{{ IFS= read -r l && ! IFS= read -r x && [ -z \"$x\" ] && [ \"$l\" = {line} ]; }} 2>/dev/null < {path}",
        line = q(line)?,
        path = q(path)?
    ))
}

/// A test that a module is loaded or built in. Built-in modules without
/// parameters have no `/sys/module` entry: for those the kernel interface
/// they provide is the evidence (`br_netfilter` adds `/proc/sys/net/bridge`).
fn module_loaded(name: &str) -> R<String> {
    let n = q(name)?;
    let builtin = format!("grep -qs /{name}.ko \"/lib/modules/$(uname -r)/modules.builtin\"");
    Ok(match name {
        "br_netfilter" => format!("{{ [ -d /sys/module/{n} ] || [ -d /proc/sys/net/bridge ]; }}"),
        _ => format!("{{ [ -d /sys/module/{n} ] || {builtin}; }}"),
    })
}

fn load_module(name: &str) -> R<StepScripts> {
    let n = q(name)?;
    let loaded = module_loaded(name)?;
    let file = kscratch_core::plan::module_dropin(name);
    let f = q(&file)?;
    Ok(StepScripts {
        check: Script::new(format!(
            "{loaded} || exit 1\n{persisted} || exit 1\nexit 0\n",
            persisted = file_is_line(&file, name)?
        )),
        apply: Script::new(format!(
            "set -e\n{loaded} || modprobe {n}\n[ -d /etc/modules-load.d ] || mkdir -p /etc/modules-load.d\nprintf '%s\\n' {n} > {f}.tmp\nmv -f {f}.tmp {f}\n"
        )),
        verify: None,
    })
}

fn delete_link(name: &str) -> R<StepScripts> {
    let n = q(name)?;
    Ok(StepScripts {
        check: Script::new(format!("if ip link show dev {n} >/dev/null 2>&1; then exit 1; fi\nexit 0\n")),
        apply: Script::new(format!("set -e\nif ip link show dev {n} >/dev/null 2>&1; then\n  ip link set dev {n} down\n  ip link delete {n}\nfi\n")),
        verify: None,
    })
}

fn delete_iptables(
    table: &str,
    rules: &[kscratch_core::net::iptables::Rule],
    chains: &[String],
) -> R<StepScripts> {
    let t = q(table)?;
    let mut check = String::new();
    let mut apply = String::new();
    for r in rules {
        let mut argv = vec![r.chain.clone()];
        argv.extend(r.to_args());
        let spec = shell::join(&argv)?;
        check.push_str(&format!(
            "if iptables -w -t {t} -C {spec} >/dev/null 2>&1; then exit 1; fi\n"
        ));
        // A rule may be there more than once: delete until none is left.
        apply.push_str(&format!(
            "while iptables -w -t {t} -D {spec} >/dev/null 2>&1; do :; done\n"
        ));
    }
    for c in chains {
        let c = q(c)?;
        check.push_str(&format!(
            "if iptables -w -t {t} -S {c} >/dev/null 2>&1; then exit 1; fi\n"
        ));
        apply.push_str(&format!("if iptables -w -t {t} -S {c} >/dev/null 2>&1; then\n  iptables -w -t {t} -F {c}\n  iptables -w -t {t} -X {c}\nfi\n"));
    }
    check.push_str("exit 0\n");
    Ok(StepScripts {
        check: Script::new(check),
        apply: Script::new(format!("set -e\n{apply}")),
        verify: None,
    })
}

fn inet(addr: &str) -> &'static str {
    if addr.contains(':') {
        "inet6"
    } else {
        "inet"
    }
}

/// `cbr0` with its MTU, its set MAC ([`bridge_mac`]: a bridge whose MAC was
/// never set changes it as ports come and go) and its address.
fn create_bridge(name: &str, net: &IpNet, mtu: u32) -> R<StepScripts> {
    let addr = net.to_string();
    let n = q(name)?;
    let mac = bridge_mac(net.addr());
    let has_addr = q(&format!(" {} {addr} ", inet(&addr)))?;
    // The shell's own `read` of sysfs, not a `cat` or an `ip` per field:
    // every node runs this check at least twice per apply. `flags` bit 0 is
    // IFF_UP, the "UP" that `ip link` shows.
    let check = format!(
        "[ -d /sys/class/net/{n}/bridge ] || exit 1\n\
         read -r mtu < /sys/class/net/{n}/mtu && [ \"$mtu\" = {mtu} ] || exit 1\n\
         read -r mac < /sys/class/net/{n}/address && [ \"$mac\" = {mac} ] || exit 1\n\
         read -r flags < /sys/class/net/{n}/flags && [ $((flags & 1)) = 1 ] || exit 1\n\
         ip -o addr show dev {n} | grep -qF -- {has_addr} || exit 1\n\
         exit 0\n"
    );
    let batch = [
        vec!["link", "set", "dev", name, "mtu", &mtu.to_string()],
        vec!["link", "set", "dev", name, "address", &mac.to_string()],
        vec!["addr", "replace", &addr, "dev", name],
        vec!["link", "set", "dev", name, "up"],
    ]
    .iter()
    .map(|args| Ok(format!("{}\n", shell::join(args.iter().copied())?)))
    .collect::<R<String>>()?;
    let apply = format!(
        "set -e\n\
         if [ -e /sys/class/net/{n} ] && [ ! -d /sys/class/net/{n}/bridge ]; then\n  echo {msg} >&2\n  exit 1\nfi\n\
         [ -d /sys/class/net/{n}/bridge ] || ip link add {n} type bridge\n\
         ip -batch - <<'{HEREDOC}'\n{batch}{HEREDOC}\n",
        msg = q(&format!("{name} exists and is not a bridge: remove it first"))?
    );
    Ok(StepScripts {
        check: Script::new(check),
        apply: Script::new(apply),
        verify: None,
    })
}

fn create_vxlan(v: &VxlanDevice) -> R<StepScripts> {
    let n = q(&v.name)?;
    let dev = q(&v.dev)?;
    let local = q(&v.local.to_string())?;
    let m = q(&v.mac.to_string())?;
    let addr = v.addr.to_string();
    let a = q(&addr)?;
    let has_addr = q(&format!(" {} {addr} ", inet(&addr)))?;
    // The device's parameters, as `ip -d link show` prints them.
    let params = [
        format!("vxlan id {} ", v.vni),
        format!(" local {} ", v.local),
        format!(" dev {} ", v.dev),
        format!(" dstport {} ", v.port),
        " nolearning ".to_string(),
    ];
    let mut same = String::from("same() {\n  d=$(ip -d -o link show dev ");
    same.push_str(&n);
    same.push_str(" 2>/dev/null) || return 1\n");
    for p in &params {
        same.push_str(&format!(
            "  case \"$d\" in *{}*) ;; *) return 1 ;; esac\n",
            q(p)?
        ));
    }
    same.push_str("  return 0\n}\n");
    let check = format!(
        "{same}same || exit 1\n\
         [ \"$(cat /sys/class/net/{n}/mtu)\" = {mtu} ] || exit 1\n\
         [ \"$(cat /sys/class/net/{n}/address)\" = {m} ] || exit 1\n\
         ip -o link show dev {n} | grep -q '[<,]UP[,>]' || exit 1\n\
         ip -o addr show dev {n} | grep -qF -- {has_addr} || exit 1\n\
         exit 0\n",
        mtu = v.mtu
    );
    let apply = format!(
        "set -e\n{same}\
         # A device with other parameters cannot be changed in place: re-create it.\n\
         if ip link show dev {n} >/dev/null 2>&1 && ! same; then ip link delete {n}; fi\n\
         ip link show dev {n} >/dev/null 2>&1 || ip link add {n} type vxlan id {vni} local {local} dev {dev} dstport {port} nolearning\n\
         ip link set dev {n} address {m} mtu {mtu}\n\
         ip addr replace {a} dev {n}\n\
         ip link set dev {n} up\n",
        vni = v.vni,
        port = v.port,
        mtu = v.mtu
    );
    Ok(StepScripts {
        check: Script::new(check),
        apply: Script::new(apply),
        verify: None,
    })
}

/// Routes to every other node's pod CIDR; for the overlay also the static
/// neighbour and FDB entries of each remote VTEP (flannel's layout). Apply
/// feeds `ip -batch` / `bridge -batch`: one process each, whatever the
/// number of nodes.
fn pod_routes(plan: &Plan, node: usize, via: &PodRouteVia) -> R<StepScripts> {
    let entries = plan.pod_network();
    let me = entries
        .get(node)
        .map(|e| e.node.clone())
        .unwrap_or_default();
    let mut routes: Vec<String> = Vec::new();
    let mut neighbors: Vec<String> = Vec::new();
    let mut fdb: Vec<String> = Vec::new();
    let mut ip_batch = String::new();
    let mut fdb_batch = String::new();
    for e in entries.iter().filter(|e| e.node != me) {
        match via {
            PodRouteVia::Underlay { dev } => {
                let r = Route::via(e.pod_cidr, e.node_ip, dev);
                routes.push(r.emit());
                ip_batch.push_str(&format!("route replace {}\n", shell::join(r.to_args())?));
            }
            PodRouteVia::Overlay { dev } => {
                let vtep = e.pod_cidr.network();
                let mac = e.vtep_mac.ok_or_else(|| ShellRenderError::Invalid {
                    what: format!("the overlay route to {}", e.node),
                    message: "the pod network table has no VTEP MAC".into(),
                })?;
                let r = Route {
                    onlink: true,
                    ..Route::via(e.pod_cidr, vtep, dev)
                };
                let n = Neighbor::permanent(vtep, dev, mac);
                let f = FdbEntry::vxlan(mac, dev, e.node_ip);
                routes.push(r.emit());
                neighbors.push(format!("{vtep} lladdr {mac} PERMANENT"));
                fdb.push(format!("{mac} dst {} self permanent", e.node_ip));
                ip_batch.push_str(&format!("route replace {}\n", shell::join(r.to_args())?));
                ip_batch.push_str(&format!("neigh replace {}\n", shell::join(n.to_args())?));
                fdb_batch.push_str(&format!("fdb replace {}\n", shell::join(f.to_args())?));
            }
        }
    }
    // One listing per table, however many peers: a listing per peer cost
    // three processes each, on every node, in every check.
    let mut check = all_listed("ip route show", &routes);
    if let PodRouteVia::Overlay { dev } = via {
        let d = q(dev)?;
        check.push_str(&all_listed(&format!("ip neigh show dev {d}"), &neighbors));
        check.push_str(&all_listed(&format!("bridge fdb show dev {d}"), &fdb));
    }
    check.push_str("exit 0\n");
    if ip_batch.is_empty() {
        // A one-node cluster has no routes to install.
        return Ok(StepScripts {
            check: Script::new("exit 0\n".into()),
            apply: Script::new("true\n".into()),
            verify: None,
        });
    }
    // The batches are here-documents: visible in a dry run, and not secret.
    // FDB entries first: a route through the VTEP is useless until its MAC is known.
    let mut apply = String::from("set -e\n");
    if !fdb_batch.is_empty() {
        apply.push_str(&format!(
            "bridge -batch - <<'{HEREDOC}'\n{fdb_batch}{HEREDOC}\n"
        ));
    }
    apply.push_str(&format!("ip -batch - <<'{HEREDOC}'\n{ip_batch}{HEREDOC}\n"));
    Ok(StepScripts {
        check: Script::new(check),
        apply: Script::new(apply),
        verify: None,
    })
}

/// A check that each of `want` is a whole line of what `list` prints
/// (trailing blanks trimmed, as `ip` pads some lines): one listing and one
/// `grep` for any number of lines. `grep -f -` takes the listing's lines as
/// the patterns and counts the wanted lines (fd 3) that equal one of them.
fn all_listed(list: &str, want: &[String]) -> String {
    if want.is_empty() {
        return String::new();
    }
    let lines: String = want.iter().map(|l| format!("{l}\n")).collect();
    format!(
        "n=$({list} | sed 's/ *$//' | grep -cxF -f - /dev/fd/3 3<<'{HEREDOC}'\n{lines}{HEREDOC}\n)\n\
         [ \"$n\" = {count} ] || exit 1\n",
        count = want.len()
    )
}

/// `ip route del` for each route that `ip route show` lists with the same
/// destination, gateway and device.
fn delete_routes(routes: &[Route]) -> R<StepScripts> {
    let mut check = String::new();
    let mut apply = String::from("set -e\n");
    for r in routes {
        let mut sel = vec!["exact".to_string(), r.dst.to_string()];
        if let Some(v) = r.via {
            sel.extend(["via".into(), v.to_string()]);
        }
        if let Some(d) = &r.dev {
            sel.extend(["dev".into(), d.clone()]);
        }
        let sel = shell::join(&sel)?;
        let del = shell::join(r.to_args())?;
        check.push_str(&format!("[ -z \"$(ip route show {sel})\" ] || exit 1\n"));
        apply.push_str(&format!(
            "if [ -n \"$(ip route show {sel})\" ]; then ip route del {del}; fi\n"
        ));
    }
    check.push_str("exit 0\n");
    Ok(StepScripts {
        check: Script::new(check),
        apply: Script::new(apply),
        verify: None,
    })
}

/// `iptables -C || iptables -I CHAIN 1`: the rule first in its chain.
fn insert_iptables(table: &str, rule: &kscratch_core::net::iptables::Rule) -> R<StepScripts> {
    let mut argv = vec![
        "iptables".to_string(),
        "-w".into(),
        "-t".into(),
        table.into(),
        "-C".into(),
        rule.chain.clone(),
    ];
    argv.extend(rule.to_args());
    let check_cmd = shell::join(&argv)?;
    argv[4] = "-I".into();
    argv.insert(6, "1".into());
    let insert = shell::join(&argv)?;
    Ok(StepScripts {
        check: Script::new(format!(
            "if {check_cmd} 2>/dev/null; then exit 0; fi\nexit 1\n"
        )),
        apply: Script::new(format!("set -e\n{check_cmd} 2>/dev/null || {insert}\n")),
        verify: None,
    })
}

/// A check's prologue: the device must exist, or the check fails (status 2).
fn device_exists(n: &str) -> R<String> {
    let msg = q(&format!("Cannot find device \"{n}\""))?;
    let n = q(n)?;
    Ok(format!(
        "ip link show dev {n} >/dev/null 2>&1 || {{ echo {msg} >&2; exit 2; }}\n"
    ))
}

/// Damage that cuts the connection it is sent over (the node's NIC, its
/// power) runs detached, two seconds later, so that the step can report
/// first; until then a marker in [`RUN_DIR`] says it is under way, and the
/// check accepts it.
fn deferred(marker: &str, command: &str) -> R<String> {
    let m = q(&format!("{RUN_DIR}/{marker}"))?;
    let inner = q(&format!("sleep 2; {command}; rm -f {m}"))?;
    Ok(format!(
        "mkdir -p {dir}\n: > {m}\nsetsid nohup sh -c {inner} >/dev/null 2>&1 < /dev/null &\n",
        dir = q(RUN_DIR)?
    ))
}

fn set_link_down(name: &str) -> R<StepScripts> {
    let n = q(name)?;
    let marker = format!("link-{name}.down-pending");
    let m = q(&format!("{RUN_DIR}/{marker}"))?;
    let exists = device_exists(name)?;
    Ok(StepScripts {
        check: Script::new(format!(
            "{exists}[ -f {m} ] && exit 0\nif ip -o link show dev {n} | grep -q '[<,]UP[,>]'; then exit 1; fi\nexit 0\n"
        )),
        apply: Script::new(format!(
            "set -e\n{}",
            deferred(&marker, &format!("ip link set dev {n} down"))?
        )),
        verify: None,
    })
}

fn set_link_mtu(name: &str, mtu: u32) -> R<StepScripts> {
    let n = q(name)?;
    let exists = device_exists(name)?;
    Ok(StepScripts {
        check: Script::new(format!(
            "{exists}[ \"$(cat /sys/class/net/{n}/mtu)\" = {mtu} ] || exit 1\nexit 0\n"
        )),
        apply: Script::new(format!("set -e\nip link set dev {n} mtu {mtu}\n")),
        verify: None,
    })
}

fn delete_fdb(entries: &[FdbEntry]) -> R<StepScripts> {
    let mut check = String::new();
    let mut apply = String::from("set -e\n");
    for e in entries {
        let d = q(&e.dev)?;
        let mut line = e.mac.to_string();
        let mut del = vec![e.mac.to_string(), "dev".into(), e.dev.clone()];
        if let Some(dst) = e.dst {
            line.push_str(&format!(" dst {dst}"));
            del.extend(["dst".into(), dst.to_string()]);
        }
        if e.self_ {
            del.push("self".into());
        }
        // `bridge fdb show` lines start with the MAC and `dst`: match that prefix.
        let pat = q(&format!("{line} "))?;
        let present = format!("bridge fdb show dev {d} | grep -qF -- {pat}");
        check.push_str(&format!("if {present}; then exit 1; fi\n"));
        apply.push_str(&format!(
            "if {present}; then bridge fdb del {}; fi\n",
            shell::join(&del)?
        ));
    }
    check.push_str("exit 0\n");
    Ok(StepScripts {
        check: Script::new(check),
        apply: Script::new(apply),
        verify: None,
    })
}

fn delete_neighbors(entries: &[Neighbor]) -> R<StepScripts> {
    let mut check = String::new();
    let mut apply = String::from("set -e\n");
    for e in entries {
        let sel = shell::join([
            "to".to_string(),
            e.addr.to_string(),
            "dev".into(),
            e.dev.clone(),
        ])?;
        let present = format!("[ -n \"$(ip neigh show {sel})\" ]");
        check.push_str(&format!("if {present}; then exit 1; fi\n"));
        apply.push_str(&format!(
            "if {present}; then ip neigh del {}; fi\n",
            shell::join([e.addr.to_string(), "dev".into(), e.dev.clone()])?
        ));
    }
    check.push_str("exit 0\n");
    Ok(StepScripts {
        check: Script::new(check),
        apply: Script::new(apply),
        verify: None,
    })
}

/// Stops the process group a supervisor leads (`$old` holds its PID, which
/// is also its group's ID: `setsid` made it so), TERM first, KILL after 10 s.
/// The daemon is a child in that group, so signalling the group is what stops
/// it: signalling only the supervisor would orphan a daemon that still holds
/// its port. `kill -TERM "-$old"`, not `kill -TERM -- "-$old"`: dash's `kill`
/// takes no `--` ("Illegal number: -"). `indent` is the lines' leading spaces.
fn stop_process_group(indent: &str) -> String {
    [
        "kill -TERM \"-$old\" 2>/dev/null || kill -TERM \"$old\" 2>/dev/null || true",
        "i=0; while kill -0 \"-$old\" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done",
        "kill -KILL \"-$old\" 2>/dev/null || true",
    ]
    .iter()
    .map(|l| format!("{indent}{l}\n"))
    .collect()
}

/// Stops the service under systemd, or the supervisor [`start_service`]
/// started (its whole process group). The rules it programmed stay.
fn stop_service(name: &str) -> R<StepScripts> {
    let u = q(&format!("{name}.service"))?;
    let dir = RUN_DIR;
    let pid = q(&format!("{dir}/{name}.pid"))?;
    let stop = stop_process_group("  ");
    Ok(StepScripts {
        check: Script::new(format!(
            "if [ -d /run/systemd/system ]; then\n\
             \x20 if systemctl is-active --quiet {u}; then exit 1; fi\n\
             \x20 exit 0\n\
             fi\n\
             [ -f {pid} ] || exit 0\n\
             # The group: a daemon outliving its supervisor still runs.\n\
             if kill -0 \"-$(cat {pid})\" 2>/dev/null; then exit 1; fi\n\
             exit 0\n"
        )),
        apply: Script::new(format!(
            "set -e\n\
             if [ -d /run/systemd/system ]; then\n\
             \x20 systemctl stop {u}\n\
             \x20 exit 0\n\
             fi\n\
             if [ -f {pid} ]; then\n\
             \x20 old=$(cat {pid})\n\
             {stop}\
             \x20 rm -f {pid}\n\
             fi\n"
        )),
        verify: None,
    })
}

fn delete_file(path: &str) -> R<StepScripts> {
    let p = q(path)?;
    let reload = if path.starts_with("/etc/systemd/") {
        "if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi\n"
    } else {
        ""
    };
    Ok(StepScripts {
        check: Script::new(format!("if [ -e {p} ]; then exit 1; fi\nexit 0\n")),
        apply: Script::new(format!("set -e\nrm -f {p}\n{reload}")),
        verify: None,
    })
}

/// Stops and disables a service: under systemd `systemctl disable --now`
/// (a unit that is not loaded is already done); without an init system,
/// its supervisor's process group is stopped (a daemon outliving its
/// supervisor too) and the supervisor's files in [`RUN_DIR`] go: pid file,
/// run script, log and a oneshot's done marker.
fn disable_service(name: &str) -> R<StepScripts> {
    let u = q(&format!("{name}.service"))?;
    let files: Vec<String> = ["pid", "run", "run.tmp", "log", "done"]
        .iter()
        .map(|ext| q(&format!("{RUN_DIR}/{name}.{ext}")))
        .collect::<R<_>>()?;
    let pid = &files[0];
    let any = files
        .iter()
        .map(|f| format!("[ -e {f} ]"))
        .collect::<Vec<_>>()
        .join(" || ");
    let stop = stop_process_group("  ");
    Ok(StepScripts {
        verify: None,
        check: Script::new(format!(
            "if [ -d /run/systemd/system ]; then\n\
             \x20 if systemctl is-active --quiet {u}; then exit 1; fi\n\
             \x20 if systemctl is-enabled --quiet {u} 2>/dev/null; then exit 1; fi\n\
             fi\n\
             if {any}; then exit 1; fi\n\
             exit 0\n"
        )),
        apply: Script::new(format!(
            "set -e\n\
             if [ -d /run/systemd/system ]; then\n\
             \x20 if systemctl cat {u} >/dev/null 2>&1; then systemctl disable --now --quiet {u}; fi\n\
             fi\n\
             if [ -f {pid} ]; then\n\
             \x20 old=$(cat {pid})\n\
             {stop}\
             fi\n\
             rm -f {files}\n",
            files = files.join(" ")
        )),
    })
}

/// The chains of a table that `patterns` name (a trailing `*`: a prefix),
/// unlinked, flushed and deleted, as `kube-proxy --cleanup` does: first
/// every rule of another chain that jumps to one (`iptables -S` prints a
/// rule in the form `-D` takes back), then `-F` each, then `-X` each.
fn delete_iptables_chains(table: &str, patterns: &[String]) -> R<StepScripts> {
    let mut cases = Vec::new();
    for p in patterns {
        if p.is_empty() || p == "*" {
            return Err(ShellRenderError::Invalid {
                what: format!("deleting the chains {patterns:?}"),
                message: "a pattern must name chains, not all of them".into(),
            });
        }
        cases.push(match p.strip_suffix('*') {
            Some(prefix) => format!("{}*", q(prefix)?),
            None => q(p)?,
        });
    }
    let t = q(table)?;
    let named = format!(
        "named() {{\n  case \"$1\" in\n    {}) return 0 ;;\n  esac\n  return 1\n}}\n",
        cases.join("|")
    );
    let chains = format!("iptables -w -t {t} -S | sed -n 's/^-N //p'");
    Ok(StepScripts {
        verify: None,
        check: Script::new(format!(
            "{named}{chains} | while IFS= read -r c; do\n  if named \"$c\"; then exit 1; fi\ndone || exit 1\nexit 0\n"
        )),
        apply: Script::new(format!(
            "set -e\n{named}\
             rules=$(iptables -w -t {t} -S)\n\
             printf '%s\\n' \"$rules\" | while IFS= read -r line; do\n\
             \x20 case \"$line\" in -A\\ *) ;; *) continue ;; esac\n\
             \x20 chain=${{line#-A }}; chain=${{chain%% *}}\n\
             \x20 case \"$line\" in *' -j '*) ;; *) continue ;; esac\n\
             \x20 target=${{line##* -j }}; target=${{target%% *}}\n\
             \x20 if named \"$target\" && ! named \"$chain\"; then\n\
             \x20   eval \"iptables -w -t {t} -D ${{line#-A }}\"\n\
             \x20 fi\n\
             done\n\
             doomed=$({chains} | while IFS= read -r c; do if named \"$c\"; then printf '%s\\n' \"$c\"; fi; done)\n\
             for c in $doomed; do iptables -w -t {t} -F \"$c\"; done\n\
             for c in $doomed; do iptables -w -t {t} -X \"$c\"; done\n"
        )),
    })
}

/// Removes what is in a directory, keeping the directory (it may be a
/// mount point). Absent or empty: satisfied.
fn clear_directory(path: &str) -> R<StepScripts> {
    if !path.starts_with('/') || path.trim_end_matches('/').is_empty() {
        return Err(ShellRenderError::Invalid {
            what: format!("emptying {path}"),
            message: "the directory must be absolute and not /".into(),
        });
    }
    let p = q(path)?;
    let nonempty = format!("[ -d {p} ] && [ -n \"$(ls -A {p})\" ]");
    Ok(StepScripts {
        verify: None,
        check: Script::new(format!("if {nonempty}; then exit 1; fi\nexit 0\n")),
        apply: Script::new(format!(
            "set -e\nif [ -d {p} ]; then find {p} -mindepth 1 -maxdepth 1 -exec rm -rf -- {{}} +; fi\n"
        )),
    })
}

fn unload_module(name: &str) -> R<StepScripts> {
    let n = q(name)?;
    let loaded = module_loaded(name)?;
    let f = q(&kscratch_core::plan::module_dropin(name))?;
    Ok(StepScripts {
        check: Script::new(format!(
            "if {loaded}; then exit 1; fi\nif [ -e {f} ]; then exit 1; fi\nexit 0\n"
        )),
        apply: Script::new(format!(
            "set -e\nrm -f {f}\nif {loaded}; then modprobe -r {n}; fi\n"
        )),
        verify: None,
    })
}

fn scale_deployment(
    namespace: &str,
    name: &str,
    replicas: u32,
    user: kscratch_core::plan::KubeconfigUser,
) -> R<StepScripts> {
    let k = q(Asset::Kubeconfig(user).path())?;
    let (ns, n) = (q(namespace)?, q(name)?);
    Ok(StepScripts {
        check: Script::new(format!(
            "{}r=$(kubectl --kubeconfig {k} --request-timeout=20s -n {ns} get deployment {n} -o 'jsonpath={{.spec.replicas}}') || exit 2\n[ \"$r\" = {replicas} ] || exit 1\nexit 0\n",
            kubectl_guard()
        )),
        apply: Script::new(format!(
            "set -e\nkubectl --kubeconfig {k} --request-timeout=20s -n {ns} scale deployment {n} --replicas={replicas}\n"
        )),
        verify: None,
    })
}

fn power_off() -> R<StepScripts> {
    let marker = "power-off-pending";
    let m = q(&format!("{RUN_DIR}/{marker}"))?;
    Ok(StepScripts {
        // A machine that is off answers nothing: while it still answers, it is not off.
        check: Script::new(format!("[ -f {m} ] && exit 0\nexit 1\n")),
        apply: Script::new(format!(
            "set -e\n{}",
            deferred(marker, "systemctl poweroff || poweroff")?
        )),
        verify: None,
    })
}

/// Ends the here-documents of batch input; no generated line can equal it.
const HEREDOC: &str = "KSCRATCH_EOF";

/// The argv of a service's unit and the environment files it reads.
fn service_argv(s: &Scenario, node: usize, svc: Service) -> R<(Vec<String>, Vec<String>)> {
    let c = krender::unit_command(s, Some(node), svc)?;
    Ok((c.argv, c.environment_files))
}

/// Whether the service's unit is `Type=oneshot` (it runs once and is done).
fn is_oneshot(s: &Scenario, node: usize, svc: Service) -> R<bool> {
    Ok(krender::unit_command(s, Some(node), svc)?.oneshot)
}

/// A oneshot service: under systemd, enabled and run (`RemainAfterExit`
/// keeps it active); without an init system its command runs once from
/// `{RUN_DIR}/NAME.run` (what a boot would run again), and `NAME.done`
/// records that this very script succeeded.
/// Under systemd, a unit's check: enabled, active and its file loaded
/// (`u` quoted); the script exits there.
fn systemd_check(u: &str) -> String {
    format!(
        "if [ -d /run/systemd/system ]; then\n\
         \x20 systemctl is-enabled --quiet {u} || exit 1\n\
         \x20 systemctl is-active --quiet {u} || exit 1\n\
         \x20 [ \"$(systemctl show -p NeedDaemonReload --value {u})\" = no ] || exit 1\n\
         \x20 exit 0\n\
         fi\n"
    )
}

/// Under systemd, a unit's apply: reload, enable, (re)start; the script
/// exits there.
fn systemd_apply(u: &str) -> String {
    format!(
        "if [ -d /run/systemd/system ]; then\n\
         \x20 systemctl daemon-reload\n\
         \x20 systemctl enable --quiet {u}\n\
         \x20 systemctl restart {u}\n\
         \x20 exit 0\n\
         fi\n"
    )
}

fn start_oneshot(name: &str, argv: &[String]) -> R<StepScripts> {
    let mut words = Vec::new();
    for w in argv {
        words.push(q(w)?);
    }
    let run = format!(
        "#!/bin/sh\n# Written by kscratch: runs {name} once (at boot, without an init system).\nexec {}\n",
        words.join(" ")
    );
    let sum = q(&format!(
        "{}  {RUN_DIR}/{name}.run",
        sha256_hex(run.as_bytes())
    ))?;
    let u = q(&format!("{name}.service"))?;
    let (systemd_check, systemd_apply) = (systemd_check(&u), systemd_apply(&u));
    let dir = RUN_DIR;
    let check = format!(
        "{systemd_check}\
         [ -f {dir}/{name}.done ] || exit 1\n\
         printf '%s\\n' {sum} | sha256sum -c --status || exit 1\n\
         exit 0\n"
    );
    let apply = format!(
        "set -e\n\
         {systemd_apply}\
         [ -d {dir} ] || mkdir -p {dir}\n\
         [ ! -e {dir}/{name}.done ] || rm -f {dir}/{name}.done\n\
         cat > {dir}/{name}.run.tmp\n\
         chmod 0755 {dir}/{name}.run.tmp\n\
         mv -f {dir}/{name}.run.tmp {dir}/{name}.run\n\
         sh {dir}/{name}.run </dev/null\n\
         : > {dir}/{name}.done\n"
    );
    Ok(StepScripts {
        check: Script::new(check),
        apply: Script::with_stdin(
            apply,
            Stdin::Bytes {
                bytes: run.into_bytes(),
                secret: false,
            },
        ),
        verify: None,
    })
}

/// `/usr/bin/env containerd ...` runs `containerd`; otherwise argv[0].
fn program_of(argv: &[String]) -> &str {
    match argv {
        [env, prog, ..] if env == "/usr/bin/env" => prog,
        [prog, ..] => prog,
        [] => "",
    }
}

/// Whether a unit word is a `$VAR` reference (systemd splits its value into words; so does sh).
fn is_var_ref(w: &str) -> bool {
    let Some(name) = w.strip_prefix('$') else {
        return false;
    };
    let name = name
        .strip_prefix('{')
        .and_then(|n| n.strip_suffix('}'))
        .unwrap_or(name);
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// The supervisor's run script: what `Restart=always` + `RestartSec=5` do,
/// without an init system.
fn supervisor_script(name: &str, argv: &[String], env_files: &[String]) -> R<String> {
    let mut words = Vec::new();
    for w in argv {
        words.push(if is_var_ref(w) { w.clone() } else { q(w)? });
    }
    let mut s = format!("#!/bin/sh\n# Written by kscratch: runs {name} without an init system and restarts it when it dies.\n");
    for f in env_files {
        let f = q(f)?;
        s.push_str(&format!("if [ -r {f} ]; then set -a; . {f}; set +a; fi\n"));
    }
    s.push_str(&format!(
        "while :; do\n  {cmd}\n  echo \"kscratch: {name} exited with status $?; restarting in 5s\" >&2\n  sleep 5\ndone\n",
        cmd = words.join(" ")
    ));
    Ok(s)
}

fn start_service(s: &Scenario, node: usize, service: Service) -> R<StepScripts> {
    let name = service.name();
    let (argv, env_files) = service_argv(s, node, service)?;
    if is_oneshot(s, node, service)? {
        return start_oneshot(name, &argv);
    }
    let prog = program_of(&argv).to_string();
    let n = q(name)?;
    let unit = format!("{name}.service");
    let u = q(&unit)?;
    let (systemd_check, systemd_apply) = (systemd_check(&u), systemd_apply(&u));
    let run = supervisor_script(name, &argv, &env_files)?;
    let run_sha = sha256_hex(run.as_bytes());
    let dir = RUN_DIR;
    let p = q(&prog)?;
    let absent = q(&format!(
        "{prog} is not installed on this node: {name} cannot start"
    ))?;
    let installed = if prog.starts_with('/') {
        format!("[ -x {p} ]")
    } else {
        format!("command -v {p} >/dev/null 2>&1")
    };
    let run_sum = q(&format!("{run_sha}  {dir}/{name}.run"))?;
    let stop = stop_process_group("    ");
    let check = format!(
        "{installed} || {{ echo {absent}; exit {EXIT_NOT_APPLICABLE}; }}\n\
         {systemd_check}\
         # No init system: the supervisor must be alive and running this very command.\n\
         [ -f {dir}/{name}.pid ] || exit 1\n\
         pid=; read -r pid < {dir}/{name}.pid || [ -n \"$pid\" ] || exit 1\n\
         kill -0 \"$pid\" 2>/dev/null || exit 1\n\
         printf '%s\\n' {run_sum} | sha256sum -c --status || exit 1\n\
         exit 0\n"
    );
    let apply = format!(
        "set -e\n\
         {systemd_apply}\
         [ -d {dir} ] || mkdir -p {dir}\n\
         # Stop an earlier supervisor and its daemon (its own process group).\n\
         if [ -f {dir}/{name}.pid ]; then\n\
         \x20 old=; read -r old < {dir}/{name}.pid || true\n\
         \x20 if kill -0 \"$old\" 2>/dev/null; then\n\
         {stop}\
         \x20 fi\n\
         \x20 rm -f {dir}/{name}.pid\n\
         fi\n\
         cat > {dir}/{name}.run.tmp\n\
         chmod 0755 {dir}/{name}.run.tmp\n\
         mv -f {dir}/{name}.run.tmp {dir}/{name}.run\n\
         setsid sh -c 'echo $$ > \"$1\"; exec sh \"$2\"' {n} {dir}/{name}.pid {dir}/{name}.run >> {dir}/{name}.log 2>&1 < /dev/null &\n\
         i=0; while [ ! -s {dir}/{name}.pid ] && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done\n\
         [ -s {dir}/{name}.pid ]\n"
    );
    Ok(StepScripts {
        check: Script::new(check),
        apply: Script::with_stdin(
            apply,
            Stdin::Bytes {
                bytes: run.into_bytes(),
                secret: false,
            },
        ),
        verify: None,
    })
}

/// The credentials a node has to talk to a component's health endpoint.
fn tls_options(component: Component) -> String {
    if component == Component::Etcd {
        // etcd requires client certificates; its server certificate is also a client one.
        let e = format!("{PKI_DIR}/etcd");
        format!("--cacert {e}/ca.crt --cert {e}/server.crt --key {e}/server.key")
    } else {
        "-k".into()
    }
}

/// `host port` of an `http(s)://host:port/...` URL, for the TCP fallback.
fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let default = if scheme == "https" { 443 } else { 80 };
    if let Some(v6) = authority.strip_prefix('[') {
        let (h, rest) = v6.split_once(']')?;
        let port = rest
            .strip_prefix(':')
            .map(|p| p.parse().ok())
            .unwrap_or(Some(default))?;
        return Some((h.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((authority.to_string(), default)),
    }
}

fn wait_healthy(component: Component, url: &str, timeout_secs: u32) -> R<StepScripts> {
    let u = q(url)?;
    let tls = if url.starts_with("https://") {
        tls_options(component)
    } else {
        String::new()
    };
    let (host, port) = host_port(url).ok_or_else(|| ShellRenderError::Invalid {
        what: format!("the health URL of {component}"),
        message: format!("`{url}` is not an http(s) URL"),
    })?;
    let tcp = q(&format!("exec 3<>/dev/tcp/{host}/{port}"))?;
    let probe = format!(
        "probe() {{\n\
         \x20 if command -v curl >/dev/null 2>&1; then curl -fsS --max-time 5 {tls} {u} >/dev/null 2>&1\n\
         \x20 else bash -c {tcp} 2>/dev/null\n\
         \x20 fi\n\
         }}\n"
    );
    let fresh = fresh_listener(Asset::StaticPod(component).path(), port)?;
    let check = format!(
        "{probe}{fresh}if probe && fresh; then exit 0; fi
exit 1
"
    );
    // Polled 20 times a second for the first 2 s, then five times: a daemon
    // is often up well within a second (etcd in about 0.3 s), and the wait
    // is on the first apply's critical path; a slow one is not worth a
    // probe process every 50 ms.
    let t = u64::from(timeout_secs);
    let (fast, polls) = if t <= 2 {
        (t * 20, t * 20)
    } else {
        (40, 40 + (t - 2) * 5)
    };
    let apply = format!(
        "{probe}{fresh}i=0
while [ $i -lt {polls} ]; do
  if probe && fresh; then exit 0; fi
  if [ $i -lt {fast} ]; then sleep 0.05; else sleep 0.2; fi
  i=$((i+1))
done
echo {msg} >&2
exit 1
",
        msg = q(&format!(
            "{component} is not healthy at {url} after {timeout_secs}s, or still the process from before its manifest changed"
        ))?
    );
    Ok(StepScripts {
        check: Script::new(check),
        apply: Script::new(apply),
        verify: None,
    })
}

/// `fresh`: whether the process listening on `port` started after the
/// static pod manifest at `manifest` was last written. Right after a
/// manifest changes, the old pod still answers its health URL until the
/// kubelet replaces it; a wait that took that answer would let a rollout's
/// next wave start while this one's component is about to go down
/// (kubeadm waits for the mirror pod's hash to change; without the API,
/// the listener's start time says the same). The start time is the
/// kernel's own (`/proc/PID/stat` ticks after `btime`), not "now minus
/// its age", which a slow shell would skew. No manifest (a component run
/// as a service, restarted by its own step): always fresh. Without `ss`
/// the listener cannot be found: fresh, as the probe alone was. Times are
/// whole seconds, so a process started within the second before the write
/// counts as fresh; the pod it replaces ran for far longer.
fn fresh_listener(manifest: &str, port: u16) -> R<String> {
    let m = q(manifest)?;
    Ok(format!(
        "fresh() {{\n\
         \x20 [ -f {m} ] || return 0\n\
         \x20 command -v ss >/dev/null 2>&1 || return 0\n\
         \x20 pid=$(ss -Hltnp \"sport = :{port}\" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2)\n\
         \x20 [ -n \"$pid\" ] || return 1\n\
         \x20 ticks=$(awk '{{sub(/^.*\\) /, \"\"); print $20}}' /proc/\"$pid\"/stat 2>/dev/null)\n\
         \x20 boot=$(awk '/^btime/ {{print $2}}' /proc/stat)\n\
         \x20 [ -n \"$ticks\" ] && [ -n \"$boot\" ] || return 1\n\
         \x20 [ $(( boot + ticks / $(getconf CLK_TCK) )) -ge $(( $(stat -c %Y {m}) - 1 )) ]\n\
         }}\n"
    ))
}

fn kubectl_guard() -> String {
    format!("command -v kubectl >/dev/null 2>&1 || {{ echo 'kubectl is not installed on this node'; exit {EXIT_NOT_APPLICABLE}; }}\n")
}

fn admin_kubeconfig() -> R<String> {
    q(Asset::Kubeconfig(kscratch_core::plan::KubeconfigUser::Admin).path())
}

fn apply_manifest(asset: Asset, user: kscratch_core::plan::KubeconfigUser) -> R<StepScripts> {
    let f = q(asset.path())?;
    let k = q(Asset::Kubeconfig(user).path())?;
    Ok(StepScripts {
        // `kubectl diff`: 0 no difference, 1 differences, more on error.
        check: Script::new(format!(
            "{}kubectl --kubeconfig {k} diff -f {f} >/dev/null\n",
            kubectl_guard()
        )),
        apply: Script::new(format!("set -e\nkubectl --kubeconfig {k} apply -f {f}\n")),
        verify: None,
    })
}

fn validate_cluster(nodes: &[String], components: &[String]) -> R<StepScripts> {
    let k = admin_kubeconfig()?;
    let mut names = Vec::new();
    for n in nodes {
        names.push(q(n)?);
    }
    let want: String = nodes.iter().map(|n| format!("{n}=True\n")).collect();
    let jsonpath = q("{range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}")?;
    let validate = format!(
        "valid() {{\n\
         \x20 kubectl --kubeconfig {k} get --raw=/readyz >/dev/null 2>&1 || return 1\n\
         \x20 got=$(kubectl --kubeconfig {k} get nodes {names} -o jsonpath={jsonpath} 2>/dev/null | sort) || return 1\n\
         \x20 [ \"$got\" = {want} ]\n\
         }}\n",
        names = names.join(" "),
        want = q(&sort_lines(&want))?
    );
    let _ = components; // readyz covers the apiserver's view of etcd and the control plane.
    Ok(StepScripts {
        check: Script::new(format!("{}{validate}if valid; then exit 0; fi\nexit 1\n", kubectl_guard())),
        apply: Script::new(format!(
            "{validate}i=0\nwhile [ $i -lt 300 ]; do\n  if valid; then exit 0; fi\n  sleep 2; i=$((i+2))\ndone\necho 'the cluster did not validate in 300s: nodes not Ready or /readyz failing' >&2\nexit 1\n"
        )),
        verify: None,
    })
}

fn sort_lines(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kscratch_core::plan::{plan, Target};
    use std::process::Command;

    const SCENARIO: &str = "cluster: {name: t, kubernetesVersion: \"1.30.4\"}\n\
        nodes:\n  - {name: a, ip: 198.51.100.1, roles: [control-plane, etcd, worker]}\n  - {name: b, ip: 198.51.100.2}\n\
        network: {nodeCIDR: 198.51.100.0/24, clusterCIDR: 10.10.0.0/16, nodePrefix: 24, podTraffic: routed}\n\
        etcd: {runAs: service}\n";

    fn load(text: &str) -> (Scenario, Plan) {
        let s = kscratch_core::load("t.yaml", text, None).unwrap().scenario;
        let p = plan(&s);
        (s, p)
    }

    fn step<'a>(p: &'a Plan, id: &str) -> &'a kscratch_core::plan::Step {
        p.steps
            .iter()
            .find(|s| p.step_id(s) == id)
            .unwrap_or_else(|| panic!("no step {id}"))
    }

    fn scripts(s: &Scenario, p: &Plan, id: &str, inputs: Inputs<'_>) -> StepScripts {
        let st = step(p, id);
        let node = match st.target {
            Target::Node(i) => Some(i as usize),
            _ => None,
        };
        match render(
            &RenderCx {
                scenario: s,
                plan: p,
                node,
                inputs,
            },
            &st.action,
        )
        .unwrap()
        {
            Rendered::Remote(r) => r,
            other => panic!("{id}: {other:?}"),
        }
    }

    /// Runs `script` with `bin` first on PATH; its status and stdout.
    fn run_with(bin: &std::path::Path, script: &str) -> (Option<i32>, String) {
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("PATH", path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn fake(bin: &std::path::Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// `member remove` by the ID `member list` gives the name; absent, the
    /// check holds and the apply removes nothing; no answer is an error.
    #[test]
    fn an_etcd_member_is_removed_by_the_id_its_name_has() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path();
        let log = bin.join("calls");
        fake(
            bin,
            "etcdctl",
            &format!(
                "echo \"$*\" >> {log}\ncase \"$*\" in *'member list'*) cat {list};; esac\n",
                log = log.display(),
                list = bin.join("list").display()
            ),
        );
        std::fs::write(
            bin.join("list"),
            "8e9e05c52164694d, started, cp-1, https://10.1.0.11:2380, https://10.1.0.11:2379, false\n\
             91bc3c398fb3c146, started, cp-3, https://10.1.0.13:2380, https://10.1.0.13:2379, false\n\
             fd422379fda50e48, started, cp-30, https://10.1.0.30:2380, https://10.1.0.30:2379, false\n",
        )
        .unwrap();
        let r = remove_etcd_member("cp-3", "https://10.1.0.11:2379").unwrap();
        parses(&r.check.text);
        parses(&r.apply.text);
        assert_eq!(run_with(bin, &r.check.text).0, Some(1), "present: needed");
        assert_eq!(run_with(bin, &r.apply.text).0, Some(0));
        let calls = std::fs::read_to_string(&log).unwrap();
        assert!(
            calls.lines().any(|l| l.starts_with(
                "--endpoints=https://10.1.0.11:2379 --cacert /srv/kubernetes/etcd/ca.crt"
            ) && l.ends_with("member remove 91bc3c398fb3c146")),
            "{calls}"
        );
        assert!(!calls.contains("member remove fd42"), "{calls}");
        // Gone from the list: satisfied, and a re-run removes nothing.
        std::fs::write(
            bin.join("list"),
            "8e9e05c52164694d, started, cp-1, https://10.1.0.11:2380, https://10.1.0.11:2379, false\n",
        )
        .unwrap();
        std::fs::remove_file(&log).unwrap();
        assert_eq!(run_with(bin, &r.check.text).0, Some(0));
        assert_eq!(run_with(bin, &r.apply.text).0, Some(0));
        assert!(!std::fs::read_to_string(&log).unwrap().contains("remove"));
        // Refused at first (etcd's strict reconfiguration check just after
        // a restart): retried until it is accepted.
        std::fs::write(
            bin.join("list"),
            "91bc3c398fb3c146, started, cp-3, https://10.1.0.13:2380, https://10.1.0.13:2379, false\n",
        )
        .unwrap();
        fake(
            bin,
            "etcdctl",
            &format!(
                "case \"$*\" in *'member list'*) cat {list};; *'member remove'*) if [ -e {once} ]; then echo removed; else : > {once}; echo 'Error: etcdserver: unhealthy cluster' >&2; exit 1; fi;; esac\n",
                list = bin.join("list").display(),
                once = bin.join("once").display()
            ),
        );
        let (code, out) = run_with(bin, &r.apply.text);
        assert_eq!((code, out.trim()), (Some(0), "removed"));
        // No answer: an error (exit 2), not "absent".
        fake(bin, "etcdctl", "exit 1\n");
        assert_eq!(run_with(bin, &r.check.text).0, Some(2));
        // Plain HTTP: no TLS flags.
        let r = remove_etcd_member("e", "http://10.0.0.1:2379").unwrap();
        assert!(!r.check.text.contains("--cacert"));
    }

    /// A Node object present is deleted, absent is satisfied, and an
    /// apiserver that does not answer makes the step not applicable with
    /// the reason as its last line.
    #[test]
    fn a_node_object_is_deleted_or_left_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path();
        let r = delete_node("node-4").unwrap();
        parses(&r.check.text);
        parses(&r.apply.text);
        fake(
            bin,
            "kubectl",
            "case \"$*\" in *'get node node-4'*) echo node/node-4;; esac\n",
        );
        assert_eq!(run_with(bin, &r.check.text).0, Some(1));
        fake(bin, "kubectl", "exit 0\n");
        assert_eq!(run_with(bin, &r.check.text).0, Some(0));
        fake(
            bin,
            "kubectl",
            "echo 'The connection to the server was refused' >&2; exit 1\n",
        );
        let (code, out) = run_with(bin, &r.check.text);
        assert_eq!(code, Some(EXIT_NOT_APPLICABLE as i32));
        assert_eq!(
            out.trim(),
            "the apiserver does not answer: the Node object node-4 stays; delete it later with `kubectl delete node node-4`"
        );
        assert!(r
            .apply
            .text
            .contains("delete node node-4 --ignore-not-found"));
    }

    /// The removal steps of a plan with departed nodes render and parse,
    /// routed and vxlan; the fabric router's is listed for the operator.
    #[test]
    fn every_removal_step_renders_and_parses() {
        for text in [
            SCENARIO.to_string(),
            SCENARIO.replace("podTraffic: routed", "podTraffic: vxlan"),
            SCENARIO.replace(
                "podTraffic: routed",
                "podTraffic: fabric, gateway: 198.51.100.254",
            ),
        ] {
            let (s, _) = load(&text);
            let gone = kscratch_core::plan::Departed {
                name: "c".into(),
                node_ip: "198.51.100.3".parse().unwrap(),
                pod_cidr: "10.10.2.0/24".parse().unwrap(),
                vtep_mac: None,
                etcd_member: true,
            };
            let p = kscratch_core::plan::plan_removing(&s, &[gone]);
            let removal: Vec<_> = p.steps.iter().filter(|st| st.subject.is_some()).collect();
            assert!(removal.len() >= 3, "{text}");
            for st in removal {
                let node = match st.target {
                    Target::Node(i) => Some(i as usize),
                    _ => None,
                };
                let cx = RenderCx {
                    scenario: &s,
                    plan: &p,
                    node,
                    inputs: Inputs::default(),
                };
                match render(&cx, &st.action).unwrap() {
                    Rendered::Remote(r) => {
                        parses(&r.check.text);
                        parses(&r.apply.text);
                    }
                    Rendered::NotApplicable(why) => {
                        assert_eq!(st.target, Target::Fabric);
                        assert!(why.contains("delete these routes on it"), "{why}");
                        assert!(why.contains("10.10.2.0/24 via 198.51.100.3"), "{why}");
                    }
                    Rendered::Local(l) => panic!("{}: {l}", p.step_id(st)),
                }
            }
        }
    }

    /// Runs `sh -n` on the script: it must at least parse.
    fn parses(script: &str) {
        let out = Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sh -n failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The stop a restart runs ends the supervisor's whole process group in
    /// the node's `sh` (dash on Debian, whose `kill` takes no `--`): a daemon
    /// left behind would hold its port and the new one would crash-loop.
    #[test]
    fn stopping_a_supervisor_ends_its_daemon_too() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("svc.pid");
        // A supervisor (its group's leader) with a daemon child, as start_service runs them.
        let start = format!(
            "setsid sh -c 'echo $$ > \"$1\"; sleep 300 & wait' sup {} </dev/null >/dev/null 2>&1 &\n\
             i=0; while [ ! -s {p} ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done\n\
             old=$(cat {p}); sleep 0.2; pgrep -g \"$old\" | wc -l\n",
            pidfile.display(),
            p = pidfile.display()
        );
        let out = Command::new("sh").arg("-c").arg(&start).output().unwrap();
        let members: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert_eq!(members, 2, "the supervisor and its daemon run");
        let stop = format!(
            "old=$(cat {})\n{}pgrep -g \"$old\" | wc -l\n",
            pidfile.display(),
            stop_process_group("")
        );
        let out = Command::new("sh").arg("-c").arg(&stop).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "0",
            "every process of the group ended"
        );
    }

    /// A health wait after a manifest change takes only the process that
    /// started after it: the listener from before is the old pod.
    #[test]
    fn a_health_wait_takes_only_a_listener_started_after_its_manifest() {
        if Command::new("ss").arg("-V").output().is_err()
            || Command::new("socat").arg("-V").output().is_err()
        {
            assert!(
                !std::env::var_os("CI").is_some_and(|v| v == "true" || v == "1"),
                "ss and socat are missing, and under CI=true this test must run"
            );
            eprintln!("skipping: ss or socat is not installed (apt-get install iproute2 socat)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("kube-apiserver.yaml");
        let port = 20_000 + (std::process::id() % 20_000) as u16;
        let fresh = fresh_listener(manifest.to_str().unwrap(), port).unwrap();
        // Ended on drop, so a failed assertion leaves no listener behind.
        struct Listener(std::process::Child);
        impl Drop for Listener {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let listen = || {
            Listener(
                Command::new("socat")
                    .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
                    .arg("/dev/null")
                    .spawn()
                    .unwrap(),
            )
        };
        let is_fresh = || {
            Command::new("bash")
                .arg("-c")
                .arg(format!("{fresh}fresh"))
                .status()
                .unwrap()
                .success()
        };
        let wait_listening = || {
            for _ in 0..50 {
                let out = Command::new("ss")
                    .args(["-Hltn", &format!("sport = :{port}")])
                    .output()
                    .unwrap();
                if !out.stdout.is_empty() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            panic!("socat did not listen on {port}");
        };
        assert!(is_fresh(), "no manifest: nothing to tell apart");
        let old = listen();
        wait_listening();
        std::thread::sleep(std::time::Duration::from_millis(2100));
        std::fs::write(&manifest, "changed").unwrap();
        assert!(
            !is_fresh(),
            "the listener from before the manifest is the old pod"
        );
        drop(old);
        let new = listen();
        wait_listening();
        let fresh_now = is_fresh();
        drop(new);
        assert!(
            fresh_now,
            "the listener started after the manifest is the new pod"
        );
        assert!(!is_fresh(), "nothing listens");
    }

    #[test]
    fn the_bridge_is_checked_and_created_idempotently() {
        let (s, p) = load(SCENARIO);
        let r = scripts(&s, &p, "a/net/bridge", Inputs::default());
        assert_eq!(
            r.check.text,
            "[ -d /sys/class/net/cbr0/bridge ] || exit 1\n\
             read -r mtu < /sys/class/net/cbr0/mtu && [ \"$mtu\" = 1500 ] || exit 1\n\
             read -r mac < /sys/class/net/cbr0/address && [ \"$mac\" = 0a:58:0a:0a:00:01 ] || exit 1\n\
             read -r flags < /sys/class/net/cbr0/flags && [ $((flags & 1)) = 1 ] || exit 1\n\
             ip -o addr show dev cbr0 | grep -qF -- ' inet 10.10.0.1/24 ' || exit 1\n\
             exit 0\n"
        );
        assert!(r.apply.text.contains("[ -d /sys/class/net/cbr0/bridge ] || ip link add cbr0 type bridge\nip -batch - <<'KSCRATCH_EOF'\nlink set dev cbr0 mtu 1500\nlink set dev cbr0 address 0a:58:0a:0a:00:01\naddr replace 10.10.0.1/24 dev cbr0\nlink set dev cbr0 up\nKSCRATCH_EOF\n"), "{}", r.apply.text);
        parses(&r.check.text);
        parses(&r.apply.text);
    }

    #[test]
    fn routed_pod_routes_cover_every_other_node_through_one_batch() {
        let (s, p) = load(SCENARIO);
        let r = scripts(&s, &p, "a/net/pod-routes", Inputs::default());
        assert_eq!(
            r.check.text.matches("ip route show").count(),
            1,
            "{}",
            r.check.text
        );
        parses(&r.check.text);
        assert_eq!(
            r.apply.text,
            "set -e\nip -batch - <<'KSCRATCH_EOF'\nroute replace 10.10.1.0/24 via 198.51.100.2 dev eth0\nKSCRATCH_EOF\n"
        );
        assert_eq!(r.apply.stdin, Stdin::Empty);
        parses(&r.apply.text);
    }

    /// The drop-in check reads the file itself: exactly the one line holds;
    /// another value, a second line, or no file does not.
    #[test]
    fn a_one_line_file_check_wants_exactly_that_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("90-kscratch.conf");
        let check = format!(
            "{} || exit 1\nexit 0\n",
            file_is_line(f.to_str().unwrap(), "net.ipv4.ip_forward = 1").unwrap()
        );
        let status = |content: Option<&str>| {
            let _ = std::fs::remove_file(&f);
            if let Some(c) = content {
                std::fs::write(&f, c).unwrap();
            }
            run_with(dir.path(), &check).0
        };
        assert_eq!(status(Some("net.ipv4.ip_forward = 1\n")), Some(0));
        assert_eq!(status(Some("net.ipv4.ip_forward = 0\n")), Some(1));
        assert_eq!(status(Some("net.ipv4.ip_forward = 1\nmore\n")), Some(1));
        assert_eq!(status(Some("net.ipv4.ip_forward = 1\nmore")), Some(1));
        assert_eq!(status(None), Some(1));
    }

    /// One `ip route show` serves every peer: all present (among others,
    /// padded with blanks as `ip` pads some lines) holds; one missing, or
    /// one through another gateway, does not.
    #[test]
    fn the_pod_routes_check_lists_the_table_once_and_wants_every_peer() {
        let text = SCENARIO.replace(
            "  - {name: b, ip: 198.51.100.2}\n",
            "  - {name: b, ip: 198.51.100.2}\n  - {name: c, ip: 198.51.100.3}\n",
        );
        let (s, p) = load(&text);
        let r = scripts(&s, &p, "a/net/pod-routes", Inputs::default());
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path();
        let routes = |text: &str| fake(bin, "ip", &format!("cat <<'EOF'\n{text}EOF\n"));
        let b = "10.10.1.0/24 via 198.51.100.2 dev eth0 \n";
        let c = "10.10.2.0/24 via 198.51.100.3 dev eth0\n";
        let other = "default via 198.51.100.254 dev eth0\n10.10.0.0/24 dev cbr0 proto kernel scope link src 10.10.0.1\n";
        routes(&format!("{other}{c}{b}"));
        assert_eq!(run_with(bin, &r.check.text).0, Some(0), "{}", r.check.text);
        routes(&format!("{other}{b}"));
        assert_eq!(
            run_with(bin, &r.check.text).0,
            Some(1),
            "c's route is missing"
        );
        routes(&format!(
            "{other}{b}10.10.2.0/24 via 198.51.100.9 dev eth0\n"
        ));
        assert_eq!(
            run_with(bin, &r.check.text).0,
            Some(1),
            "c's route has another gateway"
        );
        routes("");
        assert_eq!(run_with(bin, &r.check.text).0, Some(1), "no routes at all");
    }

    #[test]
    fn overlay_routes_come_with_neighbour_and_fdb_entries() {
        let text = SCENARIO.replace("podTraffic: routed", "podTraffic: vxlan");
        let (s, p) = load(&text);
        let r = scripts(&s, &p, "b/net/pod-routes", Inputs::default());
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path();
        let listing = |name: &str, text: &str| {
            fake(bin, name, &format!("cat <<'EOF'\n{text}EOF\n"));
        };
        let route = "10.10.0.0/24 via 10.10.0.0 dev vxlan0 onlink \n";
        let neigh = "10.10.0.0 lladdr 0e:c6:33:64:01:00 PERMANENT\n";
        let fdb = "0e:c6:33:64:01:00 dst 198.51.100.1 self permanent\n";
        // ip answers both `route show` and `neigh show`: one fake for both.
        let ip = |routes: &str, neighs: &str| {
            fake(
                bin,
                "ip",
                &format!("case \"$1\" in route) cat <<'EOF'\n{routes}EOF\n;; neigh) cat <<'EOF'\n{neighs}EOF\n;; esac\n"),
            );
        };
        ip(route, neigh);
        listing("bridge", fdb);
        assert_eq!(run_with(bin, &r.check.text).0, Some(0), "{}", r.check.text);
        listing("bridge", "");
        assert_eq!(
            run_with(bin, &r.check.text).0,
            Some(1),
            "the FDB entry is missing"
        );
        listing("bridge", fdb);
        ip(route, "10.10.0.0 lladdr 0e:c6:33:64:01:01 PERMANENT\n");
        assert_eq!(
            run_with(bin, &r.check.text).0,
            Some(1),
            "the neighbour has another MAC"
        );
        ip("10.10.0.0/24 via 10.10.0.0 dev vxlan0\n", neigh);
        assert_eq!(
            run_with(bin, &r.check.text).0,
            Some(1),
            "the route is not onlink"
        );
        assert_eq!(
            r.apply.text,
            "set -e\n\
             bridge -batch - <<'KSCRATCH_EOF'\n\
             fdb replace 0e:c6:33:64:01:00 dev vxlan0 dst 198.51.100.1 self permanent\n\
             KSCRATCH_EOF\n\
             ip -batch - <<'KSCRATCH_EOF'\n\
             route replace 10.10.0.0/24 via 10.10.0.0 dev vxlan0 onlink\n\
             neigh replace 10.10.0.0 lladdr 0e:c6:33:64:01:00 dev vxlan0 nud permanent\n\
             KSCRATCH_EOF\n"
        );
        parses(&r.apply.text);
        let v = scripts(&s, &p, "b/net/vxlan", Inputs::default());
        assert!(v.apply.text.contains("ip link add vxlan0 type vxlan id 1 local 198.51.100.2 dev eth0 dstport 4789 nolearning"), "{}", v.apply.text);
        parses(&v.check.text);
        parses(&v.apply.text);
    }

    #[test]
    fn files_travel_on_stdin_and_are_placed_atomically() {
        let (s, p) = load(SCENARIO);
        let secret = b"-----BEGIN PRIVATE KEY-----\nsecret\n";
        let r = scripts(
            &s,
            &p,
            "a/file/etcd-server.key",
            Inputs {
                file: Some(secret),
                binary: None,
            },
        );
        let sum = sha256_hex(secret);
        assert!(
            r.check.text.contains(&format!(
                "printf '%s\\n' '{sum}  /srv/kubernetes/etcd/server.key' | sha256sum -c --status"
            )),
            "{}",
            r.check.text
        );
        assert!(r
            .check
            .text
            .contains("[ \"$(stat -c '%a %u:%g' /srv/kubernetes/etcd/server.key)\" = '600 0:0' ]"));
        assert!(
            !r.apply.text.contains("secret") && !r.check.text.contains("secret"),
            "file content leaked into a script"
        );
        assert!(r
            .apply
            .text
            .contains("mv -f \"$tmp\" /srv/kubernetes/etcd/server.key"));
        assert_eq!(
            r.apply.stdin,
            Stdin::Bytes {
                bytes: secret.to_vec(),
                secret: true
            }
        );
        assert_eq!(
            r.apply.stdin_summary().unwrap(),
            format!("stdin: {} bytes (secret, not shown)", secret.len())
        );
        assert!(
            !format!("{:?}", r.apply).contains("secret\\n"),
            "Debug shows the key"
        );
        parses(&r.apply.text);
    }

    /// `uid:gid` of this process, as a chown target the test may use.
    fn current_owner() -> String {
        let id = |flag: &str| {
            let out = Command::new("id").arg(flag).output().unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        format!("{}:{}", id("-u"), id("-g"))
    }

    /// Runs `text` with `sh -c`, `stdin` written to it.
    pub(crate) fn sh_with_stdin(text: &str, stdin: &[u8]) -> std::process::Output {
        sh_in(text, stdin, &std::env::var("PATH").unwrap())
    }

    /// [`sh_with_stdin`] with this `PATH`.
    fn sh_in(text: &str, stdin: &[u8], path: &str) -> std::process::Output {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(text)
            .env("PATH", path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    /// The apply and its check after, as `apply_then_check` sends them:
    /// a whole upload is placed and verified by identity (hashed once); a
    /// cut one is refused before the rename and leaves the file and no
    /// temporary behind; a file changed after the hash fails the check.
    #[test]
    fn an_upload_is_hashed_once_before_its_rename_and_verified_by_identity() {
        let dir = tempfile::tempdir().unwrap();
        let owner = current_owner();
        let dest = dir.path().join("sub dir/etcd");
        let dest_text = dest.display().to_string();
        let new = b"the new binary\n".repeat(1000);
        let want = bytes_want(&dest_text, 0o755, &new);
        let run = |stdin: &[u8], verify: Option<&str>| {
            let mut s = upload_owned(&want, Stdin::Empty, &owner).unwrap();
            if let Some(v) = verify {
                s.verify = Some(Script::new(v.to_string()));
            }
            let script = apply_then_check(&s);
            parses(&script.text);
            let out = sh_with_stdin(&script.text, stdin);
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let leftovers = || {
            std::fs::read_dir(dest.parent().unwrap())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(".kscratch."))
                .count()
        };
        // Whole: placed, and the check after it holds without a second hash.
        let (status, stdout, stderr) = run(&new, None);
        assert_eq!(status, Some(0), "{stderr}");
        assert_eq!(parse_verify(&stdout), Some((0, String::new())), "{stdout}");
        assert_eq!(std::fs::read(&dest).unwrap(), new);
        assert_eq!(leftovers(), 0);
        // Cut short: refused before the rename, the placed file is kept.
        let (status, _, stderr) = run(&new[..new.len() / 2], None);
        assert_eq!(status, Some(1));
        assert!(
            stderr.contains("cut short, the previous file is kept"),
            "{stderr}"
        );
        assert_eq!(std::fs::read(&dest).unwrap(), new);
        assert_eq!(leftovers(), 0);
        // Same size, other bytes: refused too.
        let mut flipped = new.clone();
        flipped[7] ^= 1;
        let (status, _, stderr) = run(&flipped, None);
        assert_eq!(status, Some(1));
        assert!(stderr.contains("does not match its SHA-256"), "{stderr}");
        assert_eq!(std::fs::read(&dest).unwrap(), new);
        // A same-size write after the hash (here: right before the check,
        // a clock tick later) changes the mtime the check compares.
        let s = upload_owned(&want, Stdin::Empty, &owner).unwrap();
        let verify = s.verify.unwrap().text;
        let tampered = format!(
            "sleep 0.05; printf x | dd of={} bs=1 seek=3 conv=notrunc status=none\n{verify}",
            q(&dest_text).unwrap()
        );
        let (status, stdout, _) = run(&new, Some(&tampered));
        assert_eq!(status, Some(0));
        assert_eq!(parse_verify(&stdout).map(|v| v.0), Some(1), "{stdout}");
        // The full check (a converged run's) still hashes.
        assert!(s.check.text.contains("sha256sum -c"));
    }

    /// A batch of uploads in one script: each file placed as one upload
    /// would be, a cut stream or corrupt bytes refused file by file before
    /// any rename, no temporary file left, and the check after each placed
    /// file answered. The files come in one archive, received by `tar`.
    #[test]
    fn a_batch_of_uploads_places_each_whole_file_and_refuses_the_others() {
        batch_of_uploads(STREAM_HASH_MIN, &[]);
    }

    /// The same cases on a node without `tar`: the archive's files are cut
    /// out of it by offset.
    #[test]
    fn a_batch_of_uploads_without_tar_places_and_refuses_alike() {
        batch_of_uploads(STREAM_HASH_MIN, &["tar"]);
    }

    /// The same cases with every file hashed as it arrives (`tee`), as the
    /// binaries are, by `openssl dgst`.
    #[test]
    fn a_batch_of_uploads_hashed_as_they_arrive_places_and_refuses_alike() {
        if has_tool("openssl") {
            batch_of_uploads(0, &[]);
        }
    }

    /// The same, hashed by `sha256sum` on a node without `openssl`.
    #[test]
    fn a_batch_of_uploads_hashed_by_sha256sum_as_they_arrive_places_and_refuses_alike() {
        batch_of_uploads(0, &["openssl"]);
    }

    /// Whether `name` is on this machine's `PATH`. Missing, it fails the
    /// test under `CI=true` (`.ci/run` installs it); elsewhere the test
    /// says it skips that part.
    fn has_tool(name: &str) -> bool {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .output()
            .is_ok_and(|o| o.status.success());
        let ci = std::env::var_os("CI").is_some_and(|v| v == "true" || v == "1");
        assert!(
            found || !ci,
            "`{name}` is not installed, and under CI=true this test must run (.ci/run installs it)"
        );
        if !found {
            eprintln!("SKIP: `{name}` is not installed; this test needs it (CI installs it)");
        }
        found
    }

    /// A `PATH` with every program of this machine's but `missing`.
    fn path_without(dir: &std::path::Path, missing: &[&str]) -> String {
        let bin = dir.join(format!("without-{}", missing.join("-")));
        std::fs::create_dir_all(&bin).unwrap();
        for d in ["/usr/local/bin", "/usr/bin", "/bin"] {
            let Ok(rd) = std::fs::read_dir(d) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name();
                if !missing.iter().any(|m| name == *m) && !bin.join(&name).exists() {
                    let _ = std::os::unix::fs::symlink(e.path(), bin.join(&name));
                }
            }
        }
        bin.display().to_string()
    }

    /// A script's stdin as the agent receives it.
    fn stdin_bytes(s: &Stdin) -> Vec<u8> {
        match s {
            Stdin::Empty => Vec::new(),
            Stdin::Bytes { bytes, .. } => bytes.clone(),
            Stdin::File(p) => std::fs::read(p).unwrap(),
            Stdin::Parts(parts) => parts.iter().flat_map(stdin_bytes).collect(),
        }
    }

    /// The batch-upload cases on a node without the programs `missing`.
    fn batch_of_uploads(stream_min: u64, missing: &[&str]) {
        let dir = tempfile::tempdir().unwrap();
        let owner = current_owner();
        let at = |name: &str| dir.path().join(name).display().to_string();
        let with_tar = !missing.contains(&"tar");
        let path = if missing.is_empty() {
            std::env::var("PATH").unwrap()
        } else {
            path_without(dir.path(), missing)
        };
        let leftovers = || {
            let mut n = 0;
            for d in [dir.path().to_path_buf(), dir.path().join("new dir")] {
                if let Ok(rd) = std::fs::read_dir(d) {
                    n += rd
                        .filter_map(|e| e.ok())
                        .filter(|e| e.file_name().to_string_lossy().starts_with(".kscratch."))
                        .count();
                }
            }
            n
        };
        // Runs the batch with its stdin changed by `damage`.
        let run = |files: &[(FileWant, Stdin)], damage: &dyn Fn(&mut Vec<u8>)| {
            let script = uploads_owned(files, &owner, stream_min, "0123456789abcdef").unwrap();
            parses(&script.text);
            let mut stdin = stdin_bytes(&script.stdin);
            damage(&mut stdin);
            // The agent's umask: `tar` run by another user than root, and
            // the files cut out without it, get their modes by `chmod`.
            let out = sh_in(&format!("umask 077\n{}", script.text), &stdin, &path);
            assert_eq!(out.status.code(), Some(0));
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let r: Vec<Result<u32, String>> = parse_uploads(files.len(), &stdout)
                .unwrap_or_else(|| panic!("{stdout}"))
                .into_iter()
                .map(|u| u.result)
                .collect();
            assert_eq!(leftovers(), 0, "temporary files left");
            r
        };
        // Where `part`'s bytes start in the stream (each file's bytes are
        // whole in it, in the archive or not).
        let find = |stream: &[u8], part: &[u8]| {
            stream
                .windows(part.len())
                .position(|w| w == part)
                .expect("the file's bytes are in the stream")
        };
        let (a, b, c) = (
            b"alpha\n".repeat(300),
            b"beta\n".repeat(500),
            b"gamma\n".to_vec(),
        );
        let bytes = |v: &Vec<u8>| Stdin::Bytes {
            bytes: v.clone(),
            secret: false,
        };
        std::fs::write(at("b"), b"the previous b\n").unwrap();
        let files = vec![
            (bytes_want(&at("new dir/a"), 0o600, &a), bytes(&a)),
            (bytes_want(&at("b"), 0o644, &b), bytes(&b)),
            (bytes_want(&at("c"), 0o755, &c), bytes(&c)),
        ];
        // Whole: all three placed with their modes, each checked after.
        assert_eq!(run(&files, &|_| {}), [Ok(0), Ok(0), Ok(0)]);
        use std::os::unix::fs::PermissionsExt;
        let mode = |n: &str| std::fs::metadata(at(n)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            (mode("new dir/a"), mode("b"), mode("c")),
            (0o600, 0o644, 0o755)
        );
        assert_eq!(std::fs::read(at("b")).unwrap(), b);
        // The stream cut in b: a is placed, b and c are refused, b kept.
        std::fs::write(at("b"), b"the previous b\n").unwrap();
        let r = run(&files, &|s| {
            let cut = find(s, &b) + b.len() / 2;
            s.truncate(cut)
        });
        assert_eq!(r[0], Ok(0));
        for i in [1, 2] {
            let why = r[i].clone().unwrap_err();
            assert!(
                why.contains("cut short, the previous file is kept"),
                "{why}"
            );
            let got: usize = why.rsplit(' ').next().unwrap().parse().unwrap();
            // tar writes whole blocks of what it got; head all of it.
            let sent = if i == 1 { b.len() / 2 } else { 0 };
            assert!(got <= sent && (!with_tar || got + 512 > sent), "{why}");
        }
        assert_eq!(std::fs::read(at("b")).unwrap(), b"the previous b\n");
        // Same size, other bytes in c: refused, the others placed.
        let r = run(&files, &|s| {
            let last = find(s, &c) + c.len() - 1;
            s[last] ^= 1
        });
        assert_eq!(&r[..2], [Ok(0), Ok(0)]);
        assert!(
            r[2].clone()
                .unwrap_err()
                .contains("does not match its SHA-256"),
            "{r:?}"
        );
        assert_eq!(std::fs::read(at("c")).unwrap(), c);
        // A file that cannot be received (its directory is a file) does not
        // shift the next one's bytes.
        std::fs::write(at("blocker"), b"").unwrap();
        let files = vec![
            (bytes_want(&at("blocker/x"), 0o644, &a), bytes(&a)),
            (bytes_want(&at("c"), 0o755, &c), bytes(&c)),
        ];
        let r = run(&files, &|_| {});
        assert!(
            r[0].clone()
                .unwrap_err()
                .contains("cannot write a temporary file next to it"),
            "{r:?}"
        );
        assert_eq!(r[1], Ok(0));
    }

    /// Runs `script` with `sh`, a `stat` and a `sha256sum` in front of the
    /// real ones that log each call's arguments to `log`, on a `PATH`
    /// without `openssl`.
    fn run_logged(script: &Script, dir: &std::path::Path) -> (String, Vec<String>) {
        let path = path_without(dir, &["openssl"]);
        run_logging(script, dir, &["stat", "sha256sum"], b"", &path)
    }

    /// Runs `script` with `sh` and `stdin`, each of `tools` behind a
    /// wrapper that logs its call's arguments before running the real one.
    fn run_logging(
        script: &Script,
        dir: &std::path::Path,
        tools: &[&str],
        stdin: &[u8],
        path: &str,
    ) -> (String, Vec<String>) {
        let bin = dir.join("bin");
        // Only this call's wrappers.
        let _ = std::fs::remove_dir_all(&bin);
        std::fs::create_dir_all(&bin).unwrap();
        let log = dir.join("calls");
        for tool in tools {
            let real = String::from_utf8(
                Command::new("sh")
                    .arg("-c")
                    .arg(format!("command -v {tool}"))
                    .output()
                    .unwrap()
                    .stdout,
            )
            .unwrap();
            let wrapper = bin.join(tool);
            std::fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\necho \"{tool} $*\" >> {}\nexec {} \"$@\"\n",
                    log.display(),
                    real.trim()
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = format!("{}:{path}", bin.display());
        let out = sh_in(&script.text, stdin, &path);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        (
            String::from_utf8(out.stdout).unwrap(),
            calls.lines().map(String::from).collect(),
        )
    }

    /// A batch of small files costs a few programs, not two per file: one
    /// `tar` receives them all with their modes and owner, one `mv` per
    /// directory renames them, and no `head`, `chmod` or `chown` runs.
    #[test]
    fn a_batch_of_small_files_is_received_by_one_tar_and_renamed_by_one_mv_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let owner = current_owner();
        let files: Vec<(FileWant, Stdin)> = (0..12)
            .map(|i| {
                let sub = if i % 3 == 0 { "pki" } else { "etc" };
                let path = dir.path().join(format!("{sub}/file-{i}"));
                let bytes = format!("content {i}\n").repeat(i + 1).into_bytes();
                (
                    bytes_want(&path.display().to_string(), 0o644, &bytes),
                    Stdin::Bytes {
                        bytes,
                        secret: i == 0,
                    },
                )
            })
            .collect();
        let script = uploads_owned(&files, &owner, STREAM_HASH_MIN, "0123456789abcdef").unwrap();
        assert!(
            script.stdin.is_secret(),
            "one secret file makes the archive secret"
        );
        let stdin = stdin_bytes(&script.stdin);
        // Under 022, a `tar` run by another user than root keeps the
        // archive's modes (0644) as root's `tar` does whatever the umask.
        let script = Script {
            text: format!("umask 022\n{}", script.text),
            ..script
        };
        let tools = ["tar", "mv", "head", "mkdir", "chmod", "chown"];
        let path = std::env::var("PATH").unwrap();
        let (out, calls) = run_logging(&script, dir.path(), &tools, &stdin, &path);
        let r = parse_uploads(files.len(), &out).unwrap();
        assert!(r.iter().all(|u| u.result == Ok(0)), "{out}");
        for (w, s) in &files {
            assert_eq!(std::fs::read(&w.path).unwrap(), stdin_bytes(s));
        }
        let count = |tool: &str| {
            calls
                .iter()
                .filter(|c| c.split(' ').next() == Some(tool))
                .count()
        };
        assert_eq!(tools.map(count), [1, 2, 0, 1, 0, 0], "{calls:#?}");
    }

    /// A node's uploaded files are checked together: one `stat` over all of
    /// them, one `sha256sum` over those whose type, size, mode and owner
    /// match. Every kind of difference is found, a same-size in-place edit
    /// included; a recorded identity spares the hash only while the file
    /// keeps it.
    #[test]
    fn many_files_are_checked_with_one_stat_and_one_sha256sum() {
        let dir = tempfile::tempdir().unwrap();
        let owner = current_owner();
        let files_dir = dir.path().join("etc dir");
        std::fs::create_dir_all(&files_dir).unwrap();
        let at = |name: &str| files_dir.join(name).display().to_string();
        let want = |name: &str, mode: u32, bytes: &[u8]| bytes_want(&at(name), mode, bytes);
        let put = |name: &str, mode: u32, bytes: &[u8]| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(at(name), bytes).unwrap();
            std::fs::set_permissions(at(name), std::fs::Permissions::from_mode(mode)).unwrap();
        };
        put("good", 0o644, b"hello\n");
        put("mode", 0o600, b"hello\n");
        put("edited", 0o644, b"hellO\n");
        put("short", 0o644, b"hell\n");
        put("with space", 0o755, b"binary");
        std::fs::create_dir(at("a-dir")).unwrap();
        let wants = vec![
            want("good", 0o644, b"hello\n"),
            want("mode", 0o644, b"hello\n"),
            want("edited", 0o644, b"hello\n"),
            want("short", 0o644, b"hello\n"),
            want("missing", 0o644, b"hello\n"),
            want("a-dir", 0o644, b"hello\n"),
            want("with space", 0o755, b"binary"),
        ];
        let none = vec![None; wants.len()];
        let script = files_check_owned(&wants, &none, &owner).unwrap();
        parses(&script.text);
        let (out, calls) = run_logged(&script, dir.path());
        let found = parse_files_check_owned(&wants, &none, &out, &owner).unwrap();
        let holds: Vec<bool> = found.iter().map(|f| f.holds).collect();
        assert_eq!(
            holds,
            [true, false, false, false, false, false, true],
            "{out}"
        );
        // One stat, one sha256sum, and only the files that could hold are hashed.
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert!(calls[0].starts_with("stat "), "{calls:?}");
        assert_eq!(
            calls[1],
            format!(
                "sha256sum -- {} {} {}",
                at("good"),
                at("edited"),
                at("with space")
            )
        );
        // Just written: too fresh to be recorded.
        assert!(found.iter().all(|f| f.record.is_none()), "{found:?}");
        // Where the node has `openssl`, it hashes them, with the same findings.
        if has_tool("openssl") {
            let path = std::env::var("PATH").unwrap();
            let (out, calls) = run_logging(&script, dir.path(), &["stat", "openssl"], b"", &path);
            let again = parse_files_check_owned(&wants, &none, &out, &owner).unwrap();
            assert_eq!(again, found, "{out}");
            assert_eq!(
                calls[1],
                format!(
                    "openssl dgst -sha256 -r -- {} {} {}",
                    at("good"),
                    at("edited"),
                    at("with space")
                )
            );
        }

        // The identities, as a record would hold them.
        let identity = |name: &str| -> String {
            let line = out
                .lines()
                .find(|l| l.ends_with(&format!(" {}", at(name))))
                .unwrap();
            line.split(' ').nth(4).unwrap().to_string()
        };
        let mut recorded = none.clone();
        recorded[0] = Some(identity("good"));
        recorded[6] = Some(identity("with space"));
        let script = files_check_owned(&wants, &recorded, &owner).unwrap();
        let (out2, calls) = run_logged(&script, dir.path());
        let found = parse_files_check_owned(&wants, &recorded, &out2, &owner).unwrap();
        assert_eq!(
            calls[1],
            format!("sha256sum -- {}", at("edited")),
            "vouched-for files were hashed"
        );
        assert!(found[0].holds && !found[0].hashed);
        assert!(found[6].holds && !found[6].hashed);
        assert!(!found[2].holds && found[2].hashed);

        // A same-size in-place edit, with the mtime put back, and a replaced
        // file of the same size: their identities change, so they are hashed.
        let mtime = std::fs::metadata(at("good")).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(at("good"))
                .unwrap();
            f.seek(SeekFrom::Start(0)).unwrap();
            f.write_all(b"j").unwrap();
            f.set_modified(mtime).unwrap();
        }
        std::fs::write(at("replacement"), b"BINARY").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(at("replacement"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        std::fs::rename(at("replacement"), at("with space")).unwrap();
        let (out3, calls) = run_logged(&script, dir.path());
        let found = parse_files_check_owned(&wants, &recorded, &out3, &owner).unwrap();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert!(calls[1].contains(&at("good")) && calls[1].contains(&at("with space")));
        assert!(!found[0].holds && found[0].hashed, "{out3}");
        assert!(!found[6].holds && found[6].hashed, "{out3}");
    }

    /// Only a file hashed, holding, and unchanged for longer than the margin
    /// is offered for recording.
    #[test]
    fn only_settled_files_are_recorded() {
        let w = bytes_want("/etc/x", 0o644, b"x");
        let answer = |now: u64, ctime: u64| {
            format!(
                "now {now}\n81a4 1 644 0:0 1:2:{ctime}.5:{ctime}.25 /etc/x\n{HASHES_MARKER}\n{}  /etc/x\n",
                w.sha256
            )
        };
        let f = |now, ctime| {
            parse_files_check(std::slice::from_ref(&w), &[None], &answer(now, ctime)).unwrap()[0]
                .clone()
        };
        assert_eq!(
            f(1000, 990).record.as_deref(),
            Some("1:2:990.5:990.25"),
            "settled"
        );
        assert!(f(1000, 998).holds);
        assert_eq!(f(1000, 998).record, None, "racy");
        assert_eq!(
            parse_files_check(std::slice::from_ref(&w), &[None], "garbage"),
            None
        );
        let bad = FileWant {
            path: "/etc/a\\b".into(),
            ..w.clone()
        };
        assert!(!bad.batchable());
        assert!(files_check(&[bad], &[None]).is_err());
    }

    #[test]
    fn binaries_are_compared_by_sha256_and_streamed_from_the_release_dir() {
        let (s, p) = load(SCENARIO);
        let bin = Binary {
            path: "/rel/etcd".into(),
            sha256: "ab".repeat(32),
            size: 4,
        };
        let r = scripts(
            &s,
            &p,
            "a/bin/etcd",
            Inputs {
                file: None,
                binary: Some(bin),
            },
        );
        assert!(r
            .check
            .text
            .contains(&format!("'{}  /usr/local/bin/etcd'", "ab".repeat(32))));
        assert!(r.apply.text.contains("chmod 0755 \"$tmp\""));
        assert_eq!(r.apply.stdin, Stdin::File("/rel/etcd".into()));
    }

    #[test]
    fn services_run_under_systemd_or_the_supervisor() {
        let (s, p) = load(SCENARIO);
        let r = scripts(&s, &p, "a/service/etcd", Inputs::default());
        assert!(r.check.text.starts_with("[ -x /usr/local/bin/etcd ] || { echo '/usr/local/bin/etcd is not installed on this node: etcd cannot start'; exit 100; }\n"), "{}", r.check.text);
        assert!(r.apply.text.contains("systemctl restart etcd.service"));
        let Stdin::Bytes { bytes, .. } = &r.apply.stdin else {
            panic!()
        };
        let run = String::from_utf8_lossy(bytes);
        assert!(run.contains("while :; do\n  /usr/local/bin/etcd --advertise-client-urls=https://198.51.100.1:2379"), "{run}");
        parses(&r.check.text);
        parses(&r.apply.text);
        parses(&run);
        let c = scripts(&s, &p, "b/service/containerd", Inputs::default());
        assert!(c.check.text.starts_with("command -v containerd >/dev/null 2>&1 || { echo 'containerd is not installed on this node: containerd cannot start'; exit 100; }"), "{}", c.check.text);
    }

    #[test]
    fn the_local_apiserver_proxy_runs_haproxy_and_a_re_apply_accepts_its_port() {
        let text = SCENARIO.replace(
            "kubernetesVersion: \"1.30.4\"}",
            "kubernetesVersion: \"1.30.4\", controlPlaneEndpoint: 127.0.0.1:6443}",
        );
        let (s, p) = load(&text);
        let r = scripts(&s, &p, "b/service/apiserver-proxy", Inputs::default());
        assert!(r.check.text.starts_with("[ -x /usr/sbin/haproxy ] || { echo '/usr/sbin/haproxy is not installed on this node: kscratch-apiserver-proxy cannot start'; exit 100; }\n"), "{}", r.check.text);
        assert!(r
            .apply
            .text
            .contains("systemctl restart kscratch-apiserver-proxy.service"));
        let Stdin::Bytes { bytes, .. } = &r.apply.stdin else {
            panic!()
        };
        let run = String::from_utf8_lossy(bytes);
        assert!(
            run.contains(
                "while :; do\n  /usr/sbin/haproxy -db -f /etc/kubernetes/apiserver-proxy.cfg\n"
            ),
            "{run}"
        );
        parses(&run);
        let pre = scripts(&s, &p, "b/preflight", Inputs::default());
        assert!(pre
            .check
            .text
            .contains("command -v haproxy >/dev/null 2>&1 || fail"));
        assert!(
            pre.check.text.contains("sport = :6443")
                && pre.check.text.contains("*'\"haproxy\"'*) ;;"),
            "a re-apply must accept haproxy on its own port:\n{}",
            pre.check.text
        );
        parses(&pre.check.text);
    }

    #[test]
    fn kscratch_network_runs_once_and_is_recorded_as_done() {
        let (s, p) = load(SCENARIO);
        let r = scripts(&s, &p, "b/service/network", Inputs::default());
        assert!(r
            .apply
            .text
            .contains("systemctl restart kscratch-network.service"));
        assert!(
            r.apply.text.ends_with(
                "sh /var/lib/kscratch/run/kscratch-network.run </dev/null\n: > /var/lib/kscratch/run/kscratch-network.done\n"
            ),
            "{}",
            r.apply.text
        );
        let Stdin::Bytes { bytes, .. } = &r.apply.stdin else {
            panic!()
        };
        let run = String::from_utf8_lossy(bytes);
        assert!(
            run.ends_with("exec /bin/sh /etc/kscratch/network-up /etc/kscratch/network.conf\n"),
            "{run}"
        );
        assert!(
            !run.contains("while :"),
            "a oneshot is not restarted: {run}"
        );
        assert!(r
            .check
            .text
            .contains("[ -f /var/lib/kscratch/run/kscratch-network.done ] || exit 1"));
        parses(&r.check.text);
        parses(&r.apply.text);
        parses(&run);
    }

    #[test]
    fn preflight_failures_are_errors_and_missing_runtimes_only_notes() {
        let (s, p) = load(SCENARIO);
        let r = scripts(&s, &p, "a/preflight", Inputs::default());
        assert!(r.check.text.contains(
            "command -v conntrack >/dev/null 2>&1 || fail 'the command conntrack is not installed'"
        ));
        assert!(r
            .check
            .text
            .contains("command -v containerd >/dev/null 2>&1 || echo 'preflight: note:"));
        assert!(
            r.check.text.contains("*'\"etcd\"'*) ;;"),
            "a re-apply must accept etcd on its own port:\n{}",
            r.check.text
        );
        assert!(r
            .check
            .text
            .ends_with("[ \"$failed\" = 0 ] || exit 2\nexit 0\n"));
        parses(&r.check.text);
    }

    /// The port checks list the listeners once without `-p`; the owner is
    /// asked (`ss -p`) only of a held port: a free node runs one `ss`.
    #[test]
    fn the_port_checks_ask_for_owners_only_of_held_ports() {
        let r = preflight(&[
            PreflightCheck::PortFree {
                port: 2379,
                held_by: Some(ports::Daemon::Etcd),
            },
            PreflightCheck::PortFree {
                port: 10250,
                held_by: None,
            },
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path();
        let log = bin.join("calls");
        let ss = |plain: &str, owner: &str| {
            fake(
                bin,
                "ss",
                &format!(
                    "echo \"$*\" >> {log}\ncase \"$1\" in -Htln) printf '%s' '{plain}' ;; *) printf '%s' '{owner}' ;; esac\n",
                    log = log.display()
                ),
            );
        };
        let run = |what: &str| {
            let _ = std::fs::remove_file(&log);
            let status = run_with(bin, &r.check.text).0;
            let calls = std::fs::read_to_string(&log).unwrap_or_default();
            (status, calls.lines().count(), what.to_string())
        };
        ss(
            "LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\nLISTEN 0 128 0.0.0.0:23790 0.0.0.0:*\n",
            "",
        );
        assert_eq!(run("free"), (Some(0), 1, "free".into()));
        let etcd = "LISTEN 0 4096 198.51.100.1:2379 0.0.0.0:* users:((\"etcd\",pid=7,fd=8))\n";
        ss("LISTEN 0 4096 198.51.100.1:2379 0.0.0.0:*\n", etcd);
        assert_eq!(
            run("etcd holds its port"),
            (Some(0), 2, "etcd holds its port".into())
        );
        let other = "LISTEN 0 4096 [::]:2379 [::]:* users:((\"nc\",pid=7,fd=3))\n";
        ss("LISTEN 0 4096 [::]:2379 [::]:*\n", other);
        assert_eq!(
            run("another program"),
            (Some(2), 2, "another program".into())
        );
        ss(
            "LISTEN 0 4096 0.0.0.0:10250 0.0.0.0:*\n",
            "LISTEN 0 4096 0.0.0.0:10250 0.0.0.0:*\n",
        );
        assert_eq!(run("kubelet port"), (Some(2), 2, "kubelet port".into()));
    }

    #[test]
    fn masquerade_rule_is_checked_before_it_is_appended() {
        let text = SCENARIO.replace(
            "podTraffic: routed}",
            "podTraffic: routed, masquerade: true}",
        );
        let (s, p) = load(&text);
        let r = scripts(&s, &p, "a/net/masquerade", Inputs::default());
        assert_eq!(r.check.text, "if iptables -w -t nat -C POSTROUTING '!' -d 10.10.0.0/16 -m addrtype '!' --dst-type LOCAL -j MASQUERADE 2>/dev/null; then exit 0; fi\nexit 1\n");
        assert!(r.apply.text.ends_with("|| iptables -w -t nat -A POSTROUTING '!' -d 10.10.0.0/16 -m addrtype '!' --dst-type LOCAL -j MASQUERADE\n"));
    }

    #[test]
    fn hostile_values_stay_single_words() {
        // A link name and an image with shell syntax in them: every one must
        // reach the command as one literal word.
        let hostile = "x'; touch /tmp/pwned; echo '$(id)`id`";
        let r = delete_link(hostile).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "set -- {}; echo $#; printf '%s' \"$1\"",
                q(hostile).unwrap()
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("1\n{hostile}")
        );
        assert!(r.check.text.contains(&q(hostile).unwrap().to_string()));
        let img = pull_image(&Runtime::Containerd, hostile).unwrap();
        assert!(img.apply.text.contains(&format!(
            "ctr -n k8s.io images pull {}",
            q(hostile).unwrap()
        )));
        parses(&img.check.text);
        // A NUL cannot be passed at all.
        assert!(matches!(
            delete_link("a\0b"),
            Err(ShellRenderError::Quote(_))
        ));
    }

    #[test]
    fn scripts_run_under_sudo_without_prompting_for_non_root_users() {
        let sc = Script::new("echo 'hi'\n".into());
        assert_eq!(
            sc.command_line(false),
            format!("sh -c 'PATH={SCRIPT_PATH}; export PATH\necho '\\''hi'\\''\n'")
        );
        assert!(sc.command_line(true).starts_with("sudo -n sh -c '"));
        let out = Command::new("sh")
            .arg("-c")
            .arg(sc.command_line(false))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    }

    #[test]
    fn every_remote_step_of_the_bundled_plans_renders_and_parses() {
        for text in [
            SCENARIO.to_string(),
            SCENARIO.replace("podTraffic: routed", "podTraffic: vxlan"),
        ] {
            let (s, p) = load(&text);
            for st in &p.steps {
                let node = match st.target {
                    Target::Node(i) => Some(i as usize),
                    _ => None,
                };
                let bin = Binary {
                    path: "/rel/x".into(),
                    sha256: "00".repeat(32),
                    size: 1,
                };
                let inputs = Inputs {
                    file: Some(b"x"),
                    binary: Some(bin),
                };
                match render(
                    &RenderCx {
                        scenario: &s,
                        plan: &p,
                        node,
                        inputs,
                    },
                    &st.action,
                )
                .unwrap()
                {
                    Rendered::Remote(r) => {
                        parses(&r.check.text);
                        parses(&r.apply.text);
                    }
                    Rendered::Local(_) => assert_eq!(st.target, Target::Local),
                    Rendered::NotApplicable(_) => assert_eq!(st.target, Target::Fabric),
                }
            }
        }
    }

    fn damage_scripts(text: &str, fault: &str) -> Vec<Rendered> {
        let (s, _) = load(text);
        let f = kscratch_core::scenario::Fault::parse(fault).unwrap();
        let d = kscratch_core::plan::damage(&s, &[f])
            .unwrap_or_else(|e| panic!("{fault}: {e:?}"))
            .combined();
        d.steps
            .iter()
            .map(|st| {
                let node = match st.target {
                    Target::Node(i) => Some(i as usize),
                    _ => None,
                };
                render(
                    &RenderCx {
                        scenario: &s,
                        plan: &d,
                        node,
                        inputs: Inputs::default(),
                    },
                    &st.action,
                )
                .unwrap_or_else(|e| panic!("{fault}: {e}"))
            })
            .collect()
    }

    fn remote(r: &Rendered) -> &StepScripts {
        match r {
            Rendered::Remote(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_fault_renders_to_scripts_that_parse() {
        let vxlan = SCENARIO.replace("podTraffic: routed", "podTraffic: vxlan");
        let docker = format!("{SCENARIO}runtime: {{kind: docker}}\n").replace("1.30.4", "1.23.17");
        let cases: &[(&str, &str)] = &[
            (SCENARIO, "node-down:b"),
            (SCENARIO, "nic-down:b"),
            (SCENARIO, "route-missing:a"),
            (SCENARIO, "route-missing:a:b"),
            (SCENARIO, "ip-forward-off:b"),
            (SCENARIO, "forward-drop:b"),
            (SCENARIO, "rp-filter-strict:b"),
            (SCENARIO, "br-netfilter-off:b"),
            (SCENARIO, "underlay-mtu:b:1400"),
            (&vxlan, "fdb-missing:a:b"),
            (&vxlan, "neigh-missing:a:b"),
            (&vxlan, "route-missing:a:b"),
            (SCENARIO, "kube-proxy-down:b"),
            (SCENARIO, "dns-pod-down"),
            (&docker, "docker0-leftover:b"),
            (&docker, "docker-ip-masq:b"),
            (SCENARIO, "masquerade-missing:b"),
            (&vxlan, "overlay-mtu:1500"),
            (SCENARIO, "apiserver-firewalled"),
        ];
        let mut kinds = std::collections::BTreeSet::new();
        for (text, fault) in cases {
            kinds.insert(kscratch_core::scenario::Fault::parse(fault).unwrap().kind());
            for r in damage_scripts(text, fault) {
                let r = remote(&r);
                parses(&r.check.text);
                parses(&r.apply.text);
            }
        }
        assert_eq!(
            kinds.len(),
            kscratch_core::scenario::fault::FAULT_KINDS.len()
        );
    }

    /// Every step of a teardown plan (`kscratch reset`) renders to a check
    /// and an apply that parse, on both pod-traffic modes, a worker and the
    /// last etcd member (forced, with its data dir).
    #[test]
    fn every_reset_step_renders_to_scripts_that_parse() {
        use kscratch_core::plan::{reset, ResetOptions};
        let vxlan = SCENARIO.replace("podTraffic: routed", "podTraffic: vxlan");
        let all = ResetOptions {
            force: true,
            delete_etcd_data: true,
        };
        let mut actions = std::collections::BTreeSet::new();
        for text in [SCENARIO, vxlan.as_str()] {
            let (s, _) = load(text);
            for (node, o) in [("b", ResetOptions::default()), ("a", all)] {
                let p = reset(&s, &[node.to_string()], &o).unwrap().plan;
                assert!(!p.steps.is_empty());
                for st in &p.steps {
                    let Target::Node(i) = st.target else {
                        panic!("{}: not on a node", p.step_id(st))
                    };
                    let r = render(
                        &RenderCx {
                            scenario: &s,
                            plan: &p,
                            node: Some(i as usize),
                            inputs: Inputs::default(),
                        },
                        &st.action,
                    )
                    .unwrap_or_else(|e| panic!("{}: {e}", p.step_id(st)));
                    let r = remote(&r);
                    parses(&r.check.text);
                    parses(&r.apply.text);
                    let json = serde_json::to_value(&st.action).unwrap();
                    actions.insert(json["action"].as_str().unwrap().to_string());
                }
            }
        }
        for a in [
            "disable-service",
            "delete-file",
            "delete-link",
            "delete-routes",
            "delete-neighbors",
            "delete-fdb-entries",
            "delete-iptables-rules",
            "clear-directory",
            "delete-iptables-chains",
        ] {
            assert!(actions.contains(a), "no {a} in {actions:?}");
        }
        // The directory stays (it may be a mount point); / is refused.
        let r = clear_directory("/var/lib/etcd").unwrap();
        assert!(r
            .apply
            .text
            .contains("find /var/lib/etcd -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +"));
        assert!(clear_directory("/").is_err() && clear_directory("var/lib/etcd").is_err());
    }

    #[test]
    fn damage_is_checked_before_it_is_done() {
        let r = damage_scripts(SCENARIO, "route-missing:a:b");
        let r = remote(&r[0]);
        assert_eq!(
            r.check.text,
            "[ -z \"$(ip route show exact 10.10.1.0/24 via 198.51.100.2 dev eth0)\" ] || exit 1\nexit 0\n"
        );
        assert!(r.apply.text.contains(
            "if [ -n \"$(ip route show exact 10.10.1.0/24 via 198.51.100.2 dev eth0)\" ]; then ip route del 10.10.1.0/24 via 198.51.100.2 dev eth0; fi\n"
        ));
        let r = damage_scripts(SCENARIO, "forward-drop:b");
        let r = remote(&r[0]);
        assert_eq!(
            r.apply.text,
            "set -e\niptables -w -t filter -C FORWARD -j DROP 2>/dev/null || iptables -w -t filter -I FORWARD 1 -j DROP\n"
        );
        let vxlan = SCENARIO.replace("podTraffic: routed", "podTraffic: vxlan");
        let r = damage_scripts(&vxlan, "fdb-missing:a:b");
        let r = remote(&r[0]);
        assert!(r.check.text.contains(
            "if bridge fdb show dev vxlan0 | grep -qF -- '0e:c6:33:64:02:00 dst 198.51.100.2 '; then exit 1; fi"
        ), "{}", r.check.text);
        assert!(r.apply.text.contains(
            "then bridge fdb del 0e:c6:33:64:02:00 dev vxlan0 dst 198.51.100.2 self; fi"
        ));
        let r = damage_scripts(&vxlan, "neigh-missing:a:b");
        assert!(remote(&r[0]).apply.text.contains(
            "if [ -n \"$(ip neigh show to 10.10.1.0 dev vxlan0)\" ]; then ip neigh del 10.10.1.0 dev vxlan0; fi"
        ));
        let r = damage_scripts(SCENARIO, "br-netfilter-off:b");
        let r = remote(&r[0]);
        assert!(r.apply.text.contains("modprobe -r br_netfilter"));
        assert!(r
            .check
            .text
            .starts_with("if { [ -d /sys/module/br_netfilter ]"));
        // A NIC going down would cut the SSH session it is sent over: it goes down
        // two seconds after the step reports, and the check accepts the marker meanwhile.
        let r = damage_scripts(SCENARIO, "nic-down:b");
        let r = remote(&r[0]);
        assert!(r.apply.text.contains("setsid nohup sh -c 'sleep 2; ip link set dev eth0 down; rm -f /var/lib/kscratch/run/link-eth0.down-pending'"), "{}", r.apply.text);
        assert!(r
            .check
            .text
            .contains("[ -f /var/lib/kscratch/run/link-eth0.down-pending ] && exit 0"));
        let r = damage_scripts(SCENARIO, "kube-proxy-down:b");
        assert!(remote(&r[0])
            .apply
            .text
            .contains("systemctl stop kube-proxy.service"));
        let r = damage_scripts(SCENARIO, "dns-pod-down");
        assert!(remote(&r[0]).apply.text.contains(
            "--request-timeout=20s -n kube-system scale deployment coredns --replicas=0"
        ));
    }

    #[test]
    fn fabric_route_damage_is_not_applicable_over_ssh() {
        let fabric = SCENARIO.replace(
            "podTraffic: routed}",
            "podTraffic: fabric, gateway: 198.51.100.254}",
        );
        let r = damage_scripts(&fabric, "route-missing:a");
        match &r[0] {
            Rendered::NotApplicable(why) => {
                assert!(why.contains("10.10.0.0/24 via 198.51.100.1"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn apply_and_verify_share_one_command() {
        let (s, p) = load(SCENARIO);
        let r = scripts(&s, &p, "a/sysctl/ip_forward", Inputs::default());
        let both = apply_then_check(&r);
        parses(&both.text);
        // Run it for real with a harmless apply and check: the marker carries the check's status.
        let fake = StepScripts {
            check: Script::new("echo 'why not'\nexit 100\n".into()),
            apply: Script::with_stdin(
                "set -e\ncat >/dev/null\n".into(),
                Stdin::Bytes {
                    bytes: b"x".to_vec(),
                    secret: false,
                },
            ),
            verify: None,
        };
        let run = apply_then_check(&fake);
        let out = Command::new("sh")
            .arg("-c")
            .arg(&run.text)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            parse_verify(&String::from_utf8_lossy(&out.stdout)),
            Some((100, "why not".into()))
        );
        let failing = StepScripts {
            check: fake.check.clone(),
            apply: Script::new("set -e\nfalse\necho never\n".into()),
            verify: None,
        };
        let out = Command::new("sh")
            .arg("-c")
            .arg(apply_then_check(&failing).text)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(parse_verify(&String::from_utf8_lossy(&out.stdout)), None);
    }

    #[test]
    fn health_urls_give_their_host_and_port() {
        assert_eq!(
            host_port("https://198.51.100.1:2379/health"),
            Some(("198.51.100.1".into(), 2379))
        );
        assert_eq!(
            host_port("https://[fd00::1]/healthz"),
            Some(("fd00::1".into(), 443))
        );
        assert_eq!(host_port("nonsense"), None);
    }
}
