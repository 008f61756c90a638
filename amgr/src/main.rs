//! The amgr binary: `amgr run` is the daemon; every other subcommand is an amcli-style command
//! sent to the running daemon's socket (`--peer` runs it on the dual instead).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use amgr::command::{self, Command, Request};
use amgr::config;
use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use slb_common::logging::LogFormat;

/// slb's failover agent (the Application Manager): runs slbd on one node of an active/standby
/// pair, exchanges heartbeats with the other node, moves the VIP on failure or on command, and
/// copies slb_conf.json to the STANDBY.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The running amgr's command socket (root-only) [default: /run/slb/amgr.sock]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The node NAME of several on one host (slb-node-config --instance): /etc/slb/NAME/amgr.json and /run/slb/NAME/amgr.sock
    #[arg(long, global = true, value_name = "NAME", conflicts_with = "socket")]
    instance: Option<String>,
    /// Run the command on the dual node instead (over the pair's authenticated connection).
    #[arg(long, global = true)]
    peer: bool,
    /// Print the raw JSON answer.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug, Clone)]
#[command(rename_all = "kebab-case")]
enum Cmd {
    /// Run the daemon.
    Run {
        /// amgr's configuration [default: /etc/slb/amgr.json, or the instance's]
        #[arg(long, short = 'c', value_name = "PATH")]
        config: Option<PathBuf>,
        /// Check the configuration and exit.
        #[arg(long)]
        check: bool,
        /// How log lines are written to stderr (slbd, amgr's child, gets the same): text
        /// (journald) or json (one object per line).
        #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Start slbd (after SHUTDOWN, or a FAILED one at once).
    #[command(alias = "START")]
    Start,
    /// Stop and start slbd; refused on an ACTIVE node with no STANDBY dual.
    #[command(alias = "RESTART")]
    Restart,
    /// RESTART even on an ACTIVE node with no STANDBY dual.
    #[command(name = "restart-f", alias = "RESTART-F")]
    RestartF,
    /// The original's REBOOT: close and restart the application (as RESTART).
    #[command(alias = "REBOOT")]
    Reboot,
    /// Stop slbd (OFFLINE); refused on an ACTIVE node with no STANDBY dual.
    #[command(alias = "SHUTDOWN")]
    Shutdown,
    /// SHUTDOWN even on an ACTIVE node with no STANDBY dual.
    #[command(name = "shutdown-f", alias = "SHUTDOWN-F")]
    ShutdownF,
    /// Swap ACTIVE and STANDBY (run on either node).
    #[command(alias = "SWITCH")]
    Switch,
    /// Make slbd re-read slb_conf.json.
    #[command(alias = "RELOAD")]
    Reload,
    /// STANDBY -> MAINTENANCE.
    #[command(alias = "TEST")]
    Test,
    /// MAINTENANCE -> STANDBY.
    #[command(alias = "UNTEST")]
    Untest,
    /// Make this node PRIMARY, and the dual not.
    #[command(alias = "PRIMARY")]
    Primary,
    /// MAINTENANCE -> STANDBY, and allowed to become ACTIVE again (UNINHIBITED).
    #[command(alias = "ENABLE")]
    Enable,
    /// STANDBY -> MAINTENANCE, and never ACTIVE (INHIBITED); refused on an ACTIVE node with no
    /// STANDBY dual.
    #[command(alias = "DISABLE")]
    Disable,
    /// DISABLE even on an ACTIVE node.
    #[command(name = "disable-f", alias = "DISABLE-F")]
    DisableF,
    /// Never become ACTIVE (a STANDBY stays STANDBY when the dual fails).
    #[command(alias = "INHIBIT")]
    Inhibit,
    /// May become ACTIVE again.
    #[command(alias = "UNINHIBIT")]
    Uninhibit,
    /// The pids of amgr and slbd.
    #[command(alias = "GETPID")]
    Getpid,
    /// Whether slbd's process is alive (kill -0).
    #[command(alias = "KILLPROC")]
    Killproc,
    /// Whether the dual's amgr is alive (over the peer connection).
    #[command(alias = "KILLRM")]
    Killrm,
    /// Both instances' states, the heartbeat links, the last failover, the config sync.
    #[command(alias = "QUERY")]
    Query,
}

impl Cmd {
    fn command(&self) -> Option<Command> {
        Some(match self {
            Cmd::Run { .. } => return None,
            Cmd::Start => Command::Start,
            Cmd::Restart => Command::Restart { forced: false },
            Cmd::RestartF => Command::Restart { forced: true },
            Cmd::Reboot => Command::Reboot,
            Cmd::Shutdown => Command::Shutdown { forced: false },
            Cmd::ShutdownF => Command::Shutdown { forced: true },
            Cmd::Switch => Command::Switch,
            Cmd::Reload => Command::Reload,
            Cmd::Test => Command::Test,
            Cmd::Untest => Command::Untest,
            Cmd::Primary => Command::Primary,
            Cmd::Enable => Command::Enable,
            Cmd::Disable => Command::Disable { forced: false },
            Cmd::DisableF => Command::Disable { forced: true },
            Cmd::Inhibit => Command::Inhibit,
            Cmd::Uninhibit => Command::Uninhibit,
            Cmd::Getpid => Command::GetPid,
            Cmd::Killproc => Command::KillProc,
            Cmd::Killrm => Command::KillRm,
            Cmd::Query => Command::Query,
        })
    }
}

fn main() -> ExitCode {
    slb_common::cli_docs::emit_if_asked::<Args>();
    let args = Args::parse();
    let instance = args.instance.as_deref();
    let result = match &args.cmd {
        _ if instance.is_some_and(|n| !slb_common::instance::valid(n)) => Err(anyhow!(
            "--instance {:?}: use a-z, 0-9, _ and - only",
            instance.unwrap_or_default()
        )),
        Cmd::Run {
            config,
            check,
            log_format,
        } => {
            let path = config
                .clone()
                .unwrap_or_else(|| slb_common::instance::path(config::DEFAULT_PATH, instance));
            daemon(&path, *check, *log_format)
        }
        other => {
            let cmd = other
                .command()
                .expect("every other subcommand is a command");
            let socket = args
                .socket
                .clone()
                .unwrap_or_else(|| slb_common::instance::path(config::DEFAULT_SOCKET, instance));
            client(&args, &socket, cmd)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amgr: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn daemon(path: &Path, check: bool, log_format: LogFormat) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cfg = config::parse(&text)
        .map_err(|e| anyhow!("refusing to start with {}: {e}", path.display()))?;
    if check {
        println!("{}: ok", path.display());
        return Ok(());
    }
    slb_common::logging::init(log_format);
    amgr::daemon::run(cfg, log_format)
}

fn client(args: &Args, socket: &Path, cmd: Command) -> Result<()> {
    let mut s = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            anyhow!(
                "amgr is not running (no command socket at {})",
                socket.display()
            )
        }
        std::io::ErrorKind::PermissionDenied => {
            anyhow!(
                "permission denied on {}: the command socket is root-only",
                socket.display()
            )
        }
        _ => anyhow!(e).context(format!("cannot connect to {}", socket.display())),
    })?;
    s.set_read_timeout(Some(Duration::from_secs(40)))?;
    s.write_all(
        command::request_line(Request {
            cmd,
            peer: args.peer,
        })
        .as_bytes(),
    )?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .context("reading amgr's answer")?;
    let v = command::parse_reply(&line).map_err(|e| anyhow!("{}: {e}", cmd.name()))?;
    if args.json || cmd != Command::Query {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        print!("{}", amgr::render::query(&v, now));
    }
    Ok(())
}
