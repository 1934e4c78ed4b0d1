//! The `security` section: the apiserver's security model and what the
//! scenario's Kubernetes version still allows of it.

use super::{parse, Ver};
use crate::diag::{Code, Reporter};
use crate::scenario::model::{Security, SecurityModel};
use crate::scenario::raw::{RawScenario, RawSecurityModel};
use std::net::IpAddr;

pub(super) fn security(raw: &RawScenario, ver: &Ver, r: &mut Reporter<'_>) -> Security {
    let s = &raw.security;
    let model = match s.model.unwrap_or(RawSecurityModel::Https) {
        RawSecurityModel::Https => SecurityModel::Https,
        RawSecurityModel::HttpFirewall => SecurityModel::HttpFirewall,
    };
    let basic_auth = s.basic_auth.unwrap_or(false);
    let insecure_port = s
        .insecure_port
        .unwrap_or(model == SecurityModel::HttpFirewall);
    let model_ok = !r.is_invalid("security.model");
    if let Some(v) = ver.known {
        if basic_auth && !ver.feat.basic_auth {
            r.error(
                Code::Removed,
                "security.basicAuth",
                format!("--basic-auth-file was removed in Kubernetes 1.19; this scenario is {v}"),
                "use client certificates or tokens",
            );
        }
        if model == SecurityModel::HttpFirewall && !ver.feat.insecure_serving {
            r.error(
                Code::Removed,
                "security.model",
                format!("http-firewall needs the apiserver's insecure port, disabled in Kubernetes 1.20 (flags removed in 1.24); this scenario is {v}"),
                "use `model: https`",
            );
        } else if model_ok && insecure_port && !ver.feat.insecure_serving {
            r.error(
                Code::Removed,
                "security.insecurePort",
                format!("insecure serving was disabled in Kubernetes 1.20; this scenario is {v}"),
                "remove security.insecurePort",
            );
        }
    }
    if model_ok && model == SecurityModel::HttpFirewall && !s.extra_sans.is_empty() {
        r.warn(
            Code::Advice,
            "security.extraSANs",
            "extra SANs are unused without https",
            "remove security.extraSANs, or use `model: https`",
        );
    }
    for (i, san) in s.extra_sans.iter().enumerate() {
        if san.parse::<IpAddr>().is_err() && !san.split('.').all(parse::is_dns1123_label) {
            r.error(
                Code::San,
                format!("security.extraSANs[{i}]"),
                format!("`{san}` is neither an IP address nor a DNS name"),
                "write an address such as 203.0.113.10 or a name such as api.example.com",
            );
        }
    }
    Security {
        model,
        extra_sans: s.extra_sans.clone(),
        basic_auth,
        insecure_port,
        allow_privileged: s.allow_privileged.unwrap_or(true),
    }
}
