//! SHELL: the conntrack side of offload mode. Follows conntrack's events for the flows slbd
//! placed (one thread), resynchronises the flow table from a dump when events were lost or
//! slbd restarted, commits replicated flows to conntrack on a takeover, and deletes slbd's
//! entries when a server leaves rotation or balancing stops, and a failed handshake's entry.
//! Side effects: a ctnetlink event socket and thread; creates and deletes conntrack entries
//! whose mark is one of slbd's (`ruleset::OFFLOAD_MARK_*`), never any other.

use std::io;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::core::balancer::{Dataplane, FlowCut, KernelReport};
use crate::core::net::Protocol;
use crate::core::ruleset::{self, ADOPT_MARK_BASE, OFFLOAD_MARK_BASE, OFFLOAD_MARK_MASK};
use crate::shell::conntrack::{Control, EventSocket};
use crate::shell::nft;
use crate::wire::ctnetlink::CtEntry;
use crate::wire::ctnetlink::Inject;

/// Receive buffer of the event socket: a burst of new connections produces several events
/// each (new, state changes, destroy), and an overrun costs a full dump.
const EVENT_RCVBUF: usize = 16 << 20;

/// How long the event thread lets events gather after draining the socket.
const EVENT_GATHER: Duration = Duration::from_millis(1);

/// How long a committed flow lives in conntrack before its next packet refreshes it with the
/// kernel's own timeout for its state.
const COMMIT_TIMEOUT_S: u32 = 300;

/// Counters shown in status and metrics.
#[derive(Debug, Default)]
pub struct OffloadStats {
    pub events: AtomicU64,
    /// The event socket overflowed: events were lost and the table was resynchronised.
    pub overruns: AtomicU64,
    pub resyncs: AtomicU64,
    /// Flows committed to conntrack on takeovers, and the ones the kernel refused.
    pub committed: AtomicU64,
    pub commit_failed: AtomicU64,
    /// Deletions of a server's (or all of slbd's) conntrack entries.
    pub cuts: AtomicU64,
    /// Entries of failed handshakes deleted so that their retransmission is a new flow.
    pub forgotten: AtomicU64,
}

pub struct Offload {
    control: Mutex<Option<Control>>,
    pub stats: OffloadStats,
    epoch: Instant,
}

impl Offload {
    pub fn new(epoch: Instant) -> Arc<Offload> {
        Arc::new(Offload {
            control: Mutex::new(None),
            stats: OffloadStats::default(),
            epoch,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs `f` on the request socket, opening it on first use (and again after a failure).
    fn with_control<T>(&self, f: impl FnOnce(&mut Control) -> io::Result<T>) -> io::Result<T> {
        let mut guard = self.control.lock();
        if guard.is_none() {
            *guard = Some(Control::open()?);
        }
        let r = f(guard.as_mut().expect("opened above"));
        if r.is_err() {
            *guard = None;
        }
        r
    }

    /// Starts following conntrack's events into `dp`.
    pub fn start_events(self: &Arc<Self>, dp: Arc<Dataplane>) -> io::Result<()> {
        // No NEW events: slbd placed the flow itself, and the first update (the server's
        // answer) confirms it; one event fewer per connection, for the kernel and for slbd.
        let mut events = EventSocket::open(EVENT_RCVBUF, false)?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("conntrack".into())
            .spawn(move || me.follow(&mut events, &dp))?;
        Ok(())
    }

    fn follow(&self, events: &mut EventSocket, dp: &Dataplane) {
        let mut consecutive_errors = 0u32;
        let mut wait = Duration::from_secs(1);
        loop {
            let now = self.now_ms();
            let mut n = 0u64;
            let r = events.recv(wait, |e| {
                n += 1;
                dp.conntrack_report(&e.report(), now);
            });
            self.stats.events.fetch_add(n, Relaxed);
            match r {
                // Drain what is queued without waiting, then let events gather for a moment:
                // each connection brings several, and waking per event cost more CPU than
                // handling them (a millisecond's delay in the live counts costs nothing).
                Ok(true) => {
                    consecutive_errors = 0;
                    wait = Duration::ZERO;
                }
                Ok(false) => {
                    if wait.is_zero() {
                        std::thread::sleep(EVENT_GATHER);
                    }
                    wait = Duration::from_secs(1);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    let n = self.stats.overruns.fetch_add(1, Relaxed);
                    if n.is_power_of_two() {
                        tracing::warn!(
                            count = n + 1,
                            "conntrack events lost (socket overrun): resynchronising from a dump"
                        );
                    }
                    self.resync(dp);
                }
                Err(e) => {
                    consecutive_errors += 1;
                    if consecutive_errors == 1 || consecutive_errors % 1000 == 0 {
                        tracing::warn!(error = %e, count = consecutive_errors, "conntrack event receive failed");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Brings the flow table in line with conntrack's list of slbd's entries.
    pub fn resync(&self, dp: &Dataplane) {
        match self.with_control(|c| c.dump_marked(OFFLOAD_MARK_BASE, OFFLOAD_MARK_MASK)) {
            Ok(entries) => {
                self.stats.resyncs.fetch_add(1, Relaxed);
                let reports: Vec<KernelReport> = entries.iter().map(CtEntry::report).collect();
                dp.conntrack_resync(&reports, self.now_ms());
                tracing::debug!(entries = entries.len(), "offload flows resynchronised");
            }
            Err(e) => tracing::error!(error = %e, "cannot dump conntrack for a resync"),
        }
    }

    /// On a takeover, before the VIP comes up: every replicated offload flow becomes a
    /// conntrack entry bound to its server, so its next packet is carried by the kernel.
    pub fn commit(&self, dp: &Dataplane) {
        let vip = dp.vip();
        let flows: Vec<Inject> = dp
            .offload_takeover()
            .into_iter()
            .map(|(f, mark, established)| Inject {
                protocol: f.protocol,
                client: f.client,
                vip: std::net::SocketAddrV4::new(vip, f.vip.port()),
                server: f.server,
                mark,
                established,
                timeout_s: COMMIT_TIMEOUT_S,
            })
            .collect();
        if flows.is_empty() {
            return;
        }
        let started = Instant::now();
        match self.with_control(|c| c.inject(&flows)) {
            Ok(report) => {
                self.stats
                    .committed
                    .fetch_add(report.created as u64, Relaxed);
                self.stats
                    .commit_failed
                    .fetch_add(report.failed as u64, Relaxed);
                if report.failed > 0 {
                    tracing::warn!(
                        committed = report.created,
                        failed = report.failed,
                        error = ?report.first_error,
                        "some offload flows could not be committed to conntrack"
                    );
                }
                tracing::info!(
                    flows = report.created,
                    ms = started.elapsed().as_millis() as u64,
                    "offload flows committed to conntrack"
                );
            }
            Err(e) => {
                self.stats
                    .commit_failed
                    .fetch_add(flows.len() as u64, Relaxed);
                tracing::error!(error = %e, flows = flows.len(), "cannot commit offload flows to conntrack");
            }
        }
    }

    /// Deletes the conntrack entries of offload handshakes a server failed (by reply tuple:
    /// protocol, server, client), so that each client's retransmitted SYN is a new flow.
    pub fn forget(&self, flows: &[(Protocol, SocketAddrV4, SocketAddrV4)]) {
        for &(protocol, server, client) in flows {
            match self.with_control(|c| c.delete_reply(protocol, server, client)) {
                Ok(true) => {
                    self.stats.forgotten.fetch_add(1, Relaxed);
                }
                // Gone already: conntrack ended it, or a cut of its server did.
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    error = %e, client = %client, server = %server,
                    "cannot delete a failed handshake's conntrack entry"
                ),
            }
        }
    }

    /// Ends what the kernel carries of one server's flows (the drain policy's cut, a server
    /// gone down): its conntrack entries (NAT), or its flow map entries (direct routing).
    pub fn cut(&self, cut: FlowCut) {
        match cut {
            FlowCut::Conntrack { mark } => self.delete_marked(&[(mark, u32::MAX)]),
            FlowCut::DrFlows(server) => match nft::cut_dr_flows(&server) {
                Ok(n) => {
                    self.stats.cuts.fetch_add(1, Relaxed);
                    tracing::info!(
                        server = %server.server, port = server.vip_port, flows = n,
                        map = ruleset::DR_FLOWS, "direct-routing flows cut from the flow map"
                    );
                }
                Err(e) => tracing::error!(
                    error = %format!("{:#}", anyhow::Error::from(e)), server = %server.server,
                    "cannot cut direct-routing flows from the flow map"
                ),
            },
        }
    }

    /// Deletes every conntrack entry of slbd's (balancing stopped), with the flows taken from
    /// the dual at a planned switch. The flow map goes with slbd's netdev table.
    pub fn cut_all(&self) {
        self.delete_marked(&[
            (OFFLOAD_MARK_BASE, OFFLOAD_MARK_MASK),
            (ADOPT_MARK_BASE, OFFLOAD_MARK_MASK),
        ]);
    }

    fn delete_marked(&self, cuts: &[(u32, u32)]) {
        for &(m, mask) in cuts {
            match self.with_control(|c| c.delete_marked(m, mask)) {
                Ok(()) => {
                    self.stats.cuts.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    tracing::error!(error = %e, mark = %format!("{m:#x}"), "cannot delete conntrack entries")
                }
            }
        }
    }
}
