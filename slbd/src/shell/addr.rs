//! SHELL: the addresses slbd manages — the VIP on `address_dev` and the gateway address on
//! `gateway_dev` — added and removed through rtnetlink (no `ip` command), synchronously on one
//! NETLINK_ROUTE socket per call with the requests of `netlink::route`, and announced with
//! gratuitous ARP when they come up.
//! Side effects: RTM_NEWADDR / RTM_DELADDR on the named interfaces; ARP announcements sent on
//! them through an AF_PACKET socket (one per call, closed on a short-lived thread).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use crate::shell::netlink::{self as nl, setsockopt};
use crate::wire::netlink::{messages, NLM_F_MULTI};
use crate::wire::rtnetlink::{self as route, Addr, Answer};

pub use crate::core::net::ManagedAddr;

#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    #[error("cannot open an rtnetlink socket")]
    Socket(#[source] io::Error),
    #[error("no network interface named {0:?}")]
    NoDevice(String),
    #[error("cannot add {addr}")]
    Add {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {addr}")]
    Remove {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot list interfaces or addresses")]
    List(#[source] io::Error),
}

/// Room for one datagram: a dump fills at most 32 KiB (netlink_dump), a link answer ~1.5 KiB.
const DGRAM_BYTES: usize = 64 * 1024;
const RCVBUF: usize = 256 * 1024;
/// The kernel answers rtnetlink requests while handling the send, so a missing answer is a
/// bug, not slowness; this bounds the wait for one.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A NETLINK_ROUTE request socket; only answers to its own requests arrive on it.
pub(crate) struct Rtnl {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    pub(crate) fn open() -> Result<Rtnl, AddrError> {
        let fd = nl::open(libc::NETLINK_ROUTE, RCVBUF).map_err(AddrError::Socket)?;
        let raw = fd.as_raw_fd();
        let tv = libc::timeval {
            tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVTIMEO, tv).map_err(AddrError::Socket)?;
        // The kernel then filters address dumps by interface (Linux 4.20), and error ACKs carry
        // only the request's header. Older kernels lack them, which costs only bytes: dumps are
        // filtered here as well.
        for opt in [libc::NETLINK_GET_STRICT_CHK, libc::NETLINK_CAP_ACK] {
            let _ = setsockopt(raw, libc::SOL_NETLINK, opt, 1 as libc::c_int);
        }
        Ok(Rtnl {
            fd,
            seq: 0,
            buf: vec![0; DGRAM_BYTES],
        })
    }

    /// Sends the request `emit` builds with the next sequence number and returns every answer
    /// to it, up to the one that ends it: an ACK or error, a dump's end, or the single answer
    /// to a non-dump GET.
    fn transact(
        &mut self,
        emit: impl FnOnce(u32) -> Result<Vec<u8>, crate::wire::netlink::TooLong>,
    ) -> io::Result<Vec<Answer>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        nl::send(self.fd.as_raw_fd(), &emit(seq)?)?;
        let mut answers = Vec::new();
        loop {
            let n = self.recv()?;
            let got = &self.buf[..n];
            for m in messages(got) {
                if m.header.seq != seq {
                    continue;
                }
                let answer = route::parse(m.bytes(got))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let last = m.header.flags & NLM_F_MULTI == 0
                    || matches!(
                        answer,
                        Answer::Ack | Answer::Done | Answer::NoDevice | Answer::Errno(_)
                    );
                answers.push(answer);
                if last {
                    return Ok(answers);
                }
            }
        }
    }

    fn recv(&mut self) -> io::Result<usize> {
        nl::recv_answer(self.fd.as_raw_fd(), &mut self.buf, "rtnetlink")
    }

    /// A request answered by an ACK: Ok, or the kernel's errno.
    pub(crate) fn ack(
        &mut self,
        emit: impl FnOnce(u32) -> Result<Vec<u8>, crate::wire::netlink::TooLong>,
    ) -> io::Result<()> {
        match self.transact(emit)?.last() {
            Some(Answer::Ack) => Ok(()),
            Some(Answer::NoDevice) => Err(io::Error::from_raw_os_error(libc::ENODEV)),
            Some(Answer::Errno(e)) => Err(io::Error::from_raw_os_error(*e)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "rtnetlink answered without an ACK",
            )),
        }
    }

    /// The interface's index and, if it has one, its 6-byte hardware address.
    pub(crate) fn link(&mut self, dev: &str) -> Result<(u32, Option<[u8; 6]>), AddrError> {
        let answers = self
            .transact(|seq| route::emit_get_link(seq, dev))
            .map_err(AddrError::List)?;
        for a in answers {
            match a {
                Answer::Link(link) => return Ok((link.index, link.mac)),
                // The kernel answers ENODEV for a name that does not exist.
                Answer::NoDevice => break,
                Answer::Errno(e) => return Err(AddrError::List(io::Error::from_raw_os_error(e))),
                _ => {}
            }
        }
        Err(AddrError::NoDevice(dev.to_string()))
    }

    /// The IPv4 addresses on interface `index`.
    fn addrs(&mut self, index: u32) -> io::Result<Vec<Addr>> {
        let mut found = Vec::new();
        for a in self.transact(|seq| route::emit_get_addrs(seq, index))? {
            match a {
                Answer::Addr(a) if a.index == index => found.push(a),
                Answer::NoDevice => return Err(io::Error::from_raw_os_error(libc::ENODEV)),
                Answer::Errno(e) => return Err(io::Error::from_raw_os_error(e)),
                _ => {}
            }
        }
        Ok(found)
    }
}

/// Adds each address (replacing an identical one, so a restart after a crash is not an error)
/// and announces it with gratuitous ARP, so neighbours that knew another owner switch at once.
pub fn add(addrs: &[ManagedAddr]) -> Result<(), AddrError> {
    let mut rtnl = Rtnl::open()?;
    let mut arp = Announcer::default();
    for a in addrs {
        let (index, mac) = rtnl.link(&a.dev)?;
        rtnl.ack(|seq| route::emit_new_addr(seq, index, a.ip, a.prefix))
            .map_err(|source| AddrError::Add {
                addr: a.to_string(),
                source,
            })?;
        match mac {
            Some(mac) => {
                // An announcement lost on the wire only delays neighbours until their
                // entries age out: log it, it is no reason to stop balancing.
                if let Err(e) = arp.announce(index, mac, a.ip) {
                    tracing::warn!(address = %a, error = %e, "gratuitous ARP failed");
                }
            }
            None => tracing::debug!(address = %a, "no hardware address: no gratuitous ARP"),
        }
    }
    Ok(())
}

/// Announces addresses that are already up again (a pair's winner after a healed partition:
/// its dual may have announced last).
pub fn reannounce(addrs: &[ManagedAddr]) -> Result<(), AddrError> {
    let mut rtnl = Rtnl::open()?;
    let mut arp = Announcer::default();
    for a in addrs {
        if let (index, Some(mac)) = rtnl.link(&a.dev)? {
            if let Err(e) = arp.announce(index, mac, a.ip) {
                tracing::warn!(address = %a, error = %e, "gratuitous ARP failed");
            }
        }
    }
    Ok(())
}

/// The AF_PACKET socket one call sends its gratuitous ARP on, opened at the first
/// announcement. Send-only: opened with protocol 0 it registers no receive hook, so it is
/// never handed the host's ARP traffic (packet_create).
#[derive(Default)]
struct Announcer {
    fd: Option<OwnedFd>,
}

impl Announcer {
    /// Sends a few ARP announcements for `ip` from `mac` out of interface `index`.
    fn announce(&mut self, index: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
        let fd = match &self.fd {
            Some(fd) => fd.as_raw_fd(),
            None => self.fd.insert(packet_socket()?).as_raw_fd(),
        };
        // SAFETY: sockaddr_ll is plain old data (integers and a byte array), for which
        // all-zero is valid.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = crate::core::garp::ETH_P_ARP.to_be();
        to.sll_ifindex = index as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let frame = crate::core::garp::announcement(mac, ip);
        // Three, as arping -U and keepalived do, in case one is lost.
        for _ in 0..3 {
            // SAFETY: the pointers and lengths describe `frame` and `to`, live locals the
            // kernel only reads during the call.
            let n = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of_val(&to) as u32,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl Drop for Announcer {
    /// Closing a packet socket waits for an RCU grace period (packet_release calls
    /// synchronize_net), 5-20 ms measured here, so the close happens on a thread of its own
    /// rather than on the takeover path; inline only if no thread can be started.
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            let _ = std::thread::Builder::new()
                .name("garp-close".into())
                .spawn(move || drop(fd));
        }
    }
}

fn packet_socket() -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) takes no pointers; any argument is at worst an errno.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor socket(2) just returned, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Removes each address that is present; absent ones are not an error.
pub fn remove(addrs: &[ManagedAddr]) -> Result<(), AddrError> {
    let mut rtnl = Rtnl::open()?;
    for a in addrs {
        let index = match rtnl.link(&a.dev) {
            Ok((index, _)) => index,
            // The interface is gone, and the address with it.
            Err(AddrError::NoDevice(_)) => continue,
            Err(e) => return Err(e),
        };
        let found = rtnl.addrs(index).map_err(AddrError::List)?;
        for ours in found
            .iter()
            .filter(|f| f.prefix == a.prefix && f.local == Some(a.ip))
        {
            rtnl.ack(|seq| route::emit_del_addr(seq, ours))
                .map_err(|source| AddrError::Remove {
                    addr: a.to_string(),
                    source,
                })?;
        }
    }
    Ok(())
}
