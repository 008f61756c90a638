//! The heartbeat between the two balancers of a pair: the message and its authentication
//! (`msg`, pure), and when the peer counts as lost (`liveness`, pure). The UDP socket that
//! carries it belongs to amgr's shell.

pub mod liveness;
pub mod msg;
