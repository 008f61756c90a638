//! SHELL: requests to slbd's control socket, through the client in slbd's library (shared
//! with amgr), with slbctl's timeout. Side effects: connects to the socket.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use slbd::config::RawConfig;
use slbd::ctl::proto::Command;
use slbd::ctl::status::Status;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A command answered with a word on what slbd did; says plainly when slbd is not running.
pub fn run(socket: &Path, cmd: &Command) -> Result<String> {
    slbd::ctl::client::run(socket, cmd, TIMEOUT)
}

pub fn status(socket: &Path) -> Result<Status> {
    slbd::ctl::client::status(socket, TIMEOUT)
}

pub fn show_config(socket: &Path) -> Result<RawConfig> {
    slbd::ctl::client::show_config(socket, TIMEOUT)
}

pub fn explain(
    socket: &Path,
    protocol: &str,
    port: u16,
    client: &str,
) -> Result<slbd::core::balancer::Explanation> {
    slbd::ctl::client::explain(socket, protocol, port, client, TIMEOUT)
}
