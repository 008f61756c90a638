//! Passive detection and handshake retry: what the data path does when it sees a server fail
//! a new connection's handshake — a SYN answered by a reset (nothing listens), by ICMP
//! unreachable, or not at all (the client retransmits it). The failed attempt is forgotten and
//! the client's retransmitted SYN is placed on another server (the handshake's client, VIP
//! port and the server to avoid are remembered for [`RETRY_MEMORY_MS`]); the server's count of
//! failed handshakes in a row grows, and at its service's `passive.fall` the server leaves
//! rotation at once, as if its checks had failed. Only the active checks bring it back. A
//! handshake that succeeds resets the count, so a server that resets one established
//! connection (its application's choice) is never counted.
//!
//! The data path decides and records; what needs I/O (logging the change, cutting an offload
//! server's conntrack entries, deleting the conntrack entry of a refused offload handshake so
//! that the retransmission is a new flow) is queued as [`PassiveWork`] for the shell, which
//! waits for it with [`Dataplane::wait_passive`]. Pure (locks and a condition variable only).

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::{Dataplane, HealthOutcome};
use crate::core::flow::FlowKey;
use crate::core::health::{Failure, PassiveConfig};
use crate::core::net::Protocol;

/// How long a failed handshake's retry avoids the server that failed it: the client's first
/// two SYN retransmissions (1 s and 3 s after its first SYN, on Linux).
pub const RETRY_MEMORY_MS: u64 = 4_000;

/// Most handshakes remembered for a retry; beyond it a retry may meet the same server again.
const RETRY_MEMORY_MAX: usize = 4096;

/// Most changes queued for the shell before it takes them (a server goes down once per
/// rise, and a conntrack deletion per refused handshake).
const PENDING_MAX: usize = 65_536;

/// A server passive detection took out of rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveDown {
    pub id: u32,
    /// The service's name (`tcp/80`).
    pub service: String,
    pub server: SocketAddrV4,
    pub why: Failure,
    /// The failed handshakes in a row that took it out.
    pub fall: u32,
    /// What ending its flows did, and what to cut.
    pub outcome: HealthOutcome,
}

/// What the shell must carry out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassiveWork {
    pub downs: Vec<PassiveDown>,
    /// Conntrack entries (protocol, client, VIP endpoint: the original direction) of offload
    /// handshakes that failed: deleted, the client's retransmission opens a new flow.
    pub forget: Vec<(Protocol, SocketAddrV4, SocketAddrV4)>,
}

impl PassiveWork {
    pub fn is_empty(&self) -> bool {
        self.downs.is_empty() && self.forget.is_empty()
    }
}

#[derive(Default)]
struct Pending {
    downs: Vec<(u32, Failure)>,
    forget: Vec<(Protocol, SocketAddrV4, SocketAddrV4)>,
}

/// The data plane's passive state.
#[derive(Default)]
pub(super) struct Passive {
    pending: Mutex<Pending>,
    ready: Condvar,
    /// (protocol, client, VIP port) → (server id to avoid, until when).
    retry: Mutex<HashMap<(Protocol, SocketAddrV4, u16), (u32, u64)>>,
    /// `retry`'s length, read without its lock on every new flow.
    retry_len: AtomicUsize,
}

impl Dataplane {
    /// The passive detection settings of server `id`'s service.
    pub(super) fn passive_of(&self, id: u32) -> PassiveConfig {
        let registry = self.registry.load();
        registry
            .passive
            .get(id as usize)
            .copied()
            .unwrap_or(PassiveConfig {
                enabled: false,
                ..PassiveConfig::default()
            })
    }

    /// A handshake with server `id` succeeded.
    pub(super) fn handshake_ok(&self, id: u32) {
        self.with_stats(id, |st| {
            // Read first: the common case (no failure) writes nothing to a shared line.
            if st.passive_fails.load(Relaxed) != 0 {
                st.passive_fails.store(0, Relaxed);
            }
        });
    }

    /// The handshake of request `key` with server `id` failed (`why`), seen by the data path;
    /// its flow has already left the table. The retry avoids the server; an offload flow's
    /// conntrack entry is queued for deletion (`kernel`); at the service's `passive.fall`
    /// failures in a row the server leaves rotation.
    pub(super) fn handshake_failed(
        &self,
        id: u32,
        why: Failure,
        key: &FlowKey,
        kernel: bool,
        now_ms: u64,
    ) {
        self.counters.retried_handshakes.fetch_add(1, Relaxed);
        {
            let mut retry = self.passive.retry.lock();
            if retry.len() < RETRY_MEMORY_MAX {
                retry.insert(
                    (key.protocol, key.src, key.dst.port()),
                    (id, now_ms + RETRY_MEMORY_MS),
                );
                self.passive.retry_len.store(retry.len(), Relaxed);
            }
        }
        let config = self.passive_of(id);
        let mut down = None;
        self.with_stats(id, |st| {
            let fails = st.passive_fails.fetch_add(1, Relaxed) + 1;
            if config.enabled
                && fails >= config.fall.max(1)
                && st
                    .up
                    .compare_exchange(true, false, Relaxed, Relaxed)
                    .is_ok()
            {
                st.down_reason.store(why.code(), Relaxed);
                down = Some((id, why));
            }
        });
        if down.is_none() && !kernel {
            return;
        }
        let mut pending = self.passive.pending.lock();
        if let Some(d) = down {
            pending.downs.push(d);
        }
        if kernel && pending.forget.len() < PENDING_MAX {
            pending.forget.push((key.protocol, key.src, key.dst));
        }
        drop(pending);
        self.passive.ready.notify_one();
    }

    /// The server a new flow's placement must avoid: the one that just failed this client's
    /// handshake, if it did. Taken once.
    pub(super) fn retry_avoid(&self, key: &FlowKey, now_ms: u64) -> Option<u32> {
        if self.passive.retry_len.load(Relaxed) == 0 {
            return None;
        }
        let mut retry = self.passive.retry.lock();
        let found = retry.remove(&(key.protocol, key.src, key.dst.port()));
        self.passive.retry_len.store(retry.len(), Relaxed);
        found.filter(|(_, until)| now_ms < *until).map(|(id, _)| id)
    }

    /// Forgets retries whose client has given up.
    pub(super) fn expire_retries(&self, now_ms: u64) {
        if self.passive.retry_len.load(Relaxed) == 0 {
            return;
        }
        let mut retry = self.passive.retry.lock();
        retry.retain(|_, (_, until)| now_ms < *until);
        self.passive.retry_len.store(retry.len(), Relaxed);
    }

    /// Waits up to `timeout` for passive detection's changes and takes them: ends the flows
    /// of each server it took out (as a failed check does) and hands the shell the rest.
    pub fn wait_passive(&self, timeout: Duration) -> PassiveWork {
        let taken = {
            let mut pending = self.passive.pending.lock();
            if pending.downs.is_empty() && pending.forget.is_empty() {
                self.passive.ready.wait_for(&mut pending, timeout);
            }
            std::mem::take(&mut *pending)
        };
        let names = {
            let registry = self.registry.load();
            move |id: u32| {
                registry
                    .ids
                    .iter()
                    .find(|(_, i)| **i == id)
                    .map(|((p, port, addr), _)| (format!("{p}/{port}"), *addr))
            }
        };
        let downs = taken
            .downs
            .into_iter()
            .filter_map(|(id, why)| {
                let (service, server) = names(id)?;
                Some(PassiveDown {
                    id,
                    service,
                    server,
                    why,
                    fall: self.passive_of(id).fall,
                    outcome: self.end_flows_of(id),
                })
            })
            .collect();
        PassiveWork {
            downs,
            forget: taken.forget,
        }
    }
}
