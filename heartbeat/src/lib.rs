//! The heartbeat between the two balancers of a pair: the message and its authentication
//! (`msg`, pure), when the peer counts as lost (`liveness`, pure), and the UDP links that carry
//! it (`socket`, the shell).

pub mod liveness;
pub mod msg;
pub mod socket;
