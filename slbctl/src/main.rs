//! slbctl: slb's admin CLI, flag-compatible with the original `slbcli.py`. It talks to slbd
//! over its control socket. Every flag is checked before anything is sent; the configuration
//! flags of one call go to slbd as one batch, validated as a whole and put in force together.
//! The redundancy flags (`--credentials`, `--backup-slb`, `--ssh-port`, `--with-redundancy`)
//! are stored for amgr, the failover agent; passwords never enter slb_conf.json.

mod client;
mod flags;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{ArgGroup, Parser};
use slbd::config::edit::Edit;
use slbd::ctl::proto::{Command, DEFAULT_SOCKET};

/// slbctl - a command-line interface for the slb system (Server Load Balancing)
#[derive(Parser, Debug)]
#[command(version, about, group(ArgGroup::new("lifecycle").args(["load", "unload", "reload"])))]
struct Args {
    /// Start balancing: install the rules, bring up the VIP and gateway addresses
    #[arg(long, help_heading = "management")]
    load: bool,
    /// Stop balancing: remove the addresses and the rules (slbd keeps running)
    #[arg(long, help_heading = "management")]
    unload: bool,
    /// Re-read slb_conf.json and put it in force (established flows continue)
    #[arg(long, help_heading = "management")]
    reload: bool,
    /// Work in a redundant pair with primary and backup nodes (stored for amgr, the failover agent)
    #[arg(long, help_heading = "management")]
    with_redundancy: bool,

    /// Show the actual slb configuration in JSON format (secrets never shown)
    #[arg(long, help_heading = "show")]
    show_config: bool,

    /// Check the status of slb
    #[arg(long, help_heading = "execute")]
    status: bool,
    /// With --status or --show-config: print JSON
    #[arg(long, help_heading = "execute")]
    json: bool,
    /// Clear the in-use configuration: stop balancing and forget every service
    #[arg(long, help_heading = "execute")]
    clear_config: bool,
    /// Set the slb address for incoming clients requests
    #[arg(long, value_name = "ADDRESS", help_heading = "execute")]
    address: Option<String>,
    /// Set the slb device for incoming clients requests
    #[arg(long, value_name = "ADDRESS_DEV", help_heading = "execute")]
    address_dev: Option<String>,
    /// Set the gateway address for delivering client requests to real servers
    #[arg(long, value_name = "GATEWAY", help_heading = "execute")]
    gateway: Option<String>,
    /// Set the slb device for delivering client requests to real servers
    #[arg(long, value_name = "GATEWAY_DEV", help_heading = "execute")]
    gateway_dev: Option<String>,
    /// Set the cluster network in CIDR notation
    #[arg(long, value_name = "ADDRESS/CIDR_CLASS", help_heading = "execute")]
    cluster_network: Option<String>,
    /// Set the slb SSH port (for the peer's configuration sync)
    #[arg(long, value_name = "SSH_PORT", help_heading = "execute")]
    ssh_port: Option<String>,
    /// Set the OS account the peer uses, USER (SSH keys) or USER,PASS; a password goes to the 0600 credentials file, never slb_conf.json
    #[arg(long, value_name = "USER[,PASS]", help_heading = "execute")]
    credentials: Option<String>,
    /// Set the backup slb, ADDRESS,USER,PORT (SSH keys) or ADDRESS,USER,PASS,PORT
    #[arg(
        long,
        value_name = "ADDRESS,USER[,PASS],PORT",
        help_heading = "execute"
    )]
    backup_slb: Option<String>,
    /// Set a scheduling algorithm
    #[arg(long, value_name = "ALGORITHM", help_heading = "execute",
          value_parser = ["ROUND_ROBIN", "LOWER_LATENCY", "LEAST_CONNECTIONS", "RATIO", "RANDOM", "MAGLEV"])]
    algorithm: Option<String>,
    /// Set a service's data path, [tcp/|udp/]VIPPORT=packet|offload: packet (every packet through slbd) or offload (slbd places each new flow, the kernel's conntrack carries the rest)
    #[arg(long, value_name = "[tcp/|udp/]VIPPORT=MODE", help_heading = "execute")]
    mode: Vec<String>,
    /// Add a real server, [tcp/|udp/][VIPPORT=]ADDRESS:PORT[,WEIGHT]; without VIPPORT it joins the service on VIP port PORT, else the one whose servers use PORT, else a new one
    #[arg(long, value_name = "ADDRESS:PORT", help_heading = "execute")]
    add_server: Vec<String>,
    /// Save the running configuration to slb_conf.json (atomically, mode 0600)
    #[arg(long, help_heading = "execute")]
    save_config: bool,
    /// Remove the OS host credentials
    #[arg(long, help_heading = "execute")]
    rm_credentials: bool,
    /// Remove the slb SSH port
    #[arg(long, help_heading = "execute")]
    rm_ssh_port: bool,
    /// Remove a real server (every port of that address)
    #[arg(long, value_name = "RM_SERVER", help_heading = "execute")]
    rm_server: Vec<String>,
    /// Remove a real server port
    #[arg(long, value_name = "ADDRESS:PORT", help_heading = "execute")]
    rm_server_port: Vec<String>,

    /// Drain a real server, ADDRESS:PORT or ADDRESS (every port): no new flows or persistence entries; its flows go on (until --deadline)
    #[arg(long, value_name = "SERVER", help_heading = "server states")]
    drain: Vec<String>,
    /// With --drain: cut the server's remaining flows after SECONDS (a reset to their clients; offload: their conntrack entries deleted)
    #[arg(
        long,
        value_name = "SECONDS",
        requires = "drain",
        help_heading = "server states"
    )]
    deadline: Option<u64>,
    /// Put a real server in maintenance: out of rotation at once, its flows cut
    #[arg(long, value_name = "SERVER", help_heading = "server states")]
    maint: Vec<String>,
    /// Put a drained or maintained real server back in rotation (with its slow start, if any)
    #[arg(long, value_name = "SERVER", help_heading = "server states")]
    ready: Vec<String>,
    /// Cluster mode: withdraw this balancer's announcement of the VIP (routers send it no new
    /// flows; it keeps serving what still reaches it); kept by --save-config
    #[arg(long, help_heading = "cluster", conflicts_with = "rejoin")]
    withdraw: bool,
    /// Cluster mode: let this balancer be announced again (while it can serve)
    #[arg(long, help_heading = "cluster")]
    rejoin: bool,
    /// Wait until the draining SERVER holds no flow (status says `drained`); fails after --timeout
    #[arg(long, value_name = "SERVER", help_heading = "server states")]
    wait_drained: Option<String>,
    /// With --wait-drained: give up after SECONDS
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 300,
        help_heading = "server states"
    )]
    timeout: u64,
    /// Change one setting of one service, [tcp/|udp/]VIPPORT:KEY=VALUE, KEY being its slb_conf.json field (persistence_timeout, algorithm, mode, slow_start_s, health.interval_ms, health.fall, ...)
    #[arg(long, value_name = "SERVICE:KEY=VALUE", help_heading = "execute")]
    set: Vec<String>,

    /// slbd's control socket [default: /run/slb/slbd.sock]
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// The node NAME of several on one host (slb-node-config --instance): its socket is /run/slb/NAME/slbd.sock
    #[arg(long, value_name = "NAME", global = true, conflicts_with = "socket")]
    instance: Option<String>,

    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// What slbd would do with a new flow from CLIENT to SERVICE right now, and why: its flow or persistence entry, the scheduler's choice and inputs, the servers skipped and why
    Explain {
        /// The client, ADDRESS or ADDRESS:PORT (with a port, its flow if it has one)
        client: String,
        /// The service, [tcp/|udp/]VIPPORT
        service: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

impl Args {
    /// The control socket: `--socket`, or the instance's, or the default.
    fn socket(&self) -> Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        if let Some(name) = self
            .instance
            .as_deref()
            .filter(|n| !slb_common::instance::valid(n))
        {
            bail!("--instance {name:?}: use a-z, 0-9, _ and - only");
        }
        Ok(slb_common::instance::path(
            DEFAULT_SOCKET,
            self.instance.as_deref(),
        ))
    }

    /// The configuration flags as edits, every value checked; the first bad one is the error.
    fn edits(&self) -> Result<Vec<Edit>, String> {
        let mut e = Vec::new();
        if let Some(v) = &self.address {
            e.push(Edit::Address {
                value: flags::ipv4("--address", v)?,
            });
        }
        if let Some(v) = &self.address_dev {
            e.push(Edit::AddressDev {
                value: flags::device("--address-dev", v)?,
            });
        }
        if let Some(v) = &self.gateway {
            e.push(Edit::Gateway {
                value: flags::ipv4("--gateway", v)?,
            });
        }
        if let Some(v) = &self.gateway_dev {
            e.push(Edit::GatewayDev {
                value: flags::device("--gateway-dev", v)?,
            });
        }
        if let Some(v) = &self.cluster_network {
            e.push(Edit::ClusterNetwork {
                value: flags::cidr("--cluster-network", v)?,
            });
        }
        if let Some(v) = &self.algorithm {
            e.push(Edit::Algorithm { name: v.clone() });
        }
        for v in &self.rm_server {
            e.push(Edit::RmServer {
                address: flags::ipv4("--rm-server", v)?,
            });
        }
        for v in &self.rm_server_port {
            e.push(flags::server_port(v)?);
        }
        for v in &self.add_server {
            e.push(flags::add_server(v)?);
        }
        for v in &self.mode {
            e.push(flags::mode(v)?);
        }
        if let Some(v) = &self.ssh_port {
            e.push(Edit::SshPort {
                port: Some(flags::port("--ssh-port", v)?),
            });
        }
        if self.rm_ssh_port {
            e.push(Edit::SshPort { port: None });
        }
        if self.rm_credentials {
            e.push(Edit::RmCredentials);
        }
        if let Some(v) = &self.credentials {
            e.push(flags::credentials(v)?);
        }
        if let Some(v) = &self.backup_slb {
            e.push(flags::backup_slb(v)?);
        }
        if self.with_redundancy {
            e.push(Edit::WithRedundancy);
        }
        if self.withdraw || self.rejoin {
            e.push(Edit::Withdraw {
                withdrawn: self.withdraw,
            });
        }
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (state, servers) in [
            ("ready", &self.ready),
            ("drain", &self.drain),
            ("maint", &self.maint),
        ] {
            for v in servers {
                e.push(flags::server_state(state, v, self.deadline, now_unix)?);
            }
        }
        for v in &self.set {
            e.push(flags::set(v)?);
        }
        Ok(e)
    }
}

fn main() -> ExitCode {
    slb_common::cli_docs::emit_if_asked::<Args>();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slbctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let socket = args.socket()?;
    // Everything the user typed is checked before anything reaches slbd.
    let edits = args.edits().map_err(|e| anyhow::anyhow!(e))?;
    if let Some(Sub::Explain {
        client,
        service,
        json,
    }) = &args.command
    {
        let (protocol, port) = flags::service("explain", service).map_err(anyhow::Error::msg)?;
        let e = client::explain(&socket, &protocol, port, client)?;
        if *json {
            println!("{}", serde_json::to_string_pretty(&e)?);
        } else {
            print!("{}", status::render_explanation(&e));
        }
        return Ok(());
    }
    let wait = match &args.wait_drained {
        Some(v) => Some(flags::server("--wait-drained", v).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let any = !edits.is_empty()
        || wait.is_some()
        || args.clear_config
        || args.load
        || args.unload
        || args.reload
        || args.save_config
        || args.status
        || args.show_config;
    if !any {
        bail!("nothing to do (see --help)");
    }
    let say = |cmd: Command| -> Result<()> {
        eprintln!("slbd: {}", client::run(&socket, &cmd)?);
        Ok(())
    };
    if args.clear_config {
        say(Command::ClearConfig)?;
    }
    if !edits.is_empty() {
        say(Command::Apply(edits))?;
    }
    if args.reload {
        say(Command::Reload)?;
    }
    if args.unload {
        say(Command::Unload)?;
    }
    if args.load {
        say(Command::Load)?;
    }
    if args.save_config {
        say(Command::SaveConfig)?;
    }
    if args.status {
        let st = client::status(&socket)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&st)?);
        } else {
            print!("{}", status::render(&st));
        }
    }
    if args.show_config {
        let cfg = client::show_config(&socket)?;
        println!("{}", serde_json::to_string_pretty(&cfg)?);
    }
    if let Some(server) = wait {
        wait_drained(&socket, &server, Duration::from_secs(args.timeout))?;
    }
    Ok(())
}

/// Polls status until every server `server` names is drained; an error at the timeout, or
/// at once if one of them is not draining.
fn wait_drained(socket: &std::path::Path, server: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let st = client::status(socket)?;
        let named: Vec<_> = st
            .services
            .iter()
            .flat_map(|s| s.servers.iter().map(move |r| (s, r)))
            .filter(|(_, r)| {
                r.address == server || r.address.rsplit_once(':').map(|(ip, _)| ip) == Some(server)
            })
            .collect();
        if named.is_empty() {
            bail!("--wait-drained: {server} is not a server");
        }
        if let Some((s, r)) = named
            .iter()
            .find(|(_, r)| r.admin_state != "drain" && r.admin_state != "drained")
        {
            bail!(
                "--wait-drained: {} of {} is not draining (it is {}); drain it first with --drain",
                r.address,
                s.name,
                r.admin_state
            );
        }
        let left: u64 = named.iter().map(|(_, r)| r.live_flows).sum();
        if named.iter().all(|(_, r)| r.admin_state == "drained") {
            eprintln!("slbd: {server} drained");
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "--wait-drained: {server} still holds {left} flows after {} s",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
