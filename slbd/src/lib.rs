//! slbd: a layer-4 load balancer that takes its packets from NFQUEUE.
//!
//! The folders are the layers, and imports point down only:
//! - [`core`] (pure): packets, flows, schedulers, persistence, health, the ruleset, and the
//!   balancer that decides each queued packet;
//! - [`wire`] (pure): codecs for what crosses a process boundary;
//! - [`config`] (pure): `slb_conf.json` from raw text to a checked model, and its edits;
//! - [`ctl`]: the control protocol (pure) with its client and server (shells);
//! - [`shell`]: netlink, sockets, probes and threads around the pure parts;
//! - [`daemon`]: the slbd process that wires the shells together.
//!
//! Still to fold into `wire`/`shell`: the netlink codecs and sockets in [`nfnetlink`],
//! [`queue`], [`conntrack`] and [`addr`].

pub mod addr;
pub mod config;
pub mod conntrack;
pub mod core;
pub mod ctl;
pub mod daemon;
pub mod netlink;
pub mod queue;
pub mod shell;
pub mod wire;
