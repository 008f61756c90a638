//! amgr: the active/standby failover agent. Not built yet (the failover issue); today it only
//! prints its help.

use clap::Parser;

/// slb's failover agent (Application Manager). Not implemented yet: arrives with the failover
/// work; today this binary only prints this help.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() {
    Args::parse();
    eprintln!("amgr: not implemented yet; see README.md");
    std::process::exit(2);
}
