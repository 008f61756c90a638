//! heartbeat: the UDP heartbeat between two balancers, for diagnosis. Not built yet (the
//! failover issue); today it only prints its help.

use clap::Parser;

/// slb's heartbeat diagnostic tool. Not implemented yet: arrives with the failover work; today
/// this binary only prints this help.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() {
    Args::parse();
    eprintln!("heartbeat: not implemented yet; see README.md");
    std::process::exit(2);
}
