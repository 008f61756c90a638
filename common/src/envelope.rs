//! The JSON-lines envelope of slb's local control protocols (slbd's control socket, amgr's
//! command socket): one JSON object per line each way, versioned. Pure except [`read_line`],
//! which reads from any `BufRead` the caller hands it (a socket, or bytes in a test).
//!
//! Request: `{"v": 1, "cmd": "...", ...}`
//! Reply:   `{"v": 1, "ok": true, "result": ...}` or `{"v": 1, "ok": false, "error": "..."}`
//!
//! What each protocol's commands and results are is its own business (`slbd::ctl::proto`,
//! `amgr::command`); this module owns the frame around them, so both refuse garbage the same
//! way and with the same words.

use std::io::BufRead;

use serde_json::{json, Map, Value};

pub const VERSION: u64 = 1;
/// Longest request line accepted, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// Why a request line was refused before its command was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("request longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("request is not JSON: {0}")]
    NotJson(String),
    #[error("request is not a JSON object")]
    NotObject,
    #[error("protocol version {0} is not supported (this side speaks {VERSION})")]
    Version(String),
    #[error("unexpected field {0:?} for this command")]
    UnexpectedField(String),
}

/// The object of one request line (without its newline), its version checked.
pub fn parse_request(line: &[u8]) -> Result<Map<String, Value>, EnvelopeError> {
    if line.len() >= MAX_LINE {
        return Err(EnvelopeError::TooLong);
    }
    let v: Value =
        serde_json::from_slice(line).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
    let Value::Object(obj) = v else {
        return Err(EnvelopeError::NotObject);
    };
    match obj.get("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => Ok(obj),
        Some(other) => Err(EnvelopeError::Version(other.to_string())),
        None => Err(EnvelopeError::Version("(missing)".into())),
    }
}

/// Refuses a request carrying a field its command does not take (`v` and `cmd` always pass).
pub fn only_fields(obj: &Map<String, Value>, allowed: &[&str]) -> Result<(), EnvelopeError> {
    match obj
        .keys()
        .find(|k| *k != "v" && *k != "cmd" && !allowed.contains(&k.as_str()))
    {
        Some(extra) => Err(EnvelopeError::UnexpectedField(extra.clone())),
        None => Ok(()),
    }
}

/// The request line for command `cmd` with `fields` (an object, or null for none), newline
/// included.
pub fn request(cmd: &str, fields: Value) -> String {
    let mut v = json!({"v": VERSION, "cmd": cmd});
    if let Value::Object(extra) = fields {
        for (k, x) in extra {
            v[k] = x;
        }
    }
    format!("{v}\n")
}

/// A success reply line.
pub fn ok(result: Value) -> String {
    format!("{}\n", json!({"v": VERSION, "ok": true, "result": result}))
}

/// An error reply line.
pub fn error(message: &str) -> String {
    format!("{}\n", json!({"v": VERSION, "ok": false, "error": message}))
}

/// A reply line read back: the result, or the error the other side sent. `who` names that
/// side in the messages of a reply that cannot be read.
pub fn parse_reply(line: &str, who: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(line)
        .map_err(|e| format!("{who} sent a reply that is not JSON: {e}"))?;
    if v.get("v").and_then(Value::as_u64) != Some(VERSION) {
        return Err(format!(
            "{who} speaks another protocol version: {}",
            v.get("v").unwrap_or(&Value::Null)
        ));
    }
    match v.get("ok") {
        Some(Value::Bool(true)) => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
        Some(Value::Bool(false)) => Err(v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("(no reason given)")
            .to_string()),
        _ => Err(format!("{who} sent a reply without \"ok\"")),
    }
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line, without its newline.
    Whole(Vec<u8>),
    /// The peer closed the connection before sending anything more.
    Closed,
    /// [`MAX_LINE`] bytes without a newline: the caller answers once and hangs up rather
    /// than read the rest.
    TooLong,
    /// The connection ended in the middle of a line: what came of it.
    Cut(Vec<u8>),
}

/// Reads one request line, never buffering more than [`MAX_LINE`] bytes of it.
pub fn read_line(reader: &mut impl BufRead) -> std::io::Result<Line> {
    use std::io::Read;
    let mut line = Vec::new();
    let n = reader.take(MAX_LINE as u64).read_until(b'\n', &mut line)?;
    Ok(match line.last() {
        _ if n == 0 => Line::Closed,
        Some(b'\n') => {
            line.pop();
            Line::Whole(line)
        }
        _ if n >= MAX_LINE => Line::TooLong,
        _ => Line::Cut(line),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_request_round_trips_with_its_fields() {
        let line = request("apply", json!({"edits": [1, 2]}));
        assert!(line.ends_with('\n'));
        let obj = parse_request(line.trim_end().as_bytes()).unwrap();
        assert_eq!(obj["cmd"], "apply");
        assert_eq!(obj["edits"], json!([1, 2]));
        assert_eq!(only_fields(&obj, &["edits"]), Ok(()));
        assert_eq!(
            only_fields(&obj, &[]),
            Err(EnvelopeError::UnexpectedField("edits".into()))
        );
        let plain = request("status", Value::Null);
        assert_eq!(plain, "{\"cmd\":\"status\",\"v\":1}\n");
    }

    #[test]
    fn garbage_is_refused_with_what_is_wrong() {
        let cases: &[(&[u8], EnvelopeError)] = &[
            (
                b"hello",
                EnvelopeError::NotJson("expected value at line 1 column 1".into()),
            ),
            (b"[1,2]", EnvelopeError::NotObject),
            (
                br#"{"cmd":"status"}"#,
                EnvelopeError::Version("(missing)".into()),
            ),
            (
                br#"{"v":2,"cmd":"status"}"#,
                EnvelopeError::Version("2".into()),
            ),
            (
                br#"{"v":"1","cmd":"status"}"#,
                EnvelopeError::Version("\"1\"".into()),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse_request(line).as_ref(), Err(want));
        }
        assert_eq!(
            parse_request(&vec![b' '; MAX_LINE]),
            Err(EnvelopeError::TooLong)
        );
    }

    #[test]
    fn replies_carry_a_result_or_the_other_sides_error() {
        assert_eq!(
            parse_reply(&ok(json!({"a": 1})), "slbd"),
            Ok(json!({"a": 1}))
        );
        assert_eq!(parse_reply(&error("no"), "slbd"), Err("no".to_string()));
        let e = parse_reply("garbage", "amgr").unwrap_err();
        assert!(e.starts_with("amgr sent a reply that is not JSON"), "{e}");
        let e = parse_reply(r#"{"v":9,"ok":true}"#, "slbd").unwrap_err();
        assert!(e.contains("another protocol version: 9"), "{e}");
        let e = parse_reply(r#"{"v":1}"#, "slbd").unwrap_err();
        assert!(e.contains("without \"ok\""), "{e}");
    }

    #[test]
    fn lines_are_read_whole_bounded_or_reported_cut() {
        let mut r = std::io::Cursor::new(b"one\ntwo".to_vec());
        assert_eq!(read_line(&mut r).unwrap(), Line::Whole(b"one".to_vec()));
        assert_eq!(read_line(&mut r).unwrap(), Line::Cut(b"two".to_vec()));
        assert_eq!(read_line(&mut r).unwrap(), Line::Closed);
        let mut long = std::io::Cursor::new(vec![b'x'; MAX_LINE + 10]);
        assert_eq!(read_line(&mut long).unwrap(), Line::TooLong);
        assert_eq!(
            long.position(),
            MAX_LINE as u64,
            "read no further than the limit"
        );
    }

    proptest! {
        #[test]
        fn no_request_line_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_request(&bytes);
        }

        #[test]
        fn no_reply_line_panics(text in ".{0,200}") {
            let _ = parse_reply(&text, "x");
        }
    }
}
