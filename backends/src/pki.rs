//! Key material from [`CertSpec`]s: CAs, leaf certificates signed by their
//! CA, the service-account key pair and bearer tokens.
//!
//! Keys are ECDSA P-256 (rcgen's `ring` backend cannot generate RSA keys);
//! every Kubernetes release kscratch supports accepts them for TLS, client
//! certificates and service-account tokens (ES256). Private keys are PKCS#8
//! PEM (`BEGIN PRIVATE KEY`), public keys PKIX PEM (`BEGIN PUBLIC KEY`).
//!
//! Randomness comes from the OS: ring's `SystemRandom` for keys, `getrandom`
//! for serial numbers and tokens. The clock is passed in.

use kscratch_core::render::{CertSpec, ExtKeyUsage, KeyUsage};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::Duration;
/// The clock type certificates are dated with (callers pass `now` in).
pub use time::OffsetDateTime;

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyAndCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for KeyAndCert {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Why key material could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot generate {what}: {source}")]
    Rcgen { what: String, source: rcgen::Error },
    #[error("the OS random number generator failed: {0}")]
    Random(String),
    #[error("{what}: {message}")]
    Spec { what: String, message: String },
}

/// Token length and alphabet: the guide's 32 characters of `[A-Za-z0-9]`.
pub const TOKEN_LEN: usize = 32;
const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Certificates are valid from a few minutes before `now`, so that a node
/// whose clock lags slightly accepts them at once.
const BACKDATE_MINUTES: i64 = 5;

/// A self-signed CA from its spec.
pub fn generate_ca(spec: &CertSpec, now: OffsetDateTime) -> Result<KeyAndCert, PkiError> {
    let what = || format!("the {} CA", spec.common_name);
    let key = KeyPair::generate().map_err(|source| PkiError::Rcgen {
        what: what(),
        source,
    })?;
    let params = params(spec, now)?;
    let cert = params.self_signed(&key).map_err(|source| PkiError::Rcgen {
        what: what(),
        source,
    })?;
    Ok(KeyAndCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A leaf certificate for `spec`, with a new key, signed by `ca` (whose spec is `ca_spec`).
///
/// The issuer is rebuilt from the CA's spec and key: its subject is the
/// spec's, which is what the stored CA certificate says as long as the CA
/// spec has not changed (and when it changes, the CA is regenerated first).
pub fn issue(
    spec: &CertSpec,
    ca_spec: &CertSpec,
    ca: &KeyAndCert,
    now: OffsetDateTime,
) -> Result<KeyAndCert, PkiError> {
    let what = || format!("the {} certificate", spec.common_name);
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|source| PkiError::Rcgen {
        what: format!("the {} CA key", ca_spec.common_name),
        source,
    })?;
    let issuer = Issuer::new(params(ca_spec, now)?, ca_key);
    let key = KeyPair::generate().map_err(|source| PkiError::Rcgen {
        what: what(),
        source,
    })?;
    let mut p = params(spec, now)?;
    p.use_authority_key_identifier_extension = true;
    let cert = p
        .signed_by(&key, &issuer)
        .map_err(|source| PkiError::Rcgen {
            what: what(),
            source,
        })?;
    Ok(KeyAndCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The service-account key pair: (private key PEM, public key PEM).
pub fn generate_service_account_key() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(|source| PkiError::Rcgen {
        what: "the service-account key".into(),
        source,
    })?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// A bearer token or password: 32 characters of `[A-Za-z0-9]`, uniformly
/// drawn from the OS's secure RNG (bytes ≥ 248 are rejected so that each of
/// the 62 characters is equally likely).
pub fn random_token() -> Result<String, PkiError> {
    let mut out = String::with_capacity(TOKEN_LEN);
    let mut buf = [0u8; 64];
    while out.len() < TOKEN_LEN {
        getrandom::fill(&mut buf).map_err(|e| PkiError::Random(e.to_string()))?;
        for b in buf {
            if b < 248 && out.len() < TOKEN_LEN {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

fn params(spec: &CertSpec, now: OffsetDateTime) -> Result<CertificateParams, PkiError> {
    let err = |message: String| PkiError::Spec {
        what: format!("certificate `{}`", spec.common_name),
        message,
    };
    let mut p = CertificateParams::default();
    p.not_before = now - Duration::minutes(BACKDATE_MINUTES);
    p.not_after = now + Duration::days(spec.validity_days.into());
    let mut dn = DistinguishedName::new();
    match spec.organizations.as_slice() {
        [] => {}
        [o] => dn.push(DnType::OrganizationName, o.as_str()),
        more => {
            return Err(err(format!(
                "rcgen writes one O per subject; the spec has {}",
                more.join(", ")
            )))
        }
    }
    dn.push(DnType::CommonName, spec.common_name.as_str());
    p.distinguished_name = dn;
    let mut sans = Vec::new();
    for d in &spec.dns_names {
        sans.push(SanType::DnsName(
            d.clone()
                .try_into()
                .map_err(|_| err(format!("`{d}` is not a valid DNS SAN")))?,
        ));
    }
    sans.extend(spec.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
    p.subject_alt_names = sans;
    p.is_ca = if spec.is_ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    p.key_usages = spec
        .key_usages
        .iter()
        .map(|k| match k {
            KeyUsage::DigitalSignature => KeyUsagePurpose::DigitalSignature,
            KeyUsage::KeyEncipherment => KeyUsagePurpose::KeyEncipherment,
            KeyUsage::KeyCertSign => KeyUsagePurpose::KeyCertSign,
            KeyUsage::CrlSign => KeyUsagePurpose::CrlSign,
        })
        .collect();
    p.extended_key_usages = spec
        .extended_key_usages
        .iter()
        .map(|k| match k {
            ExtKeyUsage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            ExtKeyUsage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
        })
        .collect();
    // A random 127-bit serial: unique per certificate, as RFC 5280 asks.
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| PkiError::Random(e.to_string()))?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_alphanumerics_and_differ() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn key_debug_output_hides_the_key() {
        let k = KeyAndCert {
            cert_pem: "C".into(),
            key_pem: "SECRET".into(),
        };
        assert!(!format!("{k:?}").contains("SECRET"));
    }
}
