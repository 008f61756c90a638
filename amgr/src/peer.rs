//! The authenticated TCP connection between the two amgr instances (the original ran its
//! commands between Application Managers over TCP too). One request per connection:
//!
//! ```text
//! server → {"nonce": "<32 hex>"}
//! client → {"body": "<request JSON>", "mac": HMAC(key, "req" | nonce | body)}
//! server → {"body": "<reply JSON>",   "mac": HMAC(key, "rep" | nonce | body)}
//! ```
//! The server's fresh nonce makes a recorded request worthless, and the reply's MAC under the
//! same nonce ties it to this request. The framing and the requests are pure; [`serve`] and
//! [`call`] are the shell (sockets, threads, timeouts).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use slb_common::auth;
use slb_common::serve::{self, Deadline, Policy};

use crate::command::Command;

pub const NONCE_LEN: usize = 16;
const MAX_LINE: usize = 64 * 1024;
/// A stranger's connection holds its thread at most this long before it authenticates.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// What one amgr asks the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum PeerRequest {
    /// SWITCH from the ACTIVE side: become ACTIVE while it still is; it lets go once this
    /// answers (make before break). `seq` is the last heartbeat it sent as ACTIVE: one no
    /// newer that a link delivers late must not look like the dual being ACTIVE again.
    TakeOver {
        from: u32,
        #[serde(default)]
        seq: u64,
    },
    /// SWITCH from the STANDBY side: release the VIP so the asker can take it.
    Release { from: u32 },
    /// A healed split, from the node giving up the VIP: take my flows (slbd `merge`); it lets
    /// go once this answers.
    Merge { from: u32 },
    /// KILLRM: are you there?
    Ping { from: u32 },
    /// PRIMARY on the dual: stop being PRIMARY.
    DemotePrimary { from: u32 },
    /// Any command run on this node on the dual's behalf (`amgr --peer ...`).
    Run { from: u32, cmd: String },
}

impl PeerRequest {
    pub fn from(&self) -> u32 {
        match self {
            PeerRequest::TakeOver { from, .. }
            | PeerRequest::Release { from }
            | PeerRequest::Merge { from }
            | PeerRequest::Ping { from }
            | PeerRequest::DemotePrimary { from }
            | PeerRequest::Run { from, .. } => *from,
        }
    }

    pub fn run(from: u32, cmd: Command) -> PeerRequest {
        PeerRequest::Run {
            from,
            cmd: cmd.name().into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("malformed peer message: {0}")]
    Malformed(String),
    #[error("peer message failed authentication")]
    Mac,
    #[error("peer unreachable: {0}")]
    Io(String),
    #[error("peer refused: {0}")]
    Refused(String),
}

#[derive(Debug, Clone, Copy)]
enum Dir {
    Request,
    Reply,
}

fn tag(dir: Dir) -> &'static [u8] {
    match dir {
        Dir::Request => b"req",
        Dir::Reply => b"rep",
    }
}

/// The MAC binds the direction and this exchange's nonce to the body.
fn parts<'a>(nonce: &'a [u8; NONCE_LEN], dir: Dir, body: &'a str) -> [&'a [u8]; 3] {
    [tag(dir), nonce, body.as_bytes()]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

pub fn challenge_line(nonce: &[u8; NONCE_LEN]) -> String {
    format!("{}\n", json!({ "nonce": hex(nonce) }))
}

pub fn parse_challenge(line: &str) -> Result<[u8; NONCE_LEN], PeerError> {
    let v: Value = serde_json::from_str(line).map_err(|e| PeerError::Malformed(e.to_string()))?;
    v.get("nonce")
        .and_then(Value::as_str)
        .and_then(unhex)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| PeerError::Malformed("no nonce".into()))
}

fn seal(key: &[u8], nonce: &[u8; NONCE_LEN], dir: Dir, body: &Value) -> String {
    let text = body.to_string();
    let m = auth::tag(key, &parts(nonce, dir, &text));
    format!("{}\n", json!({"body": text, "mac": hex(&m)}))
}

fn open(key: &[u8], nonce: &[u8; NONCE_LEN], dir: Dir, line: &str) -> Result<Value, PeerError> {
    let v: Value = serde_json::from_str(line).map_err(|e| PeerError::Malformed(e.to_string()))?;
    let body = v
        .get("body")
        .and_then(Value::as_str)
        .ok_or_else(|| PeerError::Malformed("no body".into()))?;
    let tag = v
        .get("mac")
        .and_then(Value::as_str)
        .and_then(unhex)
        .ok_or_else(|| PeerError::Malformed("no mac".into()))?;
    // The whole tag, not a truncation: this framing always sends all of it.
    if tag.len() != auth::TAG_LEN {
        return Err(PeerError::Mac);
    }
    auth::verify(key, &parts(nonce, dir, body), &tag).map_err(|_| PeerError::Mac)?;
    serde_json::from_str(body).map_err(|e| PeerError::Malformed(e.to_string()))
}

pub fn seal_request(key: &[u8], nonce: &[u8; NONCE_LEN], req: &PeerRequest) -> String {
    seal(
        key,
        nonce,
        Dir::Request,
        &serde_json::to_value(req).expect("requests serialise"),
    )
}

pub fn open_request(
    key: &[u8],
    nonce: &[u8; NONCE_LEN],
    line: &str,
) -> Result<PeerRequest, PeerError> {
    request_from_body(open(key, nonce, Dir::Request, line)?)
}

/// What an authenticated request body asks for.
pub fn request_from_body(body: Value) -> Result<PeerRequest, PeerError> {
    serde_json::from_value(body).map_err(|e| PeerError::Malformed(e.to_string()))
}

pub fn seal_reply(key: &[u8], nonce: &[u8; NONCE_LEN], reply: &Result<Value, String>) -> String {
    let v = match reply {
        Ok(r) => json!({"ok": true, "result": r}),
        Err(e) => json!({"ok": false, "error": e}),
    };
    seal(key, nonce, Dir::Reply, &v)
}

pub fn open_reply(key: &[u8], nonce: &[u8; NONCE_LEN], line: &str) -> Result<Value, PeerError> {
    reply_from_body(&open(key, nonce, Dir::Reply, line)?)
}

/// What an authenticated reply body answers.
pub fn reply_from_body(v: &Value) -> Result<Value, PeerError> {
    match v.get("ok") {
        Some(Value::Bool(true)) => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
        Some(Value::Bool(false)) => Err(PeerError::Refused(
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("(no reason)")
                .into(),
        )),
        _ => Err(PeerError::Malformed("reply without ok".into())),
    }
}

/// A peer request for the agent, with where its answer goes.
pub struct Incoming {
    pub req: PeerRequest,
    pub reply: mpsc::Sender<Result<Value, String>>,
}

fn read_line(s: &mut impl Read) -> std::io::Result<String> {
    let mut line = String::new();
    BufReader::new(s.take(MAX_LINE as u64)).read_line(&mut line)?;
    if !line.ends_with('\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "line too long or cut short",
        ));
    }
    Ok(line)
}

/// Listens on each address (retrying the bind until it exists) and hands authenticated
/// requests to `tx`. Only the dual's addresses (`dual`, its end of each link) get past the
/// accept; each listening address has its own cap ([`serve::CAP_PAIR`]), so a flood on one
/// link's network leaves the other link's port to the dual. Unauthenticated or malformed
/// requests are logged and answered with nothing.
pub fn serve(
    addrs: Vec<SocketAddr>,
    dual: Vec<SocketAddr>,
    key: Vec<u8>,
    tx: mpsc::Sender<Incoming>,
) {
    let dual: Vec<IpAddr> = dual.iter().map(SocketAddr::ip).collect();
    for addr in addrs {
        let (key, tx) = (key.clone(), tx.clone());
        let policy = Policy::new("peer", serve::CAP_PAIR)
            .read_timeout(HANDSHAKE_TIMEOUT)
            .check(serve::only_from(dual.clone()));
        if let Err(e) = serve::start_tcp(addr, policy, move |conn, peer| {
            handle(conn, peer, &key, &tx)
        }) {
            tracing::error!(listen = %addr, error = %e, "no thread for the peer command port");
        }
    }
}

fn handle(mut conn: TcpStream, from: SocketAddr, key: &[u8], tx: &mpsc::Sender<Incoming>) {
    let _ = conn.set_nodelay(true);
    let Ok(n) = auth::nonce::<NONCE_LEN>() else {
        tracing::error!("no random source for a peer challenge");
        return;
    };
    if conn.write_all(challenge_line(&n).as_bytes()).is_err() {
        return;
    }
    // The whole request within the handshake's time, however it trickles in.
    let line = read_line(&mut Deadline::new(&conn, HANDSHAKE_TIMEOUT));
    let req = match line.map_err(|e| PeerError::Io(e.to_string())) {
        Ok(line) => open_request(key, &n, &line),
        Err(e) => Err(e),
    };
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(peer = %from, error = %e, "peer command refused");
            return;
        }
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    if tx
        .send(Incoming {
            req,
            reply: reply_tx,
        })
        .is_err()
    {
        return;
    }
    let reply = reply_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| Err("the agent did not answer in time".into()));
    let _ = conn.write_all(seal_reply(key, &n, &reply).as_bytes());
}

/// Sends `req` to the first of `addrs` that answers and returns the dual's reply.
pub fn call(
    addrs: &[SocketAddr],
    key: &[u8],
    req: &PeerRequest,
    timeout: Duration,
) -> Result<Value, PeerError> {
    let mut last = PeerError::Io("no peer address".into());
    for addr in addrs {
        let mut s = match TcpStream::connect_timeout(addr, timeout.min(Duration::from_secs(1))) {
            Ok(s) => s,
            Err(e) => {
                last = PeerError::Io(format!("{addr}: {e}"));
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(timeout));
        let exchange = (|| {
            let n = parse_challenge(&read_line(&mut s).map_err(|e| PeerError::Io(e.to_string()))?)?;
            s.write_all(seal_request(key, &n, req).as_bytes())
                .map_err(|e| PeerError::Io(e.to_string()))?;
            let line = read_line(&mut s).map_err(|e| PeerError::Io(e.to_string()))?;
            open_reply(key, &n, &line)
        })();
        match exchange {
            Err(PeerError::Io(e)) => last = PeerError::Io(format!("{addr}: {e}")),
            other => return other,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn the_peer_fuzz_seeds_are_these_sealed_lines() {
        let n = [7u8; NONCE_LEN];
        for (name, line) in [
            (
                "sealed_take_over",
                seal_request(KEY, &n, &PeerRequest::TakeOver { from: 2, seq: 41 }),
            ),
            (
                "sealed_run",
                seal_request(KEY, &n, &PeerRequest::run(1, Command::Test)),
            ),
            (
                "sealed_reply",
                seal_reply(KEY, &n, &Ok(json!({"state": "ACTIVE"}))),
            ),
            (
                "sealed_refusal",
                seal_reply(KEY, &n, &Err("not ACTIVE".into())),
            ),
            ("challenge_line", challenge_line(&n)),
        ] {
            slb_common::fuzz_seed::check("peer", name, line.as_bytes()).unwrap();
        }
    }

    #[test]
    fn a_sealed_request_opens_under_the_same_key_and_nonce_only() {
        let n = [7u8; NONCE_LEN];
        let req = PeerRequest::TakeOver { from: 2, seq: 41 };
        let line = seal_request(KEY, &n, &req);
        assert_eq!(open_request(KEY, &n, &line), Ok(req.clone()));
        assert_eq!(
            open_request(b"another key, same length.......", &n, &line),
            Err(PeerError::Mac)
        );
        // A recorded request replayed against a fresh nonce.
        assert_eq!(
            open_request(KEY, &[8u8; NONCE_LEN], &line),
            Err(PeerError::Mac)
        );
        // A reply cannot be passed off as a request.
        let reply = seal_reply(KEY, &n, &Ok(json!({"op": "take_over", "from": 2})));
        assert_eq!(open_request(KEY, &n, &reply), Err(PeerError::Mac));
    }

    #[test]
    fn any_tampering_is_caught() {
        let n = [1u8; NONCE_LEN];
        let line = seal_request(KEY, &n, &PeerRequest::Release { from: 1 });
        let tampered = line.replace("\\\"from\\\":1", "\\\"from\\\":2");
        assert_ne!(tampered, line);
        assert_eq!(open_request(KEY, &n, &tampered), Err(PeerError::Mac));
        for junk in ["", "{}", "[]", "{\"body\": 1, \"mac\": \"00\"}", "nope"] {
            assert!(matches!(
                open_request(KEY, &n, junk),
                Err(PeerError::Malformed(_))
            ));
        }
    }

    #[test]
    fn replies_carry_refusals() {
        let n = [3u8; NONCE_LEN];
        let line = seal_reply(KEY, &n, &Err("INHIBITED".into()));
        assert_eq!(
            open_reply(KEY, &n, &line),
            Err(PeerError::Refused("INHIBITED".into()))
        );
        let line = seal_reply(KEY, &n, &Ok(json!(1)));
        assert_eq!(open_reply(KEY, &n, &line), Ok(json!(1)));
        assert_eq!(parse_challenge(&challenge_line(&n)), Ok(n));
    }

    #[test]
    fn unknown_requests_are_malformed() {
        let n = [0u8; NONCE_LEN];
        let line = seal(
            KEY,
            &n,
            Dir::Request,
            &json!({"op": "format_disk", "from": 1}),
        );
        assert!(matches!(
            open_request(KEY, &n, &line),
            Err(PeerError::Malformed(_))
        ));
    }
}
