//! SHELL: one worker per NFQUEUE. Each receives packets with `nfq`, hands them to the
//! [`Dataplane`], and writes back the verdict (and the rewritten packet).
//! Side effects: binds NFQUEUE numbers; reads and reinjects packets.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crate::config::QueueConfig;
use crate::dataplane::{Dataplane, Direction, Verdict};
use crate::packet::ChecksumState;

/// Netfilter hook numbers (`enum nf_inet_hooks`) that slbd's rules queue from.
const NF_INET_PRE_ROUTING: u8 = 0;
const NF_INET_POST_ROUTING: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot open an nfnetlink_queue socket")]
    Open(#[source] io::Error),
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
}

/// Opens and configures queue `num`.
pub fn open(num: u16, cfg: &QueueConfig) -> Result<nfq::Queue, QueueError> {
    let mut q = nfq::Queue::open().map_err(QueueError::Open)?;
    q.bind(num)
        .map_err(|source| QueueError::Bind { num, source })?;
    let configure = |source| QueueError::Configure { num, source };
    q.set_queue_max_len(num, cfg.max_len).map_err(configure)?;
    q.set_recv_gso(num, cfg.gso).map_err(configure)?;
    // Fail closed: when the queue is full the kernel drops rather than accepts unbalanced.
    q.set_fail_open(num, false).map_err(configure)?;
    Ok(q)
}

fn checksum_state(msg: &nfq::Message) -> ChecksumState {
    match (msg.is_checksum_ready(), msg.is_seg_offloaded()) {
        (true, _) => ChecksumState::Complete,
        (false, true) => ChecksumState::PartialGso,
        (false, false) => ChecksumState::Partial,
    }
}

/// Runs one queue until its socket fails for good. Never returns on a healthy queue.
pub fn run(
    mut q: nfq::Queue,
    num: u16,
    dp: Arc<Dataplane>,
    stats: Arc<QueueStats>,
    epoch: Instant,
) {
    tracing::info!(queue = num, "queue worker started");
    let mut consecutive_errors = 0u32;
    loop {
        let mut msg = match q.recv() {
            Ok(m) => {
                consecutive_errors = 0;
                m
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
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
        };
        let dir = match msg.get_hook() {
            NF_INET_PRE_ROUTING => Some(Direction::Request),
            NF_INET_POST_ROUTING => Some(Direction::Reply),
            _ => None,
        };
        match dir {
            Some(dir) => {
                let csum = checksum_state(&msg);
                let whole = msg.get_original_len() == msg.get_payload().len();
                let now_ms = epoch.elapsed().as_millis() as u64;
                let verdict = dp.handle(dir, msg.get_payload_mut(), whole, csum, now_ms);
                msg.set_verdict(match verdict {
                    Verdict::Accept => nfq::Verdict::Accept,
                    Verdict::Drop(_) => nfq::Verdict::Drop,
                });
            }
            None => {
                stats.foreign.fetch_add(1, Relaxed);
                msg.set_verdict(nfq::Verdict::Accept);
            }
        }
        if let Err(e) = q.verdict(msg) {
            let n = stats.verdict_errors.fetch_add(1, Relaxed);
            if n == 0 || n % 1000 == 999 {
                tracing::warn!(queue = num, error = %e, count = n + 1, "verdict failed");
            }
        }
    }
}
