//! What slb's binaries share, below every one of them: slbd, slbctl, amgr and the heartbeat
//! tool all depend on this crate, and it depends on none of them (nor on any netlink or async
//! crate).
//!
//! Pure: the JSON-lines envelope ([`envelope`]), the HMAC framing ([`auth`], whose nonces come
//! from the kernel's random source), listen-address parsing ([`listen`]), the metric model
//! ([`metrics`]). Shells: log output ([`logging`]), completions and man pages ([`cli_docs`]),
//! the pair's key file ([`pair_key`]), private file writes ([`fs`]), the fuzz seeds the unit
//! tests keep current ([`fuzz_seed`]), the metrics endpoint
//! ([`metrics::http`]), the bounded accept loop every listener runs ([`serve`], whose
//! admission decision is pure).

pub mod auth;
pub mod cli_docs;
pub mod envelope;
pub mod fs;
pub mod fuzz_seed;
pub mod instance;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod pair_key;
pub mod serve;
