//! Offload mode's view of the kernel's connection tracking, through ctnetlink
//! (NETLINK_NETFILTER, subsystem NFNL_SUBSYS_CTNETLINK): follow the events of slbd's flows,
//! delete the entries of a server that left rotation, dump slbd's entries to resync after lost
//! events or a restart, and inject NAT'd entries on a node taking over from its peer before the
//! VIP comes up. [`wire`] is the pure codec; [`socket`] is the shell that talks to the kernel.

pub mod socket;
pub mod wire;

pub use socket::{Control, EventSocket, InjectReport};
pub use wire::{Counters, CtEntry, EventKind, Inject, Malformed};
