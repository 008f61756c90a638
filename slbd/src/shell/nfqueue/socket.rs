//! SHELL: an nfnetlink_queue socket for one queue number, written for throughput: a large
//! receive buffer, packets read in batches with `recvmmsg`, and verdicts sent in batches with
//! one `sendmsg` whose iovecs point at the (rewritten) packets where they were received, so no
//! packet is copied in user space. Side effects: binds an NFQUEUE number.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::shell::netlink::{self as nl, cvt, setsockopt};
use crate::wire::netlink::{self, Message, Status};
use crate::wire::nfqueue::{self as wire, Packet, VERDICT_HEADER_LEN};

/// Room for one queued packet message: a 64 KiB GSO packet plus its attributes.
const SLOT_BYTES: usize = 65536 + 4096;
/// Verdicts in one `sendmsg`; also bounds its size below the socket's send buffer.
const MAX_SEND_BYTES: usize = 1 << 20;

pub struct QueueSocket {
    fd: OwnedFd,
    pub num: u16,
}

/// How the queue is set up.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub max_len: u32,
    pub gso: bool,
    /// SO_RCVBUF(FORCE) in bytes: the kernel drops queued packets when it overflows.
    pub rcvbuf: usize,
}

impl QueueSocket {
    /// Opens a netlink socket, binds queue `num` and configures it. Fails with EBUSY when
    /// another process holds the queue.
    pub fn open(num: u16, setup: Setup) -> io::Result<QueueSocket> {
        let fd = nl::open(libc::NETLINK_NETFILTER, setup.rcvbuf)?;
        let raw = fd.as_raw_fd();
        setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (MAX_SEND_BYTES * 2) as libc::c_int,
        )
        .or_else(|_| {
            setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (MAX_SEND_BYTES * 2) as libc::c_int,
            )
        })?;
        // Report overruns as ENOBUFS, so they are counted rather than silent.
        setsockopt(
            raw,
            libc::SOL_NETLINK,
            libc::NETLINK_NO_ENOBUFS,
            0 as libc::c_int,
        )?;
        let sock = QueueSocket { fd, num };
        // Fail-open: what a full queue cannot hold goes on to the chains after the queueing
        // one instead of being dropped; the ruleset gives an offload flow's first packet a
        // server there, and drops a packet-mode one (see `core::ruleset`). With nobody bound
        // to the queue (slbd gone) the kernel still drops: fail-open needs a reader.
        let flags = wire::CFG_F_FAIL_OPEN | if setup.gso { wire::CFG_F_GSO } else { 0 };
        let mask = wire::CFG_F_GSO | wire::CFG_F_FAIL_OPEN;
        for req in wire::config_requests(num, setup.max_len, flags, mask, 1)? {
            sock.send(&req)?;
            sock.wait_ack()?;
        }
        Ok(sock)
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        nl::send(self.fd.as_raw_fd(), bytes)
    }

    fn wait_ack(&self) -> io::Result<()> {
        let mut buf = vec![0u8; SLOT_BYTES];
        loop {
            let n = nl::recv(self.fd.as_raw_fd(), &mut buf, 0)?;
            let got = &buf[..n];
            for m in netlink::messages(got) {
                match netlink::status(m.bytes(got)) {
                    Some(Status::Ack) => return Ok(()),
                    Some(Status::Errno(e)) => return Err(io::Error::from_raw_os_error(e)),
                    Some(Status::Truncated) => {
                        return Err(io::Error::other("short netlink error message"))
                    }
                    Some(Status::Done) | None => {}
                }
                // Rules left by an earlier slbd queue packets as soon as the queue is bound.
                // Each needs a verdict or it stays queued for good; before the workers run,
                // the answer is the fail-closed one.
                if let Some(p) = wire::packet(got, &m) {
                    let mut hdr = [0u8; VERDICT_HEADER_LEN];
                    let used = wire::drop_header(&mut hdr, self.num, p.id);
                    self.send(&hdr[..used])?;
                }
            }
        }
    }

    /// Receives up to `batch.slots()` datagrams, blocking until at least one arrives.
    pub fn recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        let n = batch.hdrs.len();
        for (i, h) in batch.hdrs.iter_mut().enumerate() {
            batch.iovs[i] = libc::iovec {
                iov_base: batch.bufs[i].as_mut_ptr().cast(),
                iov_len: SLOT_BYTES,
            };
            h.msg_hdr.msg_iov = &mut batch.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_len = 0;
        }
        // SAFETY: `hdrs` holds `n` headers, each (zeroed but for the fields set above) naming
        // one iovec of `iovs` that covers all of its own SLOT_BYTES buffer in `bufs`; all of
        // them live in `batch`, borrowed mutably for the call, and the kernel writes at most
        // iov_len bytes into each buffer and the received length into msg_len.
        let got = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                batch.hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        let got = cvt(got)? as usize;
        for i in 0..got {
            batch.lens[i] = batch.hdrs[i].msg_len as usize;
        }
        batch.filled = got;
        Ok(got)
    }

    /// Sends the verdicts collected in `out` (whose payloads live in `batch`) and clears it.
    pub fn send_verdicts(&self, out: &mut Verdicts, batch: &RecvBatch) -> io::Result<()> {
        let mut iovs: Vec<libc::iovec> = Vec::new();
        std::mem::swap(&mut iovs, &mut out.iovs);
        iovs.clear();
        let mut result = Ok(());
        let mut bytes = 0usize;
        let mut start = 0usize;
        for (i, v) in out.pending.iter().enumerate() {
            let hdr = &out.headers[i];
            iovs.push(libc::iovec {
                iov_base: hdr.as_ptr() as *mut _,
                iov_len: v.header_len,
            });
            bytes += v.header_len;
            if let Some((slot, a, b)) = v.payload {
                let p = &batch.bufs[slot][a..b];
                iovs.push(libc::iovec {
                    iov_base: p.as_ptr() as *mut _,
                    iov_len: p.len(),
                });
                let pad = wire::padding(p.len());
                if pad > 0 {
                    iovs.push(libc::iovec {
                        iov_base: ZEROS.as_ptr() as *mut _,
                        iov_len: pad,
                    });
                }
                bytes += p.len() + pad;
            }
            let last = i + 1 == out.pending.len();
            if bytes >= MAX_SEND_BYTES || last || iovs.len() + 3 > 1000 {
                // A verdict that never arrives leaves its packet queued for good (the kernel
                // has no timeout), so a failed send is tried once more.
                if let Err(e) = self
                    .sendmsg(&iovs[start..])
                    .or_else(|_| self.sendmsg(&iovs[start..]))
                {
                    result = Err(e);
                }
                start = iovs.len();
                bytes = 0;
            }
        }
        out.pending.clear();
        out.iovs = iovs;
        result
    }

    fn sendmsg(&self, iovs: &[libc::iovec]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain old data (integers only), for which all-zero is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msghdr is integers and raw pointers; all-zero is valid (null pointers, no
        // control data, no flags).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_nl).cast();
        msg.msg_namelen = std::mem::size_of_val(&addr) as u32;
        msg.msg_iov = iovs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iovs.len();
        // SAFETY: `msg` names `addr` (a live local) and the `iovs` slice, borrowed for the
        // call; each iovec points at a verdict header, a received packet or ZEROS, all
        // borrowed by the caller across this call. sendmsg only reads them, so the `*mut`
        // casts the iovec type asks for are never written through.
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, 0) };
        cvt(n as libc::c_int).map(|_| ())
    }
}

static ZEROS: [u8; 4] = [0; 4];

/// Receive buffers for one worker, reused for every batch (no allocation per packet).
pub struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    lens: Vec<usize>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    filled: usize,
}

// SAFETY: the raw pointers inside (each mmsghdr's to its iovec, each iovec's to its buffer)
// only ever point into this struct's own heap allocations, which stay put when the struct
// moves, and only `recv`, holding it mutably, hands them to the kernel.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(slots: usize) -> RecvBatch {
        RecvBatch {
            bufs: (0..slots)
                .map(|_| vec![0u8; SLOT_BYTES].into_boxed_slice())
                .collect(),
            lens: vec![0; slots],
            // SAFETY: mmsghdr is integers and raw pointers; all-zero is valid (null pointers,
            // zero lengths), and `recv` fills in the iovec before any use.
            hdrs: (0..slots).map(|_| unsafe { std::mem::zeroed() }).collect(),
            iovs: (0..slots)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            filled: 0,
        }
    }

    /// The netlink messages of each datagram received by the last `recv`.
    pub fn messages(&self) -> impl Iterator<Item = (usize, Message)> + '_ {
        (0..self.filled).flat_map(move |slot| {
            netlink::messages(&self.bufs[slot][..self.lens[slot]]).map(move |m| (slot, m))
        })
    }

    pub fn packet(&self, slot: usize, m: &Message) -> Option<Packet> {
        wire::packet(&self.bufs[slot][..self.lens[slot]], m)
    }

    pub fn payload_mut(&mut self, slot: usize, p: &Packet) -> &mut [u8] {
        &mut self.bufs[slot][p.payload.0..p.payload.1]
    }
}

struct Pending {
    header_len: usize,
    payload: Option<(usize, usize, usize)>,
}

/// Verdicts waiting to be sent, with their headers.
pub struct Verdicts {
    headers: Vec<[u8; VERDICT_HEADER_LEN]>,
    pending: Vec<Pending>,
    iovs: Vec<libc::iovec>,
}

// SAFETY: the raw pointers in `iovs` are only a reused allocation: `send_verdicts` rebuilds
// them before each use and dereferences them only inside its own sendmsg, so whichever thread
// owns the struct never reaches memory through a pointer left from an earlier call.
unsafe impl Send for Verdicts {}

impl Verdicts {
    pub fn new(capacity: usize) -> Verdicts {
        Verdicts {
            headers: vec![[0u8; VERDICT_HEADER_LEN]; capacity],
            pending: Vec::with_capacity(capacity),
            iovs: Vec::with_capacity(capacity * 3),
        }
    }

    /// Queues a verdict: accept with the (possibly rewritten) packet written back, accept
    /// unchanged, or drop. Returns false when a payload too long for its attribute (over
    /// `wire::MAX_COPY_RANGE`, more than the kernel ever copies) could not be written back:
    /// that packet is dropped instead, so it still gets its verdict.
    pub fn push(&mut self, queue: u16, p: &Packet, slot: usize, verdict: Out) -> bool {
        let i = self.pending.len();
        if i == self.headers.len() {
            self.headers.push([0u8; VERDICT_HEADER_LEN]);
        }
        let (accept, mark, payload) = match verdict {
            Out::AcceptRewritten => (true, None, Some((slot, p.payload.0, p.payload.1))),
            Out::AcceptUnchanged => (true, None, None),
            Out::AcceptMarked(m) => (true, Some(m), None),
            Out::Drop => (false, None, None),
        };
        let payload_len = payload.map(|(_, a, b)| b - a);
        let hdr = &mut self.headers[i];
        let (header_len, payload, sent) =
            match wire::verdict_header(hdr, queue, p.id, accept, mark, payload_len) {
                Ok(n) => (n, payload, true),
                Err(_) => (wire::drop_header(hdr, queue, p.id), None, false),
            };
        self.pending.push(Pending {
            header_len,
            payload,
        });
        sent
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// What to do with a queued packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    AcceptRewritten,
    AcceptUnchanged,
    /// Accept unchanged with this packet mark, for a later rule to act on.
    AcceptMarked(u32),
    Drop,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(len: usize) -> Packet {
        Packet {
            id: 9,
            hook: 0,
            payload: (100, 100 + len),
            cap_len: None,
            checksum_ready: true,
            gso: true,
            mark: 0,
        }
    }

    #[test]
    fn a_payload_too_long_to_write_back_becomes_a_drop() {
        let mut v = Verdicts::new(1);
        assert!(!v.push(3, &packet(65535), 0, Out::AcceptRewritten));
        let (hdr, pending) = (&v.headers[0], &v.pending[0]);
        assert_eq!((pending.header_len, pending.payload), (32, None));
        assert_eq!(u32::from_ne_bytes(hdr[0..4].try_into().unwrap()), 32);
        assert_eq!(&hdr[24..28], &0u32.to_be_bytes(), "NF_DROP");

        // The longest payload the kernel copies still goes back whole.
        let n = wire::MAX_COPY_RANGE;
        assert!(v.push(3, &packet(n), 0, Out::AcceptRewritten));
        let (hdr, pending) = (&v.headers[1], &v.pending[1]);
        assert_eq!(pending.payload, Some((0, 100, 100 + n)));
        let at = pending.header_len - 4;
        assert_eq!(u16::from_ne_bytes([hdr[at], hdr[at + 1]]), u16::MAX);
        assert_eq!(v.len(), 2);
    }
}
