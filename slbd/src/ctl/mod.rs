//! The control socket: the protocol (pure, shared with slbctl and amgr), what a status answer
//! means in words (pure, shared too), a client for it, and slbd's server for it (shells).

pub mod client;
pub mod proto;
pub mod server;
pub mod status;
