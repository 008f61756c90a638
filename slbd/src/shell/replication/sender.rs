//! SHELL: the ACTIVE's side: the replication port (the common bounded accept loop, the dual's
//! addresses only), the handshake, the snapshot, then the change log every ~10 ms.
//! Side effects: a TCP listener per link, a thread per admitted connection.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slb_common::serve::{self, Check, Policy, Refusal};

use crate::wire::replication::{self as wire, Kind, Record, Sender, NONCE_LEN};

use super::stream::{read_frame, reason, FrameReader, SessionEnd};
use super::*;

impl Replication {
    /// Serves the replication port on `local` through the common bounded accept loop: only
    /// the dual's addresses get past the accept (others are counted as `unknown_peer`), only
    /// while this node is ACTIVE (the dual will find it once roles settle), and at most
    /// [`CAP_PAIR`](serve::CAP_PAIR) at once on this address (beyond: counted as `cap`).
    pub(super) fn listen(self: &Arc<Self>, local: Ipv4Addr) -> io::Result<()> {
        let addr = SocketAddrV4::new(local, self.settings.port);
        let dual: Vec<IpAddr> = self
            .settings
            .links
            .iter()
            .map(|(_, p)| (*p).into())
            .collect();
        let allowed = serve::only_from(dual);
        let (me, counts) = (self.clone(), self.clone());
        let policy = Policy::new("repl", serve::CAP_PAIR)
            .conn_thread("repl-send")
            .check(move |peer| match allowed(peer) {
                Check::Pass if !me.is_active() => Check::Decline,
                other => other,
            })
            .on_refuse(move |why| {
                counts.status.refuse(match why {
                    Refusal::Address => "unknown_peer",
                    Refusal::Cap => "cap",
                })
            });
        let me = self.clone();
        serve::start_tcp(addr.into(), policy, move |stream, peer| {
            me.serve(stream, peer)
        })?;
        Ok(())
    }

    fn serve(&self, mut stream: TcpStream, peer: SocketAddr) {
        let result = self.serve_session(&mut stream, peer);
        let _ = stream.shutdown(std::net::Shutdown::Both);
        match result {
            Ok(()) | Err(SessionEnd::Superseded) => {
                tracing::info!(standby = %peer, "replication session to the standby ended")
            }
            Err(SessionEnd::Wire(e)) => {
                self.status.refuse(reason(&e));
                tracing::warn!(standby = %peer, error = %e, "replication session refused");
            }
            Err(e) => tracing::warn!(standby = %peer, reason = ?e, "replication session ended"),
        }
    }

    fn serve_session(&self, stream: &mut TcpStream, peer: SocketAddr) -> Result<(), SessionEnd> {
        let key = &self.settings.key;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(POLL))?;
        stream.set_write_timeout(Some(SILENCE))?;
        let mut reader = FrameReader::default();
        let nonce_r = wire::check_hello(key, &read_frame(stream, &mut reader, HANDSHAKE_TIMEOUT)?)?;
        let nonce_s = nonce()?;
        stream.write_all(&wire::welcome(key, &nonce_r, &nonce_s))?;
        wire::check_start(
            key,
            &nonce_r,
            &nonce_s,
            &read_frame(stream, &mut reader, HANDSHAKE_TIMEOUT)?,
        )?;
        // Authenticated: this session replaces any older one.
        let me = self.serving_session.fetch_add(1, Relaxed) + 1;
        while self.sender_busy.swap(true, Relaxed) {
            if self.serving_session.load(Relaxed) != me {
                return Err(SessionEnd::Superseded);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let result = self.stream_changes(stream, peer, me, &nonce_r, &nonce_s);
        self.dp.stop_change_log();
        *self.status.serving.lock() = None;
        self.status.serving_ready.store(false, Relaxed);
        self.sender_busy.store(false, Relaxed);
        result
    }

    fn stream_changes(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        me: u64,
        nonce_r: &[u8; NONCE_LEN],
        nonce_s: &[u8; NONCE_LEN],
    ) -> Result<(), SessionEnd> {
        let mut tx = Sender::new(&self.settings.key, nonce_r, nonce_s);
        let mut send = |tx: &mut Sender, kind: Kind, records: &[Record]| -> io::Result<()> {
            let frames = match kind {
                Kind::Snapshot | Kind::Batch => tx.frames(kind, unix_ms(), records),
                Kind::SnapshotEnd => {
                    vec![tx.frame(kind, unix_ms(), &(records.len() as u64).to_be_bytes())]
                }
                _ => vec![tx.frame(kind, unix_ms(), &[])],
            };
            for f in &frames {
                stream.write_all(f)?;
                self.status.bytes_sent.fetch_add(f.len() as u64, Relaxed);
            }
            if kind == Kind::Batch {
                self.status
                    .records_sent
                    .fetch_add(records.len() as u64, Relaxed);
            }
            Ok(())
        };
        // The log first, then the snapshot: a change in both is applied twice (harmless), a
        // change in neither cannot happen.
        self.dp.start_change_log();
        let snapshot = self.dp.replica_snapshot(self.now_ms());
        send(&mut tx, Kind::Snapshot, &snapshot)?;
        send(&mut tx, Kind::SnapshotEnd, &snapshot)?;
        self.status.snapshots_sent.fetch_add(1, Relaxed);
        self.status
            .records_sent
            .fetch_add(snapshot.len() as u64, Relaxed);
        *self.status.serving.lock() = Some(peer);
        self.status.serving_ready.store(true, Relaxed);
        tracing::info!(standby = %peer, flows = self.dp.flow_count(), records = snapshot.len(), "replication: snapshot sent, streaming changes");
        drop(snapshot);

        let mut changes = Vec::new();
        let mut last_sent = Instant::now();
        loop {
            std::thread::sleep(BATCH_EVERY);
            let releasing = !self.is_active();
            if self.serving_session.load(Relaxed) != me {
                return Err(SessionEnd::Superseded);
            }
            let taken = self.dp.take_changes(&mut changes);
            if taken.is_err() {
                self.status.overflows.fetch_add(1, Relaxed);
                tracing::warn!(standby = %peer, "replication fell behind (change log full): the standby gets a new snapshot");
                return Err(SessionEnd::Overflow);
            }
            if !changes.is_empty() {
                send(&mut tx, Kind::Batch, &changes)?;
                changes.clear();
                last_sent = Instant::now();
            } else if last_sent.elapsed() >= KEEPALIVE_EVERY {
                send(&mut tx, Kind::Keepalive, &[])?;
                self.status.keepalives_sent.fetch_add(1, Relaxed);
                last_sent = Instant::now();
            }
            if releasing {
                // The last changes are out: the dual may take over with them.
                return Ok(());
            }
        }
    }
}
