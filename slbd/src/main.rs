//! The slbd binary: parses its flags, loads and validates `slb_conf.json`, and runs the daemon.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use slbd::config::{self, Config};

/// slb's balancing daemon: NAT-mode layer-4 load balancing of TCP and UDP through NFQUEUE.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The configuration file.
    #[arg(long, short = 'c', value_name = "PATH", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// The control socket slbctl talks to (root-only).
    #[arg(long, value_name = "PATH", default_value = slbd::ctl::proto::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Check the configuration, print what would be installed, and exit.
    #[arg(long)]
    check: bool,
    /// Start without balancing (as the STANDBY of a pair): remove any table and VIP or gateway
    /// address a previous slbd left, and wait for `load` on the control socket.
    #[arg(long)]
    standby: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slbd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let (raw, config) = Config::load_raw(&args.config)
        .with_context(|| format!("refusing to start with {}", args.config.display()))?;
    if args.check {
        let queues = slbd::ruleset::QueueRange {
            first: config.queue.num,
            count: config.queue.count.max(1),
        };
        println!("{}: ok", args.config.display());
        for r in slbd::ruleset::plan(&config, queues, &[]).rules {
            println!("{}: {r}", r.chain.name);
        }
        for a in slbd::daemon::managed_addrs(&config) {
            println!("address {a}");
        }
        return Ok(());
    }
    slbd::daemon::run(raw, config, &args.config, &args.socket, args.standby)
}
