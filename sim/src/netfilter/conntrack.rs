//! Connection tracking: the table of connections a node has seen, with the
//! address translation recorded for each, so that later packets of a
//! connection and its replies are translated without consulting the `nat`
//! table again, and `-m conntrack --ctstate` can tell NEW from ESTABLISHED.
//!
//! As in the kernel, a connection is created (unconfirmed) when its first
//! packet reaches PREROUTING or OUTPUT and entered in the table
//! ("confirmed") when that packet leaves through POSTROUTING or INPUT. A
//! packet dropped on the way leaves no entry behind.

use crate::packet::{Packet, Tuple};
use kscratch_core::net::iptables::CtState;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use super::Hook;

/// Which way a packet travels relative to its connection's first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The direction of the first packet (the kernel's IP_CT_DIR_ORIGINAL).
    Original,
    /// The direction of the answers (IP_CT_DIR_REPLY).
    Reply,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Original => "original",
            Direction::Reply => "reply",
        })
    }
}

/// One tracked connection: the tuple of its first packet as it arrived, and
/// the tuple replies carry after address translation (`conntrack -L` shows
/// both). Without NAT the reply tuple is the original one reversed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conn {
    pub original: Tuple,
    pub reply: Tuple,
    /// A packet in the reply direction has been seen (IPS_SEEN_REPLY): from
    /// then on the connection is ESTABLISHED in both directions.
    pub seen_reply: bool,
}

impl Conn {
    fn new(original: Tuple) -> Conn {
        Conn {
            original,
            reply: original.reversed(),
            seen_reply: false,
        }
    }

    /// The destination was translated (DNAT, IPS_DST_NAT).
    pub fn is_dnat(&self) -> bool {
        self.original.dst != self.reply.src || self.original.dport != self.reply.sport
    }
}

/// A node's connection tracking table. Deterministic: entries are kept in
/// ordered maps and numbered in creation order.
#[derive(Debug, Clone, Default)]
pub struct Conntrack {
    conns: BTreeMap<u64, Conn>,
    /// Both tuples of every confirmed connection, to its id and direction.
    by_tuple: BTreeMap<Tuple, (u64, Direction)>,
    next_id: u64,
    /// The connection of the packet currently traversing the hooks (the
    /// kernel keeps it on the skb); see [`super::Netfilter::hook`].
    current: Option<Attachment>,
}

impl Conntrack {
    /// An empty table.
    pub fn new() -> Conntrack {
        Conntrack::default()
    }

    /// Number of confirmed connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether no connection has been confirmed yet.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Confirmed connections in creation order.
    pub fn entries(&self) -> impl Iterator<Item = &Conn> {
        self.conns.values()
    }

    /// The connection a packet with this tuple belongs to, and its direction.
    pub fn lookup(&self, tuple: &Tuple) -> Option<(&Conn, Direction)> {
        let (id, dir) = self.by_tuple.get(tuple)?;
        self.conns.get(id).map(|c| (c, *dir))
    }

    /// Forget every connection (`conntrack -F`).
    pub fn flush(&mut self) {
        *self = Conntrack::default();
    }

    /// Attach the packet to its connection at the first hook of a traversal
    /// (PREROUTING or OUTPUT): look it up, or start a new unconfirmed one.
    /// A packet looped back through `lo` after POSTROUTING keeps the
    /// connection it had, as the kernel keeps it on the skb.
    pub(super) fn begin(&mut self, hook: Hook, pkt: &Packet, in_iface: Option<&str>) -> Begin {
        let tuple = pkt.tuple();
        if let Some(a) = &mut self.current {
            if hook == Hook::Prerouting
                && in_iface == Some("lo")
                && a.last_hook == Hook::Postrouting
                && a.tuple_now == tuple
            {
                a.last_hook = hook;
                return Begin::Continued;
            }
        }
        let attachment = match self.by_tuple.get(&tuple).copied() {
            Some((id, dir)) => {
                let Some(conn) = self.conns.get_mut(&id) else {
                    // The two maps are kept in step; treat a stray index entry as unknown.
                    return self.start_new(hook, tuple);
                };
                if dir == Direction::Reply {
                    conn.seen_reply = true;
                }
                Attachment {
                    id: Some(id),
                    conn: conn.clone(),
                    dir,
                    dst_nat_done: true,
                    src_nat_done: true,
                    last_hook: hook,
                    tuple_now: tuple,
                }
            }
            None => return self.start_new(hook, tuple),
        };
        let state = attachment.state();
        let dir = attachment.dir;
        self.current = Some(attachment);
        Begin::Found { state, dir }
    }

    fn start_new(&mut self, hook: Hook, tuple: Tuple) -> Begin {
        self.current = Some(Attachment::fresh(hook, tuple));
        Begin::Found {
            state: CtState::New,
            dir: Direction::Original,
        }
    }

    /// The attachment of `pkt`, starting one if the current attachment is
    /// for another packet (a caller that skipped PREROUTING, or a stale
    /// attachment of a packet that was dropped).
    pub(super) fn attached(
        &mut self,
        hook: Hook,
        pkt: &Packet,
        in_iface: Option<&str>,
    ) -> &mut Attachment {
        let fresh = match &self.current {
            Some(a) => a.tuple_now != pkt.tuple(),
            None => true,
        };
        if fresh {
            self.begin(hook, pkt, in_iface);
        }
        // `begin` always sets an attachment; the fallback keeps this total.
        self.current
            .get_or_insert_with(|| Attachment::fresh(hook, pkt.tuple()))
    }

    pub(super) fn current(&self) -> Option<&Attachment> {
        self.current.as_ref()
    }

    pub(super) fn current_mut(&mut self) -> Option<&mut Attachment> {
        self.current.as_mut()
    }

    /// Whether some confirmed connection already uses `tuple` (either way).
    pub(super) fn tuple_taken(&self, tuple: &Tuple) -> bool {
        self.by_tuple.contains_key(tuple)
    }

    /// Enter the current connection in the table (at POSTROUTING or INPUT).
    pub(super) fn confirm(&mut self) {
        let Some(a) = &mut self.current else { return };
        match a.id {
            Some(id) => {
                // Keep the table's copy in step (seen_reply may have changed).
                if let Some(c) = self.conns.get_mut(&id) {
                    c.seen_reply |= a.conn.seen_reply;
                }
            }
            None => {
                if self.by_tuple.contains_key(&a.conn.original)
                    || self.by_tuple.contains_key(&a.conn.reply)
                {
                    // A clash the NAT step could not resolve (ICMP has no port
                    // to move): the kernel drops such a packet's conntrack
                    // entry; the packet itself goes on untracked.
                    return;
                }
                let id = self.next_id;
                self.next_id += 1;
                self.by_tuple
                    .insert(a.conn.original, (id, Direction::Original));
                self.by_tuple.insert(a.conn.reply, (id, Direction::Reply));
                self.conns.insert(id, a.conn.clone());
                a.id = Some(id);
            }
        }
    }
}

/// What [`Conntrack::begin`] found.
pub(super) enum Begin {
    Found {
        state: CtState,
        dir: Direction,
    },
    /// The packet came back through `lo` with its connection still attached.
    Continued,
}

/// The connection attached to the packet in flight (the kernel's skb->_nfct).
#[derive(Debug, Clone)]
pub(super) struct Attachment {
    /// Set once confirmed (or when the connection already existed).
    pub id: Option<u64>,
    /// Working copy of the connection (NAT bindings are written here first).
    pub conn: Conn,
    pub dir: Direction,
    /// The destination-side NAT decision (PREROUTING/OUTPUT) is made.
    pub dst_nat_done: bool,
    /// The source-side NAT decision (POSTROUTING/INPUT) is made.
    pub src_nat_done: bool,
    pub last_hook: Hook,
    /// The packet's tuple after the last hook, to recognise it at the next.
    pub tuple_now: Tuple,
}

impl Attachment {
    /// A new, unconfirmed connection whose first packet has `tuple`.
    fn fresh(hook: Hook, tuple: Tuple) -> Attachment {
        Attachment {
            id: None,
            conn: Conn::new(tuple),
            dir: Direction::Original,
            dst_nat_done: false,
            src_nat_done: false,
            last_hook: hook,
            tuple_now: tuple,
        }
    }

    /// The conntrack state `--ctstate` sees.
    pub fn state(&self) -> CtState {
        match self.dir {
            Direction::Reply => CtState::Established,
            Direction::Original if self.conn.seen_reply => CtState::Established,
            Direction::Original => CtState::New,
        }
    }

    /// Whether the `nat` chains decide this packet's translation (only the
    /// first packet of a connection, before it is confirmed).
    pub fn unconfirmed(&self) -> bool {
        self.id.is_none()
    }

    /// The destination a packet in this direction gets at PREROUTING/OUTPUT:
    /// DNAT for the original direction, undoing SNAT for replies.
    pub fn dst_translation(&self) -> (IpAddr, u16) {
        match self.dir {
            Direction::Original => (self.conn.reply.src, self.conn.reply.sport),
            Direction::Reply => (self.conn.original.src, self.conn.original.sport),
        }
    }

    /// The source a packet in this direction gets at POSTROUTING/INPUT:
    /// SNAT for the original direction, undoing DNAT for replies.
    pub fn src_translation(&self) -> (IpAddr, u16) {
        match self.dir {
            Direction::Original => (self.conn.reply.dst, self.conn.reply.dport),
            Direction::Reply => (self.conn.original.dst, self.conn.original.dport),
        }
    }
}
