//! amgr, the failover agent: the Application Manager pair around slbd.
//!
//! Pure: the per-application state machine (`fsm`), amgr.json (`config`), the amcli-style
//! commands and their socket protocol (`command`), the peer connection's framing (`peer`),
//! the config-sync rules (`sync`), the state-change hooks' settings (`hooks`, which also runs them), the timers that decide what time alone makes happen
//! (`timers`), the text `query` prints (`render`), and the metric families
//! (`metrics`). Shells: slbd as a
//! child (`app`), the agent loop that owns the state (`agent`), and the daemon that wires the
//! sockets, threads and signals together (`daemon`).

pub mod agent;
pub mod app;
pub mod command;
pub mod config;
pub mod daemon;
pub mod fsm;
pub mod guard;
pub mod hooks;
pub mod metrics;
pub mod peer;
pub mod render;
pub mod sync;
pub mod timers;
