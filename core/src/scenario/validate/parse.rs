//! Addresses, ranges and names: parsed with a message and a hint each.

use crate::diag::{Code, Reporter};
use ipnet::IpNet;
use std::net::IpAddr;

/// An IPv4 address; a failure marks `path` invalid.
pub(super) fn ip(r: &mut Reporter<'_>, path: &str, s: &str) -> Option<IpAddr> {
    match s.trim().parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => {
            r.invalid(
                Code::Address,
                path,
                format!("{s} is an IPv6 address; kscratch plans IPv4 clusters only for now"),
                "use an IPv4 address, e.g. 192.168.1.10",
            );
            None
        }
        Ok(ip) => Some(ip),
        Err(_) => {
            let hint = if s.contains('/') {
                "this is an address, not a CIDR: drop the /prefix".to_string()
            } else {
                "write four numbers from 0 to 255 separated by dots, e.g. 192.168.1.10".to_string()
            };
            r.invalid(
                Code::Address,
                path,
                format!("`{s}` is not an IP address"),
                hint,
            );
            None
        }
    }
}

/// An IPv4 range without host bits; a failure marks `path` invalid.
pub(super) fn net(r: &mut Reporter<'_>, path: &str, s: &str) -> Option<IpNet> {
    match s.trim().parse::<IpNet>() {
        Ok(IpNet::V6(_)) => {
            r.invalid(
                Code::Address,
                path,
                format!("{s} is an IPv6 range; kscratch plans IPv4 clusters only for now"),
                "use an IPv4 range, e.g. 10.10.0.0/16",
            );
            None
        }
        Ok(n) if n.trunc() != n => {
            r.invalid(
                Code::HostBits,
                path,
                format!("{s} has host bits set"),
                format!("did you mean {}?", n.trunc()),
            );
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            r.invalid(
                Code::Address,
                path,
                format!("`{s}` is not a CIDR"),
                "write it as ADDRESS/PREFIX, e.g. 10.10.0.0/16",
            );
            None
        }
    }
}

pub(super) fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

pub(super) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub(super) fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

pub(super) fn is_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && !s.contains(['/', ':'])
        && !s.chars().any(char::is_whitespace)
        && s != "."
        && s != ".."
}
