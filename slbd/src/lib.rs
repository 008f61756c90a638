//! slbd: a layer-4 NAT load balancer that takes its packets from NFQUEUE.
//!
//! The pure core (config, packet, checksum, garp, flow, persist, sched, health, ruleset, dataplane,
//! edit, report, metrics::families, conntrack::wire, netlink) does no I/O and is what the unit tests exercise. The shells
//! (nft, addr, queue, netlink::socket, conntrack::socket, offload, prober, ctl, daemon, metrics::http, logging, cli_docs, pair_key,
//! replication::session) wrap it with netlink,
//! NFQUEUE sockets, probes, signals and threads.

pub mod addr;
pub mod checksum;
pub mod cli_docs;
pub mod config;
pub mod conntrack;
pub mod ctl;
pub mod daemon;
pub mod dataplane;
pub mod edit;
pub mod flow;
pub mod garp;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod netlink;
pub mod nft;
pub mod offload;
pub mod packet;
pub mod pair_key;
pub mod persist;
pub mod prober;
pub mod queue;
pub mod replication;
pub mod report;
pub mod ruleset;
pub mod sched;
