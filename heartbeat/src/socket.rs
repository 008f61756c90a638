//! SHELL: heartbeats over UDP, one socket per link. [`Link::send`] emits an authenticated
//! heartbeat to the peer; [`Link::recv`] waits up to a timeout for one datagram.
//! Side effects: UDP sockets bound to the configured local addresses.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use crate::msg::{self, Heartbeat, MAX_LEN};

/// One heartbeat path: our address on it and the peer's.
pub struct Link {
    socket: UdpSocket,
    pub peer: SocketAddr,
}

impl Link {
    pub fn bind(local: SocketAddr, peer: SocketAddr) -> io::Result<Link> {
        let socket = UdpSocket::bind(local)?;
        Ok(Link { socket, peer })
    }

    /// A second handle on the same socket, for a listening thread.
    pub fn try_clone(&self) -> io::Result<Link> {
        Ok(Link {
            socket: self.socket.try_clone()?,
            peer: self.peer,
        })
    }

    pub fn send(&self, hb: &Heartbeat, key: &[u8]) -> io::Result<()> {
        self.socket
            .send_to(&msg::emit(hb, key), self.peer)
            .map(|_| ())
    }

    /// One datagram (its bytes and sender), or `None` when `timeout` passes first. Datagrams
    /// from anywhere but the peer's address are returned too: the caller counts and drops them.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<(Vec<u8>, SocketAddr)>> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = [0u8; MAX_LEN + 1];
        match self.socket.recv_from(&mut buf) {
            Ok((n, from)) => Ok(Some((buf[..n].to_vec(), from))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}
