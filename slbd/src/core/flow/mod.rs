//! The flow table: which real server each client connection was given, looked up from either
//! direction (client → VIP requests and real server → client replies), with TCP state and idle
//! timeouts. Pure: every call takes `now` in milliseconds and expiry returns what it evicted.
//!
//! - `table`: the storage (a slab of 28-byte slots and two indices) and the packet path's
//!   lookups, inserts and expiry;
//! - [`tcp`]: the one function that changes a flow's TCP state;
//! - `kernel`: offload flows, which conntrack carries and reports on;
//! - `replica`: what replication reads and writes.

mod kernel;
mod replica;
mod table;
pub mod tcp;

use std::net::SocketAddrV4;
use std::time::Duration;

use crate::core::net::Protocol;

pub use table::FlowTable;
pub use tcp::Phase;

/// A flow's 5-tuple as seen in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub protocol: Protocol,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
}

/// Idle timeouts by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: Duration,
    /// TCP after a FIN or RST, and TCP handshakes that got no reply yet.
    pub tcp_closing: Duration,
    pub udp: Duration,
}

/// A flow that left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub protocol: Protocol,
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    pub server: SocketAddrV4,
    pub tag: u32,
    /// It had already closed (FIN or RST seen) when it left.
    pub was_closing: bool,
    /// An offload flow (conntrack carries it).
    pub kernel: bool,
}

/// What a conntrack report changed in a flow the table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// No flow of that key and server.
    Unknown,
    Known {
        /// The handshake completed with this report.
        established_now: bool,
        /// The connection began closing with this report.
        closed_now: bool,
    },
}

/// Where a request packet of a known flow goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub server: SocketAddrV4,
    pub tag: u32,
    /// This packet closed the flow (its first FIN or RST).
    pub closed_now: bool,
}

/// Where a reply of a known flow comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replied {
    pub vip: SocketAddrV4,
    pub tag: u32,
    /// This packet closed the flow (its first FIN or RST).
    pub closed_now: bool,
    /// This packet completed the TCP handshake (the server's first answer).
    pub established_now: bool,
}

/// The result of looking up a request packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Found(Placed),
    Missing,
    /// A SYN reused the 5-tuple of a flow that had closed: the old flow ended and the packet
    /// starts a new one, to be scheduled afresh.
    Reused(Ended),
}

/// The table is at its configured maximum; the new flow was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("flow table full")]
pub struct Full;

#[cfg(test)]
mod testing {
    use super::*;

    pub const T: Timeouts = Timeouts {
        tcp: Duration::from_secs(900),
        tcp_closing: Duration::from_secs(10),
        udp: Duration::from_secs(30),
    };

    pub fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    pub fn req(p: Protocol, client: &str) -> FlowKey {
        FlowKey {
            protocol: p,
            src: sa(client),
            dst: sa("10.0.0.100:80"),
        }
    }

    pub fn reply(p: Protocol, server: &str, client: &str) -> FlowKey {
        FlowKey {
            protocol: p,
            src: sa(server),
            dst: sa(client),
        }
    }
}
