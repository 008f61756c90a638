//! SHELL: the STANDBY's side: connect to the dual over each link in turn, prove the key,
//! apply the snapshot and the changes. At a merge (a healed split) the balancing winner does
//! the same with its own flows winning. Side effects: a TCP connection at a time, a thread.

use std::io::{self, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::wire::replication::{self as wire, Received, Receiver};

use super::stream::{read_frame, reason, FrameReader, Polled, SessionEnd};
use super::*;

impl Replication {
    pub(super) fn receive_loop(self: Arc<Self>) {
        let mut next = 0usize;
        loop {
            if self.is_active() && !self.merging.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let links = &self.settings.links;
            let peer = SocketAddrV4::new(links[next % links.len()].1, self.settings.port);
            next += 1;
            if let Ok(mut stream) = TcpStream::connect_timeout(&peer.into(), CONNECT_TIMEOUT) {
                self.receiver_busy.store(true, Relaxed);
                let result = self.receive_session(&mut stream, peer);
                self.receiver_busy.store(false, Relaxed);
                if self.overlap.swap(false, Relaxed) {
                    tracing::info!(active = %peer, flows = self.dp.flow_count(), "replication: the dual let go; its last changes are applied");
                }
                if self.merging.swap(false, Relaxed) {
                    tracing::info!(dual = %peer, flows = self.dp.flow_count(), "replication: merge ended, the dual let go");
                    self.merged(true);
                }
                *self.status.receiving.lock() = None;
                let worked = self.status.snapshot_complete.swap(false, Relaxed);
                match result {
                    Ok(()) | Err(SessionEnd::Superseded | SessionEnd::NotServing) => {}
                    Err(SessionEnd::Wire(e)) => {
                        self.status.refuse(reason(&e));
                        tracing::warn!(active = %peer, error = %e, "replication frame refused: session dropped, a new one will resynchronise");
                    }
                    Err(SessionEnd::Closed) => {
                        tracing::info!(active = %peer, "replication session closed by the dual")
                    }
                    Err(e) => {
                        tracing::warn!(active = %peer, reason = ?e, "replication session ended")
                    }
                }
                if worked {
                    // A link that carried a whole snapshot is tried first again.
                    next -= 1;
                }
            }
            std::thread::sleep(RETRY_EVERY);
        }
    }

    fn receive_session(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddrV4,
    ) -> Result<(), SessionEnd> {
        let key = &self.settings.key;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(POLL))?;
        stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let mut reader = FrameReader::default();
        let nonce_r = nonce()?;
        stream.write_all(&wire::hello(key, &nonce_r))?;
        let welcome = match read_frame(stream, &mut reader, HANDSHAKE_TIMEOUT) {
            Err(SessionEnd::Closed) => return Err(SessionEnd::NotServing),
            Err(SessionEnd::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(SessionEnd::NotServing)
            }
            other => other?,
        };
        let nonce_s = wire::check_welcome(key, &nonce_r, &welcome)?;
        stream.write_all(&wire::start(key, &nonce_r, &nonce_s))?;
        let mut rx = Receiver::new(key, &nonce_r, &nonce_s);
        *self.status.receiving.lock() = Some(peer.into());
        let mut heard = Instant::now();
        let mut cleared = false;
        // A merge: this node balances and its own flows win (see Dataplane::merge_replica).
        let merge = self.is_active();
        let mut conflicted = std::collections::HashSet::new();
        let mut merged = Merged::default();
        loop {
            let frame = match reader.next(stream)? {
                Polled::Frame(f) => f,
                Polled::Closed => return Err(SessionEnd::Closed),
                Polled::Idle if self.draining.load(Relaxed) => return Err(SessionEnd::Superseded),
                Polled::Idle if heard.elapsed() >= SILENCE => return Err(SessionEnd::Silent),
                Polled::Idle => continue,
            };
            heard = Instant::now();
            let received = rx.accept(&frame)?;
            let now_unix = unix_ms();
            self.status.last_frame_unix_ms.store(now_unix, Relaxed);
            self.status
                .bytes_received
                .fetch_add(frame.len() as u64, Relaxed);
            let applying = self.applying.lock();
            if self.is_active() && !self.overlap.load(Relaxed) && !self.merging.load(Relaxed) {
                return Err(SessionEnd::Superseded);
            }
            if !merge && !cleared && !matches!(received, Received::Keepalive) {
                // This session's snapshot replaces whatever this node held.
                self.dp.clear_replica();
                cleared = true;
            }
            let (mut took, mut completed) = (false, false);
            match received {
                Received::Records { snapshot, records } => {
                    took = merge;
                    let done = if merge {
                        let done = self
                            .dp
                            .merge_replica(&records, self.now_ms(), &mut conflicted);
                        merged.flows += done.flows;
                        merged.conflicts += done.conflicts;
                        merged.unknown += done.unknown;
                        self.status.merged_flows.fetch_add(done.flows, Relaxed);
                        self.status
                            .merge_conflicts
                            .fetch_add(done.conflicts, Relaxed);
                        done
                    } else {
                        self.dp.apply_replica(&records, self.now_ms())
                    };
                    self.status
                        .records_applied
                        .fetch_add(records.len() as u64, Relaxed);
                    self.status.records_unknown.fetch_add(done.unknown, Relaxed);
                    if !snapshot {
                        let sent = wire::sent_ms(&frame);
                        self.status
                            .lag_ms
                            .store(now_unix.saturating_sub(sent), Relaxed);
                    }
                }
                Received::SnapshotComplete { records } if merge => {
                    completed = true;
                    tracing::info!(dual = %peer, records, flows = merged.flows, conflicts = merged.conflicts, unknown = merged.unknown, "replication: the dual's snapshot merged");
                }
                Received::SnapshotComplete { records } => {
                    self.status.snapshot_complete.store(true, Relaxed);
                    self.status.snapshots_received.fetch_add(1, Relaxed);
                    tracing::info!(active = %peer, records, flows = self.dp.flow_count(), "replication: snapshot complete, takeover-ready");
                }
                Received::Keepalive => {}
            }
            // The daemon's part (conntrack, the addresses) runs outside the apply lock, which
            // a takeover takes under the daemon's own.
            drop(applying);
            if took {
                self.merged(false);
            }
            if completed {
                // Only now does the merge answer: what it took is in force here.
                *self.status.last_merge.lock() = merged;
                self.status.merges.fetch_add(1, Relaxed);
            }
        }
    }
}
