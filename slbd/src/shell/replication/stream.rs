//! Frames off a TCP stream read with a short timeout, and how a session ends. Shell helpers
//! (they read sockets) around the pure frame checks of `crate::wire::replication`.

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::wire::replication::{self as wire, WireError};

/// Why a wire error ended a session, as a metric label.
pub(super) fn reason(e: &WireError) -> &'static str {
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
pub(super) struct FrameReader {
    buf: Vec<u8>,
}

pub(super) enum Polled {
    Frame(Vec<u8>),
    /// Nothing complete within one poll.
    Idle,
    Closed,
}

impl FrameReader {
    pub(super) fn next(&mut self, stream: &mut TcpStream) -> Result<Polled, SessionEnd> {
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
pub(super) enum SessionEnd {
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
pub(super) fn read_frame(
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
