//! SHELL: one health probe of one server, as a service's [`CheckConfig`] asks: a TCP connect,
//! a UDP request that wants any reply, an HTTP GET ([`http`]), over TLS or a bare TLS
//! handshake ([`tls`]), or a program that decides ([`script`]). Every probe is bounded: one
//! timeout over all of its awaits, bounded reads, and a script that overstays is killed.
//! The loop that runs probes every interval is `super::prober`.
//! Side effects: connections and datagrams to the real servers, child processes.

pub mod http;
pub mod script;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::health::{CheckConfig, Failure, HttpCheck, ScriptCheck};
use crate::core::net::Protocol;

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The check's latency when it passed (LOWER_LATENCY's input), or why it failed.
    pub result: Result<Duration, Failure>,
    /// A weight the check set: `Some(None)` restores the configured weight.
    pub weight: Option<Option<u32>>,
}

impl From<Result<Duration, Failure>> for Outcome {
    fn from(result: Result<Duration, Failure>) -> Self {
        Outcome {
            result,
            weight: None,
        }
    }
}

/// How one server is probed, prepared once per (service, server) so that a TLS
/// configuration (and its CA file) is built once, not at every check.
pub struct Probe {
    addr: SocketAddr,
    timeout: Duration,
    kind: Kind,
}

enum Kind {
    Connect,
    Udp(Vec<u8>),
    Http(HttpCheck, Option<Arc<tls::Tls>>),
    Tls(Arc<tls::Tls>),
    Script(ScriptCheck, Vec<(&'static str, String)>),
}

impl Probe {
    /// The probe `check` asks for of server `addr` of `service` (`tcp/80`).
    pub fn new(check: &CheckConfig, protocol: Protocol, service: &str, addr: SocketAddr) -> Probe {
        let tls = check.tls.as_ref().map(|t| {
            let host = check.http.as_ref().and_then(|h| h.host.as_deref());
            Arc::new(tls::Tls::new(t, host, addr, service))
        });
        let kind = match (&check.script, &check.http, tls, protocol) {
            (Some(s), _, _, _) => Kind::Script(
                s.clone(),
                vec![
                    ("SLB_SERVER_ADDRESS", addr.ip().to_string()),
                    ("SLB_SERVER_PORT", addr.port().to_string()),
                    ("SLB_SERVICE", service.to_string()),
                ],
            ),
            (None, _, _, Protocol::Udp) => Kind::Udp(check.udp_payload.clone()),
            (None, Some(h), tls, Protocol::Tcp) => Kind::Http(h.clone(), tls),
            (None, None, Some(tls), Protocol::Tcp) => Kind::Tls(tls),
            (None, None, None, Protocol::Tcp) => Kind::Connect,
        };
        Probe {
            addr,
            timeout: check.timeout,
            kind,
        }
    }

    /// Probes once; never panics, returns within the check's (or the script's) timeout.
    pub async fn run(&self) -> Outcome {
        let started = Instant::now();
        let (addr, t) = (self.addr, self.timeout);
        let result = match &self.kind {
            Kind::Script(s, env) => return script::run(s, env).await,
            Kind::Connect => {
                within(t, async {
                    connect(addr).await?;
                    Ok(started.elapsed())
                })
                .await
            }
            Kind::Udp(payload) => within(t, udp(addr, payload, started)).await,
            Kind::Http(h, tls) => within(t, http::run(h, tls.as_deref(), addr, started)).await,
            Kind::Tls(tls) => {
                within(t, async {
                    tls.handshake(connect(addr).await?).await?;
                    Ok(started.elapsed())
                })
                .await
            }
        };
        result.into()
    }
}

/// `probe`'s result, or a timeout once `timeout` has passed.
async fn within(
    timeout: Duration,
    probe: impl std::future::Future<Output = Result<Duration, Failure>>,
) -> Result<Duration, Failure> {
    tokio::time::timeout(timeout, probe)
        .await
        .unwrap_or(Err(Failure::Timeout))
}

/// The failure an I/O error stands for.
pub fn failure(e: &std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Failure::Refused,
        std::io::ErrorKind::TimedOut => Failure::Timeout,
        _ => Failure::Error,
    }
}

async fn connect(addr: SocketAddr) -> Result<tokio::net::TcpStream, Failure> {
    tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| failure(&e))
}

async fn udp(addr: SocketAddr, payload: &[u8], started: Instant) -> Result<Duration, Failure> {
    let attempt = async {
        let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
        // Connected, so an ICMP port unreachable comes back as ECONNREFUSED on recv.
        sock.connect(addr).await?;
        sock.send(payload).await?;
        let mut buf = [0u8; 2048];
        sock.recv(&mut buf).await
    };
    match attempt.await {
        Ok(_) => Ok(started.elapsed()),
        Err(e) => Err(failure(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::health::ExpectStatus;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-connection server on loopback that reads the request, then answers `answer`
    /// (None: says nothing and holds the connection).
    async fn server(
        answer: Option<&'static [u8]>,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 1024];
            let n = s.read(&mut req).await.unwrap();
            req.truncate(n);
            match answer {
                Some(a) => s.write_all(a).await.unwrap(),
                None => tokio::time::sleep(Duration::from_secs(5)).await,
            }
            req
        });
        (addr, task)
    }

    fn http_check(expect_body: Option<&str>) -> CheckConfig {
        CheckConfig {
            timeout: Duration::from_millis(200),
            http: Some(HttpCheck {
                path: "/health".into(),
                host: None,
                expect_status: ExpectStatus::Range(200, 399),
                expect_body: expect_body.map(str::to_string),
            }),
            ..CheckConfig::default()
        }
    }

    fn probe_once(check: CheckConfig, answer: Option<&'static [u8]>) -> (Outcome, Vec<u8>) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let (addr, task) = server(answer).await;
                let outcome = Probe::new(&check, Protocol::Tcp, "tcp/80", addr)
                    .run()
                    .await;
                task.abort();
                (outcome, task.await.unwrap_or_default())
            })
    }

    #[test]
    fn an_http_probe_sends_its_request_and_judges_the_answer() {
        let (got, req) = probe_once(http_check(Some("ok")), Some(b"HTTP/1.0 200 OK\r\n\r\nok\n"));
        assert!(got.result.is_ok(), "{got:?}");
        let req = String::from_utf8(req).unwrap();
        assert!(
            req.starts_with("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"),
            "{req:?}"
        );
        let (got, _) = probe_once(http_check(None), Some(b"HTTP/1.1 503 Busy\r\n\r\n"));
        assert_eq!(got.result, Err(Failure::Status(503)));
        let (got, _) = probe_once(http_check(Some("ok")), Some(b"HTTP/1.0 200 OK\r\n\r\nno\n"));
        assert_eq!(got.result, Err(Failure::Body), "closed without the text");
    }

    #[test]
    fn a_server_that_never_answers_times_out_within_the_timeout() {
        let started = Instant::now();
        let (got, _) = probe_once(http_check(None), None);
        assert_eq!(got.result, Err(Failure::Timeout));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    fn tls_check(ca_file: Option<std::path::PathBuf>) -> CheckConfig {
        CheckConfig {
            tls: Some(crate::core::health::TlsCheck {
                ca_file,
                server_name: None,
            }),
            ..CheckConfig::default()
        }
    }

    #[test]
    fn a_tls_probe_of_a_plain_server_fails_as_tls() {
        let check = tls_check(None);
        let (got, _) = probe_once(check, Some(b"HTTP/1.0 400 Bad Request\r\n\r\n"));
        assert_eq!(got.result, Err(Failure::Tls));
    }

    #[test]
    fn a_tls_check_whose_ca_file_cannot_be_read_fails_every_check() {
        let check = tls_check(Some("/nonexistent/ca.pem".into()));
        let (got, _) = probe_once(check, Some(b""));
        assert_eq!(got.result, Err(Failure::Tls));
    }
}
