//! slbctl: slb's admin CLI, flag-compatible with the original `slbcli.py`. It talks to slbd
//! over its control socket. Today: `--status` (`--json`), `--show-config`, `--version`; the
//! configuration flags are declared (so `--help` matches the original) and refuse to run until
//! slbd can apply changes live.

mod client;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{ArgGroup, Parser};
use slbd::ctl::proto::{Command, DEFAULT_SOCKET};

/// slbctl - a command-line interface for the slb system (Server Load Balancing)
#[derive(Parser, Debug)]
#[command(version, about, group(ArgGroup::new("lifecycle").args(["load", "unload", "reload"])))]
struct Args {
    /// Load the slb module and initializes the slb functions (not yet implemented)
    #[arg(long, help_heading = "management")]
    load: bool,
    /// Unload the slb module and stop the slb functions (not yet implemented)
    #[arg(long, help_heading = "management")]
    unload: bool,
    /// Reload the slb module and restart the slb functions (not yet implemented)
    #[arg(long, help_heading = "management")]
    reload: bool,
    /// Work in a redundant pair with primary and backup nodes (not yet implemented)
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
    /// Clear the actual in-use configuration of slb (not yet implemented)
    #[arg(long, help_heading = "execute")]
    clear_config: bool,
    /// Set the slb address for incoming clients requests (not yet implemented)
    #[arg(long, value_name = "ADDRESS", help_heading = "execute")]
    address: Option<String>,
    /// Set the slb device for incoming clients requests (not yet implemented)
    #[arg(long, value_name = "ADDRESS_DEV", help_heading = "execute")]
    address_dev: Option<String>,
    /// Set the gateway address for delivering client requests to real servers (not yet implemented)
    #[arg(long, value_name = "GATEWAY", help_heading = "execute")]
    gateway: Option<String>,
    /// Set the slb device for delivering client requests to real servers (not yet implemented)
    #[arg(long, value_name = "GATEWAY_DEV", help_heading = "execute")]
    gateway_dev: Option<String>,
    /// Set the cluster network in CIDR notation (not yet implemented)
    #[arg(long, value_name = "ADDRESS/CIDR_CLASS", help_heading = "execute")]
    cluster_network: Option<String>,
    /// Set the slb SSH port (not yet implemented)
    #[arg(long, value_name = "SSH_PORT", help_heading = "execute")]
    ssh_port: Option<String>,
    /// Set the OS host credentials for the redundant system (not yet implemented)
    #[arg(long, value_name = "USER,...", help_heading = "execute")]
    credentials: Option<String>,
    /// Set the backup slb for the redundant system (not yet implemented)
    #[arg(long, value_name = "ADDRESS,USER,...,PORT", help_heading = "execute")]
    backup_slb: Option<String>,
    /// Set a scheduling algorithm (not yet implemented)
    #[arg(long, value_name = "ALGORITHM", help_heading = "execute")]
    algorithm: Option<String>,
    /// Add a real server, [tcp/|udp/]ADDRESS:PORT[,WEIGHT] (not yet implemented)
    #[arg(long, value_name = "ADDRESS:PORT", help_heading = "execute")]
    add_server: Vec<String>,
    /// Save the running configuration to slb_conf.json (not yet implemented)
    #[arg(long, help_heading = "execute")]
    save_config: bool,
    /// Remove the OS host credentials (not yet implemented)
    #[arg(long, help_heading = "execute")]
    rm_credentials: bool,
    /// Remove the slb SSH port (not yet implemented)
    #[arg(long, help_heading = "execute")]
    rm_ssh_port: bool,
    /// Remove a real server (not yet implemented)
    #[arg(long, value_name = "RM_SERVER", help_heading = "execute")]
    rm_server: Vec<String>,
    /// Remove a real server port (not yet implemented)
    #[arg(long, value_name = "ADDRESS:PORT", help_heading = "execute")]
    rm_server_port: Vec<String>,

    /// slbd's control socket
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

impl Args {
    /// The flags that would change the configuration, by their command-line names.
    fn changes(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let flags: [(&'static str, bool); 22] = [
            ("--load", self.load),
            ("--unload", self.unload),
            ("--reload", self.reload),
            ("--with-redundancy", self.with_redundancy),
            ("--clear-config", self.clear_config),
            ("--address", self.address.is_some()),
            ("--address-dev", self.address_dev.is_some()),
            ("--gateway", self.gateway.is_some()),
            ("--gateway-dev", self.gateway_dev.is_some()),
            ("--cluster-network", self.cluster_network.is_some()),
            ("--ssh-port", self.ssh_port.is_some()),
            ("--credentials", self.credentials.is_some()),
            ("--backup-slb", self.backup_slb.is_some()),
            ("--algorithm", self.algorithm.is_some()),
            ("--add-server", !self.add_server.is_empty()),
            ("--save-config", self.save_config),
            ("--rm-credentials", self.rm_credentials),
            ("--rm-ssh-port", self.rm_ssh_port),
            ("--rm-server", !self.rm_server.is_empty()),
            ("--rm-server-port", !self.rm_server_port.is_empty()),
            ("--status", false),
            ("--show-config", false),
        ];
        for (name, set) in flags {
            if set {
                v.push(name);
            }
        }
        v
    }
}

fn main() -> ExitCode {
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
    let changes = args.changes();
    if !changes.is_empty() {
        bail!(
            "{} not implemented yet: slbd cannot apply configuration changes live yet; edit slb_conf.json and restart slbd",
            changes.join(", ")
        );
    }
    if !args.status && !args.show_config {
        bail!("nothing to do: give --status or --show-config (see --help)");
    }
    if args.status {
        let st = client::call(&args.socket, &Command::Status)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&st)?);
        } else {
            print!("{}", status::render(&st));
        }
    }
    if args.show_config {
        let cfg = client::call(&args.socket, &Command::ShowConfig)?;
        println!("{}", serde_json::to_string_pretty(&cfg)?);
    }
    Ok(())
}
