//! The SSH transport: one russh connection per node and, on it, one
//! long-lived session running a small POSIX `sh` agent ([`AGENT`]) that runs
//! every step's scripts, framed, with keepalives and bounded reconnection.
//!
//! Why an agent: sshd forks, logs in and sets up a session for every channel,
//! which cost 300-480 ms per command on the testbed (more on a loaded
//! machine). The agent is started once per node (under `sudo -n` for a
//! non-root user) and then costs a few forks per script:
//! - a request is a header line `ID LINES STDIN_LEN TIMEOUT_SECS`, the
//!   script's lines, then exactly `STDIN_LEN` bytes of stdin (file contents
//!   and binaries, secrets included: never argv, never the script text);
//! - the agent checks the script arrived whole (a truncated script never
//!   runs), runs it with `sh` under coreutils `timeout` when the node has it,
//!   the stdin streamed into it, and drains whatever stdin the script left;
//! - the answer is a header line `KSA ID STATUS STDOUT_LEN STDERR_LEN` and
//!   the two outputs' bytes.
//!
//! Requests are pipelined: [`SshPool::run_batch`] writes several and then
//! reads their answers, one round trip for all of a node's checks, or for a
//! batch of its applies ([`SshPool::run_batch_each`] hands each answer over
//! as soon as it is read).
//!
//! Dead nodes fail fast: a node whose connection cannot be opened (or
//! re-opened after a loss, at most [`MAX_RECONNECTS`] times) is marked
//! unreachable once, and every later command on it fails at once with
//! [`SshError::Unreachable`], without another connect timeout.
//!
//! Host keys are verified in [`russh::client::Handler::check_server_key`]
//! against an OpenSSH known_hosts file with kscratch's own
//! [`crate::known_hosts`] (hashed names, `[host]:port`, patterns, `@revoked`),
//! before authentication and therefore before any command runs:
//! - trusted: go on;
//! - changed or revoked, or a host certificate kscratch cannot validate: a
//!   hard error naming the node, its address and the known_hosts lines;
//! - unknown: refused, unless trust-on-first-use was asked for
//!   (`--accept-new-host-keys`), which appends a hashed entry (file 0600,
//!   directory 0700).
//!
//! Authentication uses the node's private key file (refused when group or
//! others may read it, as OpenSSH does) or, without one, the keys of the
//! ssh-agent at `SSH_AUTH_SOCK`. Non-root users run scripts under `sudo -n`.
//!
//! Every command has a timeout. A lost or failed connection or session is
//! reported as a [`SshError`] of kind [`ErrorKind::Connection`], which the
//! executor answers by checking the step again (never by re-running its
//! apply blindly); the next command re-establishes the session.

use crate::keyfile::{self, KeyFileError};
use crate::known_hosts::{format_entry, KnownHosts, NameForm, Verdict, HASH_SALT_LEN};
use crate::shell_render::{Script, Stdin, SCRIPT_PATH};
use kscratch_core::exec::ErrorKind;
use russh::client::{self, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::ChannelMsg;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// How the client connects and what it trusts.
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// The OpenSSH known_hosts file host keys are verified against.
    pub known_hosts: PathBuf,
    /// Trust on first use: record an unknown host's key instead of refusing it.
    pub accept_new_host_keys: bool,
    /// TCP connect, key exchange and authentication, together.
    pub connect_timeout: Duration,
    /// A keepalive after this much silence; the connection is dropped after three unanswered.
    pub keepalive: Duration,
}

impl SshConfig {
    pub fn new(known_hosts: PathBuf) -> SshConfig {
        SshConfig {
            known_hosts,
            accept_new_host_keys: false,
            connect_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(15),
        }
    }
}

/// A node as SSH sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The node's name, for messages.
    pub node: String,
    /// Address or host name to connect to; also the name looked up in known_hosts.
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Private key file; `None` means the ssh-agent.
    pub key: Option<PathBuf>,
    /// Run scripts under `sudo -n`.
    pub sudo: bool,
}

/// What a remote command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The exit status; `None` when the command died of a signal.
    pub status: Option<u32>,
    pub signal: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Why a connection or a command failed.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The host key is not trusted: changed, revoked, unknown (without
    /// trust on first use) or an unverifiable certificate. Never retried.
    #[error("{node} ({host}:{port}): {message}")]
    HostKey {
        node: String,
        host: String,
        port: u16,
        message: String,
    },
    #[error("{0}")]
    KeyFile(#[from] KeyFileError),
    #[error("{node}: cannot use the private key {path}: {message}", path = .path.display())]
    BadKey {
        node: String,
        path: PathBuf,
        message: String,
    },
    #[error("{node} ({host}:{port}): authentication as {user} failed: {message}")]
    Auth {
        node: String,
        host: String,
        port: u16,
        user: String,
        message: String,
    },
    #[error("{node} ({host}:{port}): cannot connect: {message}")]
    Connect {
        node: String,
        host: String,
        port: u16,
        message: String,
    },
    /// The connection broke while a command ran.
    #[error("{node}: the connection was lost while running `{command}`: {message}")]
    Lost {
        node: String,
        command: String,
        message: String,
    },
    #[error("{node}: `{command}` did not finish within {secs}s")]
    Timeout {
        node: String,
        command: String,
        secs: u64,
    },
    #[error("{path}: {message}", path = .path.display())]
    KnownHostsFile { path: PathBuf, message: String },
    /// The agent could not start on the node (for example `sudo -n` wants a
    /// password) or broke its protocol.
    #[error("{node}: cannot start the kscratch agent: {message}")]
    Agent { node: String, message: String },
    /// The node was marked unreachable earlier in this run: nothing is tried again.
    #[error("unreachable: {message}")]
    Unreachable { node: String, message: String },
    #[error("{0}")]
    Protocol(#[from] russh::Error),
}

impl SshError {
    /// A problem of trust or configuration that must stop the whole run
    /// before anything runs anywhere (a refused host key, an unusable key or
    /// known_hosts file), as opposed to a node that is down.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            SshError::HostKey { .. }
                | SshError::KeyFile(_)
                | SshError::BadKey { .. }
                | SshError::KnownHostsFile { .. }
        )
    }

    /// How the executor treats it: connection-level problems are retried, nothing else.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SshError::Connect { .. }
            | SshError::Lost { .. }
            | SshError::Protocol(_)
            | SshError::Unreachable { .. } => ErrorKind::Connection,
            SshError::Timeout { .. } => ErrorKind::Timeout,
            _ => ErrorKind::Failed,
        }
    }
}

/// Counters per node, for the performance figures of `apply`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Remote scripts run (each one framed request to the node's agent).
    pub commands: u64,
    /// Request-and-answer exchanges: a batch of pipelined scripts counts one.
    pub round_trips: u64,
    /// SSH connections opened (1 unless a connection was lost).
    pub connects: u64,
    /// Agent sessions started (1 unless a session was lost).
    pub sessions: u64,
    /// Time spent inside remote commands, from sending the request to its answer.
    pub busy: Duration,
    /// Time spent connecting, authenticating and starting the agent.
    pub connecting: Duration,
}

/// How much of a streamed file is read and handed to the channel at once.
const UPLOAD_CHUNK: u64 = 1 << 20;

/// The ciphers offered, best first: AES-GCM before russh's default
/// ChaCha20-Poly1305, because both ends run it in hardware (AES-NI, ARMv8
/// crypto) where ChaCha20 is software; it carries the binaries.
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// Re-connections allowed per node and run after a lost connection; then
/// the node is marked unreachable.
pub const MAX_RECONNECTS: u64 = 2;

/// The agent run in the one long-lived session per node (see the module
/// documentation for the protocol). POSIX `sh`, coreutils `head`, `wc`,
/// `cat`, `mktemp`; `timeout` when present.
pub const AGENT: &str = r#"umask 077
LC_ALL=C
export LC_ALL
d=$(mktemp -d "${TMPDIR:-/tmp}/.kscratch-agent.XXXXXX") || exit 1
trap 'rm -rf "$d"' EXIT
trap 'exit 1' HUP INT TERM PIPE
T=
if command -v timeout >/dev/null 2>&1; then T=timeout; fi
echo "KSA-READY 1"
while IFS=' ' read -r id n ilen tmo; do
  s=
  i=0
  while [ "$i" -lt "$n" ]; do
    IFS= read -r l || exit 1
    s="$s$l
"
    i=$((i + 1))
  done
  if [ "$ilen" = 0 ]; then
    o=$( (eval "$s") 2> "$d/e" < /dev/null; printf "x$?")
  else
    printf '%s' "$s" > "$d/s"
    if [ -n "$T" ] && [ "$tmo" -gt 0 ]; then run="$T -k 5 $tmo sh"; else run=sh; fi
    o=$(head -c "$ilen" | { $run "$d/s" 2> "$d/e"; st=$?; cat > /dev/null; exit $st; }; printf "x$?")
  fi
  st=${o##*x}
  o=${o%x*}
  el=0
  if [ -s "$d/e" ]; then el=$(wc -c < "$d/e"); fi
  printf 'KSA %s %s %s %s\n%s' "$id" "$st" "${#o}" "$el" "$o"
  if [ "$el" != 0 ]; then cat "$d/e"; fi
done
"#;

/// A node's connection: opened under the lock, used outside it.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Handle<Client>>>>>;
/// A node's agent session, held for a whole request-and-answer exchange.
type SessionSlot = Arc<tokio::sync::Mutex<Option<Session>>>;

/// One agent session: the channel and what it sent that is not read yet.
struct Session {
    handle: Arc<Handle<Client>>,
    ch: russh::Channel<client::Msg>,
    buf: Vec<u8>,
    stderr: Vec<u8>,
    next_id: u64,
    in_flight: bool,
}

/// A request's header line `ID LINES STDIN_LEN TIMEOUT_SECS` and its
/// script (its stdin follows).
fn request(id: u64, text: &str, stdin_len: u64, timeout: Duration) -> Result<Vec<u8>, String> {
    // The agent reads the script line by line: it must end with a newline.
    let mut text = text.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    if text.contains('\0') {
        return Err("a script cannot contain a NUL byte".into());
    }
    let lines = text.bytes().filter(|&b| b == b'\n').count();
    let mut msg = format!("{id} {lines} {stdin_len} {}\n", timeout.as_secs()).into_bytes();
    msg.extend_from_slice(text.as_bytes());
    Ok(msg)
}

/// One answer of the agent.
struct Frame {
    id: u64,
    status: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Session {
    /// Reads until `buf` holds one line; returns it without its newline.
    async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            self.more().await?;
        }
    }

    /// Waits for more bytes from the agent; an error when the session ended.
    async fn more(&mut self) -> Result<(), String> {
        loop {
            match self.ch.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    self.buf.extend_from_slice(&data);
                    return Ok(());
                }
                Some(ChannelMsg::ExtendedData { data, .. }) => {
                    // The agent's own complaints (never a script's: those are framed).
                    self.stderr.extend_from_slice(&data);
                    let keep = self.stderr.len().saturating_sub(4096);
                    self.stderr.drain(..keep);
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    return Err(format!(
                        "the agent exited with status {exit_status}{}",
                        self.said()
                    ))
                }
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                    return Err(format!(
                        "the agent was killed ({signal_name:?}){}",
                        self.said()
                    ))
                }
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                    return Err(format!("the session closed{}", self.said()))
                }
                Some(_) => {}
            }
        }
    }

    fn said(&self) -> String {
        let t = String::from_utf8_lossy(&self.stderr);
        let t = t.trim();
        if t.is_empty() {
            String::new()
        } else {
            format!(": {t}")
        }
    }

    /// Sends one request.
    async fn send(
        &mut self,
        script: &Script,
        text: &str,
        timeout: Duration,
    ) -> Result<u64, String> {
        let id = self.next_id;
        self.next_id += 1;
        // The stdin's parts, each with its length (taken now: a file is
        // sent with exactly that length).
        let mut parts: Vec<(&Stdin, u64)> = Vec::new();
        let mut stack = vec![&script.stdin];
        while let Some(p) = stack.pop() {
            match p {
                Stdin::Empty => {}
                Stdin::Bytes { bytes, .. } => parts.push((p, bytes.len() as u64)),
                Stdin::File(f) => parts.push((
                    p,
                    tokio::fs::metadata(f)
                        .await
                        .map_err(|e| format!("cannot read {}: {e}", f.display()))?
                        .len(),
                )),
                Stdin::Parts(inner) => stack.extend(inner.iter().rev()),
            }
        }
        let stdin_len: u64 = parts.iter().map(|(_, n)| n).sum();
        let mut msg = request(id, text, stdin_len, timeout)?;
        for (part, len) in parts {
            match part {
                Stdin::Bytes { bytes, .. } => msg.extend_from_slice(bytes),
                Stdin::File(p) => {
                    if !msg.is_empty() {
                        self.ch
                            .data_bytes(std::mem::take(&mut msg))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    self.stream_file(p, len).await?;
                }
                Stdin::Empty | Stdin::Parts(_) => {}
            }
        }
        if !msg.is_empty() {
            self.ch.data_bytes(msg).await.map_err(|e| e.to_string())?;
        }
        Ok(id)
    }

    /// Streams exactly `len` bytes of the local file `p`.
    async fn stream_file(&mut self, p: &Path, len: u64) -> Result<(), String> {
        // Large reads, handed over whole: a copy through an 8 KiB buffer
        // (a blocking file read and a channel message per 8 KiB) moved a
        // 21 MB binary in 2.6 s on the loaded testbed.
        let mut f = tokio::fs::File::open(p)
            .await
            .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let mut left = len;
        while left > 0 {
            let mut chunk = vec![0u8; left.min(UPLOAD_CHUNK) as usize];
            // Exactly the announced length: a file that shrank meanwhile
            // is an error here (the session is then dropped), and one
            // that grew is cut at that length.
            f.read_exact(&mut chunk)
                .await
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            left -= chunk.len() as u64;
            self.ch.data_bytes(chunk).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Reads one answer.
    async fn receive(&mut self) -> Result<Frame, String> {
        let header = self.line().await?;
        let f: Vec<&str> = header.split_whitespace().collect();
        let bad = || format!("the agent answered `{header}`, not a frame");
        if f.len() != 5 || f[0] != "KSA" {
            return Err(bad());
        }
        let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
        let (id, status, olen, elen) = (num(f[1])?, num(f[2])?, num(f[3])?, num(f[4])?);
        let need = (olen + elen) as usize;
        while self.buf.len() < need {
            self.more().await?;
        }
        let stdout: Vec<u8> = self.buf.drain(..olen as usize).collect();
        let stderr: Vec<u8> = self.buf.drain(..elen as usize).collect();
        Ok(Frame {
            id,
            status: status as u32,
            stdout,
            stderr,
        })
    }
}

/// One connection and one agent session per node, opened on first use and reused.
pub struct SshPool {
    config: SshConfig,
    conns: Mutex<BTreeMap<String, Slot>>,
    sessions: Mutex<BTreeMap<String, SessionSlot>>,
    stats: Arc<Mutex<BTreeMap<String, NodeStats>>>,
    /// Nodes marked unreachable in this run, with why.
    dead: Mutex<BTreeMap<String, String>>,
    /// Serializes read-verify-append of the known_hosts file across nodes.
    known_hosts_lock: Arc<Mutex<()>>,
}

impl SshPool {
    pub fn new(config: SshConfig) -> SshPool {
        SshPool {
            config,
            conns: Mutex::default(),
            sessions: Mutex::default(),
            stats: Arc::default(),
            dead: Mutex::default(),
            known_hosts_lock: Arc::default(),
        }
    }

    /// Counters per node so far.
    pub fn stats(&self) -> BTreeMap<String, NodeStats> {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The nodes marked unreachable so far, with why (each marked once).
    pub fn unreachable(&self) -> BTreeMap<String, String> {
        self.dead.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Why `node` is unreachable, if it was marked so.
    pub fn unreachable_reason(&self, node: &str) -> Option<String> {
        self.dead.lock().ok().and_then(|d| d.get(node).cloned())
    }

    /// Marks `node` unreachable (the first reason stays).
    pub fn mark_unreachable(&self, node: &str, why: String) {
        if let Ok(mut d) = self.dead.lock() {
            if !d.contains_key(node) {
                tracing::info!(node = %node, "marked unreachable: {why}");
                d.insert(node.to_string(), why);
            }
        }
    }

    fn stat(&self, node: &str, f: impl FnOnce(&mut NodeStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(s.entry(node.to_string()).or_default());
        }
    }

    /// Opens the node's connection (or finds it open): host key verified and
    /// authenticated, nothing started on the node yet.
    pub async fn handshake(&self, ep: &Endpoint) -> Result<(), SshError> {
        if let Some(why) = self.unreachable_reason(&ep.node) {
            return Err(SshError::Unreachable {
                node: ep.node.clone(),
                message: why,
            });
        }
        self.handle(ep).await.map(|_| ())
    }

    /// Connects (or reuses the connection) and starts the node's agent
    /// without running anything: host key verification, authentication and
    /// `sudo -n` are all proven here.
    pub async fn connect(&self, ep: &Endpoint) -> Result<(), SshError> {
        let slot = self.session_slot(ep);
        let mut g = slot.lock().await;
        self.session(ep, &mut g).await.map(|_| ())
    }

    /// Runs `script` on `ep` within `timeout`.
    pub async fn run(
        &self,
        ep: &Endpoint,
        script: &Script,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        let mut v = self
            .run_batch(ep, std::slice::from_ref(script), timeout)
            .await?;
        v.pop().ok_or_else(|| SshError::Agent {
            node: ep.node.clone(),
            message: "no answer".into(),
        })
    }

    /// Runs `scripts` on `ep` in order, pipelined: all requests are sent,
    /// then all answers read, one round trip. `timeout` is for each script;
    /// the batch may take their sum.
    pub async fn run_batch(
        &self,
        ep: &Endpoint,
        scripts: &[Script],
        timeout: Duration,
    ) -> Result<Vec<Output>, SshError> {
        let mut outs = Vec::with_capacity(scripts.len());
        let elapsed = self
            .run_batch_each(ep, scripts, timeout, &mut |_, o| outs.push(o))
            .await?;
        // `timeout` on the node answers 124 when it had to stop the script.
        if let [only] = outs.as_slice() {
            if only.status == Some(124) && elapsed >= timeout {
                return Err(SshError::Timeout {
                    node: ep.node.clone(),
                    command: first_line(&scripts[0].text),
                    secs: timeout.as_secs(),
                });
            }
        }
        Ok(outs)
    }

    /// [`SshPool::run_batch`], handing each answer to `answer` (with the
    /// script's index) as soon as it is read; returns how long the exchange
    /// took. On an error, the scripts not answered yet may or may not have run.
    pub async fn run_batch_each(
        &self,
        ep: &Endpoint,
        scripts: &[Script],
        timeout: Duration,
        answer: &mut (dyn FnMut(usize, Output) + Send),
    ) -> Result<Duration, SshError> {
        if scripts.is_empty() {
            return Ok(Duration::ZERO);
        }
        let slot = self.session_slot(ep);
        let mut g = slot.lock().await;
        let first_line = first_line(&scripts[0].text);
        let mut started = Instant::now();
        let result = {
            let session = self.session(ep, &mut g).await?;
            // Set until every answer is read: a session whose exchange was
            // abandoned half-way (a cancelled future) is never reused.
            session.in_flight = true;
            let total = timeout
                .saturating_mul(scripts.len() as u32)
                .saturating_add(Duration::from_secs(10));
            let handle = session.handle.clone();
            // A connection that dies while a write waits for the peer's
            // window is not reported to that write: watch the connection
            // itself, so that its loss is a lost session (checked again on a
            // new one), not a timeout of the step.
            let closed = async move {
                while !handle.is_closed() {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            };
            let exchange = async {
                started = Instant::now();
                let mut ids = Vec::with_capacity(scripts.len());
                for s in scripts {
                    ids.push(session.send(s, &s.text, timeout).await?);
                }
                for (k, id) in ids.into_iter().enumerate() {
                    let f = session.receive().await?;
                    if f.id != id {
                        return Err(format!("the agent answered request {} for {id}", f.id));
                    }
                    answer(
                        k,
                        Output {
                            status: Some(f.status),
                            signal: None,
                            stdout: f.stdout,
                            stderr: f.stderr,
                        },
                    );
                }
                session.in_flight = false;
                Ok(())
            };
            tokio::time::timeout(total, async {
                tokio::select! {
                    r = exchange => r,
                    () = closed => Err("the connection closed".to_string()),
                }
            })
            .await
        };
        let elapsed = started.elapsed();
        tracing::debug!(
            node = %ep.node,
            scripts = scripts.len(),
            ms = elapsed.as_secs_f64() * 1000.0,
            "answered: {first_line}"
        );
        self.stat(&ep.node, |e| {
            e.commands += scripts.len() as u64;
            e.round_trips += 1;
            e.busy += elapsed;
        });
        match result {
            Ok(Ok(())) => Ok(elapsed),
            Ok(Err(message)) => {
                // The session is suspect: the next command starts a new one
                // (and a new connection, if this one is gone).
                self.drop_session(&mut g).await;
                Err(SshError::Lost {
                    node: ep.node.clone(),
                    command: first_line,
                    message,
                })
            }
            Err(_) => {
                // Answers may still be on their way: never reuse this session.
                self.drop_session(&mut g).await;
                Err(SshError::Timeout {
                    node: ep.node.clone(),
                    command: first_line,
                    secs: timeout.as_secs(),
                })
            }
        }
    }

    async fn drop_session(&self, g: &mut Option<Session>) {
        if let Some(s) = g.take() {
            let _ = s.ch.close().await;
            if s.handle.is_closed() {
                self.forget(&s.handle).await;
            }
        }
    }

    /// Closes every connection (at the end of a run, or to test reconnection).
    pub async fn disconnect_all(&self) {
        let sessions: Vec<_> = self
            .sessions
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        for slot in sessions {
            if let Some(s) = slot.lock().await.take() {
                let _ = s.ch.eof().await;
                let _ = s.ch.close().await;
            }
        }
        let slots: Vec<_> = self
            .conns
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        for slot in slots {
            if let Some(h) = slot.lock().await.take() {
                let _ = h
                    .disconnect(russh::Disconnect::ByApplication, "", "en")
                    .await;
            }
        }
    }

    async fn forget(&self, handle: &Arc<Handle<Client>>) {
        let slots: Vec<_> = self
            .conns
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        for slot in slots {
            let mut g = slot.lock().await;
            if g.as_ref().is_some_and(|h| Arc::ptr_eq(h, handle)) {
                *g = None;
            }
        }
    }

    fn slot(&self, ep: &Endpoint) -> Slot {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.entry(ep.node.clone()).or_default().clone()
    }

    fn session_slot(&self, ep: &Endpoint) -> SessionSlot {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.entry(ep.node.clone()).or_default().clone()
    }

    /// The node's live agent session, started (and connected) if needed.
    async fn session<'g>(
        &self,
        ep: &Endpoint,
        g: &'g mut Option<Session>,
    ) -> Result<&'g mut Session, SshError> {
        if let Some(why) = self.unreachable_reason(&ep.node) {
            return Err(SshError::Unreachable {
                node: ep.node.clone(),
                message: why,
            });
        }
        if g.as_ref()
            .is_some_and(|s| s.handle.is_closed() || s.in_flight)
        {
            tracing::info!(node = %ep.node, "session lost; starting a new one");
            self.drop_session(g).await;
        }
        if g.is_none() {
            let mut reused_once = false;
            let mut started;
            let s = loop {
                let (handle, fresh) = self.handle(ep).await?;
                // The connection's own time is counted by `handle`.
                started = Instant::now();
                let s = tokio::time::timeout(self.config.connect_timeout, start_agent(&handle, ep))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "no answer within {}s",
                            self.config.connect_timeout.as_secs()
                        ))
                    });
                match s {
                    Ok(s) => break s,
                    // A kept connection that died before it was noticed
                    // (the session lost with it was just dropped): connect
                    // again, once, instead of giving up on the node.
                    Err(message) if !fresh && !reused_once => {
                        tracing::info!(node = %ep.node, "the kept connection cannot start a session ({message}); reconnecting");
                        reused_once = true;
                        let _ = handle
                            .disconnect(russh::Disconnect::ByApplication, "", "en")
                            .await;
                        self.forget(&handle).await;
                    }
                    Err(message) => {
                        let e = SshError::Agent {
                            node: ep.node.clone(),
                            message,
                        };
                        self.mark_unreachable(&ep.node, e.to_string());
                        return Err(e);
                    }
                }
            };
            self.stat(&ep.node, |e| {
                e.sessions += 1;
                e.connecting += started.elapsed();
            });
            *g = Some(s);
        }
        g.as_mut().ok_or_else(|| SshError::Agent {
            node: ep.node.clone(),
            message: "no session".into(),
        })
    }

    /// The node's connection, opened if needed; `true` when just opened.
    async fn handle(&self, ep: &Endpoint) -> Result<(Arc<Handle<Client>>, bool), SshError> {
        let slot = self.slot(ep);
        let mut g = slot.lock().await;
        if let Some(h) = g.as_ref() {
            if !h.is_closed() {
                return Ok((h.clone(), false));
            }
            tracing::info!(node = %ep.node, "connection lost; reconnecting");
        }
        let connects = self.stats().get(&ep.node).map_or(0, |s| s.connects);
        if connects > MAX_RECONNECTS {
            let why = format!("the connection was lost {} times in this run", connects);
            self.mark_unreachable(&ep.node, why.clone());
            return Err(SshError::Unreachable {
                node: ep.node.clone(),
                message: why,
            });
        }
        let started = Instant::now();
        let opened = tokio::time::timeout(self.config.connect_timeout, self.open(ep))
            .await
            .unwrap_or_else(|_| {
                Err(SshError::Connect {
                    node: ep.node.clone(),
                    host: ep.host.clone(),
                    port: ep.port,
                    message: format!(
                        "no answer within {}s",
                        self.config.connect_timeout.as_secs()
                    ),
                })
            });
        self.stat(&ep.node, |e| {
            e.connects += 1;
            e.connecting += started.elapsed();
        });
        let h = match opened {
            Ok(h) => h,
            Err(e) => {
                // One connect timeout per node and run, not one per step.
                self.mark_unreachable(&ep.node, e.to_string());
                return Err(e);
            }
        };
        let h = Arc::new(h);
        *g = Some(h.clone());
        Ok((h, true))
    }

    async fn open(&self, ep: &Endpoint) -> Result<Handle<Client>, SshError> {
        // The key is checked and loaded before any packet is sent.
        let key = match &ep.key {
            Some(path) => {
                keyfile::check_private_key_permissions(path)?;
                let k = russh::keys::load_secret_key(path, None).map_err(|e| SshError::BadKey {
                    node: ep.node.clone(),
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                Some(Arc::new(k))
            }
            None => None,
        };
        let config = Arc::new(client::Config {
            keepalive_interval: Some(self.config.keepalive),
            keepalive_max: 3,
            nodelay: true,
            preferred: russh::Preferred {
                cipher: std::borrow::Cow::Borrowed(CIPHERS),
                ..russh::Preferred::DEFAULT
            },
            ..Default::default()
        });
        let client = Client {
            node: ep.node.clone(),
            host: ep.host.clone(),
            port: ep.port,
            known_hosts: self.config.known_hosts.clone(),
            accept_new: self.config.accept_new_host_keys,
            lock: self.known_hosts_lock.clone(),
        };
        let connect_err = |message: String| SshError::Connect {
            node: ep.node.clone(),
            host: ep.host.clone(),
            port: ep.port,
            message,
        };
        let mut h = match client::connect(config, (ep.host.as_str(), ep.port), client).await {
            Ok(h) => h,
            Err(SshError::Protocol(russh::Error::IO(e))) => return Err(connect_err(e.to_string())),
            Err(SshError::Protocol(e)) => return Err(connect_err(e.to_string())),
            Err(e) => return Err(e),
        };
        let auth_err = |message: String| SshError::Auth {
            node: ep.node.clone(),
            host: ep.host.clone(),
            port: ep.port,
            user: ep.user.clone(),
            message,
        };
        match key {
            Some(k) => {
                let hash = h
                    .best_supported_rsa_hash()
                    .await
                    .map_err(|e| auth_err(e.to_string()))?
                    .flatten();
                let r = h
                    .authenticate_publickey(ep.user.clone(), PrivateKeyWithHashAlg::new(k, hash))
                    .await
                    .map_err(|e| auth_err(e.to_string()))?;
                if !r.success() {
                    return Err(auth_err(format!(
                        "the server refused the key {}",
                        ep.key
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    )));
                }
            }
            None => {
                let mut agent = russh::keys::agent::client::AgentClient::connect_env()
                    .await
                    .map_err(|e| auth_err(format!("no key file is set for this node and the ssh-agent is not usable ({e}); set nodes[].ssh.key or SSH_AUTH_SOCK")))?;
                let ids = agent
                    .request_identities()
                    .await
                    .map_err(|e| auth_err(format!("the ssh-agent did not list its keys: {e}")))?;
                let mut ok = false;
                for id in ids {
                    let russh::keys::agent::AgentIdentity::PublicKey { key, .. } = id else {
                        continue;
                    };
                    let hash = h
                        .best_supported_rsa_hash()
                        .await
                        .map_err(|e| auth_err(e.to_string()))?
                        .flatten();
                    match h
                        .authenticate_publickey_with(ep.user.clone(), key, hash, &mut agent)
                        .await
                    {
                        Ok(r) if r.success() => {
                            ok = true;
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(node = %ep.node, "agent key refused: {e}"),
                    }
                }
                if !ok {
                    return Err(auth_err(
                        "the server refused every key of the ssh-agent".into(),
                    ));
                }
            }
        }
        tracing::debug!(node = %ep.node, host = %ep.host, "connected and authenticated");
        Ok(h)
    }
}

/// Opens the node's one session channel and starts the agent in it.
async fn start_agent(handle: &Arc<Handle<Client>>, ep: &Endpoint) -> Result<Session, String> {
    let ch = handle
        .channel_open_session()
        .await
        .map_err(|e| e.to_string())?;
    let body = format!("PATH={SCRIPT_PATH}; export PATH\n{AGENT}");
    let quoted = crate::shell::quote(&body).map_err(|e| e.to_string())?;
    let command = if ep.sudo {
        format!("sudo -n sh -c {quoted}")
    } else {
        format!("sh -c {quoted}")
    };
    ch.exec(true, command).await.map_err(|e| e.to_string())?;
    let mut s = Session {
        handle: handle.clone(),
        ch,
        buf: Vec::new(),
        stderr: Vec::new(),
        next_id: 1,
        in_flight: false,
    };
    let hello = s.line().await?;
    if hello.trim() != "KSA-READY 1" {
        return Err(format!("it answered `{hello}`{}", s.said()));
    }
    tracing::debug!(node = %ep.node, "agent started");
    Ok(s)
}

/// A script's first meaningful line, for messages.
fn first_line(text: &str) -> String {
    text.lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#') && !matches!(*l, "(" | "set -e"))
        .unwrap_or("")
        .to_string()
}

/// The russh client handler: host key verification with kscratch's known_hosts.
pub struct Client {
    node: String,
    host: String,
    port: u16,
    known_hosts: PathBuf,
    accept_new: bool,
    lock: Arc<Mutex<()>>,
}

impl client::Handler for Client {
    type Error = SshError;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, SshError> {
        let blob = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.to_bytes(),
            PublicKeyOrCertificate::Certificate(c) => c.to_bytes(),
        }
        .map_err(|e| self.refuse(format!("cannot encode the host key: {e}")))?;
        let host_key = crate::known_hosts::HostKey::from_blob(blob)
            .map_err(|e| self.refuse(format!("unusable host key: {e}")))?;
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let text = match fs::read(&self.known_hosts) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(SshError::KnownHostsFile {
                    path: self.known_hosts.clone(),
                    message: e.to_string(),
                })
            }
        };
        let known = KnownHosts::parse_bytes(&text);
        let names = [self.host.as_str()];
        let verdict = known.verify(&names, self.port, &host_key);
        let kh = self.known_hosts.display().to_string();
        match verdict {
            Verdict::Trusted { line } => {
                tracing::debug!(node = %self.node, "host key trusted by {kh}:{line}");
                Ok(true)
            }
            Verdict::Unknown { .. } if self.accept_new => {
                let mut salt = || {
                    let mut s = [0u8; HASH_SALT_LEN];
                    // The salt only hides the name; a failed RNG leaves it zero, still a valid entry.
                    let _ = getrandom::fill(&mut s);
                    s
                };
                let entry = format_entry(&names, self.port, &host_key, NameForm::Hashed(&mut salt)).map_err(|e| self.refuse(e.to_string()))?;
                append_known_host(&self.known_hosts, &entry)?;
                tracing::warn!(node = %self.node, "accepted the new host key {} of {}:{} and recorded it in {kh}", host_key.fingerprint(), self.host, self.port);
                Ok(true)
            }
            Verdict::Unknown { .. } => Err(self.refuse(format!(
                "{verdict} {kh}; the host presented {} {}. Refusing to connect: verify the key out of band and add it to {kh}, or pass --accept-new-host-keys to trust it on first use",
                host_key.key_type(),
                host_key.fingerprint()
            ))),
            other => Err(self.refuse(format!("{other} ({kh})"))),
        }
    }
}

impl Client {
    fn refuse(&self, message: String) -> SshError {
        SshError::HostKey {
            node: self.node.clone(),
            host: self.host.clone(),
            port: self.port,
            message,
        }
    }
}

/// Appends `entry` to known_hosts, creating the file 0600 and its directory 0700.
fn append_known_host(path: &Path, entry: &str) -> Result<(), SshError> {
    let err = |message: String| SshError::KnownHostsFile {
        path: path.to_path_buf(),
        message,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| err(format!("cannot create its directory: {e}")))?;
        }
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(format!("cannot open for appending: {e}")))?;
    // An existing file keeps its owner, but never stays readable by others.
    if let Ok(meta) = f.metadata() {
        if meta.permissions().mode() & 0o077 != 0 {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
        }
    }
    f.write_all(entry.as_bytes())
        .map_err(|e| err(format!("cannot append: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_host_keys_are_appended_hashed_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh/known_hosts");
        append_known_host(&path, "|1|abc|def ssh-ed25519 AAAA\n").unwrap();
        append_known_host(&path, "|1|ghi|jkl ssh-ed25519 BBBB\n").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "|1|abc|def ssh-ed25519 AAAA\n|1|ghi|jkl ssh-ed25519 BBBB\n"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }

    #[test]
    fn only_connection_problems_are_retried() {
        let lost = SshError::Lost {
            node: "n".into(),
            command: "c".into(),
            message: "m".into(),
        };
        assert_eq!(lost.kind(), ErrorKind::Connection);
        let hk = SshError::HostKey {
            node: "n".into(),
            host: "h".into(),
            port: 22,
            message: "m".into(),
        };
        assert_eq!(hk.kind(), ErrorKind::Failed);
        let t = SshError::Timeout {
            node: "n".into(),
            command: "c".into(),
            secs: 1,
        };
        assert_eq!(t.kind(), ErrorKind::Timeout);
    }

    /// Runs the agent with `sh`, writes `input` to it and closes its
    /// stdin; returns its answers (status, stdout) and whatever it wrote
    /// after the last one.
    fn agent_answers(input: &[u8]) -> (Vec<(u32, String)>, String) {
        let out = crate::shell_render::tests::sh_with_stdin(AGENT, input);
        let text = String::from_utf8(out.stdout).unwrap();
        let mut rest = text.strip_prefix("KSA-READY 1\n").unwrap();
        let mut answers = Vec::new();
        while let Some((header, after)) = rest.split_once('\n') {
            let f: Vec<&str> = header.split(' ').collect();
            assert_eq!(f[0], "KSA", "{text}");
            let (olen, elen): (usize, usize) = (f[3].parse().unwrap(), f[4].parse().unwrap());
            answers.push((f[2].parse().unwrap(), after[..olen].to_string()));
            rest = &after[olen + elen..];
        }
        (answers, rest.to_string())
    }

    /// The agent runs each request's script, with or without stdin, in
    /// order, and a script cut short never runs (nor does anything after
    /// it).
    #[test]
    fn the_agent_runs_requests_in_order_and_never_a_cut_script() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let t = Duration::from_secs(30);
        let first = request(1, "echo first; exit 3", 0, t).unwrap();
        assert_eq!(first, b"1 1 0 30\necho first; exit 3\n");
        let mut input = first;
        input.extend(request(2, "x=$((6 * 7))\necho \"two $x\"\n", 0, t).unwrap());
        input.extend(request(3, "read x; echo \"got $x\"", 6, t).unwrap());
        input.extend(b"hello\n");
        input.extend(request(4, "cat > /dev/null; echo drained", 3, t).unwrap());
        input.extend(b"ab\n");
        let (answers, rest) = agent_answers(&input);
        assert_eq!(
            answers,
            [
                (3, "first\n".to_string()),
                (0, "two 42\n".to_string()),
                (0, "got hello\n".to_string()),
                (0, "drained\n".to_string()),
            ]
        );
        assert_eq!(rest, "");
        // Cut: the header promises a line more than comes.
        let cut = request(5, &format!("touch {}\necho done", marker.display()), 0, t).unwrap();
        let mut input = request(6, "echo before", 0, t).unwrap();
        input.extend_from_slice(&cut[..cut.len() - "echo done\n".len()]);
        let (answers, _) = agent_answers(&input);
        assert_eq!(answers, [(0, "before\n".to_string())]);
        assert!(!marker.exists(), "a cut script ran");
    }

    #[tokio::test]
    async fn a_group_readable_key_is_refused_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id");
        fs::write(&key, "not a key").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        let pool = SshPool::new(SshConfig::new(dir.path().join("known_hosts")));
        // Nothing is contacted: the key check comes first.
        let ep = Endpoint {
            node: "n".into(),
            host: "127.0.0.1".into(),
            port: 9,
            user: "root".into(),
            key: Some(key),
            sudo: false,
        };
        let e = pool.connect(&ep).await.unwrap_err();
        assert!(
            e.to_string().contains("UNPROTECTED PRIVATE KEY FILE"),
            "{e}"
        );
    }
}
