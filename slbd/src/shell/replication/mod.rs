//! SHELL: the replication sessions between the pair's two slbd, one TCP connection at a time
//! over the pair's links. The ACTIVE (balancing) listens and serves: it authenticates the
//! STANDBY, sends a snapshot of its flows and persistence, then the data plane's change log
//! every ~10 ms (keepalives when idle). The STANDBY connects to its dual and applies what it
//! receives; it is takeover-ready once its snapshot is complete and the stream is alive.
//! Roles follow slbd's load/unload, so after a failback replication runs the other way
//! without a restart.
//!
//! Order at a takeover ([`Replication::activate`]): what the STANDBY has received is applied
//! before it is told it is ACTIVE, and the daemon brings up the VIP only after that. At a
//! planned release ([`Replication::deactivate`]) the ACTIVE sends its last changes before it
//! lets go.
//!
//! At the heal of a split both nodes balance; the one that gives up the VIP asks the other to
//! merge ([`Replication::merge`]): the winner, still balancing, receives the loser's snapshot
//! and changes with its own flows winning, until the loser lets go and closes the session.
//!
//! Side effects: TCP listeners (the common bounded accept loop) and connections on the links'
//! addresses, threads.

mod receiver;
mod sender;
mod status;
mod stream;

use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::core::balancer::Dataplane;
use crate::wire::replication::NONCE_LEN;

pub use status::Status;

/// How often the ACTIVE sends what changed.
const BATCH_EVERY: Duration = Duration::from_millis(10);
/// With nothing to send, a keepalive this often.
const KEEPALIVE_EVERY: Duration = Duration::from_millis(250);
/// A STANDBY that hears nothing for this long ends the session (and is not takeover-ready).
const SILENCE: Duration = Duration::from_millis(1000);
/// Each read waits at most this long, so flags are looked at often.
const POLL: Duration = Duration::from_millis(50);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// A STANDBY's pause between attempts to reach its dual.
const RETRY_EVERY: Duration = Duration::from_millis(200);
/// The most a takeover waits for the STANDBY's session to hand over what it received.
const DRAIN_LIMIT: Duration = Duration::from_millis(300);
/// The most a release waits for the ACTIVE's last changes to be sent.
const FLUSH_LIMIT: Duration = Duration::from_millis(500);

/// The most a merge waits for the dual's snapshot.
const MERGE_LIMIT: Duration = Duration::from_secs(3);

/// See [`Replication::merge_hook`].
pub type MergeHook = Box<dyn Fn(bool) + Send + Sync>;

/// What a merge received before it answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Merged {
    /// The dual's flows taken (not already placed here).
    pub flows: u64,
    /// 5-tuples both placed on different servers; this node's placement stays.
    pub conflicts: u64,
    /// Records for a service or server this node does not have.
    pub unknown: u64,
}

/// Where replication runs: the pair's key and links (this node's address and its dual's).
#[derive(Debug, Clone)]
pub struct Settings {
    pub key: Vec<u8>,
    pub port: u16,
    pub links: Vec<(Ipv4Addr, Ipv4Addr)>,
}

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn nonce() -> io::Result<[u8; NONCE_LEN]> {
    slb_common::auth::nonce()
}

/// The replication of one slbd: its role, its sessions' threads and their figures.
pub struct Replication {
    settings: Settings,
    dp: Arc<Dataplane>,
    epoch: Instant,
    pub status: Status,
    /// This node balances: it serves its flows; otherwise it receives its dual's.
    active: AtomicBool,
    /// Held while received records are applied, so a takeover never interleaves with one.
    applying: Mutex<()>,
    /// A takeover is waiting for the receiving session to hand over what it has.
    draining: AtomicBool,
    /// A planned takeover: this node balances and its receiving session, from the dual that
    /// is letting go, still applies (until that session ends).
    overlap: AtomicBool,
    receiver_busy: AtomicBool,
    /// Balancing, and receiving the dual's flows at a heal (until that session ends).
    merging: AtomicBool,
    /// Told when a merge applied records (`false`) and when its session ended (`true`): the
    /// daemon hands offload flows to conntrack and announces the addresses again.
    merge_hook: OnceLock<MergeHook>,
    /// The serving session in force; an older one stops when this moves on.
    serving_session: AtomicU64,
    sender_busy: AtomicBool,
}

impl Replication {
    /// Starts the listeners (one per link) and the receiving side, as a receiver: slbd's
    /// load makes it the sender ([`Replication::activate`]).
    pub fn start(
        settings: Settings,
        dp: Arc<Dataplane>,
        epoch: Instant,
    ) -> io::Result<Arc<Replication>> {
        if settings.links.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "flow replication needs at least one link",
            ));
        }
        let r = Arc::new(Replication {
            settings,
            dp,
            epoch,
            status: Status::default(),
            active: AtomicBool::new(false),
            applying: Mutex::new(()),
            draining: AtomicBool::new(false),
            overlap: AtomicBool::new(false),
            receiver_busy: AtomicBool::new(false),
            merging: AtomicBool::new(false),
            merge_hook: OnceLock::new(),
            serving_session: AtomicU64::new(0),
            sender_busy: AtomicBool::new(false),
        });
        for (local, _) in r.settings.links.clone() {
            r.listen(local)?;
        }
        let me = r.clone();
        std::thread::Builder::new()
            .name("repl-receive".into())
            .spawn(move || me.receive_loop())?;
        tracing::info!(
            port = r.settings.port,
            links = r.settings.links.len(),
            "flow replication on"
        );
        Ok(r)
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Becomes the sender. Returns once what the receiving session had was applied (or it
    /// gave up after `DRAIN_LIMIT`): the caller brings the VIP up after this. With `overlap`
    /// (a planned switch: the dual still balances) the receiving session is not ended: it
    /// goes on applying what the dual places until the dual lets go, sends its last changes
    /// and closes it.
    pub fn activate(&self, overlap: bool) {
        if self.active.load(Relaxed) {
            return;
        }
        if overlap && self.receiver_busy.load(Relaxed) {
            let _applying = self.applying.lock();
            self.overlap.store(true, Relaxed);
            self.active.store(true, Relaxed);
            tracing::info!(
                flows = self.dp.flow_count(),
                takeover_ready = self.status.takeover_ready(),
                "replication: taking over while the dual lets go; its session goes on"
            );
            return;
        }
        self.draining.store(true, Relaxed);
        let until = Instant::now() + DRAIN_LIMIT;
        while self.receiver_busy.load(Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _applying = self.applying.lock();
        self.active.store(true, Relaxed);
        self.draining.store(false, Relaxed);
        tracing::info!(
            flows = self.dp.flow_count(),
            takeover_ready = self.status.takeover_ready(),
            "replication: taking over with the replicated flows"
        );
    }

    /// Sets what a merge tells the daemon (once, at start).
    pub fn on_merge(&self, hook: MergeHook) {
        let _ = self.merge_hook.set(hook);
    }

    pub(super) fn merged(&self, ended: bool) {
        if let Some(hook) = self.merge_hook.get() {
            hook(ended);
        }
    }

    /// While balancing, receives the dual's flows (a healed split: the dual gives up the VIP
    /// once this answers). Returns once the dual's snapshot is applied, or an error after
    /// `MERGE_LIMIT`; the session goes on applying the dual's changes until it lets go.
    pub fn merge(&self) -> Result<Merged, String> {
        if !self.is_active() {
            return Err("not balancing: nothing to merge into".into());
        }
        let before = self.status.merges.load(Relaxed);
        self.merging.store(true, Relaxed);
        let until = Instant::now() + MERGE_LIMIT;
        while Instant::now() < until {
            if self.status.merges.load(Relaxed) > before {
                return Ok(*self.status.last_merge.lock());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Not left waiting for a dual that never served: a session under way ends with it.
        self.merging.store(false, Relaxed);
        Err(format!(
            "the dual's snapshot did not arrive within {} ms",
            MERGE_LIMIT.as_millis()
        ))
    }

    /// Becomes a receiver. Returns once the serving session has sent the last changes (or
    /// after `FLUSH_LIMIT`).
    pub fn deactivate(&self) {
        self.overlap.store(false, Relaxed);
        self.merging.store(false, Relaxed);
        if !self.active.swap(false, Relaxed) {
            return;
        }
        let until = Instant::now() + FLUSH_LIMIT;
        while self.sender_busy.load(Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
