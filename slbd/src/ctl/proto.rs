//! The control protocol between slbctl (and amgr) and slbd: its commands, inside the
//! JSON-lines envelope every slb control socket shares (`slb_common::envelope`). Pure: parsing
//! works on bytes and never sees a socket, so garbage, oversized or unknown requests are
//! refused here, with a reply that says why.
//!
//! Request:  `{"v": 1, "cmd": "status"}`
//! Reply:    `{"v": 1, "ok": true, "result": {...}}` or `{"v": 1, "ok": false, "error": "..."}`

use serde_json::{json, Value};
use slb_common::envelope::{self, EnvelopeError};

use crate::config::edit::Edit;
use crate::config::RawConfig;
use crate::ctl::status::Status;

pub use slb_common::envelope::{MAX_LINE, VERSION};
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
    /// Start balancing while the dual still does (a planned switch, make before break): as
    /// `load`, but the dual's replication session goes on being applied until the dual lets
    /// go and ends it, so the flows it places in the overlap are known here too.
    TakeOver,
    /// A planned switch is about to start (the dual takes over, then this node lets go): the
    /// dual's newest flows may answer here meanwhile, and are taken as they are after a
    /// takeover.
    HandOver,
    /// While balancing, take the dual's flows (a healed split: both balance, and the dual
    /// gives up the VIP once this answers): its snapshot with this node's own flows winning,
    /// then its changes until it lets go.
    Merge,
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
    /// What slbd would do with a new flow from `client` (`IP` or `IP:PORT`) to the service
    /// on `protocol`/`port`, and why.
    Explain {
        protocol: String,
        port: u16,
        client: String,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::ShowConfig => "show_config",
            Command::Apply(_) => "apply",
            Command::Load => "load",
            Command::TakeOver => "take_over",
            Command::HandOver => "hand_over",
            Command::Merge => "merge",
            Command::Unload => "unload",
            Command::Reload => "reload",
            Command::SaveConfig => "save_config",
            Command::ClearConfig => "clear_config",
            Command::Announce => "announce",
            Command::Explain { .. } => "explain",
        }
    }
}

/// What slbd answers a command with: its status, its running configuration, or a word on
/// what it did (`applied`, `loaded`, `saved to …`). The JSON `result` is the variant's own
/// JSON, so a client that knows what it asked reads it back as that type.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Reply {
    Status(Box<Status>),
    Config(Box<RawConfig>),
    Explanation(Box<crate::core::balancer::Explanation>),
    Done(String),
}

impl From<&str> for Reply {
    fn from(s: &str) -> Reply {
        Reply::Done(s.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("bad edits: {0}")]
    BadEdits(String),
    #[error("bad {0}: {1}")]
    BadField(String, String),
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Command, ProtoError> {
    let obj = envelope::parse_request(line)?;
    let cmd = match obj.get("cmd").and_then(Value::as_str) {
        Some("status") => Command::Status,
        Some("show_config") => Command::ShowConfig,
        Some("load") => Command::Load,
        Some("take_over") => Command::TakeOver,
        Some("hand_over") => Command::HandOver,
        Some("merge") => Command::Merge,
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
        Some("explain") => {
            let field = |k: &str| obj.get(k).cloned().unwrap_or(Value::Null);
            let bad =
                |k: &str, e: serde_json::Error| ProtoError::BadField(k.to_string(), e.to_string());
            Command::Explain {
                protocol: serde_json::from_value(field("protocol"))
                    .map_err(|e| bad("protocol", e))?,
                port: serde_json::from_value(field("port")).map_err(|e| bad("port", e))?,
                client: serde_json::from_value(field("client")).map_err(|e| bad("client", e))?,
            }
        }
        Some(other) => return Err(ProtoError::UnknownCommand(other.to_string())),
        None => {
            return Err(ProtoError::UnknownCommand(
                obj.get("cmd").map_or("(missing)".into(), |c| c.to_string()),
            ))
        }
    };
    let takes: &[&str] = match cmd {
        Command::Apply(_) => &["edits"],
        Command::Explain { .. } => &["protocol", "port", "client"],
        _ => &[],
    };
    envelope::only_fields(&obj, takes)?;
    Ok(cmd)
}

/// The request line for `cmd`, newline included.
pub fn request(cmd: &Command) -> String {
    let fields = match cmd {
        Command::Apply(edits) => json!({"edits": edits}),
        Command::Explain {
            protocol,
            port,
            client,
        } => json!({"protocol": protocol, "port": port, "client": client}),
        _ => Value::Null,
    };
    envelope::request(cmd.name(), fields)
}

pub use slb_common::envelope::{error, ok};

/// Reads a reply line: the result, or the error slbd sent.
pub fn parse_reply(line: &str) -> Result<Value, String> {
    envelope::parse_reply(line, "slbd")
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
            Command::TakeOver,
            Command::HandOver,
            Command::Merge,
            Command::Unload,
            Command::Reload,
            Command::SaveConfig,
            Command::ClearConfig,
            Command::Explain {
                protocol: "tcp".into(),
                port: 80,
                client: "10.0.0.5:4000".into(),
            },
        ] {
            let line = request(&cmd);
            assert!(line.ends_with('\n'));
            assert_eq!(parse_request(line.trim_end().as_bytes()), Ok(cmd));
        }
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        let cases: &[(&[u8], ProtoError)] = &[
            (b"[1,2]", EnvelopeError::NotObject.into()),
            (
                br#"{"cmd":"status"}"#,
                EnvelopeError::Version("(missing)".into()).into(),
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
                EnvelopeError::UnexpectedField("x".into()).into(),
            ),
            (
                br#"{"v":1,"cmd":"status","edits":[]}"#,
                EnvelopeError::UnexpectedField("edits".into()).into(),
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
        assert!(matches!(
            parse_request(br#"{"v":1,"cmd":"apply","edits":"x"}"#),
            Err(ProtoError::BadEdits(_))
        ));
        assert_eq!(
            parse_request(&vec![b' '; MAX_LINE]),
            Err(EnvelopeError::TooLong.into())
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
