//! PURE codecs for bytes that cross a process boundary: each module checks what it parses
//! before believing any of it, never panics on any input, and emits what the other side
//! expects: the netlink base ([`netlink`]) and the messages slbd exchanges with the kernel
//! over it ([`nfqueue`], [`ctnetlink`], [`rtnetlink`]), and the pair's flow-replication
//! frames ([`replication`]).

pub mod ctnetlink;
pub mod netlink;
pub mod nfqueue;
pub mod replication;
pub mod rtnetlink;
