//! amgr: the active/standby failover agent. Its state machine exists (`amgr::fsm`); the daemon
//! around it does not yet, so today the binary only prints its help.

use clap::Parser;

/// slb's failover agent (Application Manager). Not implemented yet: the state machine is built
/// (amgr::fsm), the daemon arrives with the rest of the failover work; today this binary only
/// prints this help.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() {
    Args::parse();
    eprintln!("amgr: not implemented yet; see README.md");
    std::process::exit(2);
}
