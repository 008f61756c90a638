//! amgr, the failover agent. Today: the per-application state machine (`fsm`, pure). The
//! daemon around it (heartbeat links, the peer connection, slbd's control socket, SSH config
//! sync) is still to come.

pub mod fsm;
