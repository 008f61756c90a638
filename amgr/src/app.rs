//! SHELL: the managed application, slbd: started as amgr's child in standby (it balances only
//! when told to `load`), driven through its control socket, watched for exit.
//! Side effects: a child process, Unix socket requests, signals.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command as Process, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use slbd::ctl::proto::Command;

pub struct App {
    pub binary: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    log_format: slb_common::logging::LogFormat,
    /// slbd's flow replication arguments (empty: off).
    replication: Vec<String>,
    child: Option<Child>,
}

/// The slbd arguments that turn flow replication on: the pair's key, the port, and the
/// links (this node's address and the dual's) in the order slbd should try them.
pub fn replication_args(cfg: &crate::config::Config) -> Vec<String> {
    let Some(port) = cfg.replication_port else {
        return Vec::new();
    };
    let mut args = vec![
        "--pair-key".to_string(),
        cfg.key_file.display().to_string(),
        "--replication-port".to_string(),
        port.to_string(),
    ];
    for l in &cfg.links {
        args.push("--replication-link".into());
        args.push(format!("{}={}", l.local, l.peer));
    }
    args
}

impl App {
    pub fn new(
        binary: PathBuf,
        config: PathBuf,
        socket: PathBuf,
        log_format: slb_common::logging::LogFormat,
        replication: Vec<String>,
    ) -> App {
        App {
            binary,
            config,
            socket,
            log_format,
            replication,
            child: None,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts slbd in standby. It dies with amgr (PR_SET_PDEATHSIG): an slbd left without its
    /// manager would keep the VIP while the dual takes it.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("slbd is already running");
        }
        let mut cmd = Process::new(&self.binary);
        cmd.arg("--standby")
            .arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--log-format", self.log_format.name()])
            .args(&self.replication);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        tracing::info!(app = "slbd", pid = child.id(), "application started");
        self.child = Some(child);
        Ok(())
    }

    /// The exit status once slbd has exited (reaped; the next start begins afresh).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGTERM (slbd unloads: addresses, then rules), then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                tracing::info!(app = "slbd", pid = pid.as_raw(), "application stopped");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        tracing::warn!(
            app = "slbd",
            pid = pid.as_raw(),
            "application killed: it did not stop in time"
        );
    }

    /// SIGKILL, for a hung slbd.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
    }

    /// One request to slbd's control socket.
    pub fn call(&self, cmd: &Command, timeout: Duration) -> Result<Value> {
        slbd::ctl::client::call(&self.socket, cmd, timeout)
    }
}
