//! `ip route`, `bridge fdb` and `ip neigh` entries as typed values.
//!
//! [`Route`] is one line of `ip route show` (and what `ip route replace`
//! takes), [`FdbEntry`] one line of `bridge fdb show` (the vxlan forwarding
//! database that says which node a pod subnet's MAC lives behind), and
//! [`Neighbor`] one line of `ip neigh show` (the static ARP entry for a
//! remote vxlan gateway). [`MacAddr`] is a link-layer address.
//!
//! The planner, the simulator and `shell_render` build these values and emit
//! them; nothing reads `ip` output back, so there are no parsers for the
//! three (there were, unused; add one with its round-trip tests when a check
//! compares a node's printed state in Rust). [`MacAddr::parse`] never panics.
//!
//! - `emit` prints fields in the order iproute2 prints them. Host routes
//!   print without `/32` as `ip` does, and `0.0.0.0/0` is `default`.
//! - `emit` is also valid input for `ip route replace`, `bridge fdb replace`
//!   and `ip neigh replace` except for kernel state `ip` only reports
//!   (`linkdown`, the neighbour state word); `to_args` gives the command
//!   argv with those rewritten or left out.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use super::iptables::ParseError;

/// A route's destination: `default` or a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteDst {
    Default,
    Net(IpNet),
}

impl fmt::Display for RouteDst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteDst::Default => f.write_str("default"),
            // `ip` prints host routes without the prefix length.
            RouteDst::Net(n) if n.prefix_len() == n.max_prefix_len() => write!(f, "{}", n.addr()),
            RouteDst::Net(n) => write!(f, "{n}"),
        }
    }
}

/// The route type (`rtm_type`); `ip` prints it before the destination
/// unless it is `unicast`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum RouteType {
    #[default]
    Unicast,
    Local,
    Broadcast,
    Blackhole,
    Unreachable,
    Prohibit,
    Throw,
}

impl RouteType {
    pub fn name(self) -> &'static str {
        match self {
            RouteType::Unicast => "unicast",
            RouteType::Local => "local",
            RouteType::Broadcast => "broadcast",
            RouteType::Blackhole => "blackhole",
            RouteType::Unreachable => "unreachable",
            RouteType::Prohibit => "prohibit",
            RouteType::Throw => "throw",
        }
    }
}

/// Who installed a route (`proto`), by number with iproute2's names
/// (`/etc/iproute2/rt_protos`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteProto(pub u8);

impl RouteProto {
    pub const REDIRECT: RouteProto = RouteProto(1);
    pub const KERNEL: RouteProto = RouteProto(2);
    pub const BOOT: RouteProto = RouteProto(3);
    pub const STATIC: RouteProto = RouteProto(4);
    pub const DHCP: RouteProto = RouteProto(16);

    const NAMES: [(u8, &'static str); 19] = [
        (1, "redirect"),
        (2, "kernel"),
        (3, "boot"),
        (4, "static"),
        (8, "gated"),
        (9, "ra"),
        (10, "mrt"),
        (11, "zebra"),
        (12, "bird"),
        (13, "dnrouted"),
        (14, "xorp"),
        (15, "ntk"),
        (16, "dhcp"),
        (18, "keepalived"),
        (42, "babel"),
        (186, "bgp"),
        (187, "isis"),
        (188, "ospf"),
        (189, "rip"),
    ];
}

impl fmt::Display for RouteProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Self::NAMES.iter().find(|(v, _)| *v == self.0) {
            Some((_, n)) => f.write_str(n),
            None => write!(f, "{}", self.0),
        }
    }
}

/// A route's scope, by number with iproute2's names (`global` is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteScope(pub u8);

impl RouteScope {
    pub const GLOBAL: RouteScope = RouteScope(0);
    pub const SITE: RouteScope = RouteScope(200);
    pub const LINK: RouteScope = RouteScope(253);
    pub const HOST: RouteScope = RouteScope(254);
    pub const NOWHERE: RouteScope = RouteScope(255);

    const NAMES: [(u8, &'static str); 5] = [
        (0, "global"),
        (200, "site"),
        (253, "link"),
        (254, "host"),
        (255, "nowhere"),
    ];
}

impl fmt::Display for RouteScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Self::NAMES.iter().find(|(v, _)| *v == self.0) {
            Some((_, n)) => f.write_str(n),
            None => write!(f, "{}", self.0),
        }
    }
}

/// A routing table, by number with iproute2's names (`main` is 254).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteTable(pub u32);

impl RouteTable {
    pub const DEFAULT: RouteTable = RouteTable(253);
    pub const MAIN: RouteTable = RouteTable(254);
    pub const LOCAL: RouteTable = RouteTable(255);

    const NAMES: [(u32, &'static str); 3] = [(253, "default"), (254, "main"), (255, "local")];
}

impl fmt::Display for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Self::NAMES.iter().find(|(v, _)| *v == self.0) {
            Some((_, n)) => f.write_str(n),
            None => write!(f, "{}", self.0),
        }
    }
}

/// IPv6 router preference (`pref`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoutePref {
    Low,
    Medium,
    High,
}

impl RoutePref {
    pub fn name(self) -> &'static str {
        match self {
            RoutePref::Low => "low",
            RoutePref::Medium => "medium",
            RoutePref::High => "high",
        }
    }
}

/// One route, as `ip route show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub kind: RouteType,
    pub dst: RouteDst,
    /// `table` (printed by `ip route show table all` for non-main tables).
    pub table: Option<RouteTable>,
    /// `via`: the gateway.
    pub via: Option<IpAddr>,
    /// `dev`: the output interface.
    pub dev: Option<String>,
    pub proto: Option<RouteProto>,
    pub scope: Option<RouteScope>,
    /// `src`: preferred source address.
    pub src: Option<IpAddr>,
    /// `metric` (also spelled `priority`/`preference` on input).
    pub metric: Option<u32>,
    /// `onlink`: the gateway is on the link even if no prefix covers it
    /// (how flannel's vxlan routes reach `10.10.2.0` via `vxlan0`).
    pub onlink: bool,
    /// `linkdown`: kernel state reported by `ip`, not configurable.
    pub linkdown: bool,
    /// `mtu` route metric.
    pub mtu: Option<u32>,
    /// `pref` (IPv6).
    pub pref: Option<RoutePref>,
}

impl Route {
    /// A unicast route to `dst` with nothing else set.
    pub fn new(dst: RouteDst) -> Route {
        Route {
            kind: RouteType::Unicast,
            dst,
            table: None,
            via: None,
            dev: None,
            proto: None,
            scope: None,
            src: None,
            metric: None,
            onlink: false,
            linkdown: false,
            mtu: None,
            pref: None,
        }
    }

    /// `NET via GW dev DEV`
    pub fn via(dst: IpNet, gateway: IpAddr, dev: &str) -> Route {
        Route {
            via: Some(gateway),
            dev: Some(dev.to_string()),
            ..Route::new(RouteDst::Net(dst))
        }
    }

    /// `blackhole NET`
    pub fn blackhole(dst: IpNet) -> Route {
        Route {
            kind: RouteType::Blackhole,
            ..Route::new(RouteDst::Net(dst))
        }
    }

    /// The `ip route show` line; also `ip route replace` input unless `linkdown`.
    pub fn emit(&self) -> String {
        self.tokens(true).join(" ")
    }

    /// Argv after `ip route replace` (kernel state such as `linkdown` left out).
    pub fn to_args(&self) -> Vec<String> {
        self.tokens(false)
    }

    fn tokens(&self, with_state: bool) -> Vec<String> {
        let mut t = Vec::new();
        if self.kind != RouteType::Unicast {
            t.push(self.kind.name().to_string());
        }
        t.push(self.dst.to_string());
        let mut kv = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                t.push(k.to_string());
                t.push(v);
            }
        };
        kv("via", self.via.map(|a| a.to_string()));
        kv("dev", self.dev.clone());
        kv("table", self.table.map(|x| x.to_string()));
        kv("proto", self.proto.map(|x| x.to_string()));
        kv("scope", self.scope.map(|x| x.to_string()));
        kv("src", self.src.map(|a| a.to_string()));
        kv("metric", self.metric.map(|m| m.to_string()));
        if self.onlink {
            t.push("onlink".into());
        }
        if self.linkdown && with_state {
            t.push("linkdown".into());
        }
        if let Some(m) = self.mtu {
            t.push("mtu".into());
            t.push(m.to_string());
        }
        if let Some(p) = self.pref {
            t.push("pref".into());
            t.push(p.name().into());
        }
        t
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.emit())
    }
}

/// A 48-bit link-layer (Ethernet) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Parse `aa:bb:cc:dd:ee:ff` (one or two hex digits per octet).
    pub fn parse(s: &str) -> Result<MacAddr, ParseError> {
        let err = || ParseError::new("invalid MAC address (expected aa:bb:cc:dd:ee:ff)", s, 0);
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.is_empty() || p.len() > 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }

    /// The all-zero address: the vxlan FDB's default (flood) entry.
    pub const ZERO: MacAddr = MacAddr([0; 6]);
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<MacAddr, ParseError> {
        MacAddr::parse(s)
    }
}

/// The state word at the end of a `bridge fdb show` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FdbState {
    /// `permanent` (NUD_PERMANENT; `local` on input).
    Permanent,
    /// `static` (NUD_NOARP).
    Static,
    /// `stale`
    Stale,
}

impl FdbState {
    pub fn name(self) -> &'static str {
        match self {
            FdbState::Permanent => "permanent",
            FdbState::Static => "static",
            FdbState::Stale => "stale",
        }
    }
}

/// One forwarding database entry, as `bridge fdb show` prints it:
/// `0e:c0:a8:01:0c:00 dev vxlan0 dst 192.168.1.12 self permanent`.
///
/// The all-zero MAC is the vxlan flood list: the kernel refuses
/// `bridge fdb replace` for it, so it is installed with `bridge fdb append`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FdbEntry {
    pub mac: MacAddr,
    pub dev: String,
    pub vlan: Option<u16>,
    /// `dst`: the remote vxlan endpoint (VTEP) for this MAC.
    pub dst: Option<IpAddr>,
    /// `port`: remote UDP port.
    pub port: Option<u16>,
    pub vni: Option<u32>,
    /// `via`: the interface to reach `dst` through.
    pub via: Option<String>,
    /// `self`: the entry lives in the device's own table (vxlan), not a bridge's.
    pub self_: bool,
    pub router: bool,
    pub extern_learn: bool,
    pub offload: bool,
    /// `master BRIDGE`: the entry belongs to this bridge's table.
    pub master: Option<String>,
    pub sticky: bool,
    /// `None` is a dynamic (learned) entry.
    pub state: Option<FdbState>,
}

impl FdbEntry {
    /// `MAC dev DEV dst IP self permanent`: how flannel's vxlan backend
    /// points a remote node's VTEP MAC at the node's address.
    pub fn vxlan(mac: MacAddr, dev: &str, dst: IpAddr) -> FdbEntry {
        FdbEntry {
            mac,
            dev: dev.to_string(),
            vlan: None,
            dst: Some(dst),
            port: None,
            vni: None,
            via: None,
            self_: true,
            router: false,
            extern_learn: false,
            offload: false,
            master: None,
            sticky: false,
            state: Some(FdbState::Permanent),
        }
    }

    /// The `bridge fdb show` line (also `bridge fdb replace` input when
    /// there is no `master`).
    pub fn emit(&self) -> String {
        self.tokens(true).join(" ")
    }

    /// Argv after `bridge fdb replace` (`master` is a bare flag there).
    pub fn to_args(&self) -> Vec<String> {
        self.tokens(false)
    }

    fn tokens(&self, show: bool) -> Vec<String> {
        let mut t = vec![self.mac.to_string(), "dev".into(), self.dev.clone()];
        let mut kv = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                t.push(k.to_string());
                t.push(v);
            }
        };
        kv("vlan", self.vlan.map(|v| v.to_string()));
        kv("dst", self.dst.map(|v| v.to_string()));
        kv("port", self.port.map(|v| v.to_string()));
        kv("vni", self.vni.map(|v| v.to_string()));
        kv("via", self.via.clone());
        for (on, name) in [
            (self.self_, "self"),
            (self.router, "router"),
            (self.extern_learn, "extern_learn"),
            (self.offload && show, "offload"),
        ] {
            if on {
                t.push(name.into());
            }
        }
        if let Some(m) = &self.master {
            t.push("master".into());
            if show {
                t.push(m.clone());
            }
        }
        if self.sticky {
            t.push("sticky".into());
        }
        if let Some(s) = self.state {
            t.push(s.name().into());
        }
        t
    }
}

impl fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.emit())
    }
}

/// A neighbour (ARP/NDP) entry state, printed upper-case by `ip neigh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NeighState {
    Permanent,
    Noarp,
    Reachable,
    Stale,
    None,
    Incomplete,
    Delay,
    Probe,
    Failed,
}

impl NeighState {
    /// The upper-case word `ip neigh show` prints.
    pub fn name(self) -> &'static str {
        match self {
            NeighState::Permanent => "PERMANENT",
            NeighState::Noarp => "NOARP",
            NeighState::Reachable => "REACHABLE",
            NeighState::Stale => "STALE",
            NeighState::None => "NONE",
            NeighState::Incomplete => "INCOMPLETE",
            NeighState::Delay => "DELAY",
            NeighState::Probe => "PROBE",
            NeighState::Failed => "FAILED",
        }
    }
}

/// One neighbour entry, as `ip neigh show` prints it:
/// `10.10.2.0 dev vxlan0 lladdr 0e:c0:a8:01:0c:00 PERMANENT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Neighbor {
    pub addr: IpAddr,
    pub dev: String,
    pub lladdr: Option<MacAddr>,
    pub router: bool,
    pub proxy: bool,
    pub extern_learn: bool,
    pub state: Option<NeighState>,
}

impl Neighbor {
    /// `ADDR dev DEV lladdr MAC PERMANENT`: a static entry, as flannel
    /// installs for each remote node's vxlan gateway address.
    pub fn permanent(addr: IpAddr, dev: &str, lladdr: MacAddr) -> Neighbor {
        Neighbor {
            addr,
            dev: dev.to_string(),
            lladdr: Some(lladdr),
            router: false,
            proxy: false,
            extern_learn: false,
            state: Some(NeighState::Permanent),
        }
    }

    /// The `ip neigh show` line.
    pub fn emit(&self) -> String {
        let mut t = vec![self.addr.to_string(), "dev".into(), self.dev.clone()];
        if let Some(l) = self.lladdr {
            t.push("lladdr".into());
            t.push(l.to_string());
        }
        for (on, name) in [
            (self.router, "router"),
            (self.proxy, "proxy"),
            (self.extern_learn, "extern_learn"),
        ] {
            if on {
                t.push(name.into());
            }
        }
        if let Some(s) = self.state {
            t.push(s.name().into());
        }
        t.join(" ")
    }

    /// Argv after `ip neigh replace`: the state becomes `nud STATE`.
    pub fn to_args(&self) -> Vec<String> {
        let mut t = vec![self.addr.to_string()];
        if let Some(l) = self.lladdr {
            t.push("lladdr".into());
            t.push(l.to_string());
        }
        t.push("dev".into());
        t.push(self.dev.clone());
        if self.router {
            t.push("router".into());
        }
        if self.extern_learn {
            t.push("extern_learn".into());
        }
        if let Some(s) = self.state {
            t.push("nud".into());
            t.push(s.name().to_ascii_lowercase());
        }
        t
    }
}

impl fmt::Display for Neighbor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.emit())
    }
}

/// Serialize as the text; deserialize by parsing it.
macro_rules! serde_as_text {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$t, D::Error> {
                let s = String::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_as_text!(MacAddr);

/// Serialize as the text line (damage plans carry these); nothing reads
/// them back.
macro_rules! serialize_as_text {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    )*};
}

serialize_as_text!(Route, FdbEntry, Neighbor);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The lines are what iproute2 prints for the same routes (captured in a
    /// private network namespace after `ip route replace`).
    #[test]
    fn routes_emit_as_ip_route_show_prints_them() {
        let via = Route::via(net("10.10.2.0/24"), ip("192.168.1.12"), "eth0");
        assert_eq!(via.emit(), "10.10.2.0/24 via 192.168.1.12 dev eth0");
        assert_eq!(via.to_args().join(" "), via.emit());
        let vxlan = Route {
            onlink: true,
            mtu: Some(1450),
            ..Route::via(net("10.10.4.0/24"), ip("10.10.4.0"), "vxlan0")
        };
        assert_eq!(
            vxlan.emit(),
            "10.10.4.0/24 via 10.10.4.0 dev vxlan0 onlink mtu 1450"
        );
        assert_eq!(
            Route::blackhole(net("10.10.0.0/16")).emit(),
            "blackhole 10.10.0.0/16"
        );
        let link = Route {
            dev: Some("cbr0".into()),
            proto: Some(RouteProto::KERNEL),
            scope: Some(RouteScope::LINK),
            src: Some(ip("10.10.1.1")),
            linkdown: true,
            ..Route::new(RouteDst::Net(net("10.10.1.0/24")))
        };
        assert_eq!(
            link.emit(),
            "10.10.1.0/24 dev cbr0 proto kernel scope link src 10.10.1.1 linkdown"
        );
        // linkdown is kernel state: `ip route replace` does not take it.
        assert_eq!(
            link.to_args().join(" "),
            "10.10.1.0/24 dev cbr0 proto kernel scope link src 10.10.1.1"
        );
        let default = Route {
            via: Some(ip("192.168.1.1")),
            dev: Some("eth0".into()),
            proto: Some(RouteProto::DHCP),
            metric: Some(100),
            ..Route::new(RouteDst::Default)
        };
        assert_eq!(
            default.emit(),
            "default via 192.168.1.1 dev eth0 proto dhcp metric 100"
        );
        // Host routes print without /32, as ip does.
        let host = Route {
            dev: Some("eth0".into()),
            ..Route::new(RouteDst::Net(net("10.0.0.1/32")))
        };
        assert_eq!(host.emit(), "10.0.0.1 dev eth0");
    }

    #[test]
    fn fdb_and_neighbour_entries_emit_as_iproute2_prints_them() {
        let mac = MacAddr([0x0e, 0xc0, 0xa8, 0x01, 0x0c, 0x00]);
        let e = FdbEntry::vxlan(mac, "vxlan0", ip("192.168.1.12"));
        let line = "0e:c0:a8:01:0c:00 dev vxlan0 dst 192.168.1.12 self permanent";
        assert_eq!(e.emit(), line);
        assert_eq!(e.to_args().join(" "), line);
        let bridged = FdbEntry {
            dst: None,
            self_: false,
            master: Some("cbr0".into()),
            ..FdbEntry::vxlan(mac, "veth0", ip("0.0.0.0"))
        };
        assert_eq!(
            bridged.emit(),
            "0e:c0:a8:01:0c:00 dev veth0 master cbr0 permanent"
        );
        // `master` is a bare flag for `bridge fdb replace`.
        assert_eq!(
            bridged.to_args().join(" "),
            "0e:c0:a8:01:0c:00 dev veth0 master permanent"
        );

        let n = Neighbor::permanent(ip("10.10.2.0"), "vxlan0", mac);
        assert_eq!(
            n.emit(),
            "10.10.2.0 dev vxlan0 lladdr 0e:c0:a8:01:0c:00 PERMANENT"
        );
        assert_eq!(
            n.to_args().join(" "),
            "10.10.2.0 lladdr 0e:c0:a8:01:0c:00 dev vxlan0 nud permanent"
        );
    }

    #[test]
    fn mac_addresses_parse_case_insensitively_and_reject_the_rest() {
        assert_eq!(
            MacAddr::parse("A:b:0C:d:e:F").unwrap().to_string(),
            "0a:0b:0c:0d:0e:0f"
        );
        for bad in [
            "",
            "aa:bb",
            "aa:bb:cc:dd:ee:ff:00",
            "aaa:bb:cc:dd:ee:ff",
            "gg:bb:cc:dd:ee:ff",
            "aa::cc:dd:ee:ff",
        ] {
            assert!(MacAddr::parse(bad).is_err(), "{bad}");
        }
        let mac: MacAddr = serde_json::from_str("\"0e:c0:a8:01:0c:00\"").unwrap();
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            "\"0e:c0:a8:01:0c:00\""
        );
    }

    proptest! {
        #[test]
        fn mac_addresses_round_trip(bytes in any::<[u8; 6]>()) {
            let mac = MacAddr(bytes);
            prop_assert_eq!(MacAddr::parse(&mac.to_string()).unwrap(), mac);
        }

        #[test]
        fn mac_parsing_never_panics(s in "\\PC{0,30}") {
            let _ = MacAddr::parse(&s);
        }
    }
}
