//! SHELLS: the side effects, each wrapping a pure part of `crate::core` or `crate::wire`:
//! the nftables table ([`nft`]), the health probes ([`prober`]), offload mode's conntrack
//! side ([`offload`]), and the replication sessions ([`replication`]).

pub mod nft;
pub mod offload;
pub mod prober;
pub mod replication;
