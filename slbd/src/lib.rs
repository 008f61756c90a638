//! slbd: a layer-4 load balancer that takes its packets from NFQUEUE.
//!
//! The folders are the layers, and imports point down only:
//! - [`core`] (pure): packets, flows and their TCP transitions, schedulers, persistence,
//!   health, the ruleset, the checked configuration model, and the balancer that decides each
//!   queued packet;
//! - [`wire`] (pure): codecs for what crosses a process boundary — the netlink base and its
//!   NFQUEUE, ctnetlink and rtnetlink messages, the replication frames;
//! - [`config`] (pure): `slb_conf.json` from raw text to the checked model, and its edits;
//! - [`ctl`]: the control protocol and its typed replies (pure), with its client and server;
//! - [`shell`]: sockets, netlink, nftables, probes and threads around the pure parts;
//! - [`daemon`]: the slbd process that wires the shells together.
//!
//! A packet is rewritten in `core::balancer::packet`, a server is chosen in
//! `core::balancer::Dataplane::place`, a flow's TCP state changes in `core::flow::tcp::step`,
//! and the node's role changes in `daemon::role`.

pub mod config;
pub mod core;
pub mod ctl;
pub mod daemon;
pub mod shell;
pub mod wire;
