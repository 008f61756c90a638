//! The flow-replication wire format between the pair's two slbd: frames carrying batches of
//! flow-table changes (a flow placed on a server, a flow ended) and persistence entries, each
//! frame authenticated with the pair's key and numbered, so the receiver refuses forged and
//! replayed frames and knows when it missed one. Pure: encoding and checking only.
//!
//! A session runs over one TCP connection from the STANDBY (the receiver) to the ACTIVE:
//!
//! ```text
//! STANDBY → Hello   { nonce_r }                               MAC context: none
//! ACTIVE  → Welcome { nonce_s }                               MAC context: nonce_r
//! STANDBY → Start   {}                                        MAC context: nonce_r ‖ nonce_s
//! ACTIVE  → Snapshot batches…, SnapshotEnd { records }, then Batch…   context: nonce_r ‖ nonce_s
//! ```
//!
//! Both nonces are fresh per connection, so a frame recorded from one session fails the MAC in
//! any other; inside a session every frame carries the next sequence number (from 1), so a
//! replayed, dropped or reordered frame is detected. `Start` proves the receiver holds the key
//! before any flow is sent to it.
//!
//! Frame: `"SLBR" | version u8 | kind u8 | seq u64 | sent_ms u64 | body_len u32 | body | mac[16]`
//! (big endian). The MAC is HMAC-SHA256 over context ‖ header ‖ body, truncated to 16 bytes.

use std::net::{Ipv4Addr, SocketAddrV4};

use slb_common::auth;

use crate::core::net::Protocol;

/// The records are the balancer's (what changed in its flow table); this module encodes them.
pub use crate::core::balancer::Record;

/// The TCP port replication listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7407;

const MAGIC: &[u8; 4] = b"SLBR";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 4 + 1 + 1 + 8 + 8 + 4;
/// The tag is HMAC-SHA256 truncated to its first half (the shortest the framing allows).
pub const MAC_LEN: usize = auth::MIN_TAG_LEN;
/// The largest body a frame may carry; a batch is flushed before it grows past this.
pub const MAX_BODY: usize = 64 * 1024;
pub const NONCE_LEN: usize = 16;

const TAG_FLOW: u8 = 1;
const TAG_END: u8 = 2;
const TAG_PERSIST: u8 = 3;

// The codec of the balancer's records: an inherent impl may live in any module of the crate,
// and the encoding belongs with the frames.
impl Record {
    /// Bytes this record takes in a body.
    pub fn wire_len(&self) -> usize {
        match self {
            Record::Flow { .. } => 17,
            Record::End { .. } => 10,
            Record::Persist { .. } => 18,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let addr = |out: &mut Vec<u8>, a: &SocketAddrV4| {
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        };
        match self {
            Record::Flow {
                protocol,
                client,
                vip_port,
                server,
                established,
            } => {
                out.extend_from_slice(&[TAG_FLOW, *protocol as u8]);
                addr(out, client);
                out.extend_from_slice(&vip_port.to_be_bytes());
                addr(out, server);
                out.push(u8::from(*established));
            }
            Record::End {
                protocol,
                client,
                vip_port,
            } => {
                out.extend_from_slice(&[TAG_END, *protocol as u8]);
                addr(out, client);
                out.extend_from_slice(&vip_port.to_be_bytes());
            }
            Record::Persist {
                protocol,
                client,
                vip_port,
                server,
                ttl_ms,
            } => {
                out.extend_from_slice(&[TAG_PERSIST, *protocol as u8]);
                out.extend_from_slice(&client.octets());
                out.extend_from_slice(&vip_port.to_be_bytes());
                addr(out, server);
                out.extend_from_slice(&ttl_ms.to_be_bytes());
            }
        }
    }
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Welcome = 2,
    Start = 3,
    /// Records of the snapshot a new session starts with.
    Snapshot = 4,
    /// The snapshot is complete; the body is its record count (u64).
    SnapshotEnd = 5,
    /// Records of changes since.
    Batch = 6,
    /// Nothing changed for a while; the session is alive (empty body).
    Keepalive = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Welcome,
            3 => Kind::Start,
            4 => Kind::Snapshot,
            5 => Kind::SnapshotEnd,
            6 => Kind::Batch,
            7 => Kind::Keepalive,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame shorter than its header says")]
    Truncated,
    #[error("not a replication frame (bad magic)")]
    Magic,
    #[error("replication version {0} not supported")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame body of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("authentication failed (forged, or another key)")]
    Mac,
    #[error("sequence {got} where {want} was due (replayed, reordered or missed)")]
    Sequence { got: u64, want: u64 },
    #[error("malformed record at byte {0}")]
    Record(usize),
    #[error("malformed {0:?} body")]
    Body(Kind),
    #[error("{0:?} was not expected now")]
    Unexpected(Kind),
}

/// A checked frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub seq: u64,
    pub sent_ms: u64,
    pub body: Vec<u8>,
}

/// A whole frame, ready to write.
pub fn encode(
    key: &[u8],
    context: &[u8],
    kind: Kind,
    seq: u64,
    sent_ms: u64,
    body: &[u8],
) -> Vec<u8> {
    debug_assert!(body.len() <= MAX_BODY);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + MAC_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&sent_ms.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    let tag = auth::tag(key, &[context, &out, body]);
    out.extend_from_slice(body);
    out.extend_from_slice(&tag[..MAC_LEN]);
    out
}

/// How many more bytes the frame starting `buf` needs after its header (body and MAC), once
/// the header has arrived; checks magic, version and size first so a stream of garbage is
/// refused before anything is buffered.
pub fn remaining_after_header(header: &[u8; HEADER_LEN]) -> Result<usize, WireError> {
    if &header[..4] != MAGIC {
        return Err(WireError::Magic);
    }
    if header[4] != VERSION {
        return Err(WireError::Version(header[4]));
    }
    Kind::from_u8(header[5]).ok_or(WireError::Kind(header[5]))?;
    let len = u32::from_be_bytes(header[22..26].try_into().expect("4 bytes")) as usize;
    if len > MAX_BODY {
        return Err(WireError::TooLong(len));
    }
    Ok(len + MAC_LEN)
}

/// The send time a frame's header carries (0 if there is no header).
pub fn sent_ms(frame: &[u8]) -> u64 {
    frame
        .get(14..22)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// Checks a whole frame (header, body, MAC) under `context`.
pub fn decode(key: &[u8], context: &[u8], frame: &[u8]) -> Result<Frame, WireError> {
    let header: &[u8; HEADER_LEN] = frame
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::Truncated)?;
    let rest = remaining_after_header(header)?;
    if frame.len() < HEADER_LEN + rest {
        return Err(WireError::Truncated);
    }
    if frame.len() > HEADER_LEN + rest {
        return Err(WireError::TooLong(frame.len() - HEADER_LEN - MAC_LEN));
    }
    let body = &frame[HEADER_LEN..frame.len() - MAC_LEN];
    auth::verify(
        key,
        &[context, header, body],
        &frame[frame.len() - MAC_LEN..],
    )
    .map_err(|_| WireError::Mac)?;
    Ok(Frame {
        kind: Kind::from_u8(header[5]).expect("checked"),
        seq: u64::from_be_bytes(header[6..14].try_into().expect("8 bytes")),
        sent_ms: sent_ms(frame),
        body: body.to_vec(),
    })
}

/// The records of a Snapshot or Batch body.
pub fn records(body: &[u8]) -> Result<Vec<Record>, WireError> {
    let mut out = Vec::new();
    let mut at = 0;
    let addr = |b: &[u8]| {
        SocketAddrV4::new(
            Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            u16::from_be_bytes([b[4], b[5]]),
        )
    };
    while at < body.len() {
        let bad = WireError::Record(at);
        let r = &body[at..];
        let protocol = r
            .get(1)
            .and_then(|p| Protocol::from_ip_proto(*p))
            .ok_or(bad.clone())?;
        let record = match r[0] {
            TAG_FLOW if r.len() >= 17 && r[16] <= 1 => Record::Flow {
                protocol,
                client: addr(&r[2..8]),
                vip_port: u16::from_be_bytes([r[8], r[9]]),
                server: addr(&r[10..16]),
                established: r[16] == 1,
            },
            TAG_END if r.len() >= 10 => Record::End {
                protocol,
                client: addr(&r[2..8]),
                vip_port: u16::from_be_bytes([r[8], r[9]]),
            },
            TAG_PERSIST if r.len() >= 18 => Record::Persist {
                protocol,
                client: Ipv4Addr::new(r[2], r[3], r[4], r[5]),
                vip_port: u16::from_be_bytes([r[6], r[7]]),
                server: addr(&r[8..14]),
                ttl_ms: u32::from_be_bytes([r[14], r[15], r[16], r[17]]),
            },
            _ => return Err(bad),
        };
        at += record.wire_len();
        out.push(record);
    }
    Ok(out)
}

/// The receiving side of one session, after the handshake: every frame must carry the next
/// sequence number and a valid MAC under the session's nonces.
#[derive(Debug)]
pub struct Receiver {
    key: Vec<u8>,
    context: Vec<u8>,
    next_seq: u64,
    snapshot_done: bool,
    snapshot_records: u64,
}

/// What a checked frame means to the receiver.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Apply these (snapshot records before the snapshot ends, changes after).
    Records {
        snapshot: bool,
        records: Vec<Record>,
    },
    /// The snapshot is complete: the receiver now holds the sender's whole state.
    SnapshotComplete {
        records: u64,
    },
    Keepalive,
}

impl Receiver {
    /// `nonce_r` is the receiver's (sent in Hello), `nonce_s` the sender's (in Welcome); the
    /// first frame after Start is sequence 1.
    pub fn new(key: &[u8], nonce_r: &[u8; NONCE_LEN], nonce_s: &[u8; NONCE_LEN]) -> Receiver {
        Receiver {
            key: key.to_vec(),
            context: session_context(nonce_r, nonce_s),
            next_seq: 1,
            snapshot_done: false,
            snapshot_records: 0,
        }
    }

    pub fn snapshot_done(&self) -> bool {
        self.snapshot_done
    }

    /// Checks and interprets one whole frame. Any error ends the session (the caller drops
    /// the connection and starts again with a new snapshot).
    pub fn accept(&mut self, frame: &[u8]) -> Result<Received, WireError> {
        let f = decode(&self.key, &self.context, frame)?;
        if f.seq != self.next_seq {
            return Err(WireError::Sequence {
                got: f.seq,
                want: self.next_seq,
            });
        }
        self.next_seq += 1;
        match f.kind {
            Kind::Snapshot if !self.snapshot_done => {
                let records = records(&f.body)?;
                self.snapshot_records += records.len() as u64;
                Ok(Received::Records {
                    snapshot: true,
                    records,
                })
            }
            Kind::SnapshotEnd if !self.snapshot_done => {
                let n = f
                    .body
                    .as_slice()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| WireError::Body(Kind::SnapshotEnd))?;
                if n != self.snapshot_records {
                    return Err(WireError::Body(Kind::SnapshotEnd));
                }
                self.snapshot_done = true;
                Ok(Received::SnapshotComplete { records: n })
            }
            Kind::Batch if self.snapshot_done => Ok(Received::Records {
                snapshot: false,
                records: records(&f.body)?,
            }),
            Kind::Keepalive if f.body.is_empty() => Ok(Received::Keepalive),
            k => Err(WireError::Unexpected(k)),
        }
    }
}

/// The MAC context of a session's frames after the handshake.
pub fn session_context(nonce_r: &[u8; NONCE_LEN], nonce_s: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut c = Vec::with_capacity(2 * NONCE_LEN);
    c.extend_from_slice(nonce_r);
    c.extend_from_slice(nonce_s);
    c
}

/// The STANDBY's opening frame: its fresh nonce, under the key alone (seq 0).
pub fn hello(key: &[u8], nonce_r: &[u8; NONCE_LEN]) -> Vec<u8> {
    encode(key, &[], Kind::Hello, 0, 0, nonce_r)
}

/// The ACTIVE's answer: its own fresh nonce, bound to the STANDBY's (seq 0).
pub fn welcome(key: &[u8], nonce_r: &[u8; NONCE_LEN], nonce_s: &[u8; NONCE_LEN]) -> Vec<u8> {
    encode(key, nonce_r, Kind::Welcome, 0, 0, nonce_s)
}

/// The STANDBY's proof that it holds the key, under both nonces (seq 0).
pub fn start(key: &[u8], nonce_r: &[u8; NONCE_LEN], nonce_s: &[u8; NONCE_LEN]) -> Vec<u8> {
    encode(
        key,
        &session_context(nonce_r, nonce_s),
        Kind::Start,
        0,
        0,
        &[],
    )
}

/// Checks one handshake frame: kind, MAC under `context`, sequence 0; returns the body.
fn handshake(key: &[u8], context: &[u8], want: Kind, frame: &[u8]) -> Result<Vec<u8>, WireError> {
    let f = decode(key, context, frame)?;
    if f.kind != want {
        return Err(WireError::Unexpected(f.kind));
    }
    if f.seq != 0 {
        return Err(WireError::Sequence {
            got: f.seq,
            want: 0,
        });
    }
    Ok(f.body)
}

fn nonce(kind: Kind, body: Vec<u8>) -> Result<[u8; NONCE_LEN], WireError> {
    body.try_into().map_err(|_| WireError::Body(kind))
}

/// The ACTIVE's check of a Hello; returns the STANDBY's nonce. A Hello proves nothing (it
/// may be replayed): the session's key check is the Start that follows.
pub fn check_hello(key: &[u8], frame: &[u8]) -> Result<[u8; NONCE_LEN], WireError> {
    nonce(Kind::Hello, handshake(key, &[], Kind::Hello, frame)?)
}

/// The STANDBY's check of a Welcome to its Hello; returns the ACTIVE's nonce.
pub fn check_welcome(
    key: &[u8],
    nonce_r: &[u8; NONCE_LEN],
    frame: &[u8],
) -> Result<[u8; NONCE_LEN], WireError> {
    nonce(
        Kind::Welcome,
        handshake(key, nonce_r, Kind::Welcome, frame)?,
    )
}

/// The ACTIVE's check of a Start: only a holder of the key can make one for these nonces.
pub fn check_start(
    key: &[u8],
    nonce_r: &[u8; NONCE_LEN],
    nonce_s: &[u8; NONCE_LEN],
    frame: &[u8],
) -> Result<(), WireError> {
    let body = handshake(key, &session_context(nonce_r, nonce_s), Kind::Start, frame)?;
    if body.is_empty() {
        Ok(())
    } else {
        Err(WireError::Body(Kind::Start))
    }
}

/// The sending side of one session: numbers frames and cuts records into bodies of at most
/// [`MAX_BODY`] bytes.
#[derive(Debug)]
pub struct Sender {
    key: Vec<u8>,
    context: Vec<u8>,
    seq: u64,
}

impl Sender {
    pub fn new(key: &[u8], nonce_r: &[u8; NONCE_LEN], nonce_s: &[u8; NONCE_LEN]) -> Sender {
        Sender {
            key: key.to_vec(),
            context: session_context(nonce_r, nonce_s),
            seq: 0,
        }
    }

    pub fn frame(&mut self, kind: Kind, sent_ms: u64, body: &[u8]) -> Vec<u8> {
        self.seq += 1;
        encode(&self.key, &self.context, kind, self.seq, sent_ms, body)
    }

    /// `records` as frames of `kind` (Snapshot or Batch), each body at most `MAX_BODY` bytes.
    pub fn frames(&mut self, kind: Kind, sent_ms: u64, records: &[Record]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut body = Vec::with_capacity(MAX_BODY.min(records.len() * 18));
        for r in records {
            if body.len() + r.wire_len() > MAX_BODY {
                out.push(self.frame(kind, sent_ms, &body));
                body.clear();
            }
            r.encode(&mut body);
        }
        if !body.is_empty() {
            out.push(self.frame(kind, sent_ms, &body));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_replication_fuzz_seeds_are_these_fixtures() {
        let (r, s) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let mut body = Vec::new();
        sample().iter().for_each(|x| x.encode(&mut body));
        let mut sender = Sender::new(KEY, &r, &s);
        let batch = sender.frames(Kind::Snapshot, 1_000, &sample()).remove(0);
        for (name, bytes) in [
            ("hello", hello(KEY, &r)),
            ("welcome", welcome(KEY, &r, &s)),
            ("start", start(KEY, &r, &s)),
            ("first_snapshot_frame", batch),
            ("records", body),
        ] {
            slb_common::fuzz_seed::check("replication", name, &bytes).unwrap();
        }
    }

    const KEY: &[u8] = b"the pair's shared key, 0600";

    fn sample() -> Vec<Record> {
        vec![
            Record::Flow {
                protocol: Protocol::Tcp,
                client: "10.0.0.5:40000".parse().unwrap(),
                vip_port: 80,
                server: "172.16.0.2:8000".parse().unwrap(),
                established: true,
            },
            Record::End {
                protocol: Protocol::Udp,
                client: "10.0.0.6:5353".parse().unwrap(),
                vip_port: 53,
            },
            Record::Persist {
                protocol: Protocol::Tcp,
                client: "10.0.0.5".parse().unwrap(),
                vip_port: 80,
                server: "172.16.0.3:8000".parse().unwrap(),
                ttl_ms: 30_000,
            },
        ]
    }

    fn session() -> (Sender, Receiver) {
        let (r, s) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        (Sender::new(KEY, &r, &s), Receiver::new(KEY, &r, &s))
    }

    #[test]
    fn records_round_trip_with_their_declared_sizes() {
        for r in sample() {
            let mut b = Vec::new();
            r.encode(&mut b);
            assert_eq!(b.len(), r.wire_len());
            assert_eq!(records(&b).unwrap(), vec![r]);
        }
        let mut all = Vec::new();
        sample().iter().for_each(|r| r.encode(&mut all));
        assert_eq!(records(&all).unwrap(), sample());
    }

    #[test]
    fn every_truncated_or_malformed_record_is_refused() {
        let mut all = Vec::new();
        sample().iter().for_each(|r| r.encode(&mut all));
        let boundaries = [17, 27, 45];
        for cut in 1..all.len() {
            let r = records(&all[..cut]);
            if boundaries.contains(&cut) {
                assert!(r.is_ok(), "cut {cut}");
            } else {
                assert!(matches!(r, Err(WireError::Record(_))), "cut {cut}: {r:?}");
            }
        }
        let mut bad = all.clone();
        bad[0] = 9;
        assert_eq!(records(&bad), Err(WireError::Record(0)));
        let mut bad = all.clone();
        bad[1] = 1; // ICMP
        assert_eq!(records(&bad), Err(WireError::Record(0)));
        let mut bad = all;
        bad[16] = 2; // established is a bool
        assert_eq!(records(&bad), Err(WireError::Record(0)));
    }

    #[test]
    fn a_session_delivers_snapshot_then_changes_in_order() {
        let (mut tx, mut rx) = session();
        let snap = tx.frames(Kind::Snapshot, 1, &sample());
        assert_eq!(snap.len(), 1);
        assert_eq!(
            rx.accept(&snap[0]).unwrap(),
            Received::Records {
                snapshot: true,
                records: sample()
            }
        );
        assert!(!rx.snapshot_done());
        let end = tx.frame(Kind::SnapshotEnd, 1, &3u64.to_be_bytes());
        assert_eq!(
            rx.accept(&end).unwrap(),
            Received::SnapshotComplete { records: 3 }
        );
        assert!(rx.snapshot_done());
        let batch = tx.frames(Kind::Batch, 2, &sample()[1..2]);
        assert_eq!(
            rx.accept(&batch[0]).unwrap(),
            Received::Records {
                snapshot: false,
                records: sample()[1..2].to_vec()
            }
        );
        assert_eq!(
            rx.accept(&tx.frame(Kind::Keepalive, 3, &[])).unwrap(),
            Received::Keepalive
        );
    }

    #[test]
    fn replayed_missed_and_reordered_frames_are_refused() {
        let (mut tx, mut rx) = session();
        let a = tx.frame(Kind::Keepalive, 1, &[]);
        let b = tx.frame(Kind::Keepalive, 2, &[]);
        let c = tx.frame(Kind::Keepalive, 3, &[]);
        rx.accept(&a).unwrap();
        assert_eq!(rx.accept(&a), Err(WireError::Sequence { got: 1, want: 2 }));
        assert_eq!(rx.accept(&c), Err(WireError::Sequence { got: 3, want: 2 }));
        rx.accept(&b).unwrap();
    }

    #[test]
    fn a_frame_from_another_session_or_key_or_altered_fails_the_mac() {
        let (mut tx, _) = session();
        let f = tx.frame(Kind::Keepalive, 1, &[]);
        let mut other = Receiver::new(KEY, &[1u8; NONCE_LEN], &[3u8; NONCE_LEN]);
        assert_eq!(other.accept(&f), Err(WireError::Mac));
        let mut wrong_key = Receiver::new(b"another key", &[1u8; NONCE_LEN], &[2u8; NONCE_LEN]);
        assert_eq!(wrong_key.accept(&f), Err(WireError::Mac));
        let (mut tx, mut rx) = session();
        let mut body = Vec::new();
        sample()[0].encode(&mut body);
        rx.accept(&tx.frame(Kind::SnapshotEnd, 1, &0u64.to_be_bytes()))
            .unwrap();
        let mut f = tx.frame(Kind::Batch, 1, &body);
        f[HEADER_LEN + 12] ^= 1; // the server's address
        assert_eq!(rx.accept(&f), Err(WireError::Mac));
    }

    #[test]
    fn frames_out_of_place_are_refused() {
        let (mut tx, mut rx) = session();
        let mut body = Vec::new();
        sample()[0].encode(&mut body);
        // Changes before the snapshot is complete would be applied to a partial table.
        assert_eq!(
            rx.accept(&tx.frame(Kind::Batch, 1, &body)),
            Err(WireError::Unexpected(Kind::Batch))
        );
        let (mut tx, mut rx) = session();
        assert_eq!(
            rx.accept(&tx.frame(Kind::SnapshotEnd, 1, &5u64.to_be_bytes())),
            Err(WireError::Body(Kind::SnapshotEnd)),
            "a snapshot that claims records it did not send"
        );
        let (mut tx, mut rx) = session();
        assert_eq!(
            rx.accept(&tx.frame(Kind::Hello, 1, &[])),
            Err(WireError::Unexpected(Kind::Hello))
        );
    }

    #[test]
    fn garbage_headers_are_refused_before_buffering() {
        assert_eq!(decode(KEY, &[], b"SLBR"), Err(WireError::Truncated));
        let mut h = [0u8; HEADER_LEN];
        assert_eq!(remaining_after_header(&h), Err(WireError::Magic));
        h[..4].copy_from_slice(MAGIC);
        h[4] = 9;
        assert_eq!(remaining_after_header(&h), Err(WireError::Version(9)));
        h[4] = VERSION;
        h[5] = 77;
        assert_eq!(remaining_after_header(&h), Err(WireError::Kind(77)));
        h[5] = Kind::Batch as u8;
        h[22..26].copy_from_slice(&(MAX_BODY as u32 + 1).to_be_bytes());
        assert_eq!(
            remaining_after_header(&h),
            Err(WireError::TooLong(MAX_BODY + 1))
        );
        h[22..26].copy_from_slice(&10u32.to_be_bytes());
        assert_eq!(remaining_after_header(&h), Ok(10 + MAC_LEN));
    }

    #[test]
    fn the_handshake_binds_both_nonces_and_needs_the_key() {
        let (r, s) = ([7u8; NONCE_LEN], [9u8; NONCE_LEN]);
        let h = hello(KEY, &r);
        assert_eq!(check_hello(KEY, &h), Ok(r));
        assert_eq!(
            check_hello(b"another key, 16+ bytes", &h),
            Err(WireError::Mac)
        );
        let w = welcome(KEY, &r, &s);
        assert_eq!(check_welcome(KEY, &r, &w), Ok(s));
        // A Welcome made for another Hello's nonce is refused.
        assert_eq!(
            check_welcome(KEY, &[8u8; NONCE_LEN], &w),
            Err(WireError::Mac)
        );
        let st = start(KEY, &r, &s);
        assert_eq!(check_start(KEY, &r, &s, &st), Ok(()));
        // A Start replayed from an earlier session (other ACTIVE nonce) fails.
        assert_eq!(
            check_start(KEY, &r, &[1u8; NONCE_LEN], &st),
            Err(WireError::Mac)
        );
        // Without the key, no Start: one made under another key fails.
        let forged = start(b"an attacker's guess at the key", &r, &s);
        assert_eq!(check_start(KEY, &r, &s, &forged), Err(WireError::Mac));
        // Frames of one step are not accepted as another.
        assert_eq!(check_hello(KEY, &w), Err(WireError::Mac));
        let ctx = session_context(&r, &s);
        let wrong_kind = encode(KEY, &ctx, Kind::Batch, 0, 0, &[]);
        assert_eq!(
            check_start(KEY, &r, &s, &wrong_kind),
            Err(WireError::Unexpected(Kind::Batch))
        );
        let wrong_seq = encode(KEY, &ctx, Kind::Start, 3, 0, &[]);
        assert_eq!(
            check_start(KEY, &r, &s, &wrong_seq),
            Err(WireError::Sequence { got: 3, want: 0 })
        );
        let short = encode(KEY, &[], Kind::Hello, 0, 0, &[1, 2, 3]);
        assert_eq!(check_hello(KEY, &short), Err(WireError::Body(Kind::Hello)));
    }

    #[test]
    fn large_record_sets_are_cut_into_bounded_frames() {
        let (mut tx, mut rx) = session();
        let many: Vec<Record> = (0..10_000u32)
            .map(|i| Record::Flow {
                protocol: Protocol::Tcp,
                client: SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 + i), 1024),
                vip_port: 80,
                server: "172.16.0.2:8000".parse().unwrap(),
                established: false,
            })
            .collect();
        let frames = tx.frames(Kind::Snapshot, 1, &many);
        assert_eq!(frames.len(), 10_000usize.div_ceil(MAX_BODY / 17));
        let mut got = Vec::new();
        for f in &frames {
            assert!(f.len() <= HEADER_LEN + MAX_BODY + MAC_LEN);
            match rx.accept(f).unwrap() {
                Received::Records { records, .. } => got.extend(records),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, many);
        // 17 bytes a flow plus 42 bytes of framing per frame: about 17.1 bytes a flow on the wire.
        let wire: usize = frames.iter().map(Vec::len).sum();
        assert!(wire < 10_000 * 18, "{wire}");
    }

    fn record() -> impl Strategy<Value = Record> {
        let protocol = || prop::sample::select(vec![Protocol::Tcp, Protocol::Udp]);
        let addr = || {
            (any::<u32>(), any::<u16>()).prop_map(|(ip, port)| SocketAddrV4::new(ip.into(), port))
        };
        prop_oneof![
            (protocol(), addr(), any::<u16>(), addr(), any::<bool>()).prop_map(
                |(protocol, client, vip_port, server, established)| Record::Flow {
                    protocol,
                    client,
                    vip_port,
                    server,
                    established,
                }
            ),
            (protocol(), addr(), any::<u16>()).prop_map(|(protocol, client, vip_port)| {
                Record::End {
                    protocol,
                    client,
                    vip_port,
                }
            }),
            (protocol(), any::<u32>(), any::<u16>(), addr(), any::<u32>()).prop_map(
                |(protocol, client, vip_port, server, ttl_ms)| Record::Persist {
                    protocol,
                    client: client.into(),
                    vip_port,
                    server,
                    ttl_ms,
                }
            ),
        ]
    }

    /// A whole session's frames after the handshake: the snapshot, its end, then batches and
    /// keepalives.
    fn session_frames(
        tx: &mut Sender,
        snapshot: &[Record],
        batches: &[Vec<Record>],
    ) -> Vec<Vec<u8>> {
        let mut frames = tx.frames(Kind::Snapshot, 1, snapshot);
        frames.push(tx.frame(Kind::SnapshotEnd, 1, &(snapshot.len() as u64).to_be_bytes()));
        for (i, b) in batches.iter().enumerate() {
            frames.extend(tx.frames(Kind::Batch, 2 + i as u64, b));
            frames.push(tx.frame(Kind::Keepalive, 2 + i as u64, &[]));
        }
        frames
    }

    /// A refusal that a damaged frame may get: its MAC, or a header check before it.
    fn refused_as_damaged(r: &Result<Received, WireError>) -> bool {
        matches!(
            r,
            Err(WireError::Mac
                | WireError::Magic
                | WireError::Version(_)
                | WireError::Kind(_)
                | WireError::Truncated
                | WireError::TooLong(_))
        )
    }

    /// A delivery of a session's frames that goes wrong: some dropped, repeated or swapped
    /// with the next.
    #[derive(Debug, Clone, Copy)]
    enum Fault {
        Drop,
        Replay,
        Swap,
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// Any snapshot (a few records, or two or three frames' worth) and any batches arrive
        /// whole and in order, in bodies of at most MAX_BODY bytes.
        #[test]
        fn any_records_survive_a_session_in_order(
            snapshot in prop_oneof![
                prop::collection::vec(record(), 0..3),
                prop::collection::vec(record(), 0..50),
                prop::collection::vec(record(), 3_500..7_500),
            ],
            batches in prop::collection::vec(
                prop_oneof![
                    prop::collection::vec(record(), 0..3),
                    prop::collection::vec(record(), 0..300),
                ],
                0..4,
            ),
        ) {
            let (mut tx, mut rx) = session();
            let frames = session_frames(&mut tx, &snapshot, &batches);
            let (mut got_snapshot, mut got_batches) = (Vec::new(), Vec::new());
            for (i, f) in frames.iter().enumerate() {
                let body = f.len() - HEADER_LEN - MAC_LEN;
                prop_assert!(body <= MAX_BODY, "frame {} has a body of {} bytes", i, body);
                match rx.accept(f) {
                    Ok(Received::Records { snapshot: true, records }) => {
                        prop_assert!(!records.is_empty(), "frame {} carries no record", i);
                        got_snapshot.extend(records);
                    }
                    Ok(Received::SnapshotComplete { records }) => {
                        prop_assert_eq!(records, snapshot.len() as u64, "the snapshot's count");
                        prop_assert_eq!(&got_snapshot, &snapshot, "the snapshot's records");
                    }
                    Ok(Received::Records { snapshot: false, records }) => {
                        prop_assert!(!records.is_empty(), "frame {} carries no record", i);
                        got_batches.extend(records);
                    }
                    Ok(Received::Keepalive) => {}
                    Err(e) => prop_assert!(false, "frame {} of {} refused: {}", i, frames.len(), e),
                }
            }
            prop_assert!(rx.snapshot_done());
            prop_assert_eq!(got_snapshot, snapshot, "the snapshot's records");
            prop_assert_eq!(got_batches, batches.concat(), "the changes after it");
        }
    }

    proptest! {
        /// Any single bit flipped anywhere in any frame of a session is refused, and the
        /// refusal changes nothing: the genuine frames that follow are received as by a
        /// receiver that never saw the damaged ones.
        #[test]
        fn a_frame_with_any_bit_flipped_is_refused_and_changes_nothing(
            snapshot in prop::collection::vec(record(), 0..20),
            batches in prop::collection::vec(prop::collection::vec(record(), 0..10), 0..3),
            at in any::<prop::sample::Index>(),
            bits in prop::collection::vec(any::<prop::sample::Index>(), 1..64),
        ) {
            let (mut tx, mut rx) = session();
            let (_, mut twin) = session();
            let frames = session_frames(&mut tx, &snapshot, &batches);
            let at = at.index(frames.len());
            for (i, f) in frames.iter().enumerate() {
                if i == at {
                    for bit in &bits {
                        let bit = bit.index(f.len() * 8);
                        let mut bad = f.clone();
                        bad[bit / 8] ^= 1 << (bit % 8);
                        let r = rx.accept(&bad);
                        prop_assert!(refused_as_damaged(&r), "bit {} of frame {} flipped: {:?}", bit, i, r);
                    }
                }
                prop_assert_eq!(rx.accept(f), twin.accept(f), "frame {}", i);
            }
        }

        /// Frames dropped, replayed or swapped are refused with Sequence (naming the number
        /// due), and a refused frame does not move the receiver on: the frame that was due is
        /// still taken.
        #[test]
        fn frames_replayed_dropped_or_reordered_are_refused_with_sequence(
            batches in prop::collection::vec(prop::collection::vec(record(), 0..4), 1..6),
            faults in prop::collection::vec(
                (any::<prop::sample::Index>(), prop::sample::select(vec![Fault::Drop, Fault::Replay, Fault::Swap])),
                1..4,
            ),
        ) {
            let (mut tx, mut rx) = session();
            let frames = session_frames(&mut tx, &[], &batches);
            // Frame i carries sequence i + 1.
            let mut delivered: Vec<usize> = (0..frames.len()).collect();
            for (at, fault) in &faults {
                if delivered.is_empty() {
                    break;
                }
                let at = at.index(delivered.len());
                match fault {
                    Fault::Drop => {
                        delivered.remove(at);
                    }
                    Fault::Replay => delivered.insert(at + 1, delivered[at]),
                    Fault::Swap if at + 1 < delivered.len() => delivered.swap(at, at + 1),
                    Fault::Swap => {}
                }
            }
            let mut due = 0;
            for &d in &delivered {
                let r = rx.accept(&frames[d]);
                if d == due {
                    prop_assert!(r.is_ok(), "frame {} in order: {:?} (delivered {:?})", d, r, delivered);
                    due += 1;
                } else {
                    prop_assert_eq!(
                        r,
                        Err(WireError::Sequence { got: d as u64 + 1, want: due as u64 + 1 }),
                        "frame {} when {} was due (delivered {:?})", d, due, delivered
                    );
                }
            }
        }

        /// Random bytes, and bytes that look like frames and records, never panic the codec.
        #[test]
        fn random_bytes_never_panic_the_decoders(
            raw in prop::collection::vec(any::<u8>(), 0..200),
            header in any::<[u8; HEADER_LEN]>(),
            kind in 0u8..9,
            seq in 0u64..4,
            body in prop::collection::vec(any::<u8>(), 0..100),
            len_off in -2i64..3,
            whole in prop::collection::vec(record(), 0..6),
            tail in record(),
            junk in prop::collection::vec(any::<u8>(), 0..20),
        ) {
            let ctx = session_context(&[1u8; NONCE_LEN], &[2u8; NONCE_LEN]);
            let _ = decode(KEY, &ctx, &raw);
            let _ = records(&raw);
            let _ = remaining_after_header(&header);
            let _ = sent_ms(&raw);
            // A header that passes its checks, a body, a length field a little off, a MAC of
            // random bytes.
            let mut frame = Vec::new();
            frame.extend_from_slice(MAGIC);
            frame.extend_from_slice(&[VERSION, kind]);
            frame.extend_from_slice(&seq.to_be_bytes());
            frame.extend_from_slice(&header[..8]);
            frame.extend_from_slice(&((body.len() as i64 + len_off).max(0) as u32).to_be_bytes());
            frame.extend_from_slice(&body);
            frame.extend_from_slice(&raw[..raw.len().min(MAC_LEN)]);
            let _ = decode(KEY, &ctx, &frame);
            // Whole records, then the next one cut at every length or followed by junk: the
            // parser reaches every bounds check.
            let mut valid = Vec::new();
            whole.iter().for_each(|r| r.encode(&mut valid));
            let mut last = Vec::new();
            tail.encode(&mut last);
            for cut in 0..=last.len() {
                let mut b = valid.clone();
                b.extend_from_slice(&last[..cut]);
                let _ = records(&b);
                b.extend_from_slice(&junk);
                let _ = records(&b);
            }
            // The same bodies under authentic MACs, through a receiver before and after its
            // snapshot.
            let mut rbody = valid;
            rbody.extend_from_slice(&junk);
            for snapshot_done in [false, true] {
                let (mut tx, mut rx) = session();
                if snapshot_done {
                    rx.accept(&tx.frame(Kind::SnapshotEnd, 0, &0u64.to_be_bytes())).unwrap();
                }
                let k = Kind::from_u8(kind).unwrap_or(Kind::Batch);
                let _ = rx.accept(&tx.frame(k, 0, &rbody));
                let _ = rx.accept(&tx.frame(Kind::Batch, 0, &body));
            }
        }
    }
}
