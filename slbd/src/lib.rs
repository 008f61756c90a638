//! slbd: a layer-4 NAT load balancer that takes its packets from NFQUEUE.
//!
//! The pure core (config, packet, flow, persist, sched, ruleset, dataplane) does no I/O and is
//! what the unit tests exercise. The shells (nft, addr, queue, daemon) wrap it with netlink,
//! NFQUEUE sockets, signals and threads.

pub mod addr;
pub mod checksum;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod flow;
pub mod net;
pub mod nft;
pub mod packet;
pub mod persist;
pub mod queue;
pub mod ruleset;
pub mod sched;
