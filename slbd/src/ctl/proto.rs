//! The control protocol between slbctl and slbd: one JSON object per line each way, versioned.
//! Pure: parsing works on bytes and never sees a socket, so garbage, oversized or unknown
//! requests are refused here, with a reply that says why.
//!
//! Request:  `{"v": 1, "cmd": "status"}`
//! Reply:    `{"v": 1, "ok": true, "result": {...}}` or `{"v": 1, "ok": false, "error": "..."}`

use serde_json::{json, Value};

use crate::edit::Edit;

pub const VERSION: u64 = 1;
/// Longest request line accepted, newline included.
pub const MAX_LINE: usize = 64 * 1024;
/// Where slbd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/slb/slbd.sock";

/// What a client may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// State, algorithm, and per service and server: health, latency, flows, packets, bytes.
    Status,
    /// The running configuration as `slb_conf.json` would hold it, secrets left out.
    ShowConfig,
    /// Changes, applied together after the result is validated as a whole.
    Apply(Vec<Edit>),
    /// Start balancing: rules, then the VIP and gateway addresses.
    Load,
    /// Stop balancing: addresses, then rules; slbd keeps running.
    Unload,
    /// Re-read slb_conf.json and put it in force (validated first).
    Reload,
    /// Write the running configuration to slb_conf.json (atomically, mode 0600).
    SaveConfig,
    /// Stop balancing and forget every service (addresses and settings stay).
    ClearConfig,
    /// Send gratuitous ARP for the VIP and gateway addresses again (when balancing).
    Announce,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::ShowConfig => "show_config",
            Command::Apply(_) => "apply",
            Command::Load => "load",
            Command::Unload => "unload",
            Command::Reload => "reload",
            Command::SaveConfig => "save_config",
            Command::ClearConfig => "clear_config",
            Command::Announce => "announce",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("request longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("request is not JSON: {0}")]
    NotJson(String),
    #[error("request is not a JSON object")]
    NotObject,
    #[error("protocol version {0} is not supported (slbd speaks {VERSION})")]
    Version(String),
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("unexpected field {0:?} for this command")]
    UnexpectedField(String),
    #[error("bad edits: {0}")]
    BadEdits(String),
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Command, ProtoError> {
    if line.len() >= MAX_LINE {
        return Err(ProtoError::TooLong);
    }
    let v: Value = serde_json::from_slice(line).map_err(|e| ProtoError::NotJson(e.to_string()))?;
    let obj = v.as_object().ok_or(ProtoError::NotObject)?;
    match obj.get("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
        Some(other) => return Err(ProtoError::Version(other.to_string())),
        None => return Err(ProtoError::Version("(missing)".into())),
    }
    let cmd = match obj.get("cmd").and_then(Value::as_str) {
        Some("status") => Command::Status,
        Some("show_config") => Command::ShowConfig,
        Some("load") => Command::Load,
        Some("unload") => Command::Unload,
        Some("reload") => Command::Reload,
        Some("save_config") => Command::SaveConfig,
        Some("clear_config") => Command::ClearConfig,
        Some("announce") => Command::Announce,
        Some("apply") => {
            let edits = obj.get("edits").cloned().unwrap_or(Value::Null);
            let edits: Vec<Edit> =
                serde_json::from_value(edits).map_err(|e| ProtoError::BadEdits(e.to_string()))?;
            Command::Apply(edits)
        }
        Some(other) => return Err(ProtoError::UnknownCommand(other.to_string())),
        None => {
            return Err(ProtoError::UnknownCommand(
                obj.get("cmd").map_or("(missing)".into(), |c| c.to_string()),
            ))
        }
    };
    let allowed =
        |k: &str| k == "v" || k == "cmd" || (k == "edits" && matches!(cmd, Command::Apply(_)));
    if let Some(extra) = obj.keys().find(|k| !allowed(k)) {
        return Err(ProtoError::UnexpectedField(extra.clone()));
    }
    Ok(cmd)
}

/// The request line for `cmd`, newline included.
pub fn request(cmd: &Command) -> String {
    let mut v = json!({"v": VERSION, "cmd": cmd.name()});
    if let Command::Apply(edits) = cmd {
        v["edits"] = serde_json::to_value(edits).expect("edits serialise");
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

/// Reads a reply line: the result, or the error slbd sent.
pub fn parse_reply(line: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(line)
        .map_err(|e| format!("slbd sent a reply that is not JSON: {e}"))?;
    if v.get("v").and_then(Value::as_u64) != Some(VERSION) {
        return Err(format!(
            "slbd speaks another protocol version: {}",
            v.get("v").unwrap_or(&Value::Null)
        ));
    }
    match v.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
        _ => Err(v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown error")
            .to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_each_command() {
        let edits = vec![Edit::Algorithm {
            name: "RATIO".into(),
        }];
        for cmd in [
            Command::Status,
            Command::ShowConfig,
            Command::Apply(edits),
            Command::Load,
            Command::Unload,
            Command::Reload,
            Command::SaveConfig,
            Command::ClearConfig,
        ] {
            let line = request(&cmd);
            assert!(line.ends_with('\n'));
            assert_eq!(parse_request(line.trim_end().as_bytes()), Ok(cmd));
        }
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        let cases: &[(&[u8], ProtoError)] = &[
            (
                b"hello",
                ProtoError::NotJson("expected value at line 1 column 1".into()),
            ),
            (b"[1,2]", ProtoError::NotObject),
            (
                br#"{"cmd":"status"}"#,
                ProtoError::Version("(missing)".into()),
            ),
            (
                br#"{"v":2,"cmd":"status"}"#,
                ProtoError::Version("2".into()),
            ),
            (
                br#"{"v":"1","cmd":"status"}"#,
                ProtoError::Version("\"1\"".into()),
            ),
            (
                br#"{"v":1,"cmd":"reboot"}"#,
                ProtoError::UnknownCommand("reboot".into()),
            ),
            (
                br#"{"v":1}"#,
                ProtoError::UnknownCommand("(missing)".into()),
            ),
            (
                br#"{"v":1,"cmd":"status","x":1}"#,
                ProtoError::UnexpectedField("x".into()),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(
                parse_request(line).as_ref(),
                Err(want),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(
            parse_request(&vec![b' '; MAX_LINE]),
            Err(ProtoError::TooLong)
        );
    }

    #[test]
    fn replies_carry_results_or_errors() {
        assert_eq!(parse_reply(&ok(json!({"a": 1}))), Ok(json!({"a": 1})));
        assert_eq!(parse_reply(&error("no")), Err("no".to_string()));
        assert!(parse_reply("garbage").unwrap_err().contains("not JSON"));
        assert!(parse_reply(r#"{"v":9,"ok":true}"#)
            .unwrap_err()
            .contains("another protocol version"));
    }

    proptest! {
        #[test]
        fn parse_request_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_request(&bytes);
        }
    }
}
