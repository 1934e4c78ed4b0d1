//! Test support for the real-kernel testbed (`testbed/kscratch-testbed`).
//!
//! A [`Testbed`] is a set of network namespaces built by the script: nodes with
//! their own sshd, an underlay bridge, a router and an outside host. Tests get
//! one with [`Testbed::up`], drive it through the helpers here (commands in a
//! namespace, pods attached by the real CNI `bridge` plugin, TCP probes that
//! report the source address the receiver saw), and dropping it tears it down,
//! also when the test panics.
//!
//! The suite runs only with `KSCRATCH_TESTBED=1`; then a missing prerequisite
//! (not root, a missing binary) is an error, never a silent pass.
//!
//! Every external command is bounded by coreutils `timeout`, so a wedged
//! namespace fails a test instead of hanging the run.

// Helpers are shared by present and future testbed tests; not every one is
// used by every build of the test binary.
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::Deserialize;

/// The environment variable that switches the testbed suite on.
pub const ENABLE_VAR: &str = "KSCRATCH_TESTBED";

/// Upper bound for any single command run by these helpers.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a TCP probe waits for its connection to be established.
pub const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Debian's `containernetworking-plugins` installs the CNI plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// True when `KSCRATCH_TESTBED=1`. Unset, empty or `0` means disabled; any
/// other value is a typo that would silently skip the suite, so it panics.
pub fn enabled() -> bool {
    match std::env::var_os(ENABLE_VAR) {
        None => false,
        Some(value) if value.is_empty() || value == "0" => false,
        Some(value) if value == "1" => true,
        Some(value) => panic!("{ENABLE_VAR} must be 1 (run the testbed tests) or 0, got {value:?}"),
    }
}

/// For the first line of every testbed test. Every testbed test is marked
/// `#[ignore = "needs KSCRATCH_TESTBED=1 and root"]`, so a plain `cargo test`
/// lists it as ignored, never as passed; reaching this means they were asked for (`--ignored`); without
/// `KSCRATCH_TESTBED=1` that is a failure, never a pass that did not run.
pub fn require() {
    if !enabled() {
        panic!(
            "this testbed test ran without {ENABLE_VAR}=1; run the suite as root with \
             `{ENABLE_VAR}=1 cargo test --test tests testbed -- --ignored --test-threads=1`"
        );
    }
}

/// The old first line of a testbed test, which passed when it did not run.
/// Now it fails instead; new tests use `#[ignore = "needs KSCRATCH_TESTBED=1
/// and root"]` and [`require`].
#[deprecated = "mark the test #[ignore = \"needs KSCRATCH_TESTBED=1 and root\"] and call support::require()"]
pub fn skipped() -> bool {
    require();
    false
}

/// A failure of the testbed or of a command run in it, with everything needed
/// to understand it (command, exit status, output).
pub struct Error(String);

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Debug is what the test harness prints for a test returning `Err`; keep the
// message readable rather than an escaped string.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The description `kscratch-testbed up` prints and writes to
/// `DIR/testbed.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Description {
    pub name: String,
    pub dir: PathBuf,
    pub ssh_port: u16,
    pub ssh_user: String,
    pub client_key: PathBuf,
    pub client_public_key: PathBuf,
    pub known_hosts: PathBuf,
    /// Every namespace of the testbed starts with this; `down` deletes all of
    /// them, including pod namespaces made by [`Testbed::create_pod`].
    pub netns_prefix: String,
    pub private_dirs: Vec<PathBuf>,
    pub underlay: Underlay,
    pub test_host: TestHost,
    pub router: Router,
    pub outside: Outside,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Underlay {
    pub cidr: Ipv4Net,
    pub netns: String,
    pub bridge: String,
}

/// The root namespace's single leg into the underlay.
#[derive(Debug, Clone, Deserialize)]
pub struct TestHost {
    pub ip: Ipv4Addr,
    pub link: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Router {
    pub netns: String,
    /// Its address on the underlay: the nodes' default gateway.
    pub ip: Ipv4Addr,
    pub outside_ip: Ipv4Addr,
}

/// The single host beyond the router, for egress tests.
#[derive(Debug, Clone, Deserialize)]
pub struct Outside {
    pub netns: String,
    pub ip: Ipv4Addr,
    pub cidr: Ipv4Net,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    /// Also the node's hostname (it has its own UTS namespace).
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub dir: PathBuf,
    /// The sshd holds the node's network, mount and UTS namespaces.
    pub sshd_pid: u32,
    pub sshd_pid_file: PathBuf,
    pub sshd_log: PathBuf,
    /// `ssh-ed25519 AAAA...`, as listed in known_hosts.
    pub host_public_key: String,
}

/// A pod: a network namespace attached to a node's bridge by the CNI plugins.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    /// The address and prefix IPAM gave the pod's `eth0`.
    pub address: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// The CNI network configuration it was added with (needed for DEL).
    pub cni_config: String,
}

impl Pod {
    pub fn ip(&self) -> Ipv4Addr {
        self.address.addr()
    }
}

/// What a TCP probe observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The connection was established; `peer` is the source address the
    /// listener saw (the sender's own address, or a masquerading node's).
    Reached { peer: IpAddr },
    /// No connection within the timeout, or refused; `detail` is the
    /// client's complaint.
    Unreachable { detail: String },
}

/// A running testbed. Dropping it runs `kscratch-testbed down`.
pub struct Testbed {
    pub description: Description,
    /// The test name it was made for, for messages.
    pub label: String,
    torn_down: bool,
    // Testbeds of one process share the underlay addresses in the root
    // namespace, so only one exists at a time. Declared last: released after
    // `Drop::drop` has torn the testbed down.
    _serial: MutexGuard<'static, ()>,
    // Every testbed uses the same underlay range in the root namespace, so
    // two test processes (two developers' runs, a run and CI) must not build
    // theirs at once either: an exclusive lock on one file per machine.
    _machine: std::fs::File,
}

impl Testbed {
    /// Builds a testbed of `nodes` nodes for the test `label` (its function
    /// name). The testbed ID is derived from the label and the process id, so
    /// concurrent runs and tests never share names. Waits for any other
    /// testbed of this process to be torn down first.
    pub fn up(label: &str, nodes: usize) -> Result<Testbed> {
        check_prerequisites()?;
        let serial = TESTBED_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let machine = machine_lock()?;
        let id = testbed_id(label, std::process::id());
        let script = script_path();
        let output = run_bounded(
            command("bash")
                .arg(&script)
                .args(["up", "--name", &id, "--nodes", &nodes.to_string()]),
            Duration::from_secs(60 + 2 * nodes as u64),
        )?;
        if !output.status.success() {
            return Err(Error::new(format!(
                "{} up --name {id} --nodes {nodes} failed ({}):\n{}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let description: Description = serde_json::from_slice(&output.stdout).map_err(|e| {
            Error::new(format!(
                "cannot parse the description printed by kscratch-testbed up: {e}\n{}",
                String::from_utf8_lossy(&output.stdout)
            ))
        })?;
        Ok(Testbed {
            description,
            label: label.to_string(),
            torn_down: false,
            _serial: serial,
            _machine: machine,
        })
    }

    /// Tears the testbed down now, reporting failure as an error instead of
    /// a panic in `Drop`.
    pub fn down(mut self) -> Result<()> {
        self.torn_down = true;
        down(&self.description.name)
    }

    pub fn id(&self) -> &str {
        &self.description.name
    }

    pub fn nodes(&self) -> &[Node] {
        &self.description.nodes
    }

    /// The node called `name` (`node1`, `node2`, ...).
    pub fn node(&self, name: &str) -> Result<&Node> {
        self.description
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .description
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect();
                Error::new(format!(
                    "testbed {} has no node {name:?} (nodes: {})",
                    self.id(),
                    known.join(", ")
                ))
            })
    }

    /// Runs `argv` in network namespace `netns` (`ip netns exec`), bounded by
    /// [`COMMAND_TIMEOUT`]. Returns the output whatever the exit status.
    pub fn exec_in<S: AsRef<OsStr>>(&self, netns: &str, argv: &[S]) -> Result<Output> {
        exec_in(netns, argv)
    }

    /// Like [`Testbed::exec_in`] but fails unless the command succeeds;
    /// returns its stdout.
    pub fn run_in<S: AsRef<OsStr>>(&self, netns: &str, argv: &[S]) -> Result<String> {
        stdout_of(
            &format!("in netns {netns}"),
            argv,
            self.exec_in(netns, argv)?,
        )
    }

    /// Runs `argv` inside `node` as its sshd sees it: its network namespace
    /// and also its mount namespace (private /etc/kubernetes, /var/lib/cni,
    /// ...) and UTS namespace (hostname).
    pub fn node_exec<S: AsRef<OsStr>>(&self, node: &Node, argv: &[S]) -> Result<Output> {
        run_bounded(&mut node_command(node, argv), COMMAND_TIMEOUT)
    }

    /// Like [`Testbed::node_exec`] but fails unless the command succeeds;
    /// returns its stdout.
    pub fn node_run<S: AsRef<OsStr>>(&self, node: &Node, argv: &[S]) -> Result<String> {
        stdout_of(
            &format!("on {}", node.name),
            argv,
            self.node_exec(node, argv)?,
        )
    }

    /// Starts `argv` in the background inside `node` (as [`Testbed::node_exec`]
    /// does), for daemons. `down` kills it with the testbed.
    pub fn node_spawn<S: AsRef<OsStr>>(&self, node: &Node, argv: &[S]) -> Result<Child> {
        let mut command = command("nsenter");
        command
            .args([
                "--target",
                &node.sshd_pid.to_string(),
                "--net",
                "--mount",
                "--uts",
                "--",
            ])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.spawn().map_err(|e| {
            Error::new(format!(
                "cannot start {} on {}: {e}",
                render(argv),
                node.name
            ))
        })
    }

    /// The argv of an `ssh` that runs `remote_command` on `node` as root with
    /// the testbed's client key, accepting only the host keys listed in
    /// `known_hosts` and ignoring every user or system ssh configuration.
    pub fn ssh_argv(&self, node: &Node, known_hosts: &Path, remote_command: &str) -> Vec<OsString> {
        let d = &self.description;
        let mut argv: Vec<OsString> = vec!["ssh".into(), "-F".into(), "/dev/null".into()];
        for option in [
            "BatchMode=yes".to_string(),
            "StrictHostKeyChecking=yes".to_string(),
            format!("UserKnownHostsFile={}", known_hosts.display()),
            "GlobalKnownHostsFile=/dev/null".to_string(),
            "IdentitiesOnly=yes".to_string(),
            "IdentityAgent=none".to_string(),
            "ConnectTimeout=5".to_string(),
            "LogLevel=ERROR".to_string(),
        ] {
            argv.push("-o".into());
            argv.push(option.into());
        }
        argv.push("-i".into());
        argv.push(d.client_key.clone().into());
        argv.push("-p".into());
        argv.push(d.ssh_port.to_string().into());
        argv.push(format!("{}@{}", d.ssh_user, node.ip).into());
        argv.push("--".into());
        argv.push(remote_command.into());
        argv
    }

    /// Runs `remote_command` on `node` over SSH from the root namespace, with
    /// host keys verified against the testbed's known_hosts.
    pub fn ssh(&self, node: &Node, remote_command: &str) -> Result<Output> {
        self.ssh_with_known_hosts(node, &self.description.known_hosts, remote_command)
    }

    /// [`Testbed::ssh`] with another known_hosts file (to test refusals).
    pub fn ssh_with_known_hosts(
        &self,
        node: &Node,
        known_hosts: &Path,
        remote_command: &str,
    ) -> Result<Output> {
        let argv = self.ssh_argv(node, known_hosts, remote_command);
        run_bounded(command(&argv[0]).args(&argv[1..]), COMMAND_TIMEOUT)
    }

    /// Creates pod `name` on `node`: a new network namespace (loopback up),
    /// attached by the CNI plugin named in `cni_config` (run with `CNI_COMMAND=ADD`
    /// inside the node, so IPAM state lands in the node's private
    /// /var/lib/cni). Returns the address IPAM gave its `eth0`.
    pub fn create_pod(&self, node: &Node, name: &str, cni_config: &str) -> Result<Pod> {
        if name.is_empty()
            || name.len() > 32
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::new(format!(
                "invalid pod name {name:?}: use 1-32 characters of [a-z0-9-]"
            )));
        }
        let netns = format!("{}pod-{name}", self.description.netns_prefix);
        check_success(
            &format!("ip netns add {netns}"),
            run_bounded(
                command("ip").args(["netns", "add", &netns]),
                COMMAND_TIMEOUT,
            )?,
        )?;
        let mut pod = Pod {
            name: name.to_string(),
            node: node.name.clone(),
            container_id: netns.clone(),
            netns,
            address: Ipv4Net::default(),
            gateway: None,
            cni_config: cni_config.to_string(),
        };
        let attached = self
            .run_in(&pod.netns, &["ip", "link", "set", "lo", "up"])
            .and_then(|_| self.cni(node, &pod, "ADD"))
            .and_then(|result| parse_cni_result(&result));
        match attached {
            Ok((address, gateway)) => {
                pod.address = address;
                pod.gateway = gateway;
                Ok(pod)
            }
            Err(e) => {
                // Leave no half-made pod behind; `down` would also remove it.
                let _ = run_bounded(
                    command("ip").args(["netns", "delete", &pod.netns]),
                    COMMAND_TIMEOUT,
                );
                Err(Error::new(format!(
                    "cannot create pod {name} on {}: {e}",
                    node.name
                )))
            }
        }
    }

    /// Detaches `pod` (CNI `DEL`, which releases its IPAM address) and
    /// deletes its namespace.
    pub fn delete_pod(&self, pod: &Pod) -> Result<()> {
        let node = self.node(&pod.node)?;
        self.cni(node, pod, "DEL")?;
        check_success(
            &format!("ip netns delete {}", pod.netns),
            run_bounded(
                command("ip").args(["netns", "delete", &pod.netns]),
                COMMAND_TIMEOUT,
            )?,
        )?;
        Ok(())
    }

    /// Runs one CNI command for `pod` through the CNI environment protocol;
    /// returns the plugin's stdout (the result JSON for ADD).
    pub fn cni(&self, node: &Node, pod: &Pod, cni_command: &str) -> Result<String> {
        let plugin = cni_plugin_type(&pod.cni_config)?;
        let plugin_path = Path::new(CNI_PATH).join(&plugin);
        let mut command = node_command(node, &[&plugin_path]);
        command
            .env("CNI_COMMAND", cni_command)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", format!("/run/netns/{}", pod.netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH);
        let output =
            run_bounded_with_stdin(&mut command, pod.cni_config.as_bytes(), COMMAND_TIMEOUT)?;
        if !output.status.success() {
            // CNI plugins report errors as JSON on stdout.
            return Err(Error::new(format!(
                "CNI {cni_command} by {} for pod {} on {} failed ({}): {}{}",
                plugin_path.display(),
                pod.name,
                node.name,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Opens a TCP connection from namespace `from_netns` to `target`, with a
    /// one-shot socat listener on `listen_netns` (bound to every address, so
    /// DNAT'd traffic lands too) that reports the source address it saw.
    /// Every step is bounded: an unreachable target costs
    /// [`PROBE_CONNECT_TIMEOUT`].
    pub fn tcp_probe(
        &self,
        from_netns: &str,
        listen_netns: &str,
        target: SocketAddr,
    ) -> Result<Probe> {
        tcp_probe(from_netns, listen_netns, target)
    }

    /// A TCP probe from pod `from` to pod `to` on a fresh port.
    pub fn probe_pod_to_pod(&self, from: &Pod, to: &Pod) -> Result<Probe> {
        self.tcp_probe(
            &from.netns,
            &to.netns,
            SocketAddr::new(IpAddr::V4(to.ip()), next_probe_port()),
        )
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        if let Err(e) = down(&self.description.name) {
            // Panicking while already unwinding would abort the whole run;
            // the original failure is the one to show then.
            if thread::panicking() {
                eprintln!("testbed {} ({}): {e}", self.description.name, self.label);
            } else {
                panic!("testbed {} ({}): {e}", self.description.name, self.label);
            }
        }
    }
}

/// A CNI network configuration for the `bridge` plugin with `host-local`
/// IPAM, as a kubelet's CNI config would hold it: pods of `subnet` on bridge
/// `bridge`, the bridge holding the gateway address, a default route to it.
pub fn bridge_cni_config(network: &str, bridge: &str, subnet: Ipv4Net, ip_masq: bool) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network,
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": ip_masq,
        "ipam": {
            "type": "host-local",
            "subnet": subnet.to_string(),
            "routes": [{ "dst": "0.0.0.0/0" }],
        },
    })
    .to_string()
}

/// The testbed ID for test `label` in process `pid`: `t` and 9 hex digits of
/// a stable hash, which fits the script's 10-character limit.
pub fn testbed_id(label: &str, pid: u32) -> String {
    // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in label.bytes().chain(pid.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("t{:09x}", hash & 0xf_ffff_ffff)
}

/// The path of `testbed/kscratch-testbed` in this package.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testbed")
        .join("kscratch-testbed")
}

/// Runs `kscratch-testbed down --name id`.
pub fn down(id: &str) -> Result<()> {
    let script = script_path();
    let output = run_bounded(
        command("bash").arg(&script).args(["down", "--name", id]),
        Duration::from_secs(60),
    )?;
    check_success(&format!("{} down --name {id}", script.display()), output).map(|_| ())
}

/// Fails unless the process runs as root and every binary the testbed uses
/// is installed, naming what is missing and the Debian package that has it.
pub fn check_prerequisites() -> Result<()> {
    let mut problems = Vec::new();
    match effective_uid() {
        Ok(0) => {}
        Ok(uid) => problems.push(format!("the testbed needs root (running as uid {uid})")),
        Err(e) => problems.push(e.to_string()),
    }
    let missing: Vec<String> = REQUIRED_BINARIES
        .iter()
        .filter(|(binary, _)| find_binary(binary).is_none())
        .map(|(binary, package)| format!("{binary} (Debian package {package})"))
        .collect();
    if !missing.is_empty() {
        problems.push(format!("missing binaries: {}", missing.join(", ")));
    }
    let script = script_path();
    if !script.is_file() {
        problems.push(format!(
            "the testbed script {} is missing",
            script.display()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "{ENABLE_VAR}=1 but the testbed cannot run: {}. See testbed/README.md.",
            problems.join("; ")
        )))
    }
}

/// Runs `argv` in network namespace `netns`, bounded by [`COMMAND_TIMEOUT`].
pub fn exec_in<S: AsRef<OsStr>>(netns: &str, argv: &[S]) -> Result<Output> {
    run_bounded(
        command("ip").args(["netns", "exec", netns]).args(argv),
        COMMAND_TIMEOUT,
    )
}

/// Starts `argv` in the background in network namespace `netns`, for
/// daemons. If `netns` belongs to a testbed, `down` kills it.
pub fn spawn_in<S: AsRef<OsStr>>(netns: &str, argv: &[S]) -> Result<Child> {
    command("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            Error::new(format!(
                "cannot start {} in netns {netns}: {e}",
                render(argv)
            ))
        })
}

/// The namespace names that currently exist (`ip netns list`).
pub fn list_netns() -> Result<Vec<String>> {
    let output = run_bounded(command("ip").args(["netns", "list"]), COMMAND_TIMEOUT)?;
    let text = check_success("ip netns list", output)?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// True when a link called `name` exists in the root namespace.
pub fn root_link_exists(name: &str) -> Result<bool> {
    let output = run_bounded(
        command("ip").args(["link", "show", "dev", name]),
        COMMAND_TIMEOUT,
    )?;
    Ok(output.status.success())
}

/// True when `pid` names a process that has not exited (a zombie has).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status
            .lines()
            .any(|line| line.starts_with("State:") && line.contains("Z (zombie)")),
        Err(_) => false,
    }
}

/// Runs `command`, killing it after `limit`. The limit is enforced by
/// coreutils `timeout` around the program (SIGTERM, then SIGKILL 2 s later),
/// so the whole exec chain (`ip netns exec`, `nsenter`) is covered.
pub fn run_bounded(command: &mut Command, limit: Duration) -> Result<Output> {
    run_bounded_with_stdin(command, &[], limit)
}

/// [`run_bounded`] with `stdin` fed to the command.
pub fn run_bounded_with_stdin(
    command: &mut Command,
    stdin: &[u8],
    limit: Duration,
) -> Result<Output> {
    let mut bounded = bounded(command, limit);
    let shown = render_command(&bounded);
    bounded
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = bounded
        .spawn()
        .map_err(|e| Error::new(format!("cannot run {shown}: {e}")))?;
    let mut pipe = child
        .stdin
        .take()
        .ok_or_else(|| Error::new(format!("no stdin pipe for {shown}")))?;
    // A plugin that exits without reading its stdin closes the pipe; that is
    // its business, and its exit status says what happened.
    let _ = pipe.write_all(stdin);
    drop(pipe);
    let output = child
        .wait_with_output()
        .map_err(|e| Error::new(format!("cannot wait for {shown}: {e}")))?;
    if output.status.code() == Some(124) || output.status.code() == Some(137) {
        return Err(Error::new(format!(
            "{shown} timed out after {limit:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(output)
}

// ---------------------------------------------------------------------------

/// Binaries the testbed and its helpers run, with their Debian package.
const REQUIRED_BINARIES: &[(&str, &str)] = &[
    ("bash", "bash"),
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("iptables", "iptables"),
    ("/usr/sbin/sshd", "openssh-server"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("socat", "socat"),
    ("nsenter", "util-linux"),
    ("unshare", "util-linux"),
    ("timeout", "coreutils"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/usr/lib/cni/host-local", "containernetworking-plugins"),
];

/// Directories searched for binaries in addition to `PATH`: root's tools
/// live in sbin, which a CI environment's `PATH` may lack.
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

static TESTBED_LOCK: Mutex<()> = Mutex::new(());

/// The machine-wide testbed lock, held until the testbed is torn down. The
/// kernel releases it when the process dies, so a killed run never blocks the
/// next one.
fn machine_lock() -> Result<std::fs::File> {
    let path = "/run/kscratch-testbed.lock";
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::new(format!("cannot open {path}: {e}")))?;
    file.lock()
        .map_err(|e| Error::new(format!("cannot lock {path}: {e}")))?;
    Ok(file)
}

/// Listener ports for probes: distinct within the process, so probes never
/// collide on a port even in the same namespace.
static NEXT_PROBE_PORT: AtomicU16 = AtomicU16::new(20_000);

fn next_probe_port() -> u16 {
    NEXT_PROBE_PORT.fetch_add(1, Ordering::Relaxed)
}

fn tcp_probe(from_netns: &str, listen_netns: &str, target: SocketAddr) -> Result<Probe> {
    let port = target.port();
    let listen_for = PROBE_CONNECT_TIMEOUT + Duration::from_secs(8);
    // SOCAT_PEERADDR is set by socat for the SYSTEM child: the source address
    // of the accepted connection. It goes to the client and, as the
    // authoritative report, to the listener's stderr.
    let report = "echo peer=$SOCAT_PEERADDR; echo peer=$SOCAT_PEERADDR >&2";
    let mut listener = bounded(
        command("ip").args(["netns", "exec", listen_netns]).args([
            "socat".to_string(),
            "-T5".to_string(),
            format!("TCP-LISTEN:{port},reuseaddr"),
            format!("SYSTEM:{report}"),
        ]),
        listen_for,
    );
    listener
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut listener = listener.spawn().map_err(|e| {
        Error::new(format!(
            "cannot start the probe listener in {listen_netns}: {e}"
        ))
    })?;

    if let Err(e) = wait_until_listening(listen_netns, port, &mut listener) {
        terminate(&mut listener);
        return Err(e);
    }

    let client_address = match target {
        SocketAddr::V4(v4) => format!(
            "TCP4:{}:{},connect-timeout={}",
            v4.ip(),
            v4.port(),
            PROBE_CONNECT_TIMEOUT.as_secs()
        ),
        SocketAddr::V6(v6) => format!(
            "TCP6:[{}]:{},connect-timeout={}",
            v6.ip(),
            v6.port(),
            PROBE_CONNECT_TIMEOUT.as_secs()
        ),
    };
    // `-t 3`: after sending nothing, wait up to 3 s for the listener's report.
    let client = run_bounded(
        command("ip").args(["netns", "exec", from_netns]).args([
            "socat",
            "-t3",
            "-T5",
            "-",
            &client_address,
        ]),
        PROBE_CONNECT_TIMEOUT + Duration::from_secs(6),
    );
    let client = match client {
        Ok(output) => output,
        Err(e) => {
            terminate(&mut listener);
            return Err(e);
        }
    };
    let client_stdout = String::from_utf8_lossy(&client.stdout).into_owned();
    let client_stderr = String::from_utf8_lossy(&client.stderr).into_owned();

    if !client.status.success() || !client_stdout.contains("peer=") {
        terminate(&mut listener);
        let listener_output = listener
            .wait_with_output()
            .map_err(|e| Error::new(format!("probe listener: {e}")))?;
        let seen = String::from_utf8_lossy(&listener_output.stderr).into_owned();
        if let Some(peer) = parse_peer(&seen) {
            return Err(Error::new(format!(
                "probe {from_netns} -> {target}: the listener in {listen_netns} accepted a connection from {peer} but the client failed: {}",
                client_stderr.trim()
            )));
        }
        return Ok(Probe::Unreachable {
            detail: format!("{} {}", client.status, client_stderr.trim()),
        });
    }

    let listener_output = listener
        .wait_with_output()
        .map_err(|e| Error::new(format!("probe listener: {e}")))?;
    let seen = String::from_utf8_lossy(&listener_output.stderr).into_owned();
    match parse_peer(&seen) {
        Some(peer) => Ok(Probe::Reached { peer }),
        None => Err(Error::new(format!(
            "probe {from_netns} -> {target}: the client got {:?} but the listener in {listen_netns} reported nothing ({}): {}",
            client_stdout.trim(),
            listener_output.status,
            seen.trim()
        ))),
    }
}

/// Waits (bounded) until `port` is in LISTEN state in `netns`, failing early
/// if the listener died.
fn wait_until_listening(netns: &str, port: u16, listener: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let filter = format!("sport = :{port}");
    loop {
        if let Some(status) = listener
            .try_wait()
            .map_err(|e| Error::new(format!("probe listener: {e}")))?
        {
            let mut stderr = String::new();
            if let Some(mut pipe) = listener.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            return Err(Error::new(format!(
                "the probe listener in {netns} on port {port} exited ({status}): {}",
                stderr.trim()
            )));
        }
        let output = exec_in(netns, &["ss", "-Hltn", &filter])?;
        if output.status.success() && !output.stdout.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::new(format!(
                "the probe listener in {netns} did not listen on port {port} within 5s"
            )));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a bounded command: SIGTERM to `timeout`, which passes it on to the
/// program (a SIGKILL would orphan the program instead).
fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
}

fn parse_peer(text: &str) -> Option<IpAddr> {
    text.lines()
        .find_map(|line| line.trim().strip_prefix("peer="))
        .and_then(|peer| peer.trim().parse().ok())
}

/// The `type` of a CNI network configuration.
fn cni_plugin_type(config: &str) -> Result<String> {
    let value: serde_json::Value = serde_json::from_str(config)
        .map_err(|e| Error::new(format!("invalid CNI config ({e}): {config}")))?;
    let plugin = value
        .get("type")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| Error::new(format!("CNI config has no string \"type\": {config}")))?;
    // The type names a file in CNI_PATH; refuse anything that would escape it.
    if plugin.is_empty()
        || !plugin
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::new(format!(
            "CNI config names an unusable plugin type {plugin:?}"
        )));
    }
    Ok(plugin.to_string())
}

/// The first IPv4 address and gateway of a CNI ADD result (spec 0.3.0+).
fn parse_cni_result(result: &str) -> Result<(Ipv4Net, Option<Ipv4Addr>)> {
    let value: serde_json::Value = serde_json::from_str(result)
        .map_err(|e| Error::new(format!("invalid CNI result ({e}): {result}")))?;
    let ips = value
        .get("ips")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| Error::new(format!("CNI result has no \"ips\" list: {result}")))?;
    for ip in ips {
        let Some(address) = ip.get("address").and_then(serde_json::Value::as_str) else {
            continue;
        };
        let Ok(address) = address.parse::<Ipv4Net>() else {
            continue;
        };
        let gateway = match ip.get("gateway").and_then(serde_json::Value::as_str) {
            Some(text) => Some(text.parse().map_err(|e| {
                Error::new(format!("CNI result gateway {text:?} is not IPv4: {e}"))
            })?),
            None => None,
        };
        return Ok((address, gateway));
    }
    Err(Error::new(format!(
        "CNI result has no IPv4 address: {result}"
    )))
}

/// `nsenter` into the network, mount and UTS namespaces held by the node's
/// sshd.
fn node_command<S: AsRef<OsStr>>(node: &Node, argv: &[S]) -> Command {
    let mut command = command("nsenter");
    command
        .args([
            "--target",
            &node.sshd_pid.to_string(),
            "--net",
            "--mount",
            "--uts",
            "--",
        ])
        .args(argv);
    command
}

/// A `Command` for `program` whose `PATH` also covers the sbin directories.
fn command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env("PATH", search_path());
    command
}

fn search_path() -> OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for dir in SBIN_DIRS {
        if !dirs.iter().any(|d| d == Path::new(dir)) {
            dirs.push(PathBuf::from(dir));
        }
    }
    std::env::join_paths(dirs).unwrap_or_else(|_| {
        OsString::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    })
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    if path.is_absolute() {
        return is_executable(path).then(|| path.to_path_buf());
    }
    std::env::split_paths(&search_path())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn effective_uid() -> Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| {
        Error::new(format!(
            "cannot read /proc/self/status to check for root: {e}"
        ))
    })?;
    // "Uid:\treal\teffective\tsaved\tfs"
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| Error::new("cannot find the effective uid in /proc/self/status"))
}

/// Wraps `command` in `timeout -k 2 SECS`, keeping its environment.
fn bounded(command: &Command, limit: Duration) -> Command {
    let mut wrapped = Command::new("timeout");
    wrapped
        .args(["-k", "2", &format!("{}", limit.as_secs().max(1))])
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

fn check_success(what: &str, output: Output) -> Result<String> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(failure(what, &output.status, &output))
    }
}

fn stdout_of<S: AsRef<OsStr>>(place: &str, argv: &[S], output: Output) -> Result<String> {
    check_success(&format!("{} {place}", render(argv)), output)
}

fn failure(what: &str, status: &ExitStatus, output: &Output) -> Error {
    Error::new(format!(
        "{what} failed ({status}); stdout: {}; stderr: {}",
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

fn render<S: AsRef<OsStr>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn render_command(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn testbed_ids_fit_the_script_and_differ_per_test_and_process() {
        let a = testbed_id("testbed_teardown_leaves_nothing", 42);
        assert_eq!(a.len(), 10);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "{a}"
        );
        assert_eq!(a, testbed_id("testbed_teardown_leaves_nothing", 42));
        assert_ne!(a, testbed_id("testbed_teardown_leaves_nothing", 43));
        assert_ne!(a, testbed_id("testbed_pods_get_addresses", 42));
    }

    #[test]
    fn cni_results_yield_the_pod_address_and_gateway() {
        let result = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cbr0"}],
            "ips":[{"interface":2,"address":"10.10.1.2/24","gateway":"10.10.1.1"}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;
        let (address, gateway) = parse_cni_result(result).unwrap();
        assert_eq!(address, "10.10.1.2/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(gateway, Some(Ipv4Addr::new(10, 10, 1, 1)));
        let error = parse_cni_result(r#"{"ips":[]}"#).unwrap_err();
        assert!(error.to_string().contains("no IPv4 address"), "{error}");
    }

    #[test]
    fn cni_plugin_type_must_name_a_file_in_the_plugin_dir() {
        let config = bridge_cni_config("net", "cbr0", "10.10.1.0/24".parse().unwrap(), false);
        assert_eq!(cni_plugin_type(&config).unwrap(), "bridge");
        assert!(cni_plugin_type(r#"{"type":"../../bin/sh"}"#).is_err());
        assert!(cni_plugin_type(r#"{"name":"x"}"#).is_err());
        assert!(cni_plugin_type("not json").is_err());
    }

    #[test]
    fn the_listener_report_is_parsed_from_its_output() {
        assert_eq!(
            parse_peer("peer=10.10.1.2\n"),
            Some(IpAddr::V4(Ipv4Addr::new(10, 10, 1, 2)))
        );
        assert_eq!(
            parse_peer("noise\npeer=198.51.100.1\n"),
            Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)))
        );
        assert_eq!(parse_peer("peer=\n"), None);
    }
}
