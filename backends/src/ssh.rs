//! The SSH transport: one russh connection per node, reused by every step
//! (one session channel per command), with keepalives and reconnection.
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
//! Every command has a timeout. A lost or failed connection is reported as a
//! [`SshError`] of kind [`ErrorKind::Connection`], which the executor
//! retries; the next command reconnects.

use crate::keyfile::{self, KeyFileError};
use crate::known_hosts::{format_entry, KnownHosts, NameForm, Verdict, HASH_SALT_LEN};
use crate::shell_render::{Script, Stdin};
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
            connect_timeout: Duration::from_secs(15),
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
    #[error("{0}")]
    Protocol(#[from] russh::Error),
}

impl SshError {
    /// How the executor treats it: connection-level problems are retried, nothing else.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SshError::Connect { .. } | SshError::Lost { .. } | SshError::Protocol(_) => {
                ErrorKind::Connection
            }
            SshError::Timeout { .. } => ErrorKind::Timeout,
            _ => ErrorKind::Failed,
        }
    }
}

/// Counters per node, for the performance figures of `apply`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Remote commands run (each one session channel: open, exec, data, close).
    pub commands: u64,
    /// SSH connections opened (1 unless a connection was lost).
    pub connects: u64,
    /// Time spent inside remote commands, from channel open to close.
    pub busy: Duration,
    /// Time spent connecting and authenticating.
    pub connecting: Duration,
}

/// A node's connection: opened under the lock, used outside it.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Handle<Client>>>>>;

/// One connection per node, opened on first use and reused.
pub struct SshPool {
    config: SshConfig,
    conns: Mutex<BTreeMap<String, Slot>>,
    stats: Arc<Mutex<BTreeMap<String, NodeStats>>>,
    /// Serializes read-verify-append of the known_hosts file across nodes.
    known_hosts_lock: Arc<Mutex<()>>,
}

impl SshPool {
    pub fn new(config: SshConfig) -> SshPool {
        SshPool {
            config,
            conns: Mutex::default(),
            stats: Arc::default(),
            known_hosts_lock: Arc::default(),
        }
    }

    /// Counters per node so far.
    pub fn stats(&self) -> BTreeMap<String, NodeStats> {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Connects (or reuses the connection) without running anything: host
    /// key verification and authentication happen here.
    pub async fn connect(&self, ep: &Endpoint) -> Result<(), SshError> {
        self.handle(ep).await.map(|_| ())
    }

    /// Runs `script` on `ep` within `timeout`.
    pub async fn run(
        &self,
        ep: &Endpoint,
        script: &Script,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        let handle = self.handle(ep).await?;
        let command = script.command_line(ep.sudo);
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, exec(&handle, &command, &script.stdin)).await;
        let elapsed = started.elapsed();
        if let Ok(mut s) = self.stats.lock() {
            let e = s.entry(ep.node.clone()).or_default();
            e.commands += 1;
            e.busy += elapsed;
        }
        let first_line = script
            .text
            .lines()
            .find(|l| !l.trim().is_empty() && !l.starts_with('#') && !matches!(*l, "(" | "set -e"))
            .unwrap_or("")
            .to_string();
        match result {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(message)) => {
                // The connection is suspect: the next command opens a new one.
                self.forget(ep, &handle).await;
                Err(SshError::Lost {
                    node: ep.node.clone(),
                    command: first_line,
                    message,
                })
            }
            Err(_) => Err(SshError::Timeout {
                node: ep.node.clone(),
                command: first_line,
                secs: timeout.as_secs(),
            }),
        }
    }

    /// Closes every connection (at the end of a run, or to test reconnection).
    pub async fn disconnect_all(&self) {
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

    async fn forget(&self, ep: &Endpoint, handle: &Arc<Handle<Client>>) {
        let slot = self.slot(ep);
        let mut g = slot.lock().await;
        if g.as_ref().is_some_and(|h| Arc::ptr_eq(h, handle)) {
            *g = None;
        }
    }

    fn slot(&self, ep: &Endpoint) -> Slot {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.entry(ep.node.clone()).or_default().clone()
    }

    async fn handle(&self, ep: &Endpoint) -> Result<Arc<Handle<Client>>, SshError> {
        let slot = self.slot(ep);
        let mut g = slot.lock().await;
        if let Some(h) = g.as_ref() {
            if !h.is_closed() {
                return Ok(h.clone());
            }
            tracing::info!(node = %ep.node, "connection lost; reconnecting");
        }
        let started = Instant::now();
        let h = tokio::time::timeout(self.config.connect_timeout, self.open(ep))
            .await
            .map_err(|_| SshError::Connect {
                node: ep.node.clone(),
                host: ep.host.clone(),
                port: ep.port,
                message: format!(
                    "no answer within {}s",
                    self.config.connect_timeout.as_secs()
                ),
            })??;
        if let Ok(mut s) = self.stats.lock() {
            let e = s.entry(ep.node.clone()).or_default();
            e.connects += 1;
            e.connecting += started.elapsed();
        }
        let h = Arc::new(h);
        *g = Some(h.clone());
        Ok(h)
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

/// Runs one command on a new session channel. Errors are connection-level.
async fn exec(handle: &Handle<Client>, command: &str, stdin: &Stdin) -> Result<Output, String> {
    let mut ch = handle
        .channel_open_session()
        .await
        .map_err(|e| e.to_string())?;
    ch.exec(true, command).await.map_err(|e| e.to_string())?;
    match stdin {
        Stdin::Empty => {}
        Stdin::Bytes { bytes, .. } => ch.data(&bytes[..]).await.map_err(|e| e.to_string())?,
        Stdin::File(p) => {
            let f = tokio::fs::File::open(p)
                .await
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            ch.data(f).await.map_err(|e| e.to_string())?;
        }
    }
    ch.eof().await.map_err(|e| e.to_string())?;
    let mut out = Output {
        status: None,
        signal: None,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    while let Some(msg) = ch.wait().await {
        match msg {
            ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, ext: 1 } => out.stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
            ChannelMsg::ExitSignal { signal_name, .. } => {
                out.signal = Some(format!("{signal_name:?}"))
            }
            _ => {}
        }
    }
    if out.status.is_none() && out.signal.is_none() {
        return Err("the channel closed without an exit status".into());
    }
    Ok(out)
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
