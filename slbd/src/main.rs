//! The slbd binary: parses its flags, loads and validates `slb_conf.json`, and runs the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use slb_common::logging::LogFormat;
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
    /// How log lines are written to stderr: text (journald) or json (one object per line).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Flow replication with the pair's other slbd (stateful failover): the pair's key file
    /// (0600). amgr passes this and the links; needs at least one --replication-link.
    #[arg(long, value_name = "PATH", requires = "replication_link")]
    pair_key: Option<PathBuf>,
    /// A pair link for flow replication, this node's address and the dual's (repeatable, in
    /// order of preference).
    #[arg(long, value_name = "LOCAL=PEER", value_parser = parse_link, requires = "pair_key")]
    replication_link: Vec<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
    /// The TCP port flow replication listens on (on each link's local address).
    #[arg(long, value_name = "PORT", default_value_t = slbd::wire::replication::DEFAULT_PORT)]
    replication_port: u16,
}

fn parse_link(v: &str) -> Result<(std::net::Ipv4Addr, std::net::Ipv4Addr), String> {
    let (l, p) = v
        .split_once('=')
        .ok_or_else(|| format!("{v:?}: expected LOCAL=PEER, two IPv4 addresses"))?;
    let ip = |s: &str| {
        s.parse::<std::net::Ipv4Addr>()
            .map_err(|_| format!("{s:?} is not an IPv4 address (in {v:?})"))
    };
    Ok((ip(l)?, ip(p)?))
}

fn main() -> ExitCode {
    slb_common::cli_docs::emit_if_asked::<Args>();
    let args = Args::parse();
    slb_common::logging::init(args.log_format);
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
        let queues = slbd::core::ruleset::QueueRange {
            first: config.queue.num,
            count: config.queue.count.max(1),
        };
        println!("{}: ok", args.config.display());
        let targets = slbd::core::balancer::Dataplane::new(&config, 0).offload_targets();
        for r in slbd::core::ruleset::plan(&config, queues, &[], &targets).rules {
            println!("{}: {r}", r.chain.name);
        }
        for a in config.managed_addrs() {
            println!("address {a}");
        }
        if let Some(m) = config.metrics_listen {
            println!("metrics http://{m}/metrics");
        }
        if let Some(a) = &config.announce {
            println!(
                "announce {}",
                slbd::core::announce::route_text(config.vip, a)
            );
        }
        return Ok(());
    }
    if config.announce.is_some() && args.pair_key.is_some() {
        anyhow::bail!(
            "--pair-key with announce in {}: a cluster's balancers are all active and \
             replicate no flows; run either as a pair (amgr) or in a cluster",
            args.config.display()
        );
    }
    let replication = match &args.pair_key {
        Some(path) => Some(slbd::shell::replication::Settings {
            key: slb_common::pair_key::read_key(path)
                .with_context(|| format!("the pair's key {}", path.display()))?,
            port: args.replication_port,
            links: args.replication_link.clone(),
        }),
        None => None,
    };
    slbd::daemon::run(
        raw,
        config,
        &args.config,
        &args.socket,
        args.standby,
        replication,
    )
}
