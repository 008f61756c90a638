//! The replication figures `--status` and the metrics read, and the takeover-ready rule.
//! Atomics only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

use crate::ctl::status::ReplicationStatus;

use super::{unix_ms, SILENCE};

/// Replication figures for `--status` and the metrics.
#[derive(Debug, Default)]
pub struct Status {
    /// ACTIVE side: the STANDBY being served, once authenticated.
    pub serving: Mutex<Option<SocketAddr>>,
    /// ACTIVE side: that STANDBY has its whole snapshot.
    pub serving_ready: AtomicBool,
    pub records_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub snapshots_sent: AtomicU64,
    /// Keepalive frames among the bytes sent (each a bare header and MAC).
    pub keepalives_sent: AtomicU64,
    /// The change log overflowed (a flood outran the link): the session restarted.
    pub overflows: AtomicU64,
    /// STANDBY side: the ACTIVE it receives from.
    pub receiving: Mutex<Option<SocketAddr>>,
    pub snapshot_complete: AtomicBool,
    /// Unix ms of the last frame received.
    pub last_frame_unix_ms: AtomicU64,
    /// Receive time minus send time of the last batch (ms; the pair's clocks are assumed close,
    /// as for heartbeats).
    pub lag_ms: AtomicU64,
    pub records_applied: AtomicU64,
    pub bytes_received: AtomicU64,
    pub snapshots_received: AtomicU64,
    /// Records naming a service or server this node does not have.
    pub records_unknown: AtomicU64,
    /// Merges (a healed split) whose snapshot was applied, and the last one's figures.
    pub merges: AtomicU64,
    pub merged_flows: AtomicU64,
    pub merge_conflicts: AtomicU64,
    pub last_merge: Mutex<super::Merged>,
    /// Connections and frames refused, by reason.
    pub refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl Status {
    pub(super) fn refuse(&self, reason: &'static str) {
        *self.refused.lock().entry(reason).or_default() += 1;
    }

    /// A STANDBY is ready to take over when it holds the whole snapshot and the stream is
    /// alive.
    pub fn takeover_ready(&self) -> bool {
        self.receiving.lock().is_some()
            && self.snapshot_complete.load(Relaxed)
            && unix_ms().saturating_sub(self.last_frame_unix_ms.load(Relaxed))
                < SILENCE.as_millis() as u64
    }

    /// The figures as the status answer carries them, for the side this node plays.
    pub fn snapshot(&self, active: bool) -> ReplicationStatus {
        let last = self.last_frame_unix_ms.load(Relaxed);
        // Each lock is taken and let go on its own line: a guard held to the end of the
        // struct expression would deadlock against takeover_ready's own lock.
        let standby = self.serving.lock().map(|a| a.to_string());
        let receiving_from = self.receiving.lock().map(|a| a.to_string());
        let takeover_ready = !active && self.takeover_ready();
        let refused = self
            .refused
            .lock()
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        ReplicationStatus {
            role: if active { "sender" } else { "receiver" }.into(),
            standby,
            standby_has_snapshot: self.serving_ready.load(Relaxed),
            receiving_from,
            takeover_ready,
            lag_ms: self.lag_ms.load(Relaxed),
            last_frame_ms_ago: (last > 0).then(|| unix_ms().saturating_sub(last)),
            records_sent: self.records_sent.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            snapshots_sent: self.snapshots_sent.load(Relaxed),
            keepalives_sent: self.keepalives_sent.load(Relaxed),
            overflows: self.overflows.load(Relaxed),
            records_applied: self.records_applied.load(Relaxed),
            records_unknown: self.records_unknown.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            snapshots_received: self.snapshots_received.load(Relaxed),
            merges: self.merges.load(Relaxed),
            merged_flows: self.merged_flows.load(Relaxed),
            merge_conflicts: self.merge_conflicts.load(Relaxed),
            refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_receivers_status_answers_without_blocking_and_says_if_it_is_ready() {
        let status = Arc::new(Status::default());
        *status.receiving.lock() = Some("192.168.100.1:7407".parse().unwrap());
        status.snapshot_complete.store(true, Relaxed);
        status.last_frame_unix_ms.store(unix_ms(), Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        let s = status.clone();
        std::thread::spawn(move || {
            let _ = tx.send(s.snapshot(false));
        });
        let r = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("the status answer must not wait on its own locks");
        assert_eq!(r.receiving_from.as_deref(), Some("192.168.100.1:7407"));
        assert!(r.takeover_ready);
        assert_eq!(r.role, "receiver");
    }
}
