//! The HTTP health check's protocol, pure: the request it sends and the verdict on the bytes
//! the server answered so far (expected status, expected body text). The shell
//! (`shell/probe/http.rs`) owns the socket, the timeout and the reading; this module never
//! sees either, so it can be tested on byte fixtures.
//!
//! Deliberately small: an HTTP/1.1 request with `Connection: close` (RFC 9112 §9.6), so the
//! server ends the answer by closing, or earlier by its `Content-Length`. A chunked body is
//! searched as it arrives (chunk-size lines included), which finds any text that does not
//! straddle a chunk boundary — health pages are one chunk.

use super::health::{Failure, HttpCheck};

/// The most of a body searched for the expected text; a server that sends more without it
/// fails the check rather than keep the prober reading.
pub const MAX_BODY: usize = 64 * 1024;
/// The most of a status line and headers read before the answer counts as not HTTP.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most the shell needs to read for any verdict.
pub const MAX_RESPONSE: usize = MAX_HEAD + MAX_BODY;

/// The check's request for `host` (the Host header: the check's own, or the server's IP).
pub fn request(check: &HttpCheck, host: &str) -> Vec<u8> {
    let host = check.host.as_deref().unwrap_or(host);
    format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: slb-health\r\n\r\n",
        check.path
    )
    .into_bytes()
}

/// What the bytes received so far decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Read more (unless the connection ended: then call again with `ended`).
    More,
    Up,
    Down(Failure),
}

/// Judges `received`, the answer so far; `ended` says the server closed (nothing more comes).
pub fn judge(check: &HttpCheck, received: &[u8], ended: bool) -> Verdict {
    let Some(line_end) = find(received, b"\n") else {
        return more_or(received.len() >= MAX_HEAD || ended);
    };
    let Some(status) = status(&received[..line_end]) else {
        return Verdict::Down(Failure::Body);
    };
    if !check.expect_status.matches(status) {
        return Verdict::Down(Failure::Status(status));
    }
    let Some(expect) = check.expect_body.as_deref() else {
        return Verdict::Up;
    };
    let Some((head_len, sep)) = head_end(received) else {
        return more_or(received.len() >= MAX_HEAD || ended);
    };
    if head_len > MAX_HEAD {
        return Verdict::Down(Failure::Body);
    }
    let body = &received[head_len + sep..];
    let body = &body[..body.len().min(MAX_BODY)];
    if find(body, expect.as_bytes()).is_some() {
        return Verdict::Up;
    }
    let complete = content_length(&received[..head_len]).is_some_and(|n| body.len() >= n);
    more_or(ended || complete || body.len() >= MAX_BODY)
}

/// `More`, or the body failure once nothing more can help.
fn more_or(done: bool) -> Verdict {
    if done {
        Verdict::Down(Failure::Body)
    } else {
        Verdict::More
    }
}

/// The status of a status line `HTTP/1.x 503 Reason` (RFC 9112 §4), CR optional.
fn status(line: &[u8]) -> Option<u16> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.strip_prefix(b"HTTP/")?;
    let mut parts = rest.splitn(3, |&b| b == b' ');
    let version = parts.next()?;
    if version.len() != 3 || !version[0].is_ascii_digit() || version[1] != b'.' {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = std::str::from_utf8(code).ok()?.parse::<u16>().ok()?;
    (100..=599).contains(&code).then_some(code)
}

/// Where the headers end: (length of status line and headers, length of the blank line).
fn head_end(received: &[u8]) -> Option<(usize, usize)> {
    let crlf = find(received, b"\r\n\r\n").map(|at| (at, 4));
    let lf = find(received, b"\n\n").map(|at| (at, 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The Content-Length header's value, when there is exactly one that parses.
fn content_length(head: &[u8]) -> Option<usize> {
    let mut found = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        let value = std::str::from_utf8(&line[colon + 1..]).ok()?.trim();
        if found.is_some() {
            return None;
        }
        found = Some(value.parse::<usize>().ok()?);
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::health::ExpectStatus;
    use proptest::prelude::*;

    fn check(expect_body: Option<&str>) -> HttpCheck {
        HttpCheck {
            path: "/health".into(),
            host: None,
            expect_status: ExpectStatus::Range(200, 399),
            expect_body: expect_body.map(str::to_string),
        }
    }

    #[test]
    fn the_request_names_the_path_and_host_and_asks_to_close() {
        assert_eq!(
            request(&check(None), "172.16.0.2"),
            b"GET /health HTTP/1.1\r\nHost: 172.16.0.2\r\nConnection: close\r\n\
              User-Agent: slb-health\r\n\r\n"
                .to_vec()
        );
        let mut c = check(None);
        c.host = Some("app.example".into());
        assert!(String::from_utf8(request(&c, "172.16.0.2"))
            .unwrap()
            .contains("\r\nHost: app.example\r\n"));
    }

    #[test]
    fn the_status_decides_as_soon_as_its_line_is_in() {
        let c = check(None);
        assert_eq!(judge(&c, b"HTTP/1.1 20", false), Verdict::More);
        assert_eq!(judge(&c, b"HTTP/1.1 200 OK\r\n", false), Verdict::Up);
        assert_eq!(judge(&c, b"HTTP/1.0 302 Found\n", false), Verdict::Up);
        assert_eq!(
            judge(&c, b"HTTP/1.1 503 Service Unavailable\r\n", false),
            Verdict::Down(Failure::Status(503))
        );
        assert_eq!(judge(&c, b"HTTP/1.1 204\r\n", false), Verdict::Up);
    }

    #[test]
    fn a_list_of_codes_accepts_only_those() {
        let mut c = check(None);
        c.expect_status = ExpectStatus::Codes(vec![200, 204]);
        assert_eq!(
            judge(&c, b"HTTP/1.1 204 No Content\r\n", false),
            Verdict::Up
        );
        assert_eq!(
            judge(&c, b"HTTP/1.1 301 Moved\r\n", false),
            Verdict::Down(Failure::Status(301))
        );
    }

    #[test]
    fn what_is_not_http_is_a_body_failure() {
        let c = check(None);
        for bad in [
            &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n",
            b"HTTP/1.1 99 Odd\r\n",
            b"HTTP/x.1 200 OK\r\n",
            b"\n",
        ] {
            assert_eq!(
                judge(&c, bad, false),
                Verdict::Down(Failure::Body),
                "{bad:?}"
            );
        }
        assert_eq!(judge(&c, b"", true), Verdict::Down(Failure::Body));
        assert_eq!(
            judge(&c, b"HTTP/1.1 200", true),
            Verdict::Down(Failure::Body)
        );
        assert_eq!(
            judge(&c, &[b'x'; MAX_HEAD], false),
            Verdict::Down(Failure::Body),
            "no status line within the head limit"
        );
    }

    #[test]
    fn the_body_must_hold_the_expected_text() {
        let c = check(Some("healthy"));
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
        assert_eq!(judge(&c, &head[..20], false), Verdict::More);
        assert_eq!(judge(&c, &head, false), Verdict::More);
        assert_eq!(judge(&c, &head, true), Verdict::Down(Failure::Body));
        let ok = [&head[..], b"all healthy\n"].concat();
        assert_eq!(judge(&c, &ok, false), Verdict::Up);
        let sick = [&head[..], b"sick\n"].concat();
        assert_eq!(judge(&c, &sick, false), Verdict::More);
        assert_eq!(judge(&c, &sick, true), Verdict::Down(Failure::Body));
        assert_eq!(
            judge(&c, b"HTTP/1.1 500 Oops\r\n\r\nhealthy", false),
            Verdict::Down(Failure::Status(500)),
            "the status is checked first"
        );
        assert_eq!(
            judge(&c, b"HTTP/1.0 200 OK\n\nhealthy", false),
            Verdict::Up,
            "bare LF line ends"
        );
    }

    #[test]
    fn content_length_ends_the_body_before_the_close() {
        let c = check(Some("healthy"));
        let sick = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nsick\n";
        assert_eq!(judge(&c, sick, false), Verdict::Down(Failure::Body));
        let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nsick\n";
        assert_eq!(judge(&c, partial, false), Verdict::More);
    }

    #[test]
    fn only_the_first_max_body_bytes_are_searched() {
        let c = check(Some("healthy"));
        let mut answer = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        answer.extend(std::iter::repeat_n(b'.', MAX_BODY));
        assert_eq!(judge(&c, &answer, false), Verdict::Down(Failure::Body));
        answer.extend_from_slice(b"healthy");
        assert_eq!(judge(&c, &answer, false), Verdict::Down(Failure::Body));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_decide_once_ended(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            body in proptest::option::of("[a-z]{1,8}"),
        ) {
            let c = check(body.as_deref());
            let _ = judge(&c, &bytes, false);
            prop_assert_ne!(judge(&c, &bytes, true), Verdict::More);
        }

        #[test]
        fn answers_with_random_tails_never_panic(
            status in 100u16..600,
            tail in proptest::collection::vec(any::<u8>(), 0..1024),
        ) {
            let c = check(Some("ok"));
            let answer = [format!("HTTP/1.1 {status} X\r\n").as_bytes(), &tail[..]].concat();
            let v = judge(&c, &answer, true);
            if !(200..=399).contains(&status) {
                prop_assert_eq!(v, Verdict::Down(Failure::Status(status)));
            }
        }
    }
}
