//! SHELL: netlink sockets of a given protocol (NETLINK_NETFILTER for NFQUEUE and ctnetlink,
//! NETLINK_ROUTE for addresses), and the libc calls around them that every user needs: socket
//! options, one send, one datagram received whole. Side effects: creates and binds sockets,
//! sends and receives on them.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A libc return value as a `Result`, errno on a negative one.
pub fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A libc `ssize_t` return value as a byte count, errno on a negative one.
fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

pub fn setsockopt<T: Copy>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: T,
) -> io::Result<()> {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: the pointer and length describe `value`, a live local of the size given; the
    // kernel only reads it during the call. A bad fd or option is an errno, not UB.
    let r = unsafe { libc::setsockopt(fd, level, name, (&value as *const T).cast(), len) };
    cvt(r).map(|_| ())
}

/// A netlink socket of `protocol` (`libc::NETLINK_*`) bound to a kernel-chosen port id, with
/// a receive buffer of `rcvbuf` bytes.
pub fn open(protocol: libc::c_int, rcvbuf: usize) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; any argument is at worst an errno.
    let raw = cvt(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: `raw` is a descriptor socket(2) just returned, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_nl is plain old data (integers only), for which all-zero is valid.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: the pointer and length describe `addr`, a live local the kernel only reads.
    cvt(unsafe {
        libc::bind(
            raw,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of_val(&addr) as libc::socklen_t,
        )
    })?;
    let size = rcvbuf.min(i32::MAX as usize) as libc::c_int;
    // FORCE ignores net.core.rmem_max (needs CAP_NET_ADMIN, which slbd has anyway).
    if setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, size)?;
    }
    Ok(fd)
}

/// Sends `bytes` as one datagram to the kernel (the socket's default peer). A netlink send
/// is all or nothing; a short one is an error all the same.
pub fn send(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `bytes`, borrowed for the call; the kernel only
    // reads them.
    let n = cvt_size(unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), 0) })?;
    if n != bytes.len() {
        return Err(io::Error::other("short send on a netlink socket"));
    }
    Ok(())
}

/// Receives one datagram into `buf` and returns its length. A datagram larger than `buf` is
/// an error (MSG_TRUNC reports its real size) rather than silently cut messages.
pub fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, borrowed mutably for the call; with
    // MSG_TRUNC the kernel still writes at most `buf.len()` bytes.
    let n = cvt_size(unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags | libc::MSG_TRUNC,
        )
    })?;
    if n > buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "netlink datagram of {n} bytes exceeds the {} byte buffer",
                buf.len()
            ),
        ));
    }
    Ok(n)
}

/// The kernel's answer to a request on a socket with a receive timeout (SO_RCVTIMEO): one
/// datagram, retried through signals; the timeout is `TimedOut`, naming `family` (the kernel
/// answers while handling the send, so a missing answer is a bug, not slowness).
pub fn recv_answer(fd: RawFd, buf: &mut [u8], family: &str) -> io::Result<usize> {
    loop {
        match recv(fd, buf, 0) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{family} did not answer"),
                ))
            }
            r => return r,
        }
    }
}
