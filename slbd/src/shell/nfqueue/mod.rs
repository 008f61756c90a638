//! SHELL: one worker per NFQUEUE. Each reads a batch of packets, hands each to the
//! [`Dataplane`], and sends the batch's verdicts (with the rewritten packets) back at once.
//! Side effects: binds NFQUEUE numbers; reads and reinjects packets.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

pub mod socket;

use crate::config::QueueConfig;
use crate::core::balancer::{Dataplane, Direction, Verdict};
use crate::core::packet::ChecksumState;
use crate::core::ruleset::{REFUSE_MARK, UNTRACKED_MARK};
use crate::wire::nfqueue::{self as wire, Packet};
use socket::{Out, QueueSocket, RecvBatch, Setup, Verdicts};

/// Netfilter hook numbers (`enum nf_inet_hooks`) that slbd's rules queue from.
const NF_INET_PRE_ROUTING: u8 = 0;
const NF_INET_POST_ROUTING: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot bind NFQUEUE {num} (is another slbd, or another queue reader, running?)")]
    Bind {
        num: u16,
        #[source]
        source: io::Error,
    },
    #[error("cannot configure NFQUEUE {num}")]
    Configure {
        num: u16,
        #[source]
        source: io::Error,
    },
}

/// Queue-level counters shared by the workers.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Packets queued by a hook slbd's rules do not use (another table queueing to our
    /// numbers); passed on unchanged.
    pub foreign: AtomicU64,
    pub recv_errors: AtomicU64,
    pub verdict_errors: AtomicU64,
    /// ENOBUFS: the socket's receive buffer overflowed and the kernel dropped packets.
    pub overruns: AtomicU64,
    /// Packet messages too malformed to answer (the kernel times nothing out: such a packet
    /// stays queued until the queue is unbound), and packets dropped because their payload
    /// was longer than a verdict can carry back.
    pub bad_messages: AtomicU64,
    pub packets: AtomicU64,
    pub batches: AtomicU64,
}

/// Opens, binds and configures queue `num`.
pub fn open(num: u16, cfg: &QueueConfig) -> Result<QueueSocket, QueueError> {
    let setup = Setup {
        max_len: cfg.max_len,
        gso: cfg.gso,
        rcvbuf: cfg.rcvbuf,
    };
    QueueSocket::open(num, setup).map_err(|source| match source.raw_os_error() {
        // The kernel answers EPERM when another socket holds the queue.
        Some(libc::EPERM | libc::EBUSY) => QueueError::Bind { num, source },
        _ => QueueError::Configure { num, source },
    })
}

/// Packets read per `recvmmsg`, and so verdicts per `sendmsg` at most.
const BATCH: usize = 64;

/// Runs one queue until its socket fails for good. Never returns on a healthy queue.
pub fn run(q: QueueSocket, dp: Arc<Dataplane>, stats: Arc<QueueStats>, epoch: Instant) {
    let num = q.num;
    tracing::info!(queue = num, "queue worker started");
    let mut batch = RecvBatch::new(BATCH);
    let mut verdicts = Verdicts::new(BATCH);
    let mut msgs: Vec<(usize, crate::wire::netlink::Message)> = Vec::with_capacity(BATCH);
    let mut consecutive_errors = 0u32;
    loop {
        match q.recv(&mut batch) {
            Ok(_) => consecutive_errors = 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // The kernel had to drop queued packets: our receive buffer overflowed.
                let n = stats.overruns.fetch_add(1, Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(
                        queue = num,
                        count = n + 1,
                        "queue overrun: the kernel dropped packets (raise queue.rcvbuf)"
                    );
                }
                continue;
            }
            Err(e) => {
                stats.recv_errors.fetch_add(1, Relaxed);
                consecutive_errors += 1;
                if consecutive_errors == 1 || consecutive_errors % 1000 == 0 {
                    tracing::warn!(queue = num, error = %e, count = consecutive_errors, "queue receive failed");
                }
                if consecutive_errors > 100_000 {
                    tracing::error!(queue = num, "queue keeps failing; worker stops");
                    return;
                }
                continue;
            }
        }
        let now_ms = epoch.elapsed().as_millis() as u64;
        // Usually one message per datagram; the list is reused, so it allocates only if a
        // datagram ever carries more.
        msgs.clear();
        msgs.extend(batch.messages());
        for &(slot, m) in &msgs {
            let Some(p) = batch.packet(slot, &m) else {
                if m.header.kind == wire::MSG_PACKET {
                    stats.bad_messages.fetch_add(1, Relaxed);
                }
                continue;
            };
            let out = decide(&dp, &stats, &p, batch.payload_mut(slot, &p), now_ms);
            if !verdicts.push(num, &p, slot, out) {
                // A payload longer than the kernel ever copies (NFQNL_MAX_COPY_RANGE): not a
                // message the kernel sends, and one its verdict could not carry back.
                stats.bad_messages.fetch_add(1, Relaxed);
            }
        }
        stats.packets.fetch_add(verdicts.len() as u64, Relaxed);
        stats.batches.fetch_add(1, Relaxed);
        if let Err(e) = q.send_verdicts(&mut verdicts, &batch) {
            let n = stats.verdict_errors.fetch_add(1, Relaxed);
            if n == 0 || n % 1000 == 999 {
                tracing::warn!(queue = num, error = %e, count = n + 1, "sending verdicts failed");
            }
        }
    }
}

fn decide(dp: &Dataplane, stats: &QueueStats, p: &Packet, payload: &mut [u8], now_ms: u64) -> Out {
    let dir = match p.hook {
        NF_INET_PRE_ROUTING if p.mark == UNTRACKED_MARK => Direction::Untracked,
        NF_INET_PRE_ROUTING => Direction::Request,
        NF_INET_POST_ROUTING => Direction::Reply,
        _ => {
            stats.foreign.fetch_add(1, Relaxed);
            return Out::AcceptUnchanged;
        }
    };
    let csum = match (p.checksum_ready, p.gso) {
        (true, _) => ChecksumState::Complete,
        (false, true) => ChecksumState::PartialGso,
        (false, false) => ChecksumState::Partial,
    };
    let whole = p.cap_len.is_none_or(|len| len as usize == payload.len());
    match dp.handle(dir, payload, whole, csum, now_ms) {
        Verdict::Accept => Out::AcceptRewritten,
        Verdict::Offload(mark) => Out::AcceptMarked(mark),
        // The refuse chain answers it with a reset or a port unreachable.
        Verdict::Refuse => Out::AcceptMarked(REFUSE_MARK),
        Verdict::Drop(_) => Out::Drop,
    }
}
