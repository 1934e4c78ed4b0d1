//! The apiserver's static credential files: `known_tokens.csv`
//! (`--token-auth-file`) and `basic_auth.csv` (`--basic-auth-file`, before 1.19).
//!
//! Both are CSV in the apiserver's format, `secret,user,uid,"group1,group2"`;
//! the group column is left out for users without groups, since the
//! apiserver would read an empty column as a group named "".

use super::{not_applicable, ParseError, RenderError, Secrets};
use crate::plan::Asset;
use crate::scenario::{Scenario, SecurityModel};

/// A user of a static credential file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUser {
    /// The key the secret store knows the user by: the plan's `GenerateTokens` users.
    pub key: &'static str,
    /// The user name the apiserver authenticates (what RBAC bindings name).
    pub user: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// One parsed line of a credential file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialLine {
    pub secret: String,
    pub user: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// The users of `known_tokens.csv`: the guide's admin, one token for all
/// kubelets and one for all kube-proxies (its option 2). Empty without https.
pub fn token_users(s: &Scenario) -> Vec<TokenUser> {
    if s.security.model != SecurityModel::Https {
        return Vec::new();
    }
    vec![
        TokenUser {
            key: "admin",
            user: "admin".into(),
            uid: "admin".into(),
            groups: admin_groups(s),
        },
        TokenUser {
            key: "kubelet",
            user: "kubelet".into(),
            uid: "kubelet".into(),
            groups: vec!["system:nodes".into()],
        },
        // `system:kube-proxy` is the user the default `system:node-proxier` binding names.
        TokenUser {
            key: "kube-proxy",
            user: "system:kube-proxy".into(),
            uid: "kube-proxy".into(),
            groups: Vec::new(),
        },
    ]
}

/// The users of `basic_auth.csv`: the admin only, when the scenario asks for
/// basic auth and the version still has it.
pub fn basic_auth_users(s: &Scenario) -> Vec<TokenUser> {
    if s.security.model != SecurityModel::Https
        || !s.security.basic_auth
        || !s.version.features().basic_auth
    {
        return Vec::new();
    }
    vec![TokenUser {
        key: "admin",
        user: "admin".into(),
        uid: "admin".into(),
        groups: admin_groups(s),
    }]
}

/// The admin's groups follow the admin certificate (see `cert_spec`).
fn admin_groups(s: &Scenario) -> Vec<String> {
    if s.version.features().admin_cluster_admins_group {
        vec!["kubeadm:cluster-admins".into()]
    } else {
        vec!["system:masters".into()]
    }
}

/// `known_tokens.csv`: `token,user,uid,"group1,group2"` per line.
pub fn known_tokens_csv(s: &Scenario, secrets: &dyn Secrets) -> Result<String, RenderError> {
    let mut out = String::new();
    for u in token_users(s) {
        let token = secrets
            .token(u.key)
            .ok_or_else(|| RenderError::MissingSecret {
                what: format!("token for {}", u.key),
            })?;
        out.push_str(&line(&token, &u));
    }
    Ok(out)
}

/// `basic_auth.csv`: `password,user,uid,"group1,group2"` per line.
pub fn basic_auth_csv(s: &Scenario, secrets: &dyn Secrets) -> Result<String, RenderError> {
    let users = basic_auth_users(s);
    if users.is_empty() {
        let reason = if !s.version.features().basic_auth {
            format!(
                "--basic-auth-file was removed in Kubernetes 1.19; this scenario is {}",
                s.version
            )
        } else {
            "the scenario does not enable security.basicAuth with https".to_string()
        };
        return Err(not_applicable(Asset::BasicAuth, &reason));
    }
    let mut out = String::new();
    for u in users {
        let password = secrets
            .password(u.key)
            .ok_or_else(|| RenderError::MissingSecret {
                what: format!("password for {}", u.key),
            })?;
        out.push_str(&line(&password, &u));
    }
    Ok(out)
}

fn line(secret: &str, u: &TokenUser) -> String {
    if u.groups.is_empty() {
        format!("{secret},{},{}\n", u.user, u.uid)
    } else {
        format!("{secret},{},{},\"{}\"\n", u.user, u.uid, u.groups.join(","))
    }
}

/// Reads a credential file back, as the apiserver does: 3 or 4 columns, the
/// fourth a quoted, comma-separated group list.
pub fn parse_credentials_csv(text: &str) -> Result<Vec<CredentialLine>, ParseError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let err = |m: String| ParseError {
            what: "credential file",
            message: format!("line {}: {m}", n + 1),
        };
        let (head, groups) = match raw.find(",\"") {
            Some(i) => {
                let rest = &raw[i + 2..];
                let inner = rest
                    .strip_suffix('"')
                    .ok_or_else(|| err(format!("unterminated group list `{rest}`")))?;
                (&raw[..i], inner.split(',').map(String::from).collect())
            }
            None => (raw, Vec::new()),
        };
        let cols: Vec<&str> = head.split(',').collect();
        match cols.as_slice() {
            [secret, user, uid] if !secret.is_empty() && !user.is_empty() => {
                out.push(CredentialLine {
                    secret: secret.to_string(),
                    user: user.to_string(),
                    uid: uid.to_string(),
                    groups,
                })
            }
            [secret, user, uid, g]
                if !secret.is_empty() && !user.is_empty() && groups.is_empty() =>
            {
                out.push(CredentialLine {
                    secret: secret.to_string(),
                    user: user.to_string(),
                    uid: uid.to_string(),
                    groups: vec![g.to_string()],
                })
            }
            _ => {
                return Err(err(format!(
                    "expected `secret,user,uid[,\"groups\"]`, found `{raw}`"
                )))
            }
        }
    }
    Ok(out)
}
