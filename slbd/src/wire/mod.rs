//! PURE codecs for bytes that cross a process boundary: each module checks what it parses
//! before believing any of it, never panics on any input, and emits what the other side
//! expects: the netlink base ([`netlink`]) and the messages slbd exchanges with the kernel
//! over it ([`nfqueue`], [`ctnetlink`], [`rtnetlink`]), the pair's flow-replication
//! frames ([`replication`]), and the BGP daemon's control-socket replies ([`bird`]).

pub mod bird;
pub mod ctnetlink;
pub mod netlink;
pub mod nfqueue;
pub mod replication;
pub mod rtnetlink;
