//! `kscratch render`: every file a plan writes, materialized as a directory
//! tree, one folder per node plus the operator's own (`local`).
//!
//! ```text
//! DIR/<node>/<path>           what WriteFile puts on the node, e.g. DIR/node-1/var/lib/kubelet/kubeconfig
//! DIR/local/pki/              the key store: CAs, leaves, SA key pair, tokens, specs.json
//! DIR/local/admin.conf        the operator's admin kubeconfig (and super-admin.conf from 1.29)
//! ```
//!
//! Re-rendering into the same DIR keeps the key material: a CA or a leaf is
//! generated again only when its spec's fingerprint changed (a new SAN, a
//! new group...), when its CA was regenerated, or when its files are gone;
//! the report says which and why. Private keys, tokens and kubeconfigs are
//! written 0600, everything else 0644: the key store through
//! [`crate::keyfile::write_secret_file`], flushed to disk, and the nodes'
//! copies, rendered again from it on every run, through
//! [`crate::keyfile::write_secret_copy`], not flushed. The report names
//! files and certificates, never their content.

use crate::keyfile::{write_secret_copy, write_secret_file, KeyFileError};
use crate::pki::{self, KeyAndCert, PkiError};
use kscratch_core::plan::{Action, Asset, Ca, Cert, KubeconfigUser, Plan, Target};
use kscratch_core::render::{
    self, basic_auth_users, ca_spec, cas, cert_spec, issued_certs, token_users, CertSpec,
    RenderError, Secrets,
};
use kscratch_core::Scenario;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// The operator's folder inside the output directory.
pub const LOCAL_DIR: &str = "local";
/// The key store inside it.
pub const PKI_STORE: &str = "local/pki";

/// What a render did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderReport {
    pub out_dir: PathBuf,
    /// Certificates and keys made in this run, with why.
    pub generated: Vec<KeyEvent>,
    /// Certificates and keys kept from an earlier run (names only).
    pub kept: Vec<String>,
    /// Files whose content or mode changed, relative to `out_dir`.
    pub written: Vec<String>,
    /// Files already as rendered, relative to `out_dir`.
    pub unchanged: Vec<String>,
}

/// One piece of key material generated in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    /// `ca`, `apiserver`, `kubelet-client/node-1`, `service-account`, `token/admin`.
    pub name: String,
    pub why: Why,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Not in the store yet.
    New,
    /// In the store before; the reasons it was made again.
    Regenerated(Vec<String>),
}

impl RenderReport {
    /// The names regenerated (not new) in this run.
    pub fn regenerated(&self) -> Vec<&str> {
        self.generated
            .iter()
            .filter(|e| matches!(e.why, Why::Regenerated(_)))
            .map(|e| e.name.as_str())
            .collect()
    }
}

impl fmt::Display for RenderReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rendered into {}", self.out_dir.display())?;
        let new = self.generated.iter().filter(|e| e.why == Why::New).count();
        writeln!(
            f,
            "key material: {new} generated, {} regenerated, {} kept",
            self.regenerated().len(),
            self.kept.len()
        )?;
        for e in &self.generated {
            match &e.why {
                Why::New => writeln!(f, "  generated    {}", e.name)?,
                Why::Regenerated(reasons) => {
                    writeln!(f, "  regenerated  {}: {}", e.name, reasons.join("; "))?
                }
            }
        }
        writeln!(
            f,
            "files: {} written, {} unchanged",
            self.written.len(),
            self.unchanged.len()
        )?;
        for w in &self.written {
            writeln!(f, "  wrote  {w}")?;
        }
        Ok(())
    }
}

/// Why a render failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot render {path} for {target}: {source}")]
    Render {
        target: String,
        path: String,
        source: RenderError,
    },
    #[error("{0}")]
    Pki(#[from] PkiError),
    #[error("{action} {path}: {source}", path = .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{0}")]
    KeyFile(#[from] KeyFileError),
    #[error("{path}: {message}\n  hint: it is written by kscratch render; delete it to re-issue every certificate", path = .path.display())]
    Store { path: PathBuf, message: String },
    #[error("a node is named `{LOCAL_DIR}`, which is the operator's folder in the render tree: rename the node")]
    NodeNamedLocal,
}

/// Renders every file of `plan` into `out_dir`, generating or reusing key material.
pub fn render_tree(s: &Scenario, plan: &Plan, out_dir: &Path) -> Result<RenderReport, Error> {
    render_tree_at(s, plan, out_dir, OffsetDateTime::now_utc())
}

/// [`render_tree`] with the clock passed in (certificates start at `now`).
pub fn render_tree_at(
    s: &Scenario,
    plan: &Plan,
    out_dir: &Path,
    now: OffsetDateTime,
) -> Result<RenderReport, Error> {
    if s.nodes.iter().any(|n| n.name == LOCAL_DIR) {
        return Err(Error::NodeNamedLocal);
    }
    let mut report = RenderReport {
        out_dir: out_dir.to_path_buf(),
        ..Default::default()
    };
    // Node folders are readable like a node's filesystem; the operator's
    // folder, which holds every key, is the owner's only.
    mkdir(out_dir, 0o755)?;
    mkdir(&out_dir.join(LOCAL_DIR), 0o700)?;
    let store = Store {
        dir: out_dir.join(PKI_STORE),
    };
    let material = store.load_or_generate(s, now, &mut report)?;

    let mut files: Vec<(String, Vec<u8>, u32)> = Vec::new();
    for step in &plan.steps {
        let (Target::Node(i), Action::WriteFile { path, mode, asset }) =
            (step.target, &step.action)
        else {
            continue;
        };
        let node = &plan.nodes[i as usize];
        let bytes = render::render(s, Some(i as usize), *asset, &material).map_err(|source| {
            Error::Render {
                target: node.clone(),
                path: path.to_string(),
                source,
            }
        })?;
        files.push((
            format!("{node}/{}", path.trim_start_matches('/')),
            bytes,
            *mode,
        ));
    }
    // The operator's admin kubeconfig(s), pointing at MASTER_IP.
    let mut users = vec![KubeconfigUser::Admin];
    if s.security.model == kscratch_core::scenario::SecurityModel::Https
        && s.version.features().admin_cluster_admins_group
    {
        users.push(KubeconfigUser::SuperAdmin);
    }
    for u in users {
        let asset = Asset::Kubeconfig(u);
        let bytes = render::render(s, None, asset, &material).map_err(|source| Error::Render {
            target: LOCAL_DIR.into(),
            path: asset.path().into(),
            source,
        })?;
        files.push((
            format!("{LOCAL_DIR}/{}.conf", u.name()),
            bytes,
            asset.mode(),
        ));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files.dedup_by(|a, b| a.0 == b.0);
    for (rel, bytes, mode) in files {
        if put_file(&out_dir.join(&rel), &bytes, mode)? {
            report.written.push(rel);
        } else {
            report.unchanged.push(rel);
        }
    }
    Ok(report)
}

/// Writes `bytes` with `mode` unless the file already holds them with that
/// mode. Returns whether it wrote. Parent folders are created 0755.
fn put_file(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, Error> {
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o777 == mode && fs::read(path).is_ok_and(|old| old == bytes)
        {
            return Ok(false);
        }
    }
    if let Some(dir) = path.parent() {
        mkdir(dir, 0o755)?;
    }
    if mode & 0o077 == 0 {
        // Rendered again from the key store, which is flushed, on every run.
        write_secret_copy(path, bytes)?;
        if mode != 0o600 {
            set_mode(path, mode)?;
        }
    } else {
        write_public_file(path, bytes, mode)?;
    }
    Ok(true)
}

fn mkdir(dir: &Path, mode: u32) -> Result<(), Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| Error::Io {
            action: "cannot create directory",
            path: dir.into(),
            source,
        })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| Error::Io {
        action: "cannot set the mode of",
        path: path.into(),
        source,
    })
}

/// Atomically replaces a non-secret file (temporary file, then rename).
fn write_public_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = |action: &'static str| {
        move |source: io::Error| Error::Io {
            action,
            path: path.into(),
            source,
        }
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".kscratch-")
        .tempfile_in(dir)
        .map_err(io("cannot create a temporary file for"))?;
    tmp.write_all(bytes).map_err(io("cannot write"))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("cannot set the mode of"))?;
    tmp.persist(path).map_err(|e| Error::Io {
        action: "cannot rename a temporary file onto",
        path: path.into(),
        source: e.error,
    })?;
    Ok(())
}

/// All key material of a cluster, loaded from or generated into the store.
#[derive(Default)]
pub struct Material {
    cas: BTreeMap<Ca, KeyAndCert>,
    leaves: BTreeMap<(Cert, Option<String>), KeyAndCert>,
    sa: Option<(String, String)>,
    tokens: BTreeMap<String, String>,
    passwords: BTreeMap<String, String>,
}

impl fmt::Debug for Material {
    /// Names only: a Debug print must not leak keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("cas", &self.cas.keys().collect::<Vec<_>>())
            .field("leaves", &self.leaves.keys().collect::<Vec<_>>())
            .field("tokens", &self.tokens.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Material {
    /// Every secret string held (keys, tokens, passwords): for tests that
    /// prove none of them leaks into a plan, a report or a golden file.
    pub fn secrets(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .cas
            .values()
            .chain(self.leaves.values())
            .map(|k| k.key_pem.clone())
            .collect();
        v.extend(self.sa.iter().map(|(k, _)| k.clone()));
        v.extend(self.tokens.values().cloned());
        v.extend(self.passwords.values().cloned());
        v
    }
}

impl Secrets for Material {
    fn ca_cert(&self, ca: Ca) -> Option<String> {
        self.cas.get(&ca).map(|k| k.cert_pem.clone())
    }
    fn ca_key(&self, ca: Ca) -> Option<String> {
        self.cas.get(&ca).map(|k| k.key_pem.clone())
    }
    fn cert(&self, cert: Cert, node: Option<&str>) -> Option<String> {
        self.leaves
            .get(&(cert, node.map(String::from)))
            .map(|k| k.cert_pem.clone())
    }
    fn key(&self, cert: Cert, node: Option<&str>) -> Option<String> {
        self.leaves
            .get(&(cert, node.map(String::from)))
            .map(|k| k.key_pem.clone())
    }
    fn service_account_key(&self) -> Option<String> {
        self.sa.as_ref().map(|(k, _)| k.clone())
    }
    fn service_account_pub(&self) -> Option<String> {
        self.sa.as_ref().map(|(_, p)| p.clone())
    }
    fn token(&self, user: &str) -> Option<String> {
        self.tokens.get(user).cloned()
    }
    fn password(&self, user: &str) -> Option<String> {
        self.passwords.get(user).cloned()
    }
}

/// Loads the key material of an earlier render from `dir` (`DIR/local/pki`),
/// without generating anything. Missing items are simply absent.
pub fn load_material(s: &Scenario, dir: &Path) -> Result<Material, Error> {
    let store = Store {
        dir: dir.to_path_buf(),
    };
    let mut m = Material::default();
    for ca in cas(s) {
        if let Some(k) = store.read_pair(&store.ca_base(ca))? {
            m.cas.insert(ca, k);
        }
    }
    for (cert, node) in issued_certs(s) {
        let name = node.map(|i| s.nodes[i].name.clone());
        if let Some(k) = store.read_pair(&store.leaf_base(cert, name.as_deref()))? {
            m.leaves.insert((cert, name), k);
        }
    }
    if let (Some(k), Some(p)) = (
        store.read_opt(&dir.join("sa.key"))?,
        store.read_opt(&dir.join("sa.pub"))?,
    ) {
        m.sa = Some((k, p));
    }
    m.tokens = store.read_csv(&dir.join("tokens.csv"))?;
    m.passwords = store.read_csv(&dir.join("passwords.csv"))?;
    Ok(m)
}

/// The record kept per certificate in `specs.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SpecRecord {
    fingerprint: String,
    /// SHA-256 of the signing CA's certificate when this one was issued.
    issuer: String,
    spec: CertSpec,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SpecFile {
    certs: BTreeMap<String, SpecRecord>,
}

struct Store {
    dir: PathBuf,
}

impl Store {
    fn ca_base(&self, ca: Ca) -> PathBuf {
        self.dir.join(ca.name())
    }
    fn leaf_base(&self, cert: Cert, node: Option<&str>) -> PathBuf {
        match node {
            Some(n) => self.dir.join("nodes").join(n).join(cert.name()),
            None => self.dir.join(cert.name()),
        }
    }

    fn read_opt(&self, path: &Path) -> Result<Option<String>, Error> {
        match fs::read_to_string(path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                action: "cannot read",
                path: path.into(),
                source,
            }),
        }
    }

    fn read_pair(&self, base: &Path) -> Result<Option<KeyAndCert>, Error> {
        let cert = self.read_opt(&base.with_extension("crt"))?;
        let key = self.read_opt(&base.with_extension("key"))?;
        Ok(match (cert, key) {
            (Some(cert_pem), Some(key_pem)) => Some(KeyAndCert { cert_pem, key_pem }),
            _ => None,
        })
    }

    fn write_pair(&self, base: &Path, k: &KeyAndCert) -> Result<(), Error> {
        if let Some(dir) = base.parent() {
            mkdir(dir, 0o700)?;
        }
        write_secret_file(&base.with_extension("key"), k.key_pem.as_bytes())?;
        write_public_file(&base.with_extension("crt"), k.cert_pem.as_bytes(), 0o644)
    }

    /// `name,secret` lines (tokens.csv, passwords.csv).
    fn read_csv(&self, path: &Path) -> Result<BTreeMap<String, String>, Error> {
        let mut out = BTreeMap::new();
        let Some(text) = self.read_opt(path)? else {
            return Ok(out);
        };
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let (name, secret) = line.split_once(',').ok_or_else(|| Error::Store {
                path: path.into(),
                message: format!("line {}: expected `name,secret`", n + 1),
            })?;
            out.insert(name.to_string(), secret.to_string());
        }
        Ok(out)
    }

    fn write_csv(&self, path: &Path, map: &BTreeMap<String, String>) -> Result<(), Error> {
        let text: String = map.iter().map(|(k, v)| format!("{k},{v}\n")).collect();
        write_secret_file(path, text.as_bytes())?;
        Ok(())
    }

    fn load_specs(&self) -> Result<SpecFile, Error> {
        let path = self.dir.join("specs.json");
        match self.read_opt(&path)? {
            None => Ok(SpecFile::default()),
            Some(t) => serde_json::from_str(&t).map_err(|e| Error::Store {
                path,
                message: e.to_string(),
            }),
        }
    }

    fn load_or_generate(
        &self,
        s: &Scenario,
        now: OffsetDateTime,
        report: &mut RenderReport,
    ) -> Result<Material, Error> {
        mkdir(&self.dir, 0o700)?;
        let mut specs = self.load_specs()?;
        let mut m = Material::default();

        // CAs first: a regenerated CA forces its leaves.
        let mut ca_digest: BTreeMap<Ca, String> = BTreeMap::new();
        let mut ca_regenerated: Vec<Ca> = Vec::new();
        for ca in cas(s) {
            let spec = ca_spec(s, ca);
            let name = ca.name().to_string();
            let base = self.ca_base(ca);
            let existing = self.read_pair(&base)?;
            let record = specs.certs.get(&name);
            let why = decide(existing.is_some(), record, &spec, None);
            let pair = match (why, existing) {
                (None, Some(k)) => {
                    report.kept.push(name.clone());
                    k
                }
                (why, _) => {
                    let k = pki::generate_ca(&spec, now)?;
                    self.write_pair(&base, &k)?;
                    ca_regenerated.push(ca);
                    report.generated.push(KeyEvent {
                        name: name.clone(),
                        why: why.unwrap_or(Why::New),
                    });
                    k
                }
            };
            let digest = sha256(&pair.cert_pem);
            specs.certs.insert(
                name,
                SpecRecord {
                    fingerprint: spec.fingerprint(),
                    issuer: digest.clone(),
                    spec,
                },
            );
            ca_digest.insert(ca, digest);
            m.cas.insert(ca, pair);
        }

        for (cert, node) in issued_certs(s) {
            let node_name = node.map(|i| s.nodes[i].name.clone());
            let spec = cert_spec(s, cert, node).map_err(|source| Error::Render {
                target: LOCAL_DIR.into(),
                path: cert.name().into(),
                source,
            })?;
            let name = match &node_name {
                Some(n) => format!("{}/{n}", cert.name()),
                None => cert.name().to_string(),
            };
            let base = self.leaf_base(cert, node_name.as_deref());
            let existing = self.read_pair(&base)?;
            let issuer = ca_digest.get(&cert.ca()).cloned().unwrap_or_default();
            let ca_note = ca_regenerated
                .contains(&cert.ca())
                .then(|| format!("its CA ({}) was regenerated", cert.ca().name()));
            let why = decide(
                existing.is_some(),
                specs.certs.get(&name),
                &spec,
                Some((&issuer, ca_note)),
            );
            let pair = match (why, existing) {
                (None, Some(k)) => {
                    report.kept.push(name.clone());
                    k
                }
                (why, _) => {
                    let ca = m.cas.get(&cert.ca()).ok_or_else(|| Error::Store {
                        path: self.dir.clone(),
                        message: format!("no {} CA to sign {name}", cert.ca().name()),
                    })?;
                    let k = pki::issue(&spec, &ca_spec(s, cert.ca()), ca, now)?;
                    self.write_pair(&base, &k)?;
                    report.generated.push(KeyEvent {
                        name: name.clone(),
                        why: why.unwrap_or(Why::New),
                    });
                    k
                }
            };
            specs.certs.insert(
                name,
                SpecRecord {
                    fingerprint: spec.fingerprint(),
                    issuer,
                    spec,
                },
            );
            m.leaves.insert((cert, node_name), pair);
        }

        // The service-account key pair, for every security model: the
        // ServiceAccount admission plugin needs tokens, and tokens need it.
        {
            let (kp, pp) = (self.dir.join("sa.key"), self.dir.join("sa.pub"));
            match (self.read_opt(&kp)?, self.read_opt(&pp)?) {
                (Some(k), Some(p)) => {
                    report.kept.push("service-account".into());
                    m.sa = Some((k, p));
                }
                (old_k, old_p) => {
                    let (k, p) = pki::generate_service_account_key()?;
                    write_secret_file(&kp, k.as_bytes())?;
                    write_public_file(&pp, p.as_bytes(), 0o644)?;
                    let why = if old_k.is_some() || old_p.is_some() {
                        Why::Regenerated(vec!["half of the key pair was missing".into()])
                    } else {
                        Why::New
                    };
                    report.generated.push(KeyEvent {
                        name: "service-account".into(),
                        why,
                    });
                    m.sa = Some((k, p));
                }
            }
        }

        // Tokens and passwords: one per user, kept across renders.
        for (file, users, map, label) in [
            ("tokens.csv", token_users(s), &mut m.tokens, "token"),
            (
                "passwords.csv",
                basic_auth_users(s),
                &mut m.passwords,
                "password",
            ),
        ] {
            let path = self.dir.join(file);
            let mut stored = self.read_csv(&path)?;
            let mut changed = false;
            for u in users {
                if stored.contains_key(u.key) {
                    report.kept.push(format!("{label}/{}", u.key));
                } else {
                    stored.insert(u.key.to_string(), pki::random_token()?);
                    report.generated.push(KeyEvent {
                        name: format!("{label}/{}", u.key),
                        why: Why::New,
                    });
                    changed = true;
                }
            }
            if changed {
                self.write_csv(&path, &stored)?;
            }
            *map = stored;
        }

        let json = serde_json::to_string_pretty(&specs).map_err(|e| Error::Store {
            path: self.dir.join("specs.json"),
            message: e.to_string(),
        })?;
        let spec_path = self.dir.join("specs.json");
        if self.read_opt(&spec_path)?.as_deref() != Some(json.as_str()) {
            write_public_file(&spec_path, json.as_bytes(), 0o644)?;
        }
        Ok(m)
    }
}

/// Whether a stored certificate must be made again, and why. `None` keeps it.
/// `issuer` is the current CA certificate's digest and a note when that CA
/// was regenerated in this run (leaves only).
fn decide(
    present: bool,
    record: Option<&SpecRecord>,
    spec: &CertSpec,
    issuer: Option<(&String, Option<String>)>,
) -> Option<Why> {
    let Some(record) = record else {
        return Some(if present {
            Why::Regenerated(vec!["no spec on record".into()])
        } else {
            Why::New
        });
    };
    let mut reasons = Vec::new();
    if !present {
        reasons.push("certificate or key missing".to_string());
    }
    if record.fingerprint != spec.fingerprint() {
        let changes = spec.changes_from(&record.spec);
        if changes.is_empty() {
            reasons.push("spec changed".into());
        } else {
            reasons.extend(changes);
        }
    }
    if let Some((digest, note)) = issuer {
        if let Some(n) = note {
            reasons.push(n);
        } else if &record.issuer != digest {
            reasons.push("signed by a different CA certificate".into());
        }
    }
    (!reasons.is_empty()).then_some(Why::Regenerated(reasons))
}

fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(yaml: &str) -> Scenario {
        kscratch_core::load("t.yaml", yaml, None)
            .map(|l| l.scenario)
            .unwrap_or_else(|d| panic!("{d}"))
    }

    #[test]
    fn a_node_named_local_is_refused() {
        let s = scenario("cluster:\n  name: t\n  kubernetesVersion: \"1.30\"\nnodes:\n  - name: local\n    ip: 10.9.0.2\n");
        let dir = tempfile::tempdir().unwrap();
        let p = kscratch_core::plan::plan(&s);
        assert!(matches!(
            render_tree(&s, &p, dir.path()),
            Err(Error::NodeNamedLocal)
        ));
    }

    #[test]
    fn decisions_name_their_reasons() {
        let s = scenario("cluster:\n  name: t\n  kubernetesVersion: \"1.30\"\nnodes:\n  - name: m\n    ip: 10.9.0.2\n");
        let spec = cert_spec(&s, Cert::Apiserver, None).unwrap();
        let rec = SpecRecord {
            fingerprint: spec.fingerprint(),
            issuer: "abc".into(),
            spec: spec.clone(),
        };
        let same = "abc".to_string();
        assert_eq!(decide(true, Some(&rec), &spec, Some((&same, None))), None);
        assert_eq!(
            decide(false, None, &spec, Some((&same, None))),
            Some(Why::New)
        );
        assert_eq!(
            decide(false, Some(&rec), &spec, Some((&same, None))),
            Some(Why::Regenerated(vec!["certificate or key missing".into()]))
        );
        let other = "def".to_string();
        assert_eq!(
            decide(true, Some(&rec), &spec, Some((&other, None))),
            Some(Why::Regenerated(vec![
                "signed by a different CA certificate".into()
            ]))
        );
        let mut changed = spec.clone();
        changed.common_name = "x".into();
        assert_eq!(
            decide(true, Some(&rec), &changed, Some((&same, None))),
            Some(Why::Regenerated(vec![
                "CN changed: kube-apiserver → x".into()
            ]))
        );
    }

    #[test]
    fn a_corrupt_store_is_reported_with_its_path() {
        let s = scenario("cluster:\n  name: t\n  kubernetesVersion: \"1.30\"\nnodes:\n  - name: m\n    ip: 10.9.0.2\n");
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(PKI_STORE)).unwrap();
        fs::write(dir.path().join(PKI_STORE).join("specs.json"), "{not json").unwrap();
        let p = kscratch_core::plan::plan(&s);
        let e = render_tree(&s, &p, dir.path()).unwrap_err();
        assert!(e.to_string().contains("specs.json"), "{e}");
    }
}
