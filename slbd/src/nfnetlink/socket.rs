//! SHELL: opening the NETLINK_NETFILTER sockets NFQUEUE and ctnetlink use, and the libc
//! calls around them. Side effects: creates and binds sockets.

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

pub fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: T) -> io::Result<()> {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    cvt(unsafe { libc::setsockopt(fd, level, name, (&value as *const T).cast(), len) }).map(|_| ())
}

/// A NETLINK_NETFILTER socket bound to a kernel-chosen port id, with a receive buffer of
/// `rcvbuf` bytes.
pub fn open(rcvbuf: usize) -> io::Result<OwnedFd> {
    let raw = cvt(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    })?;
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
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
