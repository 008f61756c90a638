//! The amcli-style commands and the line protocol of amgr's command socket, inside the
//! JSON-lines envelope slb's control sockets share (`slb_common::envelope`). Pure: names
//! parse to commands, request lines parse to requests, and anything else is refused with a
//! reason.
//!
//! Request: `{"v": 1, "cmd": "SWITCH", "peer": false}`
//! Reply:   `{"v": 1, "ok": true, "result": ...}` or `{"v": 1, "ok": false, "error": "..."}`

use serde_json::{json, Value};
use slb_common::envelope;

pub use slb_common::envelope::{MAX_LINE, VERSION};

/// The original amcli's commands (appendix B of the thesis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Start the application (slbd).
    Start,
    /// Stop and start it again; the non-forced form refuses on an ACTIVE without STANDBY.
    Restart {
        forced: bool,
    },
    /// The original defines it as RESTART; kept as its own name for amcli users.
    Reboot,
    Shutdown {
        forced: bool,
    },
    /// Swap ACTIVE and STANDBY.
    Switch,
    /// Re-read slb_conf.json.
    Reload,
    Test,
    Untest,
    /// Make this node PRIMARY (and the dual not).
    Primary,
    Enable,
    Disable {
        forced: bool,
    },
    Inhibit,
    Uninhibit,
    GetPid,
    /// `kill -0` on the application's process: is it alive?
    KillProc,
    /// `kill -0` on the dual's amgr (through the peer connection).
    KillRm,
    Query,
}

impl Command {
    pub const ALL: [Command; 20] = [
        Command::Start,
        Command::Restart { forced: false },
        Command::Shutdown { forced: false },
        Command::Switch,
        Command::Reload,
        Command::Test,
        Command::Untest,
        Command::Primary,
        Command::Enable,
        Command::Disable { forced: false },
        Command::Inhibit,
        Command::Uninhibit,
        Command::GetPid,
        Command::KillProc,
        Command::KillRm,
        Command::Query,
        Command::Reboot,
        Command::Shutdown { forced: true },
        Command::Disable { forced: true },
        Command::Restart { forced: true },
    ];

    pub fn name(self) -> &'static str {
        match self {
            Command::Start => "START",
            Command::Restart { forced: false } => "RESTART",
            Command::Restart { forced: true } => "RESTART-F",
            Command::Reboot => "REBOOT",
            Command::Shutdown { forced: false } => "SHUTDOWN",
            Command::Shutdown { forced: true } => "SHUTDOWN-F",
            Command::Switch => "SWITCH",
            Command::Reload => "RELOAD",
            Command::Test => "TEST",
            Command::Untest => "UNTEST",
            Command::Primary => "PRIMARY",
            Command::Enable => "ENABLE",
            Command::Disable { forced: false } => "DISABLE",
            Command::Disable { forced: true } => "DISABLE-F",
            Command::Inhibit => "INHIBIT",
            Command::Uninhibit => "UNINHIBIT",
            Command::GetPid => "GETPID",
            Command::KillProc => "KILLPROC",
            Command::KillRm => "KILLRM",
            Command::Query => "QUERY",
        }
    }

    /// Case-insensitive, `_` and `-` alike (`shutdown_f`, `SHUTDOWN-F`).
    pub fn parse(name: &str) -> Option<Command> {
        let wanted = name.to_ascii_uppercase().replace('_', "-");
        Command::ALL.into_iter().find(|c| c.name() == wanted)
    }
}

/// One request on the command socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub cmd: Command,
    /// Run it on the dual instead (through the authenticated peer connection).
    pub peer: bool,
}

pub fn request_line(r: Request) -> String {
    envelope::request(r.cmd.name(), json!({"peer": r.peer}))
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let obj = envelope::parse_request(line).map_err(|e| e.to_string())?;
    envelope::only_fields(&obj, &["peer"]).map_err(|e| e.to_string())?;
    let name = obj
        .get("cmd")
        .and_then(Value::as_str)
        .ok_or("missing \"cmd\"")?;
    let cmd = Command::parse(name).ok_or_else(|| format!("unknown command {name:?}"))?;
    let peer = match obj.get("peer") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("\"peer\" must be true or false, not {other}")),
    };
    Ok(Request { cmd, peer })
}

pub use slb_common::envelope::{error, ok};

pub fn parse_reply(line: &str) -> Result<Value, String> {
    envelope::parse_reply(line, "amgr")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_round_trips_by_name() {
        for c in Command::ALL {
            assert_eq!(Command::parse(c.name()), Some(c));
            assert_eq!(Command::parse(&c.name().to_lowercase()), Some(c));
            let r = Request { cmd: c, peer: true };
            let line = request_line(r);
            assert_eq!(parse_request(line.trim_end().as_bytes()), Ok(r));
        }
        assert_eq!(
            Command::parse("shutdown_f"),
            Some(Command::Shutdown { forced: true })
        );
        let names: std::collections::HashSet<_> = Command::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), 20);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let cases: [(&[u8], &str); 7] = [
            (b"hello", "not JSON"),
            (b"[1]", "not a JSON object"),
            (br#"{"v": 2, "cmd": "QUERY"}"#, "version"),
            (br#"{"v": 1}"#, "missing \"cmd\""),
            (br#"{"v": 1, "cmd": "EXPLODE"}"#, "unknown command"),
            (br#"{"v": 1, "cmd": "QUERY", "x": 1}"#, "unexpected field"),
            (
                br#"{"v": 1, "cmd": "QUERY", "peer": "yes"}"#,
                "\"peer\" must be",
            ),
        ];
        for (line, why) in cases {
            let e = parse_request(line).unwrap_err();
            assert!(e.contains(why), "{e:?} lacks {why:?}");
        }
        assert!(parse_request(&vec![b' '; MAX_LINE]).is_err());
    }

    #[test]
    fn replies_round_trip() {
        assert_eq!(parse_reply(&ok(json!(3))), Ok(json!(3)));
        assert_eq!(parse_reply(&error("no")), Err("no".into()));
        assert!(parse_reply("junk").is_err());
    }
}
