//! SHELL: the HTTP check's I/O: connect (and handshake, for HTTPS), send the request that
//! `core::http_check` builds, and read until its verdict says enough — at most
//! [`MAX_RESPONSE`] bytes. The caller bounds the whole exchange with the check's timeout.
//! Side effects: one TCP connection (TLS over it when asked) to the real server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::tls::Tls;
use super::{connect, failure};
use crate::core::health::{Failure, HttpCheck};
use crate::core::http_check::{judge, request, Verdict, MAX_RESPONSE};

/// One HTTP(S) check of `addr`; the latency runs from `started` (before the connect) to the
/// verdict.
pub async fn run(
    check: &HttpCheck,
    tls: Option<&Tls>,
    addr: SocketAddr,
    started: Instant,
) -> Result<Duration, Failure> {
    let tcp = connect(addr).await?;
    let req = request(check, &addr.ip().to_string());
    match tls {
        Some(tls) => exchange(tls.handshake(tcp).await?, check, &req).await?,
        None => exchange(tcp, check, &req).await?,
    }
    Ok(started.elapsed())
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    check: &HttpCheck,
    req: &[u8],
) -> Result<(), Failure> {
    stream.write_all(req).await.map_err(|e| failure(&e))?;
    let mut received = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    loop {
        let room = MAX_RESPONSE - received.len();
        let ended = match stream.read(&mut buf[..room.min(4096)]).await {
            Ok(0) => true,
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                received.len() >= MAX_RESPONSE
            }
            // Nothing came before the error: the server did not answer.
            Err(e) if received.is_empty() => return Err(failure(&e)),
            // A reset or a TLS close without close_notify after the answer: judge what came.
            Err(_) => true,
        };
        match judge(check, &received, ended) {
            Verdict::Up => return Ok(()),
            Verdict::Down(why) => return Err(why),
            Verdict::More if ended => return Err(Failure::Body),
            Verdict::More => {}
        }
    }
}
