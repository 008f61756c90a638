//! SHELL: one request to slbd's control socket (the client lives in slbd's library, shared
//! with amgr).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use slbd::ctl::proto::Command;

/// Sends `cmd` and returns slbd's result; says plainly when slbd is not running.
pub fn call(socket: &Path, cmd: &Command) -> Result<Value> {
    slbd::ctl::client::call(socket, cmd, Duration::from_secs(10))
}
