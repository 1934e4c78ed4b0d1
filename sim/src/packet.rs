//! Packets as the simulator moves them: the IP and transport header fields
//! that routing, netfilter and MTU checks depend on.

use serde::Serialize;
use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }
}

/// An IP packet. `len` is the whole IP packet in bytes (what an MTU limits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    /// Ports (0 for ICMP).
    pub sport: u16,
    pub dport: u16,
    pub len: u32,
    /// The skb mark (`-m mark`, `-j MARK`).
    pub mark: u32,
    /// Don't Fragment: a too-large packet is dropped, not fragmented (TCP sets it).
    pub df: bool,
}

impl Packet {
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Packet {
        Packet {
            src,
            dst,
            proto: Proto::Tcp,
            sport,
            dport,
            len: 60,
            mark: 0,
            df: true,
        }
    }

    /// The reply a peer sends back: addresses and ports swapped, mark cleared.
    pub fn reply(&self) -> Packet {
        Packet {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            mark: 0,
            ..self.clone()
        }
    }

    /// The connection tuple (what conntrack keys on).
    pub fn tuple(&self) -> Tuple {
        Tuple {
            proto: self.proto,
            src: self.src,
            sport: self.sport,
            dst: self.dst,
            dport: self.dport,
        }
    }
}

impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}:{} -> {}:{} len {}",
            self.proto.name(),
            self.src,
            self.sport,
            self.dst,
            self.dport,
            self.len
        )?;
        if self.mark != 0 {
            write!(f, " mark {:#x}", self.mark)?;
        }
        Ok(())
    }
}

/// A connection tuple in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Tuple {
    pub proto: Proto,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

impl Tuple {
    pub fn reversed(&self) -> Tuple {
        Tuple {
            proto: self.proto,
            src: self.dst,
            sport: self.dport,
            dst: self.src,
            dport: self.sport,
        }
    }
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}:{} -> {}:{}",
            self.proto.name(),
            self.src,
            self.sport,
            self.dst,
            self.dport
        )
    }
}
