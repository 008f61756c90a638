//! SHELL: the metrics endpoint. A plain HTTP/1.0-style responder on one thread: `GET /metrics`
//! answers with the caller's rendering, anything else with 404/405, one request per connection.
//! Scrapes are rare and small, so connections are served one at a time under short deadlines
//! (the whole request within 2 s, the whole answer within 2 s): a stuck or trickling client
//! delays a scrape by at most that and never reaches the data path.
//! Side effects: a listening TCP socket, a thread.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::CONTENT_TYPE;
use crate::serve::Deadline;

const IO_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_REQUEST: usize = 8192;

/// Binds `listen` and serves `render()` on `/metrics` from a thread named `metrics`; a render
/// that fails (the daemon did not answer in time) is a 503 naming why, never an empty 200.
pub fn serve<F>(listen: SocketAddr, render: F) -> std::io::Result<SocketAddr>
where
    F: Fn() -> Result<String, String> + Send + 'static,
{
    let listener = TcpListener::bind(listen)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = answer(c, &render) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(bound)
}

/// What a request line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Metrics { head: bool },
    NotFound,
    BadMethod,
    BadRequest,
}

/// Routes a request's head (everything up to the blank line, or what arrived of it).
pub fn route(head: &[u8]) -> Route {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => Route::Metrics {
            head: method == "HEAD",
        },
        ("GET" | "HEAD", _) => Route::NotFound,
        _ => Route::BadMethod,
    }
}

fn answer(c: TcpStream, render: &dyn Fn() -> Result<String, String>) -> std::io::Result<()> {
    // Deadlines for the whole request and the whole answer, not per read or write: a client
    // trickling a byte at a time would otherwise hold the endpoint for a timeout per byte.
    let mut request = Deadline::new(&c, IO_TIMEOUT);
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = request.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, ctype, body, head_only) = match route(&head) {
        Route::Metrics { head } => match render() {
            Ok(body) => ("200 OK", CONTENT_TYPE, body, head),
            Err(why) => ("503 Service Unavailable", "text/plain", why + "\n", head),
        },
        Route::NotFound => (
            "404 Not Found",
            "text/plain",
            "metrics are at /metrics\n".into(),
            false,
        ),
        Route::BadMethod => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".into(),
            false,
        ),
        Route::BadRequest => (
            "400 Bad Request",
            "text/plain",
            "bad request\n".into(),
            false,
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    Deadline::new(&c, IO_TIMEOUT).write_all(&out)
}

/// One scrape of `http://addr/metrics`: the body, or an error naming what went wrong. For
/// tests and tools.
pub fn scrape(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut c = TcpStream::connect_timeout(&addr, timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: slb\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    c.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "answered {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            route(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head: true }
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(b"\x16\x03\x01\x02\x00garbage"), Route::BadRequest);
        assert_eq!(route(b""), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
    }

    #[test]
    fn serves_the_rendering_and_refuses_the_rest() {
        let addr = serve("127.0.0.1:0".parse().unwrap(), || Ok("x 1\n# EOF\n".into())).unwrap();
        assert_eq!(
            scrape(addr, Duration::from_secs(2)).unwrap(),
            "x 1\n# EOF\n"
        );
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"garbage\r\n\r\n").unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        // A client that sends nothing and closes does not stop the server.
        drop(TcpStream::connect(addr).unwrap());
        assert!(scrape(addr, Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn a_failed_rendering_is_a_503_not_an_empty_scrape() {
        let addr = serve("127.0.0.1:0".parse().unwrap(), || Err("busy".into())).unwrap();
        let e = scrape(addr, Duration::from_secs(2)).unwrap_err();
        assert!(e.to_string().contains("503"), "{e}");
    }

    #[test]
    fn a_trickling_client_holds_the_endpoint_for_the_deadline_only() {
        let addr = serve("127.0.0.1:0".parse().unwrap(), || Ok("x 1\n".into())).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let trickler = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            // A byte well within every per-read timeout, never a whole request.
            while !s.load(std::sync::atomic::Ordering::Relaxed) && c.write_all(b"G").is_ok() {
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        let t0 = std::time::Instant::now();
        let got = scrape(addr, Duration::from_secs(5));
        let took = t0.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        trickler.join().unwrap();
        assert_eq!(got.unwrap(), "x 1\n");
        assert!(took < Duration::from_secs(3), "the scrape waited {took:?}");
    }
}
