//! SHELLS: the side effects, each wrapping a pure part of `crate::core` or `crate::wire`:
//! netlink sockets ([`netlink`]) and what runs on them — the NFQUEUE workers ([`nfqueue`]),
//! conntrack's event and request sockets ([`conntrack`]) and offload mode's use of them
//! ([`offload`]), the managed addresses ([`addr`]) and cluster mode's announced route
//! ([`announce`]) —, the nftables table ([`nft`]), the health
//! checker ([`prober`]) and its probes ([`probe`]: connect, UDP, HTTP, TLS, script), passive
//! detection's changes ([`passive`]), and the replication
//! sessions ([`replication`]).

pub mod addr;
pub mod agent;
pub mod announce;
pub mod bird;
pub mod conntrack;
pub mod netlink;
pub mod nfqueue;
pub mod nft;
pub mod offload;
pub mod passive;
pub mod probe;
pub mod prober;
pub mod replication;
