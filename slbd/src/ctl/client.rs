//! SHELL: one request to slbd's control socket and its reply, raw or as the type the command
//! answers with (slbctl's and amgr's client). Side effects: connects to the socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::config::RawConfig;
use crate::ctl::proto::{self, Command};
use crate::ctl::status::Status;
use anyhow::{anyhow, Context, Result};
use serde_json::Value;

/// Sends `cmd` and returns slbd's result, waiting at most `timeout` for it; says plainly
/// when slbd is not running.
pub fn call(socket: &Path, cmd: &Command, timeout: Duration) -> Result<Value> {
    let mut s = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            anyhow!(
                "slbd is not running (no control socket at {})",
                socket.display()
            )
        }
        std::io::ErrorKind::PermissionDenied => {
            anyhow!(
                "permission denied on {}: the control socket is root-only",
                socket.display()
            )
        }
        _ => anyhow!(e).context(format!("cannot connect to {}", socket.display())),
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(proto::request(cmd).as_bytes())
        .context("sending the request")?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .context("reading slbd's reply")?;
    proto::parse_reply(&line).map_err(|e| anyhow!("slbd: {e}"))
}

/// slbd's status.
pub fn status(socket: &Path, timeout: Duration) -> Result<Status> {
    typed(call(socket, &Command::Status, timeout)?, "status")
}

/// What slbd would do with a new flow from `client` to a service, and why.
pub fn explain(
    socket: &Path,
    protocol: &str,
    port: u16,
    client: &str,
    timeout: Duration,
) -> Result<crate::core::balancer::Explanation> {
    let cmd = Command::Explain {
        protocol: protocol.into(),
        port,
        client: client.into(),
    };
    typed(call(socket, &cmd, timeout)?, "explanation")
}

/// The running configuration as slb_conf.json would hold it (secrets left out).
pub fn show_config(socket: &Path, timeout: Duration) -> Result<RawConfig> {
    typed(
        call(socket, &Command::ShowConfig, timeout)?,
        "configuration",
    )
}

/// A command whose answer is a word on what slbd did (`applied`, `loaded` …).
pub fn run(socket: &Path, cmd: &Command, timeout: Duration) -> Result<String> {
    typed(call(socket, cmd, timeout)?, "answer")
}

fn typed<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v)
        .map_err(|e| anyhow!("slbd sent a {what} this slbctl cannot read: {e}"))
}
