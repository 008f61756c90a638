//! The control socket: the protocol (pure, shared with slbctl), a client for it, and slbd's
//! server for it.

pub mod client;
pub mod proto;
pub mod server;
