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
//! Side effects: TCP listeners (the common bounded accept loop) and connections on the links'
//! addresses, threads.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use slb_common::serve::{self, Check, Policy, Refusal};

use crate::core::balancer::Dataplane;
use crate::ctl::status::ReplicationStatus;
use crate::wire::replication::{
    self as wire, Kind, Received, Receiver, Record, Sender, WireError, NONCE_LEN,
};

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

/// Where replication runs: the pair's key and links (this node's address and its dual's).
#[derive(Debug, Clone)]
pub struct Settings {
    pub key: Vec<u8>,
    pub port: u16,
    pub links: Vec<(Ipv4Addr, Ipv4Addr)>,
}

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
    /// Connections and frames refused, by reason.
    pub refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl Status {
    fn refuse(&self, reason: &'static str) {
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
            refused,
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn nonce() -> io::Result<[u8; NONCE_LEN]> {
    slb_common::auth::nonce()
}

/// Why a wire error ended a session, as a metric label.
fn reason(e: &WireError) -> &'static str {
    match e {
        WireError::Mac => "mac",
        WireError::Sequence { .. } => "sequence",
        WireError::Unexpected(_) => "unexpected",
        WireError::Magic | WireError::Version(_) | WireError::Kind(_) | WireError::Truncated => {
            "garbage"
        }
        WireError::TooLong(_) => "too_long",
        WireError::Record(_) | WireError::Body(_) => "malformed",
    }
}

/// Whole frames from a stream read with a short timeout: bytes are kept across timeouts, and
/// a bad header is refused before its body is waited for.
#[derive(Default)]
struct FrameReader {
    buf: Vec<u8>,
}

enum Polled {
    Frame(Vec<u8>),
    /// Nothing complete within one poll.
    Idle,
    Closed,
}

impl FrameReader {
    fn next(&mut self, stream: &mut TcpStream) -> Result<Polled, SessionEnd> {
        loop {
            if let Some(len) = self.complete()? {
                return Ok(Polled::Frame(self.buf.drain(..len).collect()));
            }
            let mut chunk = [0u8; 16 * 1024];
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(Polled::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Polled::Idle)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SessionEnd::Io(e)),
            }
        }
    }

    /// The length of the whole frame at the front of the buffer, once it has all arrived.
    fn complete(&self) -> Result<Option<usize>, SessionEnd> {
        let Some(header) = self.buf.get(..wire::HEADER_LEN) else {
            return Ok(None);
        };
        let header: &[u8; wire::HEADER_LEN] = header.try_into().expect("header length");
        let len = wire::HEADER_LEN + wire::remaining_after_header(header)?;
        Ok((self.buf.len() >= len).then_some(len))
    }
}

/// How a session ended.
#[derive(Debug)]
enum SessionEnd {
    Io(io::Error),
    Wire(WireError),
    /// The other side stopped answering.
    Silent,
    Closed,
    /// This node's role changed, or a newer session replaced this one.
    Superseded,
    Overflow,
    /// The dual closed the connection before the handshake: it is not ACTIVE (yet).
    NotServing,
}

impl From<WireError> for SessionEnd {
    fn from(e: WireError) -> SessionEnd {
        SessionEnd::Wire(e)
    }
}

impl From<io::Error> for SessionEnd {
    fn from(e: io::Error) -> SessionEnd {
        SessionEnd::Io(e)
    }
}

/// Reads one whole frame within `limit` (the handshake).
fn read_frame(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    limit: Duration,
) -> Result<Vec<u8>, SessionEnd> {
    let until = Instant::now() + limit;
    loop {
        match reader.next(stream)? {
            Polled::Frame(f) => return Ok(f),
            Polled::Closed => return Err(SessionEnd::Closed),
            Polled::Idle if Instant::now() >= until => return Err(SessionEnd::Silent),
            Polled::Idle => {}
        }
    }
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
    receiver_busy: AtomicBool,
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
            receiver_busy: AtomicBool::new(false),
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
    /// gave up after `DRAIN_LIMIT`): the caller brings the VIP up after this.
    pub fn activate(&self) {
        if self.active.load(Relaxed) {
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

    /// Becomes a receiver. Returns once the serving session has sent the last changes (or
    /// after `FLUSH_LIMIT`).
    pub fn deactivate(&self) {
        if !self.active.swap(false, Relaxed) {
            return;
        }
        let until = Instant::now() + FLUSH_LIMIT;
        while self.sender_busy.load(Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Serves the replication port on `local` through the common bounded accept loop: only
    /// the dual's addresses get past the accept (others are counted as `unknown_peer`), only
    /// while this node is ACTIVE (the dual will find it once roles settle), and at most
    /// [`CAP_PAIR`](serve::CAP_PAIR) at once on this address (beyond: counted as `cap`).
    fn listen(self: &Arc<Self>, local: Ipv4Addr) -> io::Result<()> {
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

    fn receive_loop(self: Arc<Self>) {
        let mut next = 0usize;
        loop {
            if self.is_active() {
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
            let _applying = self.applying.lock();
            if self.is_active() {
                return Err(SessionEnd::Superseded);
            }
            if !cleared && !matches!(received, Received::Keepalive) {
                // This session's snapshot replaces whatever this node held.
                self.dp.clear_replica();
                cleared = true;
            }
            match received {
                Received::Records { snapshot, records } => {
                    let done = self.dp.apply_replica(&records, self.now_ms());
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
                Received::SnapshotComplete { records } => {
                    self.status.snapshot_complete.store(true, Relaxed);
                    self.status.snapshots_received.fetch_add(1, Relaxed);
                    tracing::info!(active = %peer, records, flows = self.dp.flow_count(), "replication: snapshot complete, takeover-ready");
                }
                Received::Keepalive => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
