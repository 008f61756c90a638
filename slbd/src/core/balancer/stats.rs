//! The per-server counters and health every queue worker, the health checker, status and the
//! metrics share, and the registry that gives each real server a stable id. Pure (atomics
//! only).

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::verdict::DropReason;
use crate::core::health::PassiveConfig;
use crate::core::model::{Forwarding, Mode};
use crate::core::net::Protocol;

/// Per real server counters and health, shared by the queue workers and the health checker.
#[derive(Debug)]
pub struct ServerStats {
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub new_flows: AtomicU64,
    pub live_flows: AtomicU64,
    /// Times the service's scheduler chose this server.
    pub scheduled: AtomicU64,
    /// Times persistence sent a client back to this server (the scheduler was not asked).
    pub persisted: AtomicU64,
    /// In rotation. Servers start up, so balancing starts before the first check completes.
    pub up: AtomicBool,
    /// Smoothed service latency in µs; 0 until measured.
    pub latency_us: AtomicU32,
    /// The weight a check set (a script check's dynamic weight); 0: the configured one.
    pub dynamic_weight: AtomicU32,
    /// The last active check's outcome: 0 none yet, [`CHECK_PASSED`], else a
    /// [`Failure::code`](crate::core::health::Failure::code).
    pub last_check: AtomicU32,
    /// Why the server is out of rotation, as a failure code; 0 while it is in.
    pub down_reason: AtomicU32,
    /// Failed handshakes the data path saw since the last one that succeeded.
    pub(super) passive_fails: AtomicU32,
    /// When the data path last saw one fail (ms on the data plane's clock).
    pub(super) passive_last_ms: AtomicU64,
    /// The agent's administrative state: 0 ready (or no agent), 1 drain, 2 maint.
    pub agent_admin: std::sync::atomic::AtomicU8,
    /// The server just came into rotation: its slow start begins at the next look.
    pub(super) ramp_pending: AtomicBool,
    /// When its slow start began (ms on the data plane's clock); 0: none.
    pub(super) ramp_from_ms: AtomicU64,
}

/// [`ServerStats::last_check`] of a check that passed.
pub const CHECK_PASSED: u32 = 1;

impl Default for ServerStats {
    fn default() -> Self {
        ServerStats {
            packets_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            packets_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            new_flows: AtomicU64::new(0),
            live_flows: AtomicU64::new(0),
            scheduled: AtomicU64::new(0),
            persisted: AtomicU64::new(0),
            up: AtomicBool::new(true),
            latency_us: AtomicU32::new(0),
            dynamic_weight: AtomicU32::new(0),
            last_check: AtomicU32::new(0),
            down_reason: AtomicU32::new(0),
            passive_fails: AtomicU32::new(0),
            passive_last_ms: AtomicU64::new(0),
            agent_admin: std::sync::atomic::AtomicU8::new(0),
            ramp_pending: AtomicBool::new(false),
            ramp_from_ms: AtomicU64::new(0),
        }
    }
}

impl ServerStats {
    /// The weight new flows see: a check's dynamic weight (stored + 1) overrides the
    /// `configured` one.
    pub fn weight(&self, configured: u32) -> u32 {
        match self.dynamic_weight.load(Relaxed) {
            0 => configured,
            w => w - 1,
        }
    }

    /// Takes `n` off the live count (saturating: counts are advisory, never negative).
    pub(super) fn less_live(&self, n: u64) {
        let _ = self
            .live_flows
            .fetch_update(Relaxed, Relaxed, |live| Some(live.saturating_sub(n)));
    }

    /// A new flow placed on this server.
    pub(super) fn placed(&self) {
        self.new_flows.fetch_add(1, Relaxed);
        self.live_flows.fetch_add(1, Relaxed);
    }

    pub(super) fn inbound(&self, bytes: usize) {
        self.packets_in.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    pub(super) fn outbound(&self, bytes: usize) {
        self.packets_out.fetch_add(1, Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Relaxed);
    }
}

/// Every real server ever configured, by stable id (ids are never reused, so flows to a
/// removed server still find their counters while they drain).
#[derive(Default, Clone)]
pub(super) struct Registry {
    pub(super) stats: Vec<Arc<ServerStats>>,
    pub(super) ids: HashMap<(Protocol, u16, SocketAddrV4), u32>,
    /// The mode of each id's service when it was last configured.
    pub(super) modes: Vec<Mode>,
    /// Each id's service's forwarding, as last configured.
    pub(super) forwarding: Vec<Forwarding>,
    /// Each id's service's passive detection settings, as last configured.
    pub(super) passive: Vec<PassiveConfig>,
}

impl Registry {
    /// The stable id of `server` on the service (protocol, VIP port), given one if it has none.
    pub(super) fn id(
        &mut self,
        protocol: Protocol,
        port: u16,
        server: SocketAddrV4,
        mode: Mode,
        forwarding: Forwarding,
        passive: PassiveConfig,
    ) -> u32 {
        let id = *self.ids.entry((protocol, port, server)).or_insert_with(|| {
            self.stats.push(Arc::new(ServerStats::default()));
            self.modes.push(mode);
            self.forwarding.push(forwarding);
            self.passive.push(passive);
            (self.stats.len() - 1) as u32
        });
        self.modes[id as usize] = mode;
        self.forwarding[id as usize] = forwarding;
        self.passive[id as usize] = passive;
        id
    }
}

/// Whole-dataplane counters.
#[derive(Debug)]
pub struct Counters {
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    /// Replies taken as the dual's flows right after a takeover (packet mode).
    pub adopted_replies: AtomicU64,
    /// TCP segments without SYN that matched no flow, placed by a MAGLEV table (a flow another
    /// balancer or an earlier slbd placed) instead of dropped.
    pub adopted_midstream: AtomicU64,
    /// Offload requests conntrack did not translate, sent on to their server in a hand-over.
    pub untracked_requests: AtomicU64,
    /// New connections whose handshake a server failed (reset, ICMP, no answer), retried on
    /// another server.
    pub retried_handshakes: AtomicU64,
    /// Flows evicted from a full table to make room for a new one.
    pub evicted_flows: AtomicU64,
    /// ICMP errors about packet-mode flows translated for the client / for the server.
    pub icmp_to_client: AtomicU64,
    pub icmp_to_server: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            requests: AtomicU64::new(0),
            replies: AtomicU64::new(0),
            adopted_replies: AtomicU64::new(0),
            adopted_midstream: AtomicU64::new(0),
            untracked_requests: AtomicU64::new(0),
            retried_handshakes: AtomicU64::new(0),
            evicted_flows: AtomicU64::new(0),
            icmp_to_client: AtomicU64::new(0),
            icmp_to_server: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Counters {
    pub fn dropped(&self, why: DropReason) -> u64 {
        self.drops.get(why.index()).map_or(0, |c| c.load(Relaxed))
    }

    pub(super) fn adopted_reply(&self) {
        self.adopted_replies.fetch_add(1, Relaxed);
    }

    pub(super) fn drop(&self, why: DropReason) {
        if let Some(c) = self.drops.get(why.index()) {
            c.fetch_add(1, Relaxed);
        }
    }
}
