//! The local apiserver proxy: kubespray's "localhost load balancer" for bare
//! metal without one. Every node runs Debian's haproxy on the loopback
//! endpoint (`cluster.controlPlaneEndpoint: 127.0.0.1:6443`); it forwards
//! each TCP connection to an apiserver that passes its health check
//! (`GET /healthz`, over TLS with https), so node agents and kubeconfigs
//! keep working when a control-plane node is lost. TLS passes through: the
//! apiserver's certificate carries 127.0.0.1 among its SANs.
//!
//! [`HaproxyConfig`] is the subset of haproxy's configuration kscratch
//! writes, with [`HaproxyConfig::emit`] and [`HaproxyConfig::parse`], so the
//! simulator's fake proxy reads the very file a node gets. Parsing never
//! panics; it rejects a line it does not understand, naming it.

use super::url_host;
use super::ParseError;
use crate::scenario::{Scenario, SecurityModel};
use std::net::IpAddr;

/// The path and timing of the proxy's health checks.
pub const HEALTH_PATH: &str = "/healthz";

/// An haproxy configuration: frontends bound to an address, each with its
/// default backend of servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyConfig {
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    pub name: String,
    /// `bind ADDR:PORT`.
    pub bind: (IpAddr, u16),
    /// `default_backend NAME`.
    pub backend: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    /// `option httpchk GET PATH`: servers with `check` are probed there.
    pub health: Option<HealthCheck>,
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    /// `default-server ... check-ssl verify none`: the probe speaks TLS.
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    /// Health-checked: a server failing its check gets no connections.
    pub check: bool,
}

impl HaproxyConfig {
    /// The local proxy of `s`: `None` without a loopback control-plane endpoint.
    pub fn local_apiserver_proxy(s: &Scenario) -> Option<HaproxyConfig> {
        let port = s.local_apiserver_proxy()?;
        let ip = s
            .control_plane_endpoint
            .as_ref()
            .and_then(|e| match e.host {
                crate::scenario::EndpointHost::Ip(ip) => Some(ip),
                crate::scenario::EndpointHost::Name(_) => None,
            })?;
        let apiserver = s.security.model.apiserver_port();
        Some(HaproxyConfig {
            frontends: vec![Frontend {
                name: "apiserver".into(),
                bind: (ip, port),
                backend: "apiservers".into(),
            }],
            backends: vec![Backend {
                name: "apiservers".into(),
                health: Some(HealthCheck {
                    path: HEALTH_PATH.into(),
                    tls: s.security.model == SecurityModel::Https,
                }),
                servers: s
                    .control_plane_nodes()
                    .map(|(_, n)| Server {
                        name: n.name.clone(),
                        addr: n.ip,
                        port: apiserver,
                        check: true,
                    })
                    .collect(),
            }],
        })
    }

    /// The file: fixed global and default settings, then the frontends and backends.
    pub fn emit(&self) -> String {
        let mut out = String::from(
            "# Written by kscratch: the local apiserver proxy. Node agents reach the\n\
             # apiserver here; haproxy forwards each connection to an apiserver that\n\
             # passes its health check, so losing a control-plane node loses no client.\n\
             global\n    maxconn 4000\n\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 15m\n    timeout server 15m\n    timeout check 5s\n",
        );
        for f in &self.frontends {
            out.push_str(&format!(
                "\nfrontend {}\n    bind {}:{}\n    default_backend {}\n",
                f.name,
                url_host(f.bind.0),
                f.bind.1,
                f.backend
            ));
        }
        for b in &self.backends {
            out.push_str(&format!("\nbackend {}\n    balance roundrobin\n", b.name));
            if let Some(h) = &b.health {
                out.push_str(&format!(
                    "    option httpchk GET {}\n    http-check expect status 200\n",
                    h.path
                ));
                out.push_str("    default-server inter 2s fall 2 rise 2");
                if h.tls {
                    out.push_str(" check-ssl verify none");
                }
                out.push('\n');
            }
            for s in &b.servers {
                out.push_str(&format!(
                    "    server {} {}:{}{}\n",
                    s.name,
                    url_host(s.addr),
                    s.port,
                    if s.check { " check" } else { "" }
                ));
            }
        }
        out
    }

    /// Reads what [`emit`](Self::emit) writes. Settings that do not change
    /// where a connection goes (timeouts, `maxconn`, `balance`, check
    /// intervals) are accepted and not kept; an unknown section or keyword
    /// is an error.
    pub fn parse(text: &str) -> Result<HaproxyConfig, ParseError> {
        let err = |line: usize, m: String| ParseError {
            what: "haproxy configuration",
            message: format!("line {}: {m}", line + 1),
        };
        let addr_port = |line: usize, w: &str| -> Result<(IpAddr, u16), ParseError> {
            let (h, p) = w
                .rsplit_once(':')
                .ok_or_else(|| err(line, format!("`{w}` is not ADDRESS:PORT")))?;
            let h = h.trim_start_matches('[').trim_end_matches(']');
            let ip = h
                .parse::<IpAddr>()
                .map_err(|_| err(line, format!("`{h}` is not an IP address")))?;
            let port = p
                .parse::<u16>()
                .map_err(|_| err(line, format!("`{p}` is not a port")))?;
            Ok((ip, port))
        };
        enum Section {
            None,
            Global,
            Defaults,
            Frontend,
            Backend,
        }
        let mut cfg = HaproxyConfig {
            frontends: vec![],
            backends: vec![],
        };
        let mut section = Section::None;
        let mut tls = false;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some((&key, rest)) = words.split_first() else {
                continue;
            };
            let name = |rest: &[&str]| -> Result<String, ParseError> {
                match rest {
                    [n] => Ok(n.to_string()),
                    _ => Err(err(i, format!("`{key}` takes one name"))),
                }
            };
            match (key, &section) {
                ("global", _) => section = Section::Global,
                ("defaults", _) => section = Section::Defaults,
                ("frontend", _) => {
                    cfg.frontends.push(Frontend {
                        name: name(rest)?,
                        bind: (IpAddr::from([0, 0, 0, 0]), 0),
                        backend: String::new(),
                    });
                    section = Section::Frontend;
                }
                ("backend", _) => {
                    cfg.backends.push(Backend {
                        name: name(rest)?,
                        health: None,
                        servers: vec![],
                    });
                    tls = false;
                    section = Section::Backend;
                }
                ("maxconn" | "timeout" | "mode", Section::Global | Section::Defaults) => {
                    if key == "mode" && rest != ["tcp"] {
                        return Err(err(i, format!("mode `{}` is not modelled", rest.join(" "))));
                    }
                }
                ("bind", Section::Frontend) => {
                    let f = cfg.frontends.last_mut().expect("in a frontend");
                    let [w] = rest else {
                        return Err(err(i, "`bind` takes one ADDRESS:PORT".into()));
                    };
                    f.bind = addr_port(i, w)?;
                }
                ("default_backend", Section::Frontend) => {
                    cfg.frontends.last_mut().expect("in a frontend").backend = name(rest)?;
                }
                ("balance", Section::Backend) => {}
                ("option", Section::Backend) => match rest {
                    ["httpchk", "GET", path] => {
                        cfg.backends.last_mut().expect("in a backend").health = Some(HealthCheck {
                            path: path.to_string(),
                            tls,
                        })
                    }
                    _ => {
                        return Err(err(
                            i,
                            format!("option `{}` is not modelled", rest.join(" ")),
                        ))
                    }
                },
                ("http-check", Section::Backend) => {
                    if rest != ["expect", "status", "200"] {
                        return Err(err(
                            i,
                            format!("http-check `{}` is not modelled", rest.join(" ")),
                        ));
                    }
                }
                ("default-server", Section::Backend) => {
                    tls = rest.contains(&"check-ssl");
                    if let Some(h) = &mut cfg.backends.last_mut().expect("in a backend").health {
                        h.tls = tls;
                    }
                }
                ("server", Section::Backend) => {
                    let [n, a, opts @ ..] = rest else {
                        return Err(err(i, "`server` takes NAME ADDRESS:PORT [check]".into()));
                    };
                    let (addr, port) = addr_port(i, a)?;
                    if let Some(o) = opts.iter().find(|o| **o != "check") {
                        return Err(err(i, format!("server option `{o}` is not modelled")));
                    }
                    cfg.backends
                        .last_mut()
                        .expect("in a backend")
                        .servers
                        .push(Server {
                            name: n.to_string(),
                            addr,
                            port,
                            check: opts.contains(&"check"),
                        });
                }
                _ => return Err(err(i, format!("`{line}` is not understood here"))),
            }
        }
        for f in &cfg.frontends {
            if f.bind.1 == 0 {
                return Err(ParseError {
                    what: "haproxy configuration",
                    message: format!("frontend {} binds nothing", f.name),
                });
            }
            if !cfg.backends.iter().any(|b| b.name == f.backend) {
                return Err(ParseError {
                    what: "haproxy configuration",
                    message: format!("frontend {} names no known backend `{}`", f.name, f.backend),
                });
            }
        }
        Ok(cfg)
    }

    /// The frontend listening on `port` of `ip`, and its backend.
    pub fn route(&self, ip: IpAddr, port: u16) -> Option<&Backend> {
        let f = self
            .frontends
            .iter()
            .find(|f| f.bind.1 == port && (f.bind.0 == ip || f.bind.0.is_unspecified()))?;
        self.backends.iter().find(|b| b.name == f.backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HaproxyConfig {
        HaproxyConfig {
            frontends: vec![Frontend {
                name: "apiserver".into(),
                bind: (IpAddr::from([127, 0, 0, 1]), 6443),
                backend: "apiservers".into(),
            }],
            backends: vec![Backend {
                name: "apiservers".into(),
                health: Some(HealthCheck {
                    path: "/healthz".into(),
                    tls: true,
                }),
                servers: vec![
                    Server {
                        name: "cp-1".into(),
                        addr: IpAddr::from([10, 1, 0, 11]),
                        port: 443,
                        check: true,
                    },
                    Server {
                        name: "cp-2".into(),
                        addr: IpAddr::from([10, 1, 0, 12]),
                        port: 443,
                        check: false,
                    },
                ],
            }],
        }
    }

    #[test]
    fn emit_then_parse_round_trips() {
        let c = sample();
        assert_eq!(HaproxyConfig::parse(&c.emit()).expect("parses"), c);
        let mut plain = sample();
        plain.backends[0].health.as_mut().expect("set").tls = false;
        assert_eq!(HaproxyConfig::parse(&plain.emit()).expect("parses"), plain);
        assert!(!plain.emit().contains("check-ssl"));
    }

    #[test]
    fn parse_names_what_it_does_not_understand() {
        let e =
            HaproxyConfig::parse("frontend a\n    bind 127.0.0.1:6443\n    use_backend x if y\n")
                .expect_err("unknown keyword");
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = HaproxyConfig::parse("frontend a\n    bind 127.0.0.1:x\n").expect_err("bad port");
        assert!(e.to_string().contains("`x` is not a port"), "{e}");
        let e =
            HaproxyConfig::parse("frontend a\n    bind 127.0.0.1:6443\n    default_backend b\n")
                .expect_err("no backend");
        assert!(e.to_string().contains("no known backend"), "{e}");
        let e = HaproxyConfig::parse("defaults\n    mode http\n").expect_err("mode");
        assert!(e.to_string().contains("not modelled"), "{e}");
    }

    #[test]
    fn route_finds_the_backend_of_a_bound_port() {
        let c = sample();
        let lo = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(c.route(lo, 6443).map(|b| b.servers.len()), Some(2));
        assert!(c.route(lo, 443).is_none());
    }
}
