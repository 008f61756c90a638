//! SHELL: the BGP daemon's control socket, asked what its sessions are for `--status` and the
//! metrics. One short-lived connection per question, bounded in time and bytes, so a stuck
//! or chatty daemon can slow a status answer by at most [`TIMEOUT`] and never fill memory.
//! Only `show` commands are sent: slbd never changes the daemon's state (it steers the
//! announcement through the kernel table the daemon learns from).
//! Side effects: connects to the daemon's unix socket.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::wire::bird::{self, BfdSession, Protocol};

/// The longest one question may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_millis(300);
/// A reply larger than this is cut off (a table of some hundred sessions fits).
const MAX_REPLY: usize = 256 * 1024;

/// Sends `command` and returns the whole reply, or why not.
fn ask(socket: &Path, command: &str) -> io::Result<String> {
    let started = Instant::now();
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if started.elapsed() > TIMEOUT {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no whole answer within {TIMEOUT:?}"),
            ));
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon closed the socket mid-answer",
            ));
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.len() > MAX_REPLY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("answer over {MAX_REPLY} bytes"),
            ));
        }
        let text = String::from_utf8_lossy(&reply);
        match bird::reply_end(&text) {
            Some(Ok(())) => return Ok(text.into_owned()),
            Some(Err(line)) => {
                return Err(io::Error::other(format!("{command:?} refused: {line}")))
            }
            None => {}
        }
    }
}

/// The daemon's BGP sessions and BFD sessions.
pub fn sessions(socket: &Path) -> io::Result<(Vec<Protocol>, Vec<BfdSession>)> {
    let protocols = bird::protocols(&ask(socket, "show protocols")?)
        .into_iter()
        .filter(|p| p.kind == "BGP")
        .collect();
    // A daemon without a BFD protocol refuses the command: no sessions, not a failure.
    let bfd = match ask(socket, "show bfd sessions") {
        Ok(text) => bird::bfd_sessions(&text),
        Err(e) if e.kind() == io::ErrorKind::Other => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok((protocols, bfd))
}
