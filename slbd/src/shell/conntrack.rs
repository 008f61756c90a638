//! SHELL: ctnetlink sockets (NETLINK_NETFILTER). [`EventSocket`] follows the conntrack event
//! groups; [`Control`] creates, deletes and dumps entries, sending requests in batches and
//! matching every ACK to its request by sequence number. Side effects: joins the conntrack
//! multicast groups, and creates and deletes entries in the kernel's conntrack table, both in
//! the network namespace the socket was opened in.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::core::net::Protocol;
use crate::shell::netlink::{self as nl, setsockopt};
use crate::wire::ctnetlink::{self as wire, CtEntry, Inject};
use crate::wire::netlink::{messages, status, Status, NLMSG_DONE, NLMSG_ERROR};

/// enum nfnetlink_groups (include/uapi/linux/netfilter/nfnetlink.h).
const NFNLGRP_CONNTRACK_NEW: libc::c_int = 1;
const NFNLGRP_CONNTRACK_UPDATE: libc::c_int = 2;
const NFNLGRP_CONNTRACK_DESTROY: libc::c_int = 3;

/// Receive buffer per datagram: above the 32 KiB a netlink dump fills at most (netlink_dump),
/// so no answer is ever cut.
const DGRAM_BYTES: usize = 64 * 1024;
/// Creates per `sendmsg`; their ACKs must fit the receive buffer together, or the kernel drops
/// some and we would wait for them in vain.
const BATCH: usize = 64;
const CONTROL_RCVBUF: usize = 1 << 20;
/// The kernel answers a request while handling the `sendmsg`, so a missing answer is a bug,
/// not slowness; this bounds the wait for one.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How many failed creates an [`InjectReport`] keeps the error of.
pub const MAX_REPORTED_ERRORS: usize = 8;

/// Follows the conntrack events of the socket's network namespace (all of them: the kernel
/// cannot filter events by mark, so callers pick theirs by `CtEntry::mark`).
///
/// NETLINK_NO_ENOBUFS stays off: when the receive buffer overflows the kernel drops events and
/// the next [`EventSocket::recv`] fails with ENOBUFS, telling the caller to resync with a dump.
pub struct EventSocket {
    fd: OwnedFd,
    buf: Vec<u8>,
    malformed: u64,
}

impl EventSocket {
    /// Opens a socket joined to NFNLGRP_CONNTRACK_UPDATE and _DESTROY, and _NEW when `new`,
    /// with a receive buffer of `rcvbuf` bytes. (The kernel builds no event for a group
    /// nobody joined, so leaving out one that is not needed saves work on the packet path.)
    pub fn open(rcvbuf: usize, new: bool) -> io::Result<EventSocket> {
        let fd = nl::open(libc::NETLINK_NETFILTER, rcvbuf)?;
        let raw = fd.as_raw_fd();
        let groups = [
            NFNLGRP_CONNTRACK_NEW,
            NFNLGRP_CONNTRACK_UPDATE,
            NFNLGRP_CONNTRACK_DESTROY,
        ];
        for group in groups.into_iter().skip(usize::from(!new)) {
            setsockopt(raw, libc::SOL_NETLINK, libc::NETLINK_ADD_MEMBERSHIP, group)?;
        }
        setsockopt(
            raw,
            libc::SOL_NETLINK,
            libc::NETLINK_NO_ENOBUFS,
            0 as libc::c_int,
        )?;
        Ok(EventSocket {
            fd,
            buf: vec![0; DGRAM_BYTES],
            malformed: 0,
        })
    }

    /// Waits up to `timeout` for one datagram and calls `f` for every IPv4 TCP/UDP entry in
    /// it. Returns Ok(false) on timeout, Ok(true) when a datagram arrived (even one with no
    /// entry of ours). An overrun is `Err` with `raw_os_error() == Some(ENOBUFS)`: events were
    /// lost and the caller should resync. Malformed messages are skipped and counted in
    /// [`EventSocket::malformed`].
    pub fn recv(&mut self, timeout: Duration, mut f: impl FnMut(CtEntry)) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        let fd = self.fd.as_raw_fd();
        loop {
            // Read before polling: an overrun is reported on the next read even when the
            // queue is empty.
            match nl::recv(fd, &mut self.buf, libc::MSG_DONTWAIT) {
                Ok(n) => {
                    let got = &self.buf[..n];
                    for m in messages(got) {
                        match wire::parse(m.bytes(got)) {
                            Ok(Some(entry)) => f(entry),
                            Ok(None) => {}
                            Err(_) => self.malformed += 1,
                        }
                    }
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
            // SAFETY: one pollfd, a live local the kernel writes revents into.
            if unsafe { libc::poll(&mut pfd, 1, ms) } < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }

    /// Messages skipped since the socket opened because they did not parse.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

impl AsRawFd for EventSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// What [`Control::inject`] did.
#[derive(Debug, Default)]
pub struct InjectReport {
    /// Entries now in the table, including the replaced ones.
    pub created: usize,
    /// Of those, how many replaced an entry that already held the original tuple.
    pub replaced: usize,
    pub failed: usize,
    /// The kernel's answer to the first failed create.
    pub first_error: Option<io::Error>,
    /// The first [`MAX_REPORTED_ERRORS`] failures: the flow's index in the slice and the
    /// kernel's answer.
    pub errors: Vec<(usize, io::Error)>,
}

impl InjectReport {
    fn fail(&mut self, index: usize, errno: i32) {
        self.failed += 1;
        if self.first_error.is_none() {
            self.first_error = Some(io::Error::from_raw_os_error(errno));
        }
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors
                .push((index, io::Error::from_raw_os_error(errno)));
        }
    }
}

/// A request socket: creates, deletes and dumps entries. Not joined to any group, so only
/// answers to its own requests arrive.
pub struct Control {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
    malformed: u64,
}

impl Control {
    pub fn open() -> io::Result<Control> {
        let fd = nl::open(libc::NETLINK_NETFILTER, CONTROL_RCVBUF)?;
        let raw = fd.as_raw_fd();
        let tv = libc::timeval {
            tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVTIMEO, tv)?;
        // Error ACKs then carry only the request's header, not the whole request: more of a
        // batch's ACKs fit the buffer. Older kernels lack it, which only costs room.
        let _ = setsockopt(
            raw,
            libc::SOL_NETLINK,
            libc::NETLINK_CAP_ACK,
            1 as libc::c_int,
        );
        Ok(Control {
            fd,
            seq: 1,
            buf: vec![0; DGRAM_BYTES],
            malformed: 0,
        })
    }

    /// Creates the entries of `flows`. One whose original tuple is taken (EEXIST) is deleted
    /// and created again: the peer's entry names the server the client talks to. Requests go
    /// in batches, many per `sendmsg`, and every ACK is read. Failed creates are counted in
    /// the report; `Err` means the socket itself failed.
    pub fn inject(&mut self, flows: &[Inject]) -> io::Result<InjectReport> {
        let mut report = InjectReport::default();
        for (c, chunk) in flows.chunks(BATCH).enumerate() {
            let base = c * BATCH;
            let first = self.seqs(chunk.len());
            let reqs = (0u32..)
                .zip(chunk)
                .map(|(i, f)| wire::emit_create(first.wrapping_add(i), f))
                .collect::<Result<Vec<_>, _>>()?;
            let mut taken = Vec::new();
            for (i, errno) in self.transact(first, &reqs)?.into_iter().enumerate() {
                match errno {
                    0 => report.created += 1,
                    libc::EEXIST => taken.push(i),
                    e => report.fail(base + i, e),
                }
            }
            if taken.is_empty() {
                continue;
            }
            // Delete then create, in order in one batch. The delete may find nothing (the
            // clash was on the NAT'd reply tuple, or the entry expired): then the create
            // answers for itself.
            let first = self.seqs(2 * taken.len());
            let reqs = (0u32..)
                .step_by(2)
                .zip(&taken)
                .flat_map(|(k, &i)| {
                    let f = &chunk[i];
                    let seq = first.wrapping_add(k);
                    [
                        wire::emit_delete(seq, f.protocol, f.client, f.vip),
                        wire::emit_create(seq.wrapping_add(1), f),
                    ]
                })
                .collect::<Result<Vec<_>, _>>()?;
            let answers = self.transact(first, &reqs)?;
            for (k, &i) in taken.iter().enumerate() {
                match answers[2 * k + 1] {
                    0 => {
                        report.created += 1;
                        report.replaced += 1;
                    }
                    e => report.fail(base + i, e),
                }
            }
        }
        Ok(report)
    }

    /// Deletes every IPv4 entry whose `mark & mask` equals `mark & mask` (the kernel's filtered
    /// flush). Nothing to delete is Ok. A `mask` of 0 would flush the whole table and is
    /// refused with InvalidInput.
    pub fn delete_marked(&mut self, mark: u32, mask: u32) -> io::Result<()> {
        if mask == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a mark mask of 0 would delete every conntrack entry",
            ));
        }
        let seq = self.seqs(1);
        match self.transact(seq, &[wire::emit_delete_marked(seq, mark, mask)?])?[0] {
            0 | libc::ENOENT => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Deletes the entry whose original tuple is `orig_src -> orig_dst`; false if there was
    /// none.
    pub fn delete(
        &mut self,
        protocol: Protocol,
        orig_src: SocketAddrV4,
        orig_dst: SocketAddrV4,
    ) -> io::Result<bool> {
        let seq = self.seqs(1);
        let req = wire::emit_delete(seq, protocol, orig_src, orig_dst)?;
        match self.transact(seq, &[req])?[0] {
            0 => Ok(true),
            libc::ENOENT => Ok(false),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Deletes the entry whose reply tuple is `reply_src -> reply_dst`; false if there was
    /// none.
    pub fn delete_reply(
        &mut self,
        protocol: Protocol,
        reply_src: SocketAddrV4,
        reply_dst: SocketAddrV4,
    ) -> io::Result<bool> {
        let seq = self.seqs(1);
        let req = wire::emit_delete_reply(seq, protocol, reply_src, reply_dst)?;
        match self.transact(seq, &[req])?[0] {
            0 => Ok(true),
            libc::ENOENT => Ok(false),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// The IPv4 TCP/UDP entries whose `mark & mask` equals `mark & mask`, all with kind `New`.
    /// Entries that do not parse are skipped and counted in [`Control::malformed`].
    pub fn dump_marked(&mut self, mark: u32, mask: u32) -> io::Result<Vec<CtEntry>> {
        let seq = self.seqs(1);
        self.send(&wire::emit_dump_marked(seq, mark, mask)?)?;
        let mut entries = Vec::new();
        loop {
            let n = self.recv()?;
            let got = &self.buf[..n];
            for m in messages(got) {
                if m.header.seq != seq {
                    continue;
                }
                let msg = m.bytes(got);
                match (m.header.kind, status(msg)) {
                    (_, Some(Status::Errno(e))) => return Err(io::Error::from_raw_os_error(e)),
                    // The kernel filtered already; this only guards against one that ignored
                    // the filter.
                    (NLMSG_DONE, _) => {
                        return Ok(entries
                            .into_iter()
                            .filter(|e: &CtEntry| e.mark & mask == mark & mask)
                            .collect())
                    }
                    (NLMSG_ERROR, Some(Status::Truncated)) => return Err(short_error()),
                    (NLMSG_ERROR, _) => {}
                    _ => match wire::parse(msg) {
                        Ok(Some(entry)) => entries.push(entry),
                        Ok(None) => {}
                        Err(_) => self.malformed += 1,
                    },
                }
            }
        }
    }

    /// Dumped entries skipped since the socket opened because they did not parse.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Reserves `n` consecutive sequence numbers and returns the first.
    fn seqs(&mut self, n: usize) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(n as u32);
        first
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        nl::send(self.fd.as_raw_fd(), bytes)
    }

    fn recv(&mut self) -> io::Result<usize> {
        nl::recv_answer(self.fd.as_raw_fd(), &mut self.buf, "ctnetlink")
    }

    /// Sends `reqs` (sequence numbers `first`, `first + 1` ...; each asks for an ACK) in one
    /// datagram, which nfnetlink handles message by message, and returns each one's answer in
    /// order: 0 for success, else the errno.
    fn transact(&mut self, first: u32, reqs: &[Vec<u8>]) -> io::Result<Vec<i32>> {
        self.send(&reqs.concat())?;
        let mut answers: Vec<Option<i32>> = vec![None; reqs.len()];
        let mut left = reqs.len();
        while left > 0 {
            let n = self.recv()?;
            let got = &self.buf[..n];
            for m in messages(got) {
                if m.header.kind != NLMSG_ERROR {
                    continue;
                }
                let slot = answers.get_mut(m.header.seq.wrapping_sub(first) as usize);
                if let Some(slot @ None) = slot {
                    *slot = Some(match status(m.bytes(got)) {
                        Some(Status::Errno(e)) => e,
                        Some(Status::Truncated) => return Err(short_error()),
                        _ => 0,
                    });
                    left -= 1;
                }
            }
        }
        Ok(answers.into_iter().map(|a| a.unwrap_or(0)).collect())
    }
}

fn short_error() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "short netlink error message")
}
