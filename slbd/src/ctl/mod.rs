//! The control socket: the protocol (pure, shared with slbctl) and slbd's server for it.

pub mod proto;
pub mod server;
